"""Errors of the analysis pipeline; like every slidestream error, one line naming the input and the problem."""

from slides.errors import SlidestreamError


class InferenceError(SlidestreamError):
    """A slide or case that cannot be analysed (unsuitable resolution, missing image); a failing store is an
    `objectstore.StorageError` instead, which the hub retries."""
