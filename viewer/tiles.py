"""The slide images of one store as the viewer serves them: arrival, tiles and thumbnails, with the caches that make
fifty viewers cheap, and the corrupt shards it meets on the way.

Caches hold only what cannot go stale (image metadata and shard indexes of one send, a JPEG chunk under its ETag) or
expire within a second (the manifest), so the server stays stateless: any number of processes may serve the same
store, and a restart loses nothing. A new send of a slide version (a rescan) has a new `started_at` in its manifest,
which is part of every cache key that depends on the image.

A chunk is served only once it matches its CRC32C; one that does not is refused, and its shard is added to the slide's
corrupt.json, which the page shows and which asks the station to send it again.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from caseformat.bounded import utc_now
from caseformat.errors import DocumentError
from caseformat.layout import CORRUPT, MANIFEST, PYRAMID, SlideRef, version_key
from caseformat.results import CorruptRecord, Manifest, PyramidRecord
from objectstore import ObjectNotFoundError, Storage, StorageError, ZarrView
from tiling.shard_format import EMPTY, CorruptShardError, check_chunk
from viewer.cache import LIVE_TTL, SIDECAR_TTL, AsyncCache
from viewer.image import (
    ARRIVED,
    BACKGROUND,
    JPEG_SOI,
    PENDING,
    Arrival,
    CorruptPieceError,
    ImageError,
    LevelGrid,
    SlideImage,
    TileNotFoundError,
    open_image,
    parse_manifest,
    parse_shard_tail,
    tail_size,
    without_manifest,
)
from viewer.summary import readable

TILE_CACHE_BYTES = 256 * 2**20  # JPEG tiles kept in memory (`serve --tile-cache-mb`): 8,000 to 10,000 level-0 tiles
D = TypeVar("D")  # a document type of caseformat
THUMBNAIL = 192  # pixels, the longer side of a slide's picture in the case's slide strip
THUMBNAIL_SOURCE_LIMIT = 16_000_000  # pixels of the coarsest level read for it (a pyramid's is far smaller)
CORRUPT_WRITES = 4  # reads of corrupt.json, each followed by a write while it lacks the shard (a race lost costs one more)


@dataclass(frozen=True)
class ShardIndex:
    table: np.ndarray  # (n, n, 2) offset, nbytes
    crc: int
    checksums: np.ndarray | None  # (n, n) the chunks' CRC32Cs; None in images written without them


@dataclass(frozen=True)
class Chunk:
    """Where one arrived chunk's bytes are; `etag` is known before they are read (answers 304s cheaply)."""

    image: SlideImage
    level: LevelGrid
    row: int
    col: int
    key: str
    offset: int
    nbytes: int
    etag: str
    crc: int | None  # what the chunk's bytes must hash to (CRC32C); None: the image has no chunk checksums
    root: str  # the slide version, and the send the chunk is of: where a corrupt chunk is reported
    started_at: str | None


class Tiles:
    """The images of every slide version of one store, their arrival and their tiles (module doc)."""

    def __init__(self, storage: Storage, tile_cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self.storage = storage
        self._zarr = ZarrView(storage)
        self._images: AsyncCache[tuple[str, str | None], SlideImage] = AsyncCache(256)
        self._manifests: AsyncCache[str, Manifest | None] = AsyncCache(1024, LIVE_TTL)
        self._arrivals: AsyncCache[str, Arrival] = AsyncCache(256, LIVE_TTL)
        self._indexes: AsyncCache[tuple[str, str | None], ShardIndex] = AsyncCache(16384)  # ~1 KB each: 16 MB at most
        self._thumbnails: AsyncCache[tuple[str, str | None], bytes] = AsyncCache(256)
        self._corrupt: AsyncCache[str, CorruptRecord | None] = AsyncCache(1024, SIDECAR_TTL)
        self._reported: set[tuple[str, str | None, str]] = set()  # (root, send, key) this process recorded corrupt
        # a JPEG chunk's bytes, by shard and ETag (which changes with the bytes): immutable, so kept until evicted
        self._jpegs: AsyncCache[tuple[str, str], bytes] | None = AsyncCache(tile_cache_bytes) if tile_cache_bytes else None

    # -- image and arrival -----------------------------------------------------------------------------------
    async def image(self, root: str) -> SlideImage:
        """The image of the slide version's current send (the metadata is re-read only when a new send starts)."""
        return (await self.arrival(root)).image

    async def arrival(self, root: str) -> Arrival:
        """Arrival state and the image it belongs to, from one reading of the manifest."""

        async def load() -> Arrival:
            try:
                manifest = await self.manifest(root)
                if manifest is not None:
                    manifest.check_not_failed(f"case {root}")
                send = manifest.started_at if manifest else None
                image = await self._images.get((root, send), lambda: open_image(self._zarr, root))
                if manifest is None:
                    return without_manifest(image)
                if manifest.hub_planned is not None:  # levels the hub builds: what it built is in its own record
                    manifest = manifest.with_hub_pyramid(await self._document(SlideRef.parse(root).centre_key(PYRAMID), PyramidRecord.read))
            except DocumentError as error:
                raise ImageError(str(error)) from None
            return parse_manifest(manifest, image)

        return await self._arrivals.get(root, load)

    async def manifest(self, root: str) -> Manifest | None:
        """The send's manifest (`DocumentError` for a malformed one), None while there is none."""
        return await self._manifests.get(root, lambda: self._document(version_key(SlideRef.parse(root), MANIFEST), Manifest.read))

    # -- tiles -----------------------------------------------------------------------------------------------
    async def locate(self, root: str, level_index: int, row: int, col: int) -> Chunk | str:
        """The arrived chunk at (row, col) of a level, or PENDING / BACKGROUND; `TileNotFoundError` off the image."""
        arrival = await self.arrival(root)
        image = arrival.image
        level = image.level(level_index)
        if not (0 <= row < level.rows and 0 <= col < level.columns):
            raise TileNotFoundError(f"no tile ({row}, {col}) in level {level_index} ({level.rows} x {level.columns} tiles)")
        n = level.shard_chunks
        state = arrival.state(level, row // n, col // n)
        if state != ARRIVED:
            return state
        key = image.shard_object(level, row // n, col // n)
        try:
            index = await self._indexes.get((key, arrival.started_at), lambda: self._read_index(key, image, level))
        except ObjectNotFoundError:
            # listed as arrived but gone (a re-send in progress), or no manifest and never written
            return PENDING if arrival.manifest else BACKGROUND
        except CorruptPieceError:
            await self._report_corrupt(root, arrival.started_at, level.shard_key(row // n, col // n))
            raise
        offset, nbytes = (int(v) for v in index.table[row % n, col % n])
        if offset == EMPTY:
            return BACKGROUND
        crc = None if index.checksums is None else int(index.checksums[row % n, col % n])
        etag = f'"{level_index}.{row}.{col}-{index.crc:08x}-{offset:x}-{nbytes:x}"'
        return Chunk(image, level, row, col, key, offset, nbytes, etag, crc, root, arrival.started_at)

    async def chunk_bytes(self, chunk: Chunk) -> tuple[bytes, str]:
        """(bytes, media type): a JPEG chunk exactly as stored, or a PNG made from a decoded lossless chunk; each
        checked against its CRC32C first (`CorruptPieceError`, recorded in the slide's corrupt.json)."""
        if chunk.image.jpeg_chunks:
            if self._jpegs is None:
                return await self._jpeg(chunk), "image/jpeg"
            return await self._jpegs.get((chunk.key, chunk.etag), lambda: self._jpeg(chunk), weight=chunk.nbytes), "image/jpeg"
        if chunk.crc is not None:  # zarr does not know the checksums: the chunk is read once more, to be verified
            await self._verified(chunk, await self.storage.get_range(chunk.key, chunk.offset, chunk.nbytes))
        size = chunk.level.chunk
        y0, x0 = chunk.row * size, chunk.col * size
        array = chunk.image.arrays[chunk.level.index]
        pixels = await array.getitem((slice(None), slice(y0, y0 + size), slice(x0, x0 + size)))
        return await asyncio.to_thread(_png, np.moveaxis(np.asarray(pixels), 0, -1)), "image/png"

    async def _jpeg(self, chunk: Chunk) -> bytes:
        data = await self._verified(chunk, await self.storage.get_range(chunk.key, chunk.offset, chunk.nbytes))
        if len(data) != chunk.nbytes or not data.startswith(JPEG_SOI):
            raise ImageError(f"{chunk.key}: chunk ({chunk.row}, {chunk.col}) is not a JPEG file")
        return data

    async def _verified(self, chunk: Chunk, data: bytes) -> bytes:
        """`data` once it matches the chunk's CRC32C; else the shard is recorded corrupt and `CorruptPieceError`."""
        n = chunk.level.shard_chunks
        try:
            return check_chunk(data, chunk.crc, chunk.key, chunk.row % n, chunk.col % n)
        except CorruptShardError as error:
            await self._report_corrupt(chunk.root, chunk.started_at, chunk.level.shard_key(chunk.row // n, chunk.col // n))
            raise CorruptPieceError(chunk.key, error.detail) from None

    async def thumbnail(self, root: str) -> bytes:
        """A small JPEG of the slide version's coarsest level, for the case's slide strip (one per send);
        `TileNotFoundError` until that level has arrived."""
        arrival = await self.arrival(root)
        level = arrival.image.levels[-1]
        if PENDING in arrival.states[level.index]:
            raise TileNotFoundError(f"slide {root}: its overview has not arrived yet")
        if level.width * level.height > THUMBNAIL_SOURCE_LIMIT:
            raise ImageError(f"slide {root}: coarsest level {level.width} x {level.height} is too large for a thumbnail")

        async def load() -> bytes:
            pixels = await arrival.image.arrays[level.index].getitem(...)
            return await asyncio.to_thread(_jpeg_thumbnail, np.moveaxis(np.asarray(pixels), 0, -1))

        return await self._thumbnails.get((root, arrival.started_at), load)

    async def _read_index(self, key: str, image: SlideImage, level: LevelGrid) -> ShardIndex:
        data = await self.storage.get_suffix(key, tail_size(image, level))
        table, checksums = parse_shard_tail(data, image, level, key)
        return ShardIndex(table, int.from_bytes(data[-4:], "little"), checksums)

    # -- corruption ------------------------------------------------------------------------------------------
    async def corrupt(self, root: str, started_at: str | None) -> list[str]:
        """The image's objects recorded corrupt in this send (corrupt.json), image-relative ("0/c/0/3/5")."""
        record = await readable(self._corrupt.get(root, lambda: self._read_corrupt(root)))
        return list(record.keys) if isinstance(record, CorruptRecord) and record.started_at == started_at else []

    async def _read_corrupt(self, root: str) -> CorruptRecord | None:
        key = SlideRef.parse(root).centre_key(CORRUPT)
        try:
            return CorruptRecord.read(await self.storage.get(key), key)
        except ObjectNotFoundError:
            return None

    async def _report_corrupt(self, root: str, started_at: str | None, shard: str) -> None:
        """Add `shard` to the slide's corrupt.json: the page shows it, and it asks the station to send it again.
        Once per process and shard; a failure to write costs only the record (the tile is refused regardless)."""
        if (root, started_at, shard) in self._reported:
            return
        key = SlideRef.parse(root).centre_key(CORRUPT)
        for _ in range(CORRUPT_WRITES):  # read back: another writer's record landing in between must not drop ours
            try:
                current = await self._read_corrupt(root)
            except DocumentError:
                current = None  # malformed: replaced by a record of what is known now
            if current is not None and current.started_at == started_at and shard in current.keys:
                self._reported.add((root, started_at, shard))
                break
            try:
                record = (current or CorruptRecord(started_at)).with_key(shard, started_at, utc_now())
                await self.storage.put(key, record.to_json())
            except StorageError:
                break
        self._corrupt.forget(root)

    async def _document(self, key: str, read: Callable[[bytes, str], D]) -> D | None:
        """The document at `key` as its type's reader parses it (`DocumentError` for a malformed one); None when there
        is none."""
        try:
            data = await self.storage.get(key)
        except ObjectNotFoundError:
            return None
        return read(data, key)


def _jpeg_thumbnail(pixels: np.ndarray) -> bytes:
    picture = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()

