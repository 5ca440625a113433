"""viewer: the remote pathologist's web viewer, reading cases straight from the store while they arrive."""

from objectstore import InvalidKeyError, LocalStorage, ObjectNotFoundError, S3Storage, Storage, StorageError, open_storage
from viewer.app import create_app
from viewer.cases import Cases
from viewer.image import CaseNotFoundError, ImageError, TileNotFoundError
from viewer.tokens import WORKLIST, AccessError, ScopeError, SecretError, TokenError, Tokens, case_scope, load_secret

__all__ = [
    "WORKLIST",
    "AccessError",
    "CaseNotFoundError",
    "Cases",
    "ImageError",
    "InvalidKeyError",
    "LocalStorage",
    "ObjectNotFoundError",
    "S3Storage",
    "ScopeError",
    "SecretError",
    "Storage",
    "StorageError",
    "TileNotFoundError",
    "TokenError",
    "Tokens",
    "case_scope",
    "create_app",
    "load_secret",
    "open_storage",
]
