"""A `Storage` (or one folder of it) as a zarr store, so that zarr's reads and writes of images and heatmaps go through
the same client, key checks and error family as every other access to the case store.

Read-only unless asked: the viewer and the export only read, the hub writes its heatmaps and levels. A missing object
is zarr's "absent" (None); any other failure of the store is a `StorageError`. Listing is recursive under the folder
zarr names: zarr lists only to delete an array it replaces and to show a group's members, never on the read path.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from objectstore.errors import ObjectNotFoundError
from objectstore.storage import LocalStorage, Storage, open_storage


class ZarrView(Store):
    """`storage` below `prefix` (a folder such as `stations/x/x.1/slides/s1/v1/image.zarr`, or the whole store)."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(self, storage: Storage, prefix: str = "", read_only: bool = True) -> None:
        super().__init__(read_only=read_only)
        self.storage = storage
        self.prefix = prefix.strip("/")

    def __eq__(self, other: object) -> bool:
        """The same folder of the same store (zarr compares stores to tell whether two arrays share one)."""
        return (isinstance(other, ZarrView) and type(other.storage) is type(self.storage)
                and (other.storage.location, other.prefix) == (self.storage.location, self.prefix))  # fmt: skip

    def __str__(self) -> str:
        return "/".join(part for part in (self.storage.location, self.prefix) if part)

    def __repr__(self) -> str:
        return f"ZarrView({self}, read_only={self.read_only})"

    def with_read_only(self, read_only: bool = False) -> ZarrView:
        return ZarrView(self.storage, self.prefix, read_only)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else self.prefix or key

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        name = self._key(key)
        try:
            match byte_range:
                case None:
                    data = await self.storage.get(name)
                case RangeByteRequest(start=start, end=end):
                    data = await self.storage.get_range(name, start, end - start)
                case SuffixByteRequest(suffix=suffix):
                    data = await self.storage.get_suffix(name, suffix)
                case OffsetByteRequest(offset=offset):
                    data = (await self.storage.get(name))[offset:]
                case _:
                    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")
        except ObjectNotFoundError:
            return None
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> builtins.list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def exists(self, key: str) -> bool:
        try:
            await self.storage.get_suffix(self._key(key), 1)
        except ObjectNotFoundError:
            return False
        return True

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self.storage.put(self._key(key), value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self.storage.create(self._key(key), value.to_bytes())

    async def delete(self, key: str) -> None:
        self._check_writable()
        await self.storage.delete(self._key(key))

    async def list(self) -> AsyncIterator[str]:
        for key in await self._below(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._below(prefix.rstrip("/")):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        folder = prefix.rstrip("/")
        start = len(folder) + 1 if folder else 0
        for name in sorted({key[start:].split("/", 1)[0] for key in await self._below(folder)}):
            yield name

    async def _below(self, folder: str) -> builtins.list[str]:
        """The keys (relative to this view) of every object below `folder`; none when it does not exist."""
        try:
            listed = await self.storage.list(self._key(folder))
        except ObjectNotFoundError:
            return []
        start = len(self.prefix) + 1 if self.prefix else 0
        return [info.key[start:] for info in listed]


def folder_view(location: str, endpoint_url: str | None = None, read_only: bool = True) -> ZarrView:
    """The folder at `location` (`s3://BUCKET/PREFIX` or a local path) as a zarr store. A local folder not made yet
    reads as empty and is made by the first write: the store is rooted at the nearest folder above it that exists."""
    if location.startswith("s3://"):
        return ZarrView(open_storage(location, endpoint_url), read_only=read_only)
    path = Path(location).resolve()
    root = next(folder for folder in (path, *path.parents) if folder.is_dir())
    return ZarrView(LocalStorage(root), path.relative_to(root).as_posix() if root != path else "", read_only)
