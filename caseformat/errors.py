"""The case format's errors: a name that cannot be part of a key, a document that is not what its format says.

Both are `ValueError`s (callers that catch that keep working) and `SlidestreamError`s (the CLI prints one line).
A `DocumentError`'s message names the document and the field, so a bad document costs its case one visible line.
"""

from __future__ import annotations

from slides import SlidestreamError


class CaseFormatError(SlidestreamError, ValueError):
    """Base of the case format's errors."""

    exit_code = 2


class InvalidIdError(CaseFormatError):
    """A case, slide, version or station name that cannot be part of a key."""


class DocumentError(CaseFormatError):
    """A document read from the store that is not what its format says: too large, not JSON, a field of the wrong
    type or out of bounds. Everything on the store is untrusted input: a station may be buggy or hostile."""


class SendFailedError(SlidestreamError, LookupError):
    """The slide version's send was given up (its manifest says failed): there is no image to show or score, only the
    sender's reason (`reason`)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: send failed: {reason}")
        self.reason = reason


class SignatureError(DocumentError):
    """A document that must come from the centre is unsigned, signed by a key the reader does not trust, or its
    signature does not match its content."""
