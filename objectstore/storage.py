"""The store behind one small async interface: an S3 and a local-directory implementation (zarr: `objectstore.zarrstore`).

Keys are '/'-separated and relative to the store root (``CASE/image.zarr/0/c/0/1/2``). Both implementations
answer without blocking the event loop: S3 through obstore (Rust, async, pooled connections), local files in
worker threads. The local store refuses every key that would leave its root, symlinks included.

S3 listings go through botocore (`list_s3`), not obstore: obstore fails a whole listing on one key it cannot parse
(`a//b`, `..`), and any station can write such a key. A listing skips every key this layout could not have written
(`caseformat.layout.is_plain_key`) and carries on.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import obstore
import obstore.exceptions

from caseformat.bounded import DOCUMENT_LIMIT
from caseformat.errors import DocumentError
from caseformat.layout import is_plain_key
from objectstore.clients import make_client, object_store, parse_endpoint
from objectstore.errors import AccessDeniedError, InvalidKeyError, ObjectNotFoundError, StorageError, UnreachableError
from slides.errors import printable

T = TypeVar("T")
# S3's codes for credentials it does not accept: every request fails with them, so a read's 403 is not "absent" then
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object: `tag` changes whenever its content does (S3 ETag, or mtime and size on disk)."""

    key: str
    size: int
    tag: str


class Storage(ABC):
    """Read (and, for reports, write) objects of one store."""

    location: str

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object; `ObjectNotFoundError` when absent."""

    @abstractmethod
    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (a chunk inside a shard)."""

    @abstractmethod
    async def get_suffix(self, key: str, length: int) -> bytes:
        """The last `length` bytes (a shard index), without knowing the object's size."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Replace the object atomically: readers see the old or the new bytes, never a mix."""

    @abstractmethod
    async def create(self, key: str, data: bytes) -> bool:
        """Write the object only if no object has the key (S3: `If-None-Match: *`): False, and nothing written, when
        one does. How a signed report and its amendments are never overwritten, whoever signs at the same time."""

    @abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/`, recursively."""

    @abstractmethod
    async def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Names of the 'folders' directly under `prefix` (the cases, at the root)."""

    async def list_after(self, prefix: str, after: str) -> builtins.list[ObjectInfo]:
        """The objects under `prefix/` whose keys sort after `after` (a time-stamped index read since its last look:
        `_arrivals/`, `_notices/`). This listing filtered; S3 starts its LIST there instead."""
        return [info for info in await self.list(prefix) if info.key > after]

    async def put_verified(self, key: str, data: bytes) -> None:
        """Replace the object and make sure the store holds exactly these bytes (a shard the hub built): a file
        written whole holds what was written, so this is `put`; S3 checks the server's ETag."""
        await self.put(key, data)

    async def delete(self, key: str) -> None:
        """Remove the object; nothing when there is none (zarr replacing an array). A store that only reads refuses."""
        raise StorageError(f"{self.location}/{key}: nothing is deleted here")


def check_key(key: str) -> str:
    """Refuse keys that could name something outside the store, whatever the backend makes of them."""
    parts = key.split("/")
    if not key or "\\" in key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise InvalidKeyError(f"invalid object key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    return check_key(prefix) if prefix else prefix


# -- S3 --------------------------------------------------------------------------------------------------------
class S3Storage(Storage):
    """An S3 bucket (AWS, MinIO, Ceph RGW, moto) under an optional prefix, with boto3's credential chain.

    `absent_when_denied`: a read answered 403 is a missing object, as a 404 is: what an enrolled station is answered
    for a missing object of its own folders (`transfer.network.ABSENT`); the centre, which reads everything, never is."""

    VERIFY_ATTEMPTS = 5  # single-part PUTs `put_verified` sends before it gives up on a server that keeps garbling

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *, absent_when_denied: bool = False,
                 ca_bundle: str | None = None) -> None:
        self.location = f"s3://{bucket}/{prefix}".rstrip("/")
        self._bucket, self._prefix, self._endpoint, self._ca_bundle = bucket, prefix.strip("/"), endpoint_url, ca_bundle
        self._absent_when_denied = absent_when_denied
        # a viewer should say "store unavailable" within seconds, not retry for minutes
        retries = {"max_retries": 2, "retry_timeout": timedelta(seconds=15), "backoff": {"init_backoff": timedelta(milliseconds=100)}}
        self._store = object_store(bucket, prefix, endpoint_url, timeout=30, retry_config=retries, ca_bundle=ca_bundle)

    async def get(self, key: str) -> bytes:
        result = await self._call(key, obstore.get_async(self._store, check_key(key)), reading=True)
        return bytes(await self._call(key, result.bytes_async()))

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return bytes(await self._call(key, obstore.get_range_async(self._store, check_key(key), start=start, length=length), reading=True))

    async def get_suffix(self, key: str, length: int) -> bytes:
        result = await self._call(key, obstore.get_async(self._store, check_key(key), options={"range": {"suffix": length}}), reading=True)
        return bytes(await self._call(key, result.bytes_async()))

    async def exists(self, key: str) -> bool:
        """Whether an object has `key` (a HEAD: nothing read)."""
        try:
            await self._call(key, obstore.head_async(self._store, check_key(key)), reading=True)
        except ObjectNotFoundError:
            return False
        return True

    async def get_at_most(self, key: str, limit: int) -> bytes:
        """The object's first `limit` bytes at most, the rest never read (a planted giant where a document belongs
        costs no memory: its reader refuses it for its size)."""
        result = await self._call(key, obstore.get_async(self._store, check_key(key)), reading=True)
        data = b""
        async for chunk in result.stream(min_chunk_size=min(limit, 1 << 20)):
            data += chunk
            if len(data) >= limit:
                break
        return data[:limit]

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """`content_type`: what S3 answers a browser with (a photograph)."""
        attributes = {"Content-Type": content_type} if content_type else None
        await self._call(key, obstore.put_async(self._store, check_key(key), data, attributes=attributes))

    async def put_verified(self, key: str, data: bytes) -> None:
        """A single-part PUT whose returned ETag must be the MD5 of `data` (as the sender checks its parts), sent again
        on a mismatch: a shard garbled on the way is replaced before anyone reads it."""
        digest = hashlib.md5(data).hexdigest()
        for _ in range(self.VERIFY_ATTEMPTS):
            result = await self._call(key, obstore.put_async(self._store, check_key(key), data, use_multipart=False))
            if (result.get("e_tag") or "").strip('"') == digest:
                return
        raise StorageError(f"{self.location}/{key}: the server's copy differs from what was written ({self.VERIFY_ATTEMPTS} attempts)")

    async def delete(self, key: str) -> None:
        await self._call(key, obstore.delete_async(self._store, check_key(key)))

    async def create(self, key: str, data: bytes) -> bool:
        async def put() -> bool:
            try:
                await obstore.put_async(self._store, check_key(key), data, mode="create")
            except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
                return False
            return True

        return await self._call(key, put())

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        objects, _ = await self._listing(prefix, f"{prefix}/" if prefix else "", False)
        return [ObjectInfo(item["Key"], item["Size"], item.get("ETag") or str(item["LastModified"])) for item in objects]

    async def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        check_prefix(prefix)
        _, folders = await self._listing(prefix, f"{prefix}/" if prefix else "", True)
        return sorted(folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders)

    async def list_after(self, prefix: str, after: str) -> builtins.list[ObjectInfo]:
        check_prefix(prefix)
        objects, _ = await self._listing(prefix, prefix + "/", False, after)
        return [ObjectInfo(item["Key"], item["Size"], item.get("ETag") or str(item["LastModified"])) for item in objects]

    async def _listing(self, what: str, prefix: str, folders: bool, after: str | None = None
                       ) -> tuple[builtins.list[dict[str, Any]], builtins.list[str]]:
        try:
            return await asyncio.to_thread(list_s3, self._bucket, self._prefix, prefix, self._endpoint, folders=folders, start_after=after,
                                           ca_bundle=self._ca_bundle)
        except ObjectNotFoundError:
            raise
        except StorageError as error:  # what failed (credentials, the link), said where
            raise type(error)(f"{self.location}/{what}: {error}") from None

    async def _call(self, key: str, operation: Awaitable[T], reading: bool = False) -> T:
        try:
            return await operation
        except FileNotFoundError:  # obstore's NotFoundError
            raise ObjectNotFoundError(f"{self.location}/{key}: not found") from None
        except (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError) as error:
            code = _s3_code(str(error))
            if code in CREDENTIAL_CODES:  # the credentials themselves are refused: never an absent object
                raise AccessDeniedError(f"{self.location}/{key}: credentials rejected by {self._server} ({code})") from None
            if reading and self._absent_when_denied:
                raise ObjectNotFoundError(f"{self.location}/{key}: not found") from None
            raise AccessDeniedError(f"{self.location}/{key}: {str(error).splitlines()[0] if str(error) else 'access denied'}") from None
        except (obstore.exceptions.BaseError, OSError) as error:
            if "certificate" in str(error).lower():
                raise StorageError(f"{self.location}/{key}: TLS handshake with {self._server} failed; a private CA needs --ca-bundle PATH") from None
            if reason := _unreachable(str(error)):
                raise UnreachableError(f"{self.location}/{key}: cannot reach {self._server}: {reason}") from None
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StorageError(f"{self.location}/{key}: {first_line}") from None

    @property
    def _server(self) -> str:
        """The endpoint, as an error names it."""
        return self._endpoint or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


# -- local directory -------------------------------------------------------------------------------------------
class LocalStorage(Storage):
    """A directory with the same layout as the bucket (e.g. what `slidestream convert` or a sync produced)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise StorageError(f"{root}: not a directory")
        self.root = root.resolve()
        self.location = str(self.root)

    def path(self, key: str) -> Path:
        """The file for `key`; `InvalidKeyError` for anything that resolves outside the root (symlinks too)."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKeyError(f"invalid object key {key!r}")
        return path

    async def get(self, key: str) -> bytes:
        return await self._run(key, lambda: self.path(key).read_bytes())

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        def read() -> bytes:
            with self.path(key).open("rb") as file:
                file.seek(start)
                return file.read(length)

        return await self._run(key, read)

    async def get_suffix(self, key: str, length: int) -> bytes:
        def read() -> bytes:
            with self.path(key).open("rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - length))
                return file.read()

        return await self._run(key, read)

    async def put(self, key: str, data: bytes) -> None:
        def write() -> None:
            path = self.path(key)
            os.replace(_staged(path, data), path)

        await self._run(key, write)

    async def create(self, key: str, data: bytes) -> bool:
        def write() -> bool:
            path = self.path(key)
            staged = _staged(path, data)
            try:
                os.link(staged, path)  # complete when it appears, and refused when the name is taken
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(staged)

        return await self._run(key, write)

    async def delete(self, key: str) -> None:
        await self._run(key, lambda: self.path(key).unlink(missing_ok=True))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            base = self.path(prefix) if prefix else self.root
            found = []
            for path in sorted(base.rglob("*")):
                if path.is_file() and path.resolve().is_relative_to(self.root):
                    stat = path.stat()
                    found.append(ObjectInfo(path.relative_to(self.root).as_posix(), stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}"))
            if not found and not base.is_dir():
                raise FileNotFoundError(prefix)
            return found

        return await self._run(prefix, walk)

    async def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        def scan() -> list[str]:
            base = self.path(prefix) if prefix else self.root
            return sorted(entry.name for entry in base.iterdir() if entry.is_dir() and not entry.name.startswith("."))

        return await self._run(prefix, scan)

    async def _run(self, key: str, function: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(function)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"{self.location}/{key}: not found") from None
        except OSError as error:
            raise StorageError(f"{self.location}/{key}: {error.strerror or error}") from None


def list_s3(bucket: str, root: str, prefix: str, endpoint_url: str | None, *, start_after: str | None = None,
            folders: bool = False, ca_bundle: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects (botocore's Key, Size, ETag, LastModified; keys relative to `root`) under `prefix` of the store at
    `s3://bucket/root`, after `start_after` when given, and with `folders` the folders directly under `prefix` instead
    of what they hold. Keys `is_plain_key` refuses are skipped; `StorageError` when the store cannot be listed."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        SSLError,
    )

    base = f"{root}/" if root else ""
    endpoint = parse_endpoint(endpoint_url) or os.environ.get("AWS_ENDPOINT_URL")
    pages = _s3_client(endpoint, ca_bundle).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=base + prefix, **({"Delimiter": "/"} if folders else {}),
        **({"StartAfter": base + start_after} if start_after else {}))  # fmt: skip
    objects, common = [], []
    try:
        for page in pages:
            objects += [{**item, "Key": item["Key"][len(base):]} for item in page.get("Contents", []) if is_plain_key(item["Key"])]
            common += [entry["Prefix"][len(base):] for entry in page.get("CommonPrefixes", []) if is_plain_key(entry["Prefix"].rstrip("/"))]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ObjectNotFoundError(f"s3://{bucket}: no such bucket") from None
        if code in CREDENTIAL_CODES:
            raise AccessDeniedError(f"credentials rejected by {endpoint or 'AWS S3'} ({code})") from None
        if code in ("AccessDenied", "403"):
            raise AccessDeniedError(f"{endpoint or 'AWS S3'} denied access (AccessDenied): the credentials may not list there") from None
        raise StorageError(f"{code or 'error'}: {str(error).splitlines()[0]}") from None
    except NoCredentialsError:
        raise AccessDeniedError(f"no usable AWS credentials for {endpoint or 'AWS S3'}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                "AWS_PROFILE or ~/.aws/credentials") from None
    except SSLError:
        raise StorageError(f"TLS handshake with {endpoint or 'AWS S3'} failed; a private CA needs --ca-bundle PATH") from None
    except (EndpointConnectionError, ConnectTimeoutError) as error:
        raise UnreachableError(f"cannot reach {endpoint or 'AWS S3'}: {_unreachable(repr(error.kwargs.get('error'))) or 'no answer'}") from None
    except BotoCoreError as error:
        raise StorageError(str(error).splitlines()[0]) from None
    return objects, common


@functools.cache
def _s3_client(endpoint: str | None, ca_bundle: str | None) -> Any:
    """One botocore client per endpoint (and private CA), so that its connections are reused (listings only)."""
    return make_client(endpoint, ca_bundle)


def _s3_code(message: str) -> str:
    """The S3 error code in an obstore error's message (it quotes the server's XML answer); "" when there is none."""
    found = re.search(r"<Code>(\w+)</Code>", message)
    return found.group(1) if found else ""


def _unreachable(message: str) -> str | None:
    """Why the endpoint could not be reached, in words, when a client's error message says it could not; else None."""
    if "Connection refused" in message or "ConnectionRefused" in message:
        return "connection refused"
    if "dns error" in message or "Name or service not known" in message or "failed to lookup address" in message:
        return "host name does not resolve"
    if "error sending request" in message or "kind: Connect" in message:
        return "timed out" if "timed out" in message.lower() else "no connection"
    return None


def oversized(info: ObjectInfo) -> str | None:
    """Why a listed object is refused unread: larger than any document may be."""
    if info.size <= DOCUMENT_LIMIT:
        return None
    return printable(f"{info.key}: {info.size:,} bytes, more than the {DOCUMENT_LIMIT:,} a document may have; refused")


async def read_each(storage: Storage, listed: Iterable[ObjectInfo], read: Callable[[bytes, str], T],
                    concurrency: int = 16) -> builtins.list[T | str]:
    """Each listed object, in order, as `read(data, key)` makes it, or one printable line where it is refused: larger
    than a document may be (refused unread: a station's object of gigabytes would otherwise be read into memory by
    every page that lists the folder), or refused by `read` (`DocumentError`). Objects gone since the listing are
    left out."""
    limit = asyncio.Semaphore(concurrency)

    async def one(info: ObjectInfo) -> T | str | None:
        if refusal := oversized(info):
            return refusal
        async with limit:
            try:
                data = await storage.get(info.key)
            except ObjectNotFoundError:
                return None
        try:
            return read(data, info.key)
        except DocumentError as error:
            return printable(str(error))

    return [item for item in await asyncio.gather(*(one(info) for info in listed)) if item is not None]


def open_storage(location: str, endpoint_url: str | None = None) -> Storage:
    """`s3://BUCKET[/PREFIX]` or a local directory."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{location}: no bucket named")
        return S3Storage(bucket, prefix.strip("/"), endpoint_url)
    return LocalStorage(Path(location))



def _staged(path: Path, data: bytes) -> str:
    """`data` in a hidden file beside `path` (its folder made if needed): renamed or linked into place whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(data)
    return file.name
