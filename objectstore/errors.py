"""What can go wrong with the store, one family for every client (the sender's, the station's, the viewer's, the hub's).

"The store failed" is `except StorageError` whoever met it; the subclasses say what a caller may need to act on
without parsing a message: credentials, the link, the bucket. Each also inherits the matching built-in type, so
callers that catch `PermissionError` or `ConnectionError` keep working. A malformed key or endpoint is the caller's
mistake, not a store failure: those are `ValueError`s outside `StorageError`.
"""

from __future__ import annotations

from slides import SlidestreamError


class StorageError(SlidestreamError, OSError):
    """The store cannot be reached or refused the request (network, credentials, permissions)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object under that key (yet)."""


class AccessDeniedError(StorageError, PermissionError):
    """The store rejected the credentials (or there are none), or they may not do this here."""


class UnreachableError(StorageError, ConnectionError):
    """The endpoint cannot be reached (refused, unknown host, timed out): waiting for the link may cure it."""


class NoSuchBucketError(StorageError, FileNotFoundError):
    """The bucket does not exist on that endpoint."""


class InvalidKeyError(SlidestreamError, ValueError):
    """A key that does not name an object inside the store (empty, absolute, '..', backslash, NUL)."""


class EndpointError(SlidestreamError, ValueError):
    """The endpoint URL or the client's configuration is malformed (not http(s)://HOST[:PORT], credentials in it)."""
