"""Where cases live: a local directory or an ``s3://bucket/prefix``, behind one small synchronous interface.

The synchronous face of the one store client, for the synchronous callers (analyze, the hub, the edge triage): every
read and write, the small JSON objects (manifest, triage) and the Zarr stores (image, heatmap) alike, goes through
`S3Storage` or `LocalStorage`, and `ZarrView` for zarr, as the viewer's do. Callers are synchronous code in threads, so
each call runs on zarr's own event loop (`zarr.core.sync.sync`, the loop zarr's reads already use). A failing store raises `objectstore.StorageError`. Nothing is cached between
reads: a receiving side polls objects that change under it. A read answered 403 is a missing object, as 404 is: what
an enrolled station is answered for a missing object of its own folders (`transfer.network.ABSENT`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from zarr.core.sync import sync

from caseformat.layout import CENTRE_RESULTS, SlideRef
from objectstore import ObjectNotFoundError, S3Storage, Storage, StorageError, ZarrView
from objectstore.zarrstore import folder_view


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
                raise StorageError(f"{text}: no bucket in the URL (s3://BUCKET/PREFIX)")
            return cls(text.rstrip("/"), endpoint_url)
        if "://" in text:
            raise StorageError(f"{text}: only local paths and s3:// URLs are supported")
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

    def _home(self) -> tuple[Storage, str]:
        """The store this folder is in, and the folder's key there ("" for the store's root)."""
        if self.is_s3:
            bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
            return _s3_storage(bucket, self.endpoint_url), prefix
        view = folder_view(self.url)
        return view.storage, view.prefix

    def _object(self, key: str) -> tuple[Storage, str]:
        """The store holding the object `key` of this folder (a result: the centre's folder), and its key there."""
        home, key = self._route(key)
        storage, folder = home._home()
        return storage, _join(folder, key)

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (yet)."""
        storage, name = self._object(key)
        try:
            return sync(storage.get(name))
        except ObjectNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or replace) one object (a document's `to_json`); a single PUT on S3."""
        storage, name = self._object(key)
        sync(storage.put(name, data))

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write one object only if none exists (S3: a PUT with `If-None-Match: *`); False when one does.

        A server that ignores the condition (older Ceph RGW, MinIO before 2024) just writes it: callers that need
        the claim to be exclusive read it back."""
        storage, name = self._object(key)
        return sync(storage.create(name, data))

    def write_verified(self, key: str, data: bytes) -> None:
        """Write one object and make sure the server holds exactly these bytes (`Storage.put_verified`)."""
        storage, name = self._object(key)
        sync(storage.put_verified(name, data))

    def exists(self, key: str) -> bool:
        return self.read_bytes(key) is not None

    def subfolders(self) -> list[Location]:
        """Folders directly below this one, sorted by name."""
        storage, folder = self._home()
        try:
            names = sync(storage.list_dirs(folder))
        except ObjectNotFoundError:
            if self.is_s3:  # the bucket is gone
                raise
            return []  # a local folder not made yet
        return [self.child(name) for name in names]

    def keys(self, folder: str, start_after: str | None = None) -> list[str]:
        """Keys below `folder` (relative to this location, sorted), after `start_after` when given: a paged LIST
        without delimiter on S3 (the `_arrivals/` index of the case layout is read this way)."""
        storage, base = self._home()
        prefix = _join(base, folder)
        try:
            listed = sync(storage.list(prefix) if start_after is None else storage.list_after(prefix, _join(base, start_after)))
        except ObjectNotFoundError:
            if self.is_s3:
                raise
            return []
        start = len(base) + 1 if base else 0
        return sorted(info.key[start:] for info in listed)

    def zarr_store(self, read_only: bool = True) -> ZarrView:
        """A zarr store rooted here, for zarr.open_group / zarr.create_array."""
        storage, folder = self._home()
        return ZarrView(storage, folder, read_only)


@cache
def _s3_storage(bucket: str, endpoint_url: str | None) -> S3Storage:
    """One client per bucket and endpoint, so that every folder's reads share its connections."""
    return S3Storage(bucket, "", endpoint_url, absent_when_denied=True)


def _join(folder: str, key: str) -> str:
    return "/".join(part for part in (folder, key) if part)
