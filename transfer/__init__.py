"""transfer: stream an image's pieces to S3-compatible storage as they are produced, verified, journaled, resumable.

The sender and what it needs (botocore: a quarter of a second to import) load on first use, so a send starts building
its overview on the other cores while they import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from caseformat.layout import validate_case
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
from transfer.identity import content_id
from transfer.journal import Journal, SendRecord, default_state_dir
from transfer.manifest import Arrivals
from transfer.options import Listener, Progress, SendOptions, SendResult
from transfer.target import Destination, parse_destination

if TYPE_CHECKING:
    from transfer.sender import Sender

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
    "content_id",
    "default_state_dir",
    "parse_destination",
    "validate_case",
]


def __getattr__(name: str) -> Any:
    if name == "Sender":
        return importlib.import_module("transfer.sender").Sender
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")
