"""Where cases live: a local directory or an ``s3://bucket/prefix``, behind one small interface.

Both the small JSON objects (manifest, triage) and the Zarr stores (image, heatmap) go through obstore on S3 (the
client the viewer uses; zarr's `ObjectStore` wraps it) and plain files locally, so local and S3 cases share every
line of the pipeline. Nothing is cached between reads: a receiving side polls objects that change under it.
Listings are the exception: they go through `objectstore.list_s3` (botocore), which skips keys no slidestream
writer makes (`a//b`, `..`) instead of failing the whole listing as obstore does on the first.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions
import obstore.store
import zarr
from zarr.abc.store import Store

from caseformat.layout import CENTRE_RESULTS, SlideRef
from inference.errors import InferenceError
from objectstore import StorageError, list_s3
from transfer.readers import object_store


@dataclass(frozen=True)
class Location:
    """A folder of objects: an absolute local path or an s3:// URL (no trailing slash).

    `endpoint_url` names an S3-compatible server (MinIO, Ceph RGW, moto); None means AWS or the
    standard `AWS_ENDPOINT_URL` environment variable. Credentials come from the standard AWS chain.
    """

    url: str
    endpoint_url: str | None = None
    # a slide version on a shared store: the centre's folder of it, where its results (triage, heatmap, lease, pyramid
    # record, corrupt record) are read and written; the image and the manifest stay the station's (`url`)
    results_url: str | None = None

    @classmethod
    def slide_version(cls, store: Location, ref: SlideRef) -> Location:
        """`ref` on the store at `store`: its station's folder, with the centre's folder for the results."""
        return cls(store.child(ref.root).url, store.endpoint_url, store.child(ref.centre_root).url)

    @property
    def sent(self) -> Location:
        """Only what the station wrote: its folder of a slide version (the edge triage's triage.json is read here)."""
        return Location(self.url, self.endpoint_url)

    def _route(self, key: str) -> tuple[Location, str]:
        """Where `key` lives: the centre's folder for a result, this folder for everything else."""
        if self.results_url is not None and key.split("/", 1)[0] in CENTRE_RESULTS:
            return Location(self.results_url, self.endpoint_url), key
        return self.sent if self.results_url is not None else self, key

    @classmethod
    def parse(cls, target: str | os.PathLike[str], endpoint_url: str | None = None) -> Location:
        text = str(target)
        if text.startswith("s3://"):
            if not text[5:].split("/", 1)[0]:
                raise InferenceError(f"{text}: no bucket in the URL (s3://BUCKET/PREFIX)")
            return cls(text.rstrip("/"), endpoint_url)
        if "://" in text:
            raise InferenceError(f"{text}: only local paths and s3:// URLs are supported")
        return cls(str(Path(text).resolve()), endpoint_url)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> Location:
        home, _ = self._route(parts[0] if parts else "")
        return Location("/".join([home.url, *parts]), self.endpoint_url)

    @property
    def _bucket_and_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        return bucket, prefix

    def _key(self, key: str) -> str:
        """The object key (S3) or file path (local) of `key` below this folder."""
        if not self.is_s3:
            return f"{self.url}/{key}" if key else self.url
        prefix = self._bucket_and_prefix[1]
        return "/".join(part for part in (prefix, key) if part)

    def _describe(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (yet)."""
        if self.results_url is not None:
            home, key = self._route(key)
            return home.read_bytes(key)
        try:
            if not self.is_s3:
                return Path(self._key(key)).read_bytes()
            return bytes(obstore.get(self._bucket_store(), self._key(key)).bytes())
        except (FileNotFoundError, obstore.exceptions.PermissionDeniedError):
            # obstore's NotFoundError is a FileNotFoundError; an enrolled station is answered 403 for a missing object
            # of its own folders (see `transfer.network.ABSENT`), and reads nothing else
            return None
        except (obstore.exceptions.BaseError, OSError) as error:
            raise InferenceError(f"{self._describe(key)}: cannot read: {_first_line(error)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or replace) one object (a document's `to_json`); a single PUT on S3."""
        if self.results_url is not None:
            home, key = self._route(key)
            return home.write_bytes(key, data)
        try:
            if self.is_s3:
                obstore.put(self._bucket_store(), self._key(key), data)
            else:
                path = Path(self._key(key))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        except (obstore.exceptions.BaseError, OSError) as error:
            raise InferenceError(f"{self._describe(key)}: cannot write: {_first_line(error)}") from None

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write one object only if none exists (S3: a PUT with `If-None-Match: *`); False when one does.

        A server that ignores the condition (older Ceph RGW, MinIO before 2024) just writes it: callers that need
        the claim to be exclusive read it back."""
        if self.results_url is not None:
            home, key = self._route(key)
            return home.create_bytes(key, data)
        try:
            if self.is_s3:
                obstore.put(self._bucket_store(), self._key(key), data, mode="create")
            else:
                path = Path(self._key(key))
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("xb") as handle:
                    handle.write(data)
            return True
        except (FileExistsError, obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            return False
        except (obstore.exceptions.BaseError, OSError) as error:
            raise InferenceError(f"{self._describe(key)}: cannot write: {_first_line(error)}") from None

    def write_verified(self, key: str, data: bytes, attempts: int = 5) -> None:
        """Write one object and make sure the server holds exactly these bytes, as the sender does: a single-part
        PUT whose returned ETag must be their MD5, sent again on a mismatch (at most `attempts` times)."""
        if self.results_url is not None:
            home, key = self._route(key)
            return home.write_verified(key, data, attempts)
        if not self.is_s3:
            path = Path(self._key(key))
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)  # readers never see half a shard
            return
        digest = hashlib.md5(data).hexdigest()
        for _ in range(attempts):
            try:
                result = obstore.put(self._bucket_store(), self._key(key), data, use_multipart=False)
            except (obstore.exceptions.BaseError, OSError) as error:
                raise InferenceError(f"{self._describe(key)}: cannot write: {_first_line(error)}") from None
            if (result.get("e_tag") or "").strip('"') == digest:
                return
        raise InferenceError(f"{self._describe(key)}: the server's copy differs from what was written ({attempts} attempts)")

    def exists(self, key: str) -> bool:
        if self.results_url is not None:
            home, key = self._route(key)
            return home.exists(key)
        return self.read_bytes(key) is not None if self.is_s3 else Path(self._key(key)).exists()

    def subfolders(self) -> list[Location]:
        """Folders directly below this one, sorted by name."""
        if not self.is_s3:
            root = Path(self.url)
            return [self.child(entry.name) for entry in sorted(root.iterdir()) if entry.is_dir()] if root.is_dir() else []
        bucket, prefix = self._bucket_and_prefix
        try:
            _, folders = list_s3(bucket, prefix, "", self.endpoint_url, folders=True)
        except StorageError as error:
            raise InferenceError(f"{self.url}: cannot list: {_first_line(error)}") from None
        return [self.child(name) for name in sorted(folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders)]

    def keys(self, folder: str, start_after: str | None = None) -> list[str]:
        """Keys below `folder` (relative to this location, sorted), after `start_after` when given: a paged LIST
        without delimiter on S3 (the `_arrivals/` index of the case layout is read this way)."""
        if not self.is_s3:
            root = Path(self._key(folder))
            found = sorted(f"{folder}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
            return [key for key in found if start_after is None or key > start_after]
        bucket, prefix = self._bucket_and_prefix
        try:
            objects, _ = list_s3(bucket, prefix, folder + "/", self.endpoint_url, start_after=start_after)
        except StorageError as error:
            raise InferenceError(f"{self.url}/{folder}: cannot list: {_first_line(error)}") from None
        return [item["Key"] for item in objects]

    def zarr_store(self, read_only: bool = True) -> Store:
        """A zarr store rooted here, for zarr.open_group / zarr.create_array."""
        if not self.is_s3:
            return zarr.storage.LocalStore(self.url, read_only=read_only)
        bucket, prefix = self._bucket_and_prefix
        return _ConfinedObjectStore(_s3_store(bucket, prefix, self.endpoint_url), read_only=read_only)

    def _bucket_store(self) -> obstore.store.S3Store:
        return _s3_store(self._bucket_and_prefix[0], "", self.endpoint_url)


class _ConfinedObjectStore(zarr.storage.ObjectStore):  # type: ignore[type-arg]
    """zarr's obstore-backed store, for which a 403 is a missing object as a 404 is: what an enrolled station is
    answered for a missing object of its own folders (`transfer.network.ABSENT`). The centre, which may read
    everything, is never answered 403."""

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        try:
            return await super().get(key, prototype, byte_range)
        except obstore.exceptions.PermissionDeniedError:
            return None

    async def exists(self, key: str) -> bool:
        try:
            return await super().exists(key)
        except obstore.exceptions.PermissionDeniedError:
            return False


@cache
def _s3_store(bucket: str, prefix: str, endpoint_url: str | None) -> obstore.store.S3Store:
    """One client per folder and endpoint, so that its connections are reused."""
    return object_store(bucket, prefix, endpoint_url)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
