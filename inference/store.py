"""Where cases live: a local directory or an ``s3://bucket/prefix``, behind one small interface.

Both the small JSON objects (manifest, triage) and the Zarr stores (image, heatmap) go through fsspec, so local
and S3 cases share every line of the pipeline. Reads never trust fsspec's listing cache: a receiving side polls
objects that change under it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fsspec
import zarr
from zarr.abc.store import Store

from inference.errors import InferenceError


@dataclass(frozen=True)
class Location:
    """A folder of objects: an absolute local path or an s3:// URL (no trailing slash).

    `endpoint_url` names an S3-compatible server (MinIO, Ceph RGW, moto); None means AWS or the
    standard `AWS_ENDPOINT_URL` environment variable. Credentials come from the standard AWS chain.
    """

    url: str
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, target: str | os.PathLike[str], endpoint_url: str | None = None) -> Location:
        text = str(target)
        if text.startswith("s3://"):
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
        return Location("/".join([self.url, *parts]), self.endpoint_url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return _filesystem("s3" if self.is_s3 else "file", self.endpoint_url)

    def _path(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (yet)."""
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InferenceError(f"{self._path(key)}: cannot read: {error}") from None

    def read_json(self, key: str) -> dict[str, Any] | None:
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as error:
            raise InferenceError(f"{self._path(key)}: not valid JSON: {error}") from None

    def write_json(self, key: str, value: dict[str, Any]) -> None:
        """Write (or replace) one JSON object; a single PUT on S3, so readers see the old or the new one."""
        path = self._path(key)
        try:
            if not self.is_s3:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.pipe_file(path, json.dumps(value, indent=1).encode())
        except OSError as error:
            raise InferenceError(f"{path}: cannot write: {error}") from None

    def exists(self, key: str) -> bool:
        return self.read_bytes(key) is not None if self.is_s3 else Path(self._path(key)).exists()

    def subfolders(self) -> list[Location]:
        """Folders directly below this one, sorted by name."""
        try:
            entries = self.fs.ls(self.url, detail=True, refresh=True) if self.is_s3 else self.fs.ls(self.url, detail=True)
        except FileNotFoundError:
            return []
        names = sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry["type"] == "directory")
        return [self.child(name) for name in names]

    def zarr_store(self, read_only: bool = True) -> Store:
        """A zarr store rooted here, for zarr.open_group / zarr.create_array."""
        if not self.is_s3:
            return zarr.storage.LocalStore(self.url, read_only=read_only)
        options = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=options, read_only=read_only)


@cache
def _filesystem(protocol: str, endpoint_url: str | None) -> fsspec.AbstractFileSystem:
    if protocol == "s3":
        return fsspec.filesystem("s3", endpoint_url=endpoint_url) if endpoint_url else fsspec.filesystem("s3")
    return fsspec.filesystem("file")
