"""One case's slide as the viewer needs it: pyramid geometry, arrival state, and where each chunk's bytes are.

The image is an OME-Zarr (NGFF 0.5, Zarr v3) whose arrays are sharded; with JPEG chunks every chunk is one
self-contained JPEG file, so a tile is served by two ranged reads (the shard index, cached, then the chunk) and no
decoding. Both are verified first: the index by its CRC32C, the chunk by the CRC32C the shard holds for it beside the
index (`caseformat.image.CHUNK_CHECKSUMS`; images written before it have none); a piece that fails is refused as
"corrupt on the store: KEY" (`CorruptPieceError`, a 502 the browser never caches). The send manifest says which shards have arrived: a missing chunk is otherwise indistinguishable from
background (zarr reads both as the fill value).

The image's metadata is a station's, so untrusted: before anything is sized by it (the shard states of `Arrival`
hold one byte per shard), every level is held to `caseformat.results.check_array`'s bounds: at most 2^20 px a
side, chunk sides of at least 16 px, at most 4,194,304 chunks and 1,048,576 shards per level, uint8; at most 32
levels. Anything else is refused as "unreadable: <reason>" (an `ImageError`), in the time of reading its zarr.json.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from PIL import Image
from zarr.codecs import Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.array import AsyncArray

import tiling.codec  # noqa: F401  (registers the chunk codec also where slidestream is not installed)
from caseformat.errors import DocumentError
from caseformat.image import CODEC_NAME, ImageAttributes
from caseformat.layout import IMAGE, image_key, member
from caseformat.results import COMPLETE, Manifest, check_array
from objectstore import Storage
from slides import SlidestreamError
from tiling.plan import shard_address
from tiling.shard_format import CorruptShardError, read_shard_tail, shard_tail_size

JPEG_SOI = b"\xff\xd8"
BACKGROUND, PENDING, ARRIVED = "0", "1", "2"  # shard states, one character each in `Arrival.states`


class CaseNotFoundError(SlidestreamError, LookupError):
    """The case has no image (yet)."""


class TileNotFoundError(SlidestreamError, LookupError):
    """A level or chunk outside the image."""


class ImageError(SlidestreamError, ValueError):
    """The store holds something the viewer cannot read as a slide (wrong layout, corrupt shard index)."""


class CorruptPieceError(ImageError):
    """A stored object fails its checksums ("corrupt on the store: KEY (what failed)"): refused, never served."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"corrupt on the store: {key} ({detail})")
        self.key = key


@dataclass(frozen=True)
class LevelGrid:
    """One pyramid level's chunks and shards as the viewer addresses them (`slides.Level` is a slide's own level);
    level 0 is full resolution, each next level half the size."""

    index: int
    width: int
    height: int
    chunk: int
    shard_chunks: int

    @property
    def columns(self) -> int:
        return -(-self.width // self.chunk)

    @property
    def rows(self) -> int:
        return -(-self.height // self.chunk)

    @property
    def shard_columns(self) -> int:
        return -(-self.columns // self.shard_chunks)

    @property
    def shard_rows(self) -> int:
        return -(-self.rows // self.shard_chunks)

    def shard_key(self, shard_row: int, shard_col: int) -> str:
        return f"{self.index}/c/0/{shard_row}/{shard_col}"


@dataclass(frozen=True)
class SlideImage:
    """Geometry and encoding of a case's image; immutable once its metadata has arrived."""

    case: str
    levels: tuple[LevelGrid, ...]
    scale: tuple[float, float]  # (y, x) size of a level-0 pixel in `unit` (1.0 when unknown)
    unit: str | None  # "micrometer" when the scanner recorded its resolution
    jpeg_chunks: bool  # chunks are self-contained JPEG files: served as they are
    fill_value: int  # what absent (background) chunks read as: 255 bright-field glass, 0 dark-field
    chunk_checksums: bool  # each shard holds its chunks' CRC32Cs (`caseformat.image.CHUNK_CHECKSUMS`)
    arrays: tuple[AsyncArray[Any], ...] = field(compare=False, repr=False)

    @property
    def mpp(self) -> float | None:
        return self.scale[1] if self.unit == "micrometer" else None

    def level(self, index: int) -> LevelGrid:
        if not 0 <= index < len(self.levels):
            raise TileNotFoundError(f"no level {index} (the image has {len(self.levels)})")
        return self.levels[index]

    def shard_object(self, level: LevelGrid, shard_row: int, shard_col: int) -> str:
        return member(self.case, IMAGE, level.shard_key(shard_row, shard_col))

    def describe(self) -> dict[str, Any]:
        """What the browser needs, and nothing else (no source file name, no scanner properties)."""
        level0 = self.levels[0]
        return {
            "width": level0.width,
            "height": level0.height,
            "tile_size": level0.chunk,
            "shard_chunks": level0.shard_chunks,
            "levels": [
                {"width": level.width, "height": level.height, "shards_x": level.shard_columns, "shards_y": level.shard_rows}
                for level in self.levels
            ],
            "mpp": self.mpp,
            "format": "jpeg" if self.jpeg_chunks else "png",
            "fill_value": self.fill_value,
        }


async def open_image(store: zarr.abc.store.Store, case: str) -> SlideImage:
    """Read the image group and its level arrays through zarr; `CaseNotFoundError` before the metadata arrives."""
    try:
        group = await zarr.api.asynchronous.open_group(store=store, path=member(case, IMAGE), mode="r", zarr_format=3)
        attributes = ImageAttributes.from_attributes(group.attrs, f"case {case}: image")
        arrays = [await group.getitem(path) for path in attributes.multiscale.paths]
    except FileNotFoundError:
        raise CaseNotFoundError(f"case {case}: no image yet") from None
    except (KeyError, IndexError, TypeError, ValueError) as error:  # DocumentError, and zarr's refusals of metadata
        raise ImageError(str(error) if isinstance(error, DocumentError) else f"case {case}: not an OME-Zarr multiscale image ({error})") from None
    levels, jpeg = [], True
    for index, array in enumerate(arrays):
        if not isinstance(array, AsyncArray) or array.ndim != 3 or array.shape[0] != 3 or array.dtype != np.uint8:
            raise ImageError(f"case {case}: level {index} is not a (3, y, x) uint8 array")
        codec = array.metadata.codecs[0] if len(array.metadata.codecs) == 1 else None
        if not isinstance(codec, ShardingCodec) or codec.index_location != ShardingCodecIndexLocation.end:
            raise ImageError(f"case {case}: level {index} is not sharded with the index at the end")
        chunk, shard = codec.chunk_shape, array.shards
        try:
            check_array(f"case {case}: level {index}", array.shape, chunk, shard, str(array.dtype))
        except DocumentError as error:
            raise ImageError(str(error)) from None
        if chunk[0] != 3 or chunk[1] != chunk[2] or shard is None or shard[1] != shard[2] or shard[1] % chunk[1]:
            raise ImageError(f"case {case}: level {index} has chunks {chunk} in shards {shard}")
        if not any(isinstance(c, Crc32cCodec) for c in codec.index_codecs):
            raise ImageError(f"case {case}: level {index} shard index has no CRC32C")
        # by name, not class: imagecodecs' own implementation of the codec may be the one zarr picked
        names = [c.to_dict()["name"] for c in codec.codecs]
        jpeg = jpeg and names == ["transpose", CODEC_NAME] and tuple(codec.codecs[0].order) == (1, 2, 0)
        levels.append(LevelGrid(index, array.shape[2], array.shape[1], chunk[1], shard[1] // chunk[1]))
    multiscale = attributes.multiscale
    unit = multiscale.unit if multiscale.datasets[0].scale else None
    return SlideImage(case, tuple(levels), multiscale.scale, unit, jpeg, int(arrays[0].metadata.fill_value), attributes.chunk_checksums,
                      tuple(arrays))  # fmt: skip


# -- arrival ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrival:
    """Which shards of `image` have arrived: `states[level]` holds BACKGROUND / PENDING / ARRIVED per shard, row-major.

    Holding the image it was computed for keeps geometry and states consistent while a case is being re-sent.
    """

    image: SlideImage = field(compare=False, repr=False)
    manifest: bool  # False: no manifest (a local conversion): every shard present counts as arrived
    complete: bool
    started_at: str | None
    updated_at: str | None
    states: tuple[str, ...]

    def state(self, level: LevelGrid, shard_row: int, shard_col: int) -> str:
        return self.states[level.index][shard_row * level.shard_columns + shard_col]

    def counts(self) -> list[dict[str, int]]:
        """Planned and arrived shards per level (background is not planned)."""
        return [{"planned": len(s) - s.count(BACKGROUND), "arrived": s.count(ARRIVED)} for s in self.states]


def without_manifest(image: SlideImage) -> Arrival:
    return Arrival(image, False, True, None, None, tuple(ARRIVED * (level.shard_rows * level.shard_columns) for level in image.levels))


def parse_manifest(read: Manifest, image: SlideImage) -> Arrival:
    """The send's manifest as shard states."""
    planned, arrived = read.planned, set(read.arrived)
    # until the plan is final (the tissue is known) a shard not planned may still come: pending, not glass
    unplanned = BACKGROUND if read.plan_final else PENDING
    grids = [bytearray(unplanned * (level.shard_rows * level.shard_columns), "ascii") for level in image.levels]
    for key in planned:
        address = shard_address(str(key).rpartition(image_key(""))[2])
        if address is None:
            continue
        index, row, col = address
        if index >= len(image.levels) or row >= image.levels[index].shard_rows or col >= image.levels[index].shard_columns:
            continue
        grids[index][row * image.levels[index].shard_columns + col] = ord(ARRIVED if key in arrived else PENDING)
    states = tuple(grid.decode() for grid in grids)
    return Arrival(image, True, read.state == COMPLETE, read.started_at, read.updated_at, states)


# -- shards ----------------------------------------------------------------------------------------------------
def tail_size(image: SlideImage, level: LevelGrid) -> int:
    """Bytes at the end of a shard: its chunks' CRC32Cs (where the image has them), its chunk index and the index's
    CRC32C (`tiling.shard_format`'s layout)."""
    return shard_tail_size(level.shard_chunks, image.chunk_checksums)


def parse_shard_tail(data: bytes, image: SlideImage, level: LevelGrid, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The (n, n, 2) offset/nbytes table of a shard, after checking its CRC32C, and its chunks' (n, n) CRC32Cs
    (None for an image written without them); `CorruptPieceError` for a tail that fails its check."""
    try:
        return read_shard_tail(data, level.shard_chunks, image.chunk_checksums, key)
    except CorruptShardError as error:
        raise CorruptPieceError(key, error.detail) from None


async def station_jpeg(storage: Storage, key: str, what: str, most_bytes: int, most_side: int) -> bytes:
    """A JPEG a station wrote (its macro image, a gross photograph), read at most `most_bytes` and decoded and encoded
    again here, so nothing of the station's file but its pixels reaches a browser; `ImageError` for anything else
    (`what` names what it should have been), `ObjectNotFoundError` where there is none."""
    data = await storage.get_range(key, 0, most_bytes + 1)
    if len(data) > most_bytes or not data.startswith(JPEG_SOI):
        raise ImageError(f"{key}: not {what} (a JPEG of at most {most_bytes // 2**20} MB)")
    return await asyncio.to_thread(_pixels_only, data, key, what, most_side)


def _pixels_only(data: bytes, key: str, what: str, most_side: int) -> bytes:
    """The JPEG's pixels as a fresh JPEG (its size checked before it is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            pixels = np.asarray(picture.convert("RGB")) if picture.format == "JPEG" and max(picture.size) <= most_side else None
    except (OSError, ValueError, Image.DecompressionBombError):
        pixels = None
    if pixels is None:
        raise ImageError(f"{key}: not {what} (a JPEG of at most {most_side} px a side)")
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)  # a new image: nothing of the file's segments comes along
    return out.getvalue()
