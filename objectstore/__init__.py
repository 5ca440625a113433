"""objectstore: the one client of the case store, for every reader (the viewer, the hub, analyze, export).

A store is S3-compatible object storage or a local folder behind one async interface (`Storage`), with one error
family (`StorageError`, `ObjectNotFoundError`, `InvalidKeyError`) and a zarr view over it (`ZarrView`). Listings skip
keys the case layout could never have written, so one hostile key does not break a listing. The sender (transfer/)
keeps botocore where its per-request hooks need it.
"""

from objectstore.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectInfo,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    StorageError,
    ZarrView,
    list_s3,
    open_storage,
    oversized,
    read_each,
)

__all__ = [
    "InvalidKeyError",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Storage",
    "Storage",
    "StorageError",
    "ZarrView",
    "list_s3",
    "open_storage",
    "oversized",
    "read_each",
]
