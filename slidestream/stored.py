"""A case already converted (`slidestream convert`) or sent (`slidestream send`), as `export-dicom`'s tile source.

The level arrays are sharded Zarr v3 whose JPEG chunks are self-contained baseline JPEG (`tiling.shard_jobs`): each is
one DICOM frame as it is, so the export copies chunk bytes out of the shards (index at the end, `assemble_shard`)
without decoding. The pixel spacing is the NGFF scale in micrometres; the case ID is the case folder's name, the
only identifier the image carries (it was de-identified when it was written). A sent case is exported only when
its manifest says complete: an image still arriving reads as background where shards are missing.

Every read goes through one zarr store rooted at the case folder (`objectstore.zarrstore.folder_view`: the store
client the viewer and the hub use; a failing store is a `StorageError`), not through `inference` itself, whose
import brings torch (3.6 s of a 4 s export).

The manifest, the hub's pyramid record and each level's zarr.json are read as untrusted documents
(`caseformat.results`): every level is held to `check_array`'s bounds (at most 2^20 px a side, chunk sides of at
least 16 px, at most 4,194,304 chunks and 1,048,576 shards per level, uint8; at most 32 levels) before anything is
sized by it, and refused as "unreadable: <reason>" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import tiling.codec  # noqa: F401 - registers the JPEG chunk codec that read_region's zarr reads need
from caseformat.errors import DocumentError
from caseformat.image import ImageAttributes, LevelArray
from caseformat.layout import (
    IMAGE,
    IMAGE_METADATA,
    MANIFEST,
    PYRAMID,
    SLIDES,
    VERSION_PATTERN,
    centre_twin,
    image_key,
    member,
    validate_name,
    version_number,
)
from caseformat.results import COMPLETE, Manifest, PyramidRecord
from objectstore import ObjectNotFoundError, ZarrView
from objectstore.zarrstore import folder_view
from slides import Level, SlidestreamError
from tiling.shard_format import CorruptShardError, verified_chunks
from transfer.target import parse_store_url

T = TypeVar("T")
JPEG_KEYS = {"level", "quality"}  # a JPEG codec configured with tables or a header has no self-contained chunks


class StoredCaseError(SlidestreamError, ValueError):
    """Not a case that can be exported: no OME-Zarr image there, one still arriving or failed, damaged shards."""


def is_stored_case(target: str) -> bool:
    """An s3:// URL, or a local folder holding an OME-Zarr image (itself, or `image.zarr` in it), a send's manifest
    or a case's slides; not a slide (a DICOM series folder has none of these)."""
    if target.startswith("s3://"):
        return True
    path = Path(target)
    return path.is_dir() and (any((path / name).is_file() for name in ("zarr.json", IMAGE_METADATA, MANIFEST)) or (path / SLIDES).is_dir())


def open_stored_case(target: str, endpoint_url: str | None = None, case_id: str | None = None) -> StoredCase:
    """A slide version (`s3://BUCKET/PREFIX/CASE/slides/SLIDE/VERSION`, or its `image.zarr`), a case of one slide
    (`.../CASE`: that slide's newest version), local or on S3, or `convert`'s output folder; the case ID is
    `case_id` where given, else the case's."""
    root = target.rstrip("/")
    if root.startswith("s3://"):
        parse_store_url(root)  # S3's naming rules: a malformed URL is one line before any request
    named_image = root.rsplit("/", 1)[-1] == IMAGE
    if named_image:
        root = root.rsplit("/", 1)[0]
    folder = CaseFolder(target, folder_view(root, endpoint_url))
    slides = folder.children(SLIDES)
    if slides and folder.read(MANIFEST) is None:  # a case folder: its one slide, at its newest version
        if len(slides) > 1:
            raise StoredCaseError(f"{target}: the case has {len(slides)} slides ({', '.join(slides)}); name one: {member(root, 'slides', 'SLIDE')}")
        versions = [name for name in folder.children(member(SLIDES, slides[0])) if VERSION_PATTERN.fullmatch(name)]
        if not versions:
            raise StoredCaseError(f"{target}: slide {slides[0]} has no version yet")
        case_name = root.rsplit("/", 1)[-1]
        root = member(root, SLIDES, slides[0], max(versions, key=version_number))
        folder = CaseFolder(target, folder_view(root, endpoint_url))
    else:
        parts = root.split("/")
        case_name = parts[-4] if len(parts) >= 4 and parts[-3] == SLIDES else parts[-1]
    manifest = folder.read_document(MANIFEST, Manifest.read)
    if manifest is not None and manifest.state != COMPLETE:  # no manifest (convert's output, another tool's image): complete
        reason = manifest.failure
        raise StoredCaseError(f"{target}: the case is not complete (state {manifest.state}{f': {reason}' if reason else ''}); "
                              "export it once its send has finished")
    twin = centre_twin(root)  # a shared store's slide version: the hub's record lies in the centre's folder
    results = CaseFolder(target, folder_view(twin, endpoint_url)) if twin else folder
    if manifest is not None and not manifest.hub_pyramid_done(results.read_document(PYRAMID, PyramidRecord.read)):
        raise StoredCaseError(f"{target}: the hub has not built the in-between levels yet (pyramid.json not complete); "
                              "export it once `slidestream hub` has, or send with --full-pyramid")
    in_case = named_image or manifest is not None or folder.read(IMAGE_METADATA) is not None
    image = image_key("") if in_case else ""  # else convert's output: the folder is the image
    return StoredCase(folder, image, validate_name(case_id) if case_id is not None else _case_name(target, case_name))


class CaseFolder:
    """The objects of one case folder (or of convert's output), read whole; None for one that does not exist."""

    def __init__(self, target: str, store: ZarrView) -> None:
        self.target = target
        self.store = store

    def read(self, key: str) -> bytes | None:
        buffer = sync(self.store.get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def children(self, prefix: str) -> list[str]:
        """Names of the folders directly below `prefix`, sorted; none when it does not exist."""
        try:
            return sync(self.store.storage.list_dirs(member(self.store.prefix, prefix) if self.store.prefix else prefix))
        except ObjectNotFoundError:
            return []

    def read_document(self, key: str, read: Callable[[bytes, str], T]) -> T | None:
        """The document at `key` as `read` reads it; None when absent, `StoredCaseError` when malformed."""
        data = self.read(key)
        try:
            return None if data is None else read(data, key)
        except DocumentError as error:
            raise StoredCaseError(f"{self.target}: {error}") from None



class StoredCase:
    """The image's levels with their JPEG chunks as frames (`tiling.dicom.JpegTiles`); `case_id` from its path."""

    def __init__(self, folder: CaseFolder, image: str, case_id: str) -> None:
        """`image`: the image's key prefix in the folder ("image.zarr/", or "" for convert's output)."""
        target = folder.target
        self.source = target
        self.case_id = case_id
        self._folder = folder
        self._image = image
        attributes = folder.read_document(f"{image}zarr.json", ImageAttributes.read)
        if attributes is None:
            raise StoredCaseError(f"{target}: no OME-Zarr image there (no {image}zarr.json)")
        multiscale = attributes.multiscale
        self._paths = multiscale.paths
        scale = multiscale.scale
        self.mpp: tuple[float, float] | None = (scale[1], scale[0]) if multiscale.unit == "micrometer" else None
        self._chunk_checksums = attributes.chunk_checksums  # older images: the index CRC only
        self._arrays = [self._array_metadata(path) for path in self._paths]
        base_width = self._arrays[0].shape[2]
        self.levels = [
            Level(array.shape[2], array.shape[1], base_width / array.shape[2], array.chunk[-1], array.chunk[-1]) for array in self._arrays
        ]
        self._shards: dict[tuple[int, int, int], dict[tuple[int, int], bytes] | None] = {}
        self._zarr: dict[int, Any] = {}

    def _array_metadata(self, path: str) -> LevelArray:
        array = self._folder.read_document(f"{self._image}{path}/zarr.json", LevelArray.read)
        if array is None:
            raise StoredCaseError(f"{self.source}: level {path} of the image is missing (no {path}/zarr.json)")
        if len(array.shape) != 3 or array.shape[0] != 3:
            raise StoredCaseError(f"{self.source}: level {path} is not a (c, y, x) RGB uint8 array")
        return array

    def _per_shard(self, level: int) -> int:
        """Chunks a side of one shard of `level` (1: an array that is not sharded)."""
        array = self._arrays[level]
        return array.shard[-1] // array.chunk[-1] if array.shard else 1

    # -- tiling.dicom.JpegTiles ------------------------------------------------------------------------------------
    def jpeg_tiles(self, level: int) -> bool:
        return self._arrays[level].jpeg

    def jpeg_frame(self, level: int, row: int, col: int) -> bytes | None:
        """The chunk's bytes as stored in its shard; None for a chunk or shard not written (background)."""
        n = self._per_shard(level)
        shard = self._shard(level, row // n, col // n)
        return None if shard is None else shard.get((row % n, col % n))

    def _shard(self, level: int, shard_row: int, shard_col: int) -> dict[tuple[int, int], bytes] | None:
        """One shard's chunks, every one checked (`_read_shard`). The export asks for frames row by row, so the shards
        of one row of shards are kept and earlier rows dropped."""
        key = (level, shard_row, shard_col)
        if key not in self._shards:
            self._shards = {cached: shard for cached, shard in self._shards.items() if cached[:2] == key[:2]}
            self._shards[key] = self._read_shard(level, shard_row, shard_col)
        return self._shards[key]

    def _read_shard(self, level: int, shard_row: int, shard_col: int) -> dict[tuple[int, int], bytes] | None:
        """The shard's chunks by (i, j) inside it, each within the shard and, where the image carries them, matching
        its CRC32C (`tiling.shard_format.verified_chunks`; images written before the table: the index's CRC32C only), so
        an export never embeds a frame that is not what was written."""
        name = f"{self._image}{self._paths[level]}/c/0/{shard_row}/{shard_col}"
        data = self._folder.read(name)
        if data is None:
            return None
        try:
            return verified_chunks(data, self._per_shard(level), self._chunk_checksums, name)
        except CorruptShardError as error:
            raise StoredCaseError(f"{self.source}: {error}") from None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels (height, width, 3) through zarr, `location` in level-0 pixels; beyond the edge, the fill value."""
        if level not in self._zarr:
            self._zarr[level] = zarr.open_array(self._folder.store, path=f"{self._image}{self._paths[level]}", mode="r")
        array = self._zarr[level]
        info = self.levels[level]
        x0, y0 = round(location[0] / info.downsample), round(location[1] / info.downsample)
        out = np.full((size[1], size[0], 3), array.fill_value, np.uint8)
        x1, y1 = min(x0 + size[0], info.width), min(y0 + size[1], info.height)
        if x1 > x0 and y1 > y0:
            out[: y1 - y0, : x1 - x0] = np.asarray(array[:, y0:y1, x0:x1]).transpose(1, 2, 0)
        return out


def _case_name(target: str, name: str) -> str:
    """The case ID: the case folder's name (a sent case), or a converted image's folder name without its suffix."""
    for suffix in (".ome.zarr", ".zarr"):
        name = name.removesuffix(suffix)
    try:
        return validate_name(name)
    except SlidestreamError:
        raise StoredCaseError(f"{target}: its name {name!r} is no valid case ID; name one with --case") from None
