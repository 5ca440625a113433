"""`slidestream serve IMAGE`: one local image shown as a store of one case, so the viewer serves it with the code
that serves a whole store (no second path through the viewer for a single slide)."""

from __future__ import annotations

import builtins
from dataclasses import replace
from pathlib import Path

from caseformat.layout import IMAGE, STATION_TREES, SlideRef, slides_key, station_folder, version_key
from objectstore import InvalidKeyError, LocalStorage, ObjectInfo, Storage


class SingleImage(Storage):
    """One image `slidestream convert` wrote, as a store of one case with one slide: CASE/slides/s1/v1/image.zarr/...
    reads the image folder (read-only); every other key of the case (the report) lives in `beside`."""

    def __init__(self, image: Path, case: str, beside: Path) -> None:
        image = image.resolve()
        self._parent, self._name = LocalStorage(image.parent), image.name
        self._beside = LocalStorage(beside)
        self.ref = SlideRef(case)
        self._image_key = version_key(self.ref, IMAGE)
        self.case = case
        self.location = str(image)

    def _route(self, key: str) -> tuple[LocalStorage, str]:
        if key == self._image_key or key.startswith(self._image_key + "/"):
            return self._parent, self._name + key[len(self._image_key):]
        return self._beside, key

    async def get(self, key: str) -> bytes:
        storage, inner = self._route(key)
        return await storage.get(inner)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        storage, inner = self._route(key)
        return await storage.get_range(inner, start, length)

    async def get_suffix(self, key: str, length: int) -> bytes:
        storage, inner = self._route(key)
        return await storage.get_suffix(inner, length)

    async def put(self, key: str, data: bytes) -> None:
        storage, inner = self._route(key)
        if storage is self._parent:
            raise InvalidKeyError(f"invalid object key {key!r}: the image is read-only here")
        await storage.put(inner, data)

    async def create(self, key: str, data: bytes) -> bool:
        storage, inner = self._route(key)
        if storage is self._parent:
            raise InvalidKeyError(f"invalid object key {key!r}: the image is read-only here")
        return await storage.create(inner, data)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        storage, inner = self._route(prefix)
        found = await storage.list(inner)
        if storage is self._parent:
            return [replace(info, key=self._image_key + info.key[len(self._name):]) for info in found]
        return found

    async def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        tree = {STATION_TREES: self.ref.station, station_folder(self.ref.station).rstrip("/"): self.case,
                slides_key(self.case).rstrip("/"): self.ref.slide,
                slides_key(self.case, self.ref.slide).rstrip("/"): self.ref.version}  # fmt: skip
        return [tree[prefix]] if prefix in tree else await self._beside.list_dirs(prefix)
