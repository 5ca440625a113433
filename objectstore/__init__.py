"""objectstore: the one client of the case store (the viewer, the hub, analyze, export, the station).

A store is S3-compatible object storage or a local folder behind one async interface (`Storage`), with one error
family for every client (`objectstore.errors`: `StorageError` and what a caller tells apart below it) and a zarr view
over it (`ZarrView`); `objectstore.location.Location` is its synchronous face. Listings skip keys the case layout
could never have written, so one hostile key does not break a listing. The clients themselves are made in
`objectstore.clients`; the sender (transfer/) keeps botocore's where its per-request hooks need it. The storage and
the zarr view (zarr: a quarter of a second to import) load on first use, so the sender, which needs only the errors and
the clients, never pays for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from objectstore.errors import (
    AccessDeniedError,
    EndpointError,
    InvalidKeyError,
    NoSuchBucketError,
    ObjectNotFoundError,
    StorageError,
    UnreachableError,
)

if TYPE_CHECKING:
    from objectstore.storage import (
        LocalStorage,
        ObjectInfo,
        S3Storage,
        Storage,
        list_s3,
        open_storage,
        oversized,
        read_each,
    )
    from objectstore.zarrstore import ZarrView

# where each name that loads on first use lives
_LAZY = {name: "objectstore.storage" for name in ("LocalStorage", "ObjectInfo", "S3Storage", "Storage", "list_s3", "open_storage", "oversized",
                                                  "read_each")} | {"ZarrView": "objectstore.zarrstore"}  # fmt: skip

__all__ = [
    "AccessDeniedError",
    "EndpointError",
    "InvalidKeyError",
    "LocalStorage",
    "NoSuchBucketError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Storage",
    "Storage",
    "StorageError",
    "UnreachableError",
    "ZarrView",
    "list_s3",
    "open_storage",
    "oversized",
    "read_each",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'objectstore' has no attribute {name!r}")
