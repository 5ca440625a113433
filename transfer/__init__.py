"""transfer: stream an image's pieces to S3-compatible storage as they are produced, verified, journaled, resumable."""

from transfer.errors import (
    BucketNotFoundError,
    CredentialsError,
    DestinationError,
    IntegrityError,
    JournalError,
    NetworkDeadlineError,
    NetworkError,
    TransferError,
)
from transfer.journal import Journal, SendRecord, default_state_dir
from transfer.manifest import Arrivals
from transfer.sender import Listener, Progress, Sender, SendOptions, SendResult
from transfer.target import Destination, case_id_for, parse_destination, validate_case

__all__ = [
    "Arrivals",
    "BucketNotFoundError",
    "CredentialsError",
    "Destination",
    "DestinationError",
    "IntegrityError",
    "Journal",
    "JournalError",
    "Listener",
    "NetworkDeadlineError",
    "NetworkError",
    "Progress",
    "SendOptions",
    "SendRecord",
    "SendResult",
    "Sender",
    "TransferError",
    "case_id_for",
    "default_state_dir",
    "parse_destination",
    "validate_case",
]
