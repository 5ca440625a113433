"""Tile pixels at the model's resolution, from a slide file or an OME-Zarr image (local or on S3, possibly partial).

A Dask task gets a small picklable reference (`SlideFileRef`, `ZarrRef`) and opens the source itself, once per process:
slides and stores hold file handles and connections, which do not travel to other workers.

An OME-Zarr image's metadata is held to `caseformat.results.check_array`'s bounds before a read is sized by it (at
most 2^20 px a side, chunk sides of at least 16 px, at most 4,194,304 chunks and 1,048,576 shards per level, uint8;
at most 32 levels): anything else is refused as "unreadable: <reason>" (an `InferenceError`).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from typing import Protocol

import numpy as np
import zarr
import zarr.storage
from PIL import Image
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync

import tiling  # noqa: F401  (registers the JPEG chunk codec with zarr)
from caseformat.bounded import utc_now
from caseformat.errors import DocumentError
from caseformat.image import ImageAttributes, Multiscale
from caseformat.layout import CORRUPT, IMAGE, SLIDES
from caseformat.results import CorruptRecord, check_array
from inference.errors import InferenceError
from objectstore.location import Location
from slides import Slide, open_slide
from tiling import TissueMask, detect_tissue
from tiling.label import TISSUE_LABEL
from tiling.plan import shard_address
from tiling.shard_format import verified_chunks
from tiling.tissue import MASK_SIDE


class Source(Protocol):
    """A pyramid of RGB levels; level k is `downsamples[k]` level-0 pixels a side per pixel."""

    name: str
    dimensions: tuple[int, int]
    mpp: float | None
    downsamples: list[float]
    # levels downsampled from another stored level (tiling's `downsampled_levels`; the hub may build them after
    # the case arrived): read from that level instead, so scoring never waits for the hub
    derived: frozenset[int]

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 of `level` in that level's pixel coordinates; beyond the edge is white."""
        ...

    def tissue(self) -> TissueMask: ...


class SlideSource:
    """A slide file, through `slides.Slide`."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        self.name = slide.path.name
        self.dimensions = slide.dimensions
        self.mpp = sum(slide.mpp) / 2 if slide.mpp else None
        self.downsamples = [level.downsample for level in slide.levels]
        self.derived: frozenset[int] = frozenset()

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        d = self.downsamples[level]
        return self.slide.read_region((round(x0 * d), round(y0 * d)), level, (x1 - x0, y1 - y0))

    def tissue(self) -> TissueMask:
        return detect_tissue(self.slide)


class ZarrSource:
    """An OME-Zarr image written by tiling/: (c, y, x) levels, scale metadata, and a `labels/tissue` mask.

    Chunks that have not arrived read as the fill value; callers that care consult the manifest first. Every shard
    of a level is read whole and verified before zarr decodes a chunk of it (`VerifiedShards`): a corrupt one
    raises `tiling.shard_format.CorruptShardError` instead of reading as garbled pixels.
    """

    def __init__(self, location: Location) -> None:
        try:
            attributes = ImageAttributes.from_attributes(zarr.open_group(location.zarr_store(), mode="r").attrs.asdict(), f"{location.url}: image")
            per_shard = attributes.shard_chunks or 0
            store = VerifiedShards(location.zarr_store(), per_shard, attributes.chunk_checksums) if per_shard > 0 else location.zarr_store()
            self.group = zarr.open_group(store, mode="r")
            paths = attributes.multiscale.paths
            self.arrays = [self.group[path] for path in paths]
            for path, array in zip(paths, self.arrays, strict=True):
                inner = array.chunks  # zarr's chunks: a sharded array's inner chunks
                check_array(f"{location.url}/{path}/zarr.json", array.shape, inner, array.shards, str(array.dtype))
        except DocumentError as error:
            raise InferenceError(str(error)) from None
        except (FileNotFoundError, KeyError, IndexError, TypeError, ValueError, zarr.errors.NodeNotFoundError) as error:
            raise InferenceError(f"{location.url}: not an OME-Zarr image ({type(error).__name__}: {error})") from None
        scales = [dataset.last_two("scale", (1.0, 1.0))[1] for dataset in attributes.multiscale.datasets]
        self.location = location
        self.name = _image_name(location.url)
        self.dimensions = (self.arrays[0].shape[2], self.arrays[0].shape[1])
        self.downsamples = [s / scales[0] for s in scales]
        self.mpp = sum(attributes.mpp) / 2 if attributes.mpp else None
        self.derived = attributes.downsampled_levels
        self._scale0 = scales[0]
        self._darkfield = attributes.darkfield

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        array = self.arrays[level]
        out = np.full((y1 - y0, x1 - x0, 3), array.metadata.fill_value, np.uint8)  # the slide's background
        cy1, cx1 = min(y1, array.shape[1]), min(x1, array.shape[2])
        if cy1 > y0 and cx1 > x0:
            out[: cy1 - y0, : cx1 - x0] = np.asarray(array[:, y0:cy1, x0:cx1]).transpose(1, 2, 0)
        return out

    def shard_side(self, level: int) -> tuple[int, int]:
        """(height, width) of one shard object of `level`, in that level's pixels."""
        shards = self.arrays[level].shards or self.arrays[level].chunks
        return shards[1], shards[2]

    def tissue(self) -> TissueMask:
        try:
            label = self.group[TISSUE_LABEL]
            datasets = Multiscale.from_attributes(label.attrs.asdict(), f"{self.location.url}: {TISSUE_LABEL}").datasets
            # the label has the image's levels: the finest that is still small is mask enough
            dataset = next((d for d in datasets if _small_enough(label, d.path)), datasets[-1])
            array = label[dataset.path]
            check_array(f"{self.location.url}: {TISSUE_LABEL}", array.shape, array.chunks, array.shards, str(array.dtype))
            mask = np.asarray(array[:]).astype(bool)
        except DocumentError as error:
            raise InferenceError(str(error)) from None
        except (KeyError, IndexError, TypeError, zarr.errors.NodeNotFoundError) as error:
            raise InferenceError(f"{self.location.url}: no tissue mask ({TISSUE_LABEL}): {error}") from None
        return TissueMask(mask, dataset.last_two("scale", (1.0, 1.0))[1] / self._scale0, darkfield=self._darkfield)


def _small_enough(label: zarr.Group, path: str) -> bool:
    """Whether a level of the tissue label can serve as the mask: small, and there (a send writes the large levels
    last, among the shards)."""
    try:
        return max(label[path].shape) <= MASK_SIDE * 2
    except (KeyError, zarr.errors.NodeNotFoundError):
        return False


@dataclass(frozen=True)
class SlideFileRef:
    """A slide file by path; `stamp` (mtime, size) keeps a per-process cache from serving a replaced file."""

    path: str
    stamp: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> SlideFileRef:
        stat = os.stat(path) if os.path.exists(path) else None
        return cls(str(path), (stat.st_mtime_ns, stat.st_size) if stat else (0, 0))

    def open(self) -> SlideSource:
        return SlideSource(open_slide(self.path))


@dataclass(frozen=True)
class ZarrRef:
    """An OME-Zarr image by location (`{case}/image.zarr`)."""

    location: Location

    def open(self) -> ZarrSource:
        return ZarrSource(self.location)


SourceRef = SlideFileRef | ZarrRef


@lru_cache(maxsize=4)
def open_source(ref: SourceRef) -> Source:
    """The source behind `ref`, opened once per process (threads share it: openslide and zarr reads are thread-safe)."""
    return ref.open()


def read_level(source: Source, downsample: float) -> int:
    """The coarsest level still at least as fine as `downsample` (1% slack for vendors' rounding of level sizes),
    skipping levels derived from a finer stored one."""
    return max(i for i, d in enumerate(source.downsamples) if (d <= downsample * 1.01 and i not in source.derived) or i == 0)


def read_tiles(source: Source, tile: float, level: int, size: int, tiles: np.ndarray) -> np.ndarray:
    """(n, size, size, 3) uint8: tile (i, j) is the level-0 box [j*tile, (j+1)*tile) x [i*tile, (i+1)*tile).

    Tiles next to each other in a row are read in one request; each is then cut and area-resampled on its own
    integer pixel window, so a tile's pixels do not depend on which tiles it was read with (incremental passes
    and a single pass give the same scores).
    """
    step = tile / source.downsamples[level]  # level pixels per tile side
    out = np.empty((len(tiles), size, size, 3), np.uint8)
    order = sorted(range(len(tiles)), key=lambda k: (tiles[k][0], tiles[k][1]))
    # a run: same row, columns consecutive (column minus position in the sorted order stays constant)
    for _, run in groupby(enumerate(order), key=lambda pk: (tiles[pk[1]][0], tiles[pk[1]][1] - pk[0])):
        members = [k for _, k in run]
        i, j0, j1 = int(tiles[members[0]][0]), int(tiles[members[0]][1]), int(tiles[members[-1]][1])
        y0, y1 = i * step, (i + 1) * step
        iy0, ix0 = math.floor(y0), math.floor(j0 * step)
        canvas = source.read(level, ix0, iy0, math.ceil((j1 + 1) * step), math.ceil(y1))
        for k in members:
            x0, x1 = tiles[k][1] * step, (tiles[k][1] + 1) * step
            cx0 = math.floor(x0)
            crop = canvas[:, cx0 - ix0 : math.ceil(x1) - ix0]
            box = (x0 - cx0, y0 - iy0, x1 - cx0, y1 - iy0)
            if crop.shape[:2] == (size, size) and box == (0, 0, size, size):
                out[k] = crop
            else:
                out[k] = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX, box=box))
    return out


def _image_name(url: str) -> str:
    """What results call an image: {case}/{slide}/{version} in the case layout, else its folder's name."""
    parts = url.rstrip("/").split("/")
    if parts[-1] != IMAGE:
        return parts[-1]
    if len(parts) >= 5 and parts[-4] == SLIDES:
        return "/".join((parts[-5], parts[-3], parts[-2]))
    return parts[-2]


def corrupt_keys(case: Location, started_at: str | None) -> set[str]:
    """The image objects the slide version's corrupt.json lists for the send that started at `started_at`."""
    record = _corrupt_record(case)
    return set(record.keys) if record is not None and record.started_at == started_at else set()


def update_corrupt(case: Location, started_at: str | None, found: set[str], whole: set[str]) -> None:
    """Add the image objects `found` corrupt to the slide version's corrupt.json (`caseformat.results.CorruptRecord`:
    the page shows them, the station is asked to send them again) and take off those read `whole` since; written
    only when that changes the list."""
    record = _corrupt_record(case)
    listed = set(record.keys) if record is not None and record.started_at == started_at else set()
    keys = (listed - whole) | found
    if keys != listed:
        case.write_bytes(CORRUPT, CorruptRecord(started_at, tuple(sorted(keys)), utc_now()).to_json())


def _corrupt_record(case: Location) -> CorruptRecord | None:
    data = case.read_bytes(CORRUPT)
    try:
        return None if data is None else CorruptRecord.read(data, CORRUPT)
    except DocumentError:
        return None  # malformed: replaced by what is known now


class VerifiedShards(zarr.storage.WrapperStore[Store]):
    """A read-only zarr store over an image whose level shards (`tiling.shard_format`'s layout, n x n chunks) are each
    read whole, verified (index CRC32C, and each chunk's where the image has them) and kept for a few reads, so
    zarr's reads of the index and of single chunks come from bytes known to be what was written."""

    KEEP = 16  # shards kept (1-2 MB each): a row of tiles spans a few, and each thread of a pass reads its own

    def __init__(self, store: Store, shard_chunks: int, checksums: bool) -> None:
        super().__init__(store)
        self.shard_chunks, self.checksums = shard_chunks, checksums
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if shard_address(key) is None:
            return await self._store.get(key, prototype, byte_range)
        data = await self.shard(key, prototype)
        if data is None:
            return None
        match byte_range:
            case None:
                part = data
            case RangeByteRequest(start=start, end=end):
                part = data[start:end]
            case OffsetByteRequest(offset=offset):
                part = data[offset:]
            case SuffixByteRequest(suffix=suffix):
                part = data[-suffix:]
        return prototype.buffer.from_bytes(part)

    async def shard(self, key: str, prototype: BufferPrototype) -> bytes | None:
        """The whole shard at `key` once verified (None: not on the store); `CorruptShardError` when it fails."""
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        buffer = await self._store.get(key, prototype)
        if buffer is None:
            return None
        data = buffer.to_bytes()
        verified_chunks(data, self.shard_chunks, self.checksums, key)
        with self._lock:
            self._kept[key] = data
            while len(self._kept) > self.KEEP:
                self._kept.popitem(last=False)
        return data

    def verify(self, key: str) -> bool:
        """Whether the shard at `key` is on the store and whole (`CorruptShardError` when it is not whole)."""
        return sync(self.shard(key, default_buffer_prototype())) is not None
