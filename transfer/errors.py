"""What can go wrong while sending, each as one line a technician can act on.

Every class is a `SlidestreamError` (the CLI prints it as one line on stderr); `exit_code` tells a script whether
to fix the command (2) or wait for the network and resume (3). The store's failures (credentials, the bucket, the
link) are members of the store's error family too (`objectstore.errors`), so "the store failed" is `except
StorageError` whoever met it.
"""

from __future__ import annotations

from objectstore.errors import AccessDeniedError, NoSuchBucketError, UnreachableError
from slides import SlidestreamError


class TransferError(SlidestreamError):
    """Base of the errors of transfer/: the send stopped, the journal holds what was verified so far."""

    exit_code = 2


class DestinationError(TransferError, ValueError):
    """The destination is malformed: not s3://BUCKET/PREFIX, a bad case ID, a bad option value."""


class SlideTakenError(DestinationError):
    """Another station claimed the slide number this send was given (two stations adding slides to one case)."""


class CredentialsError(TransferError, AccessDeniedError):
    """The server rejected (or there are no) credentials, or they may not write here."""


class BucketNotFoundError(TransferError, NoSuchBucketError):
    """The bucket does not exist on that endpoint."""


class NetworkError(TransferError, UnreachableError):
    """The endpoint cannot be reached; resuming later picks up where the journal stops."""

    exit_code = 3


class NetworkDeadlineError(NetworkError, TimeoutError):
    """The link stayed down longer than --deadline."""


class IntegrityError(TransferError):
    """The server kept storing bytes that differ from the ones sent (or cannot prove that it did not)."""


class JournalError(TransferError, OSError):
    """The local journal cannot be opened or written (disk full, read-only, not a journal)."""
