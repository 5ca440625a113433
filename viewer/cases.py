"""Everything the viewer reads and writes per case, with the caching that makes fifty viewers cheap.

Caches hold only what cannot go stale (image metadata and shard indexes of one send, a heatmap under its version)
or expire within seconds (manifest, triage, report), so the server stays stateless: any number of processes may
serve the same store, and a restart loses nothing. A new send of a case (a rescan) has a new `started_at` in its
manifest, which is part of every cache key that depends on the image.

Every document is untrusted input (`caseformat.bounded`): one that is malformed costs only its own case or slide,
shown as "unreadable: reason" on the worklist and the case, never the whole list.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from caseformat.bounded import parse_time
from caseformat.documents import UNSENT_KINDS, CaseRecord, Report, UnsentSlide
from caseformat.errors import DocumentError
from caseformat.layout import (
    CASE_RECORD,
    CORRUPT,
    EDGE,
    HEATMAP,
    IMAGE,
    MANIFEST,
    PYRAMID,
    SLIDE_PATTERN,
    STATION_PATTERN,
    STATION_TREES,
    TRIAGE,
    VERSION_PATTERN,
    SlideRef,
    case_key,
    is_case,
    macro_key,
    scan_qc_key,
    slides_key,
    station_folder,
    station_of,
    unsent_folder,
    version_key,
    version_number,
)
from caseformat.results import COMPLETE, SCAN_QC_LIMIT, CorruptRecord, Manifest, PyramidRecord, ScanQc, Triage
from caseformat.signing import TrustedKeys
from objectstore import InvalidKeyError, LocalStorage, ObjectInfo, ObjectNotFoundError, Storage, StorageError, ZarrView
from slides.errors import printable
from tiling.pyramid import CorruptShardError, check_chunk
from viewer.cache import AsyncCache
from viewer.heatmap import Heatmap, open_heatmap, render_tile, version_of
from viewer.image import (
    ARRIVED,
    BACKGROUND,
    EMPTY,
    JPEG_SOI,
    PENDING,
    Arrival,
    CaseFailedError,
    CaseNotFoundError,
    CorruptPieceError,
    ImageError,
    Level,
    SlideImage,
    TileNotFoundError,
    check_not_failed,
    open_image,
    parse_manifest,
    parse_shard_tail,
    station_jpeg,
    tail_size,
    without_manifest,
)
from viewer.reports import Versions, numbered

TILE_CACHE_BYTES = 256 * 2**20  # JPEG tiles kept in memory (`serve --tile-cache-mb`): 8,000 to 10,000 level-0 tiles
TURNAROUND = timedelta(minutes=30)  # the intraoperative rule the clock is held to (common.js: amber 20, red 30)
LIVE_TTL = 1.0  # seconds a manifest may be stale: how quickly a page sees new arrivals
SIDECAR_TTL = 2.0  # triage, reports, heatmap version
UNREADABLE = "unreadable"  # the state of a slide or case whose document is malformed
UNROUTED = "no validated AI: this result was not held to a model's intended use"  # a triage without `routed`
T = TypeVar("T")
D = TypeVar("D")  # a document type of caseformat
THUMBNAIL = 192  # pixels, the longer side of a slide's picture in the case's slide strip
UNSENT_LIMIT = 200  # unsent-slide records read of one case (a specimen has a few slides; a hostile station no more)
THUMBNAIL_SOURCE_LIMIT = 16_000_000  # pixels of the coarsest level read for it (a pyramid's is far smaller)
CORRUPT_WRITES = 4  # reads of corrupt.json, each followed by a write while it lacks the shard (a race lost costs one more)
MACRO_BYTES, MACRO_SIDE = 4 * 2**20, 4096  # a station's macro.jpg read at most (a real one is ~100 KB), its side at most


@dataclass(frozen=True)
class ShardIndex:
    table: np.ndarray  # (n, n, 2) offset, nbytes
    crc: int
    checksums: np.ndarray | None  # (n, n) the chunks' CRC32Cs; None in images written without them


@dataclass(frozen=True)
class Chunk:
    """Where one arrived chunk's bytes are; `etag` is known before they are read (answers 304s cheaply)."""

    image: SlideImage
    level: Level
    row: int
    col: int
    key: str
    offset: int
    nbytes: int
    etag: str
    crc: int | None  # what the chunk's bytes must hash to (CRC32C); None: the image has no chunk checksums
    root: str  # the slide version, and the send the chunk is of: where a corrupt chunk is reported
    started_at: str | None


class Cases:
    """Read access to every case of one store, plus the report each case gets."""

    def __init__(self, storage: Storage, trusted: TrustedKeys, tile_cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self.storage = storage
        self.trusted = trusted
        self._zarr = ZarrView(storage)
        self._images: AsyncCache[tuple[str, str | None], SlideImage] = AsyncCache(256)
        self._manifests: AsyncCache[str, Manifest | None] = AsyncCache(1024, LIVE_TTL)
        self._arrivals: AsyncCache[str, Arrival] = AsyncCache(256, LIVE_TTL)
        self._indexes: AsyncCache[tuple[str, str | None], ShardIndex] = AsyncCache(16384)  # ~1 KB each: 16 MB at most
        self._sidecars: AsyncCache[str, Triage | None] = AsyncCache(1024, SIDECAR_TTL)
        self._heatmap_versions: AsyncCache[str, tuple[str, str] | None] = AsyncCache(256, SIDECAR_TTL)
        self._heatmaps: AsyncCache[tuple[str, str], Heatmap | None] = AsyncCache(8)
        self._slides: AsyncCache[str, list[SlideRef]] = AsyncCache(1024, LIVE_TTL)
        self._unsent: AsyncCache[str, list[UnsentSlide | str]] = AsyncCache(1024, LIVE_TTL)
        self._registrations: AsyncCache[str, CaseRecord | None] = AsyncCache(1024, SIDECAR_TTL)
        self._reports: AsyncCache[str, Versions[Report]] = AsyncCache(1024, SIDECAR_TTL)
        self._thumbnails: AsyncCache[tuple[str, str | None], bytes] = AsyncCache(256)
        self._corrupt: AsyncCache[str, CorruptRecord | None] = AsyncCache(1024, SIDECAR_TTL)
        self._reported: set[tuple[str, str | None, str]] = set()  # (root, send, key) this process recorded corrupt
        # a JPEG chunk's bytes, by shard and ETag (which changes with the bytes): immutable, so kept until evicted
        self._tiles: AsyncCache[tuple[str, str], bytes] | None = AsyncCache(tile_cache_bytes) if tile_cache_bytes else None

    # -- image and arrival -----------------------------------------------------------------------------------
    async def image(self, root: str) -> SlideImage:
        """The image of the slide version's current send (the metadata is re-read only when a new send starts)."""
        return (await self.arrival(root)).image

    async def arrival(self, root: str) -> Arrival:
        """Arrival state and the image it belongs to, from one reading of the manifest."""

        async def load() -> Arrival:
            try:
                manifest = await self.manifest(root)
                check_not_failed(root, manifest)
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
            if self._tiles is None:
                return await self._jpeg(chunk), "image/jpeg"
            return await self._tiles.get((chunk.key, chunk.etag), lambda: self._jpeg(chunk), weight=chunk.nbytes), "image/jpeg"
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

    async def _read_index(self, key: str, image: SlideImage, level: Level) -> ShardIndex:
        data = await self.storage.get_suffix(key, tail_size(image, level))
        table, checksums = parse_shard_tail(data, image, level, key)
        return ShardIndex(table, int.from_bytes(data[-4:], "little"), checksums)

    # -- corruption ------------------------------------------------------------------------------------------
    async def corrupt(self, root: str, started_at: str | None) -> list[str]:
        """The image's objects recorded corrupt in this send (corrupt.json), image-relative ("0/c/0/3/5")."""
        record = await _readable(self._corrupt.get(root, lambda: self._read_corrupt(root)))
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

    # -- heatmap ---------------------------------------------------------------------------------------------
    async def heatmap(self, root: str) -> Heatmap | None:
        """The map of the triage shown (`triage`: the centre's, or the station's edge map), only where that triage's
        score may be shown (`Triage.valid_score`): None until then, and for a slide no validated model covers or a
        result that was not routed (an edge map made by a model outside its use is never drawn)."""
        triage = await _readable(self.triage(root))
        if not isinstance(triage, Triage) or triage.valid_score is None:
            return None
        ref = SlideRef.parse(root)
        folder = ref.key(HEATMAP) if triage.stage == EDGE else ref.centre_key(HEATMAP)
        found = await self._heatmap_versions.get(folder, lambda: self._heatmap_version(folder))
        if found is None:
            return None
        folder, version = found
        image = await self.image(root)

        async def load() -> Heatmap | None:
            try:
                return await open_heatmap(self._zarr, image, folder, version)
            except FileNotFoundError:  # objects listed, metadata not yet written
                return None

        return await self._heatmaps.get((root, version), load)

    async def heatmap_tile(self, root: str, level_index: int, row: int, col: int) -> tuple[bytes, str] | None:
        heatmap = await self.heatmap(root)
        if heatmap is None:
            return None
        image = await self.image(root)
        level = image.level(level_index)
        if not (0 <= row < level.rows and 0 <= col < level.columns):
            raise TileNotFoundError(f"no tile ({row}, {col}) in level {level_index}")
        return await asyncio.to_thread(render_tile, heatmap, image, level, row, col), heatmap.version

    async def _heatmap_version(self, folder: str) -> tuple[str, str] | None:
        """(folder, version) of the map in `folder`; None while it holds none."""
        try:
            objects = await self.storage.list(folder)
        except ObjectNotFoundError:
            return None
        return (folder, version_of(objects)) if objects else None

    # -- what a page polls, and the worklist -----------------------------------------------------------------
    async def status(self, root: str) -> dict[str, Any]:
        """Arrival per level, triage, heatmap version and report time: everything on a page that changes.

        A send that was given up has no image: its status says "failed" and why, with no levels."""
        try:
            arrival = await self.arrival(root)
        except CaseFailedError as failed:
            manifest = await self.manifest(root)  # read once already: the failed state came from it
            return {"manifest": True, "state": "failed", "failed": failed.reason, "complete": False,
                    "started_at": manifest and manifest.started_at, "updated_at": manifest and manifest.updated_at, "levels": [],
                    "triage": None, "top_regions": [], "heatmap": None, "report": None}  # fmt: skip
        case = SlideRef.parse(root).case
        triage, heatmap, signed_at, corrupt = await asyncio.gather(
            _readable(self.triage(root)), self.heatmap(root), self.signed_at(case), self.corrupt(root, arrival.started_at)
        )
        triage = None if isinstance(triage, str) else triage  # malformed: shown as no triage, the image still is
        counts = arrival.counts()
        return {
            "manifest": arrival.manifest,
            "state": "complete" if arrival.complete else "sending",
            "failed": None,
            "complete": arrival.complete,
            "started_at": arrival.started_at,
            "updated_at": arrival.updated_at,
            "levels": [{"state": state, **count} for state, count in zip(arrival.states, counts, strict=True)],
            "triage": _triage(triage),
            "top_regions": _regions(triage),
            "heatmap": heatmap.describe() if heatmap else None,
            "report": {"signed_at": signed_at} if signed_at else None,
            "corrupt": corrupt,  # image objects refused as corrupt ("0/c/0/3/5"), asked of the station again
        }

    async def slides(self, case: str) -> list[SlideRef]:
        """Each slide of the case at its newest version (a rescan supersedes the scan before it), in slide order."""

        async def load() -> list[SlideRef]:
            newest = []
            for slide in await self._dirs(slides_key(case).rstrip("/"), SLIDE_PATTERN):
                versions = await self._dirs(slides_key(case, slide).rstrip("/"), VERSION_PATTERN)
                if versions:
                    newest.append(SlideRef(case, slide, max(versions, key=version_number)))
            return sorted(newest, key=lambda ref: version_number(ref.slide))

        return await self._slides.get(case, load)

    async def _dirs(self, prefix: str, pattern: re.Pattern[str]) -> list[str]:
        try:
            return [name for name in await self.storage.list_dirs(prefix) if pattern.fullmatch(name)]
        except ObjectNotFoundError:
            return []

    async def case_info(self, case: str) -> dict[str, Any]:
        """The case as its page opens it: registration (clock, clinical context) and its slides, each with the
        version shown and its arrival state. `CaseNotFoundError` for a case with neither."""
        registration, slides, signed_at, unsent = await asyncio.gather(
            _readable(self.registration(case)), self.slides(case), self.signed_at(case), self.unsent(case))
        unreadable = registration if isinstance(registration, str) else None
        registration = None if isinstance(registration, str) else registration
        if registration is None and unreadable is None and not slides and not unsent:
            raise CaseNotFoundError(f"case {case}: not on this store")
        entries: list[dict[str, Any]] = []
        triages: dict[str, dict[str, Any] | None] = {}
        for ref in slides:
            manifest, triage = await asyncio.gather(_readable(self.manifest(ref.root)), _readable(self.triage(ref.root)))
            if isinstance(manifest, str):
                entries.append({"slide": ref.slide, "version": ref.version, "state": UNREADABLE, "failed": None, "unreadable": manifest})
                failed = None
            else:
                state, failed = _send_state(manifest)
                entries.append({"slide": ref.slide, "version": ref.version, "state": state, "failed": failed})
            triages[ref.slide] = None if failed or isinstance(triage, str) else _triage(triage)  # as the worklist's row has it
        for entry, checked in zip(entries, await asyncio.gather(*(_readable(self.scan_qc(ref.root)) for ref in slides)), strict=True):
            if checked is not None:  # a slide the station sent its checks of
                entry["scan_qc"] = _scan_qc(checked)
        context = dict(registration.context) if registration else {}
        return {
            "case": case,
            "unreadable": unreadable,
            "registered_at": registration.registered_at if registration else None,
            "station": registration.station if registration else None,
            "hospital": context.get("hospital") or station_of(case),
            "specimen": _specimen(context),
            "triage": _case_triage(list(triages.values())),
            "triages": triages,  # each slide's (by slide): the page says which slide the case's score is
            "context": context,
            "slides": entries,
            "unsent": _unsent(unsent),
            "missing": _missing(entries, unsent),
            "signed_at": signed_at,
        }

    async def unsent(self, case: str) -> list[UnsentSlide | str]:
        """The slide files of the specimen its station could not send (`caseformat.documents.UnsentSlide`), at most
        `UNSENT_LIMIT`; a record that is not one is its "unreadable: reason" line."""

        async def load() -> list[UnsentSlide | str]:
            try:
                listed = await self.storage.list(unsent_folder(case).rstrip("/"))
            except ObjectNotFoundError:
                return []

            async def read(key: str) -> UnsentSlide | str:
                try:
                    record = UnsentSlide.read(await self.storage.get(key), key)
                except ObjectNotFoundError:
                    return f"{UNREADABLE}: {key}: gone"
                except DocumentError as error:
                    return f"{UNREADABLE}: {printable(str(error))}"
                return record if record.case == case else f"{UNREADABLE}: {key}: names case {record.case}"

            return list(await asyncio.gather(*(read(info.key) for info in sorted(listed, key=lambda info: info.key)[:UNSENT_LIMIT])))

        return await self._unsent.get(case, load)

    async def worklist(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every case, most urgent first, with what the list shows: hospital, specimen, slides, arrival, the AI
        result's stage, the clock and the signature.

        A case's score is its most suspicious slide's; it is sending while any slide is, failed when all failed.
        Urgency: unsigned cases by the whole minutes left of their turnaround (`TURNAROUND` from registration, else
        from the first send), then by score (unscored after scored); cases without a clock after them; signed ones last.

        Every case's documents are read at every call (about eight requests a case): `viewer.worklist.OpenCases`
        keeps the list in memory instead and reads only what changed."""
        limit = asyncio.Semaphore(16)
        entries = await asyncio.gather(*(self.worklist_entry(case, limit) for case in await case_ids(self.storage)))
        return by_urgency(entries, now or datetime.now(UTC))

    def forget_case(self, case: str) -> None:
        """Drop what is cached of the case's own documents (registration, report, slides, unsent records): news of
        it (viewer/worklist.py) is read from the store, not from the seconds before."""
        for cache in (self._registrations, self._reports, self._slides, self._unsent):
            cache.forget(case)

    async def worklist_entry(self, case: str, limit: asyncio.Semaphore) -> dict[str, Any]:
        """The case's row of the worklist, from its registration, report, slides (manifest and triage) and unsent
        records; `limit` bounds the reads in flight."""

        async def slide_entry(ref: SlideRef) -> dict[str, Any]:
            async with limit:
                manifest, triage = await asyncio.gather(_readable(self.manifest(ref.root)), _readable(self.triage(ref.root)))
            unreadable = next((reason for reason in (manifest, triage) if isinstance(reason, str)), None)
            if isinstance(manifest, str):
                state, failed, manifest = UNREADABLE, None, None
            else:
                state, failed = _send_state(manifest)
            return {
                "slide": ref.slide,
                "version": ref.version,
                "triage": None if failed or isinstance(triage, str) else _triage(triage),
                "planned": len(manifest.planned) if manifest else 0,
                "arrived": len(manifest.arrived) if manifest else 0,
                "state": state,
                "failed": failed,
                "unreadable": unreadable,
                "started_at": manifest and manifest.started_at,
            }

        async with limit:
            registration, signed_at, slides, unsent = await asyncio.gather(
                _readable(self.registration(case)), self.signed_at(case), self.slides(case), self.unsent(case)
            )
        entries = await asyncio.gather(*(slide_entry(ref) for ref in slides))
        unreadable = registration if isinstance(registration, str) else None
        registration = None if isinstance(registration, str) else registration
        context = dict(registration.context) if registration else {}
        states = {e["state"] for e in entries if e["state"] != UNREADABLE} or ({UNREADABLE} if entries else set())
        scored = [e["triage"] for e in entries if e["triage"]]
        failed = [e["failed"] for e in entries if e["failed"]]
        missing = _missing(entries, unsent)
        if not entries and missing:  # nothing that can still arrive: failed, never "arriving" for ever
            states, failed = {"failed"}, [missing]
        state = ("sending" if "sending" in states or not entries and not missing else "failed" if states == {"failed"}
                 else UNREADABLE if states == {UNREADABLE} else "complete")  # fmt: skip
        triage = _case_triage(scored)
        return {
            "case": case,
            "unreadable": unreadable or next((e["unreadable"] for e in entries if e["unreadable"]), None),
            "hospital": context.get("hospital") or (registration.station if registration else None),
            "specimen": _specimen(context),
            "triage": triage,
            "stage": None if triage is None else "final" if triage["final"] else triage["stage"],
            "slides": entries,
            "planned": sum(e["planned"] for e in entries),
            "arrived": sum(e["arrived"] for e in entries),
            "state": state,
            "failed": failed[0] if state == "failed" else None,
            "missing": missing,
            "complete": state == "complete",
            "started_at": registration.registered_at if registration else min((e["started_at"] for e in entries if e["started_at"]), default=None),
            "reported_at": signed_at,
        }

    # -- sidecars and the report -----------------------------------------------------------------------------
    async def triage(self, root: str) -> Triage | None:
        """The slide version's result: the centre's triage.json (the hub's or `analyze`'s), else the station's edge
        triage, read as the edge's whatever it says (a station cannot make its map final); `DocumentError` when
        malformed. A centre's triage with no tile scored yet and no refusal (the hub's first pass) gives way to the
        edge's, so an empty map never hides a routed one."""
        ref = SlideRef.parse(root)

        async def read_one(key: str) -> Triage | None:
            try:
                return Triage.read(await self.storage.get(key), key)
            except ObjectNotFoundError:
                return None

        async def read() -> Triage | None:
            centre = await read_one(ref.centre_key(TRIAGE))
            if centre is not None and (centre.refused is not None or centre.tiles_scored > 0):
                return centre
            edge = await read_one(ref.key(TRIAGE))
            return centre if edge is None else replace(edge, stage=EDGE, complete=False)

        return await self._sidecars.get(root, read)

    async def registration(self, case: str) -> CaseRecord | None:
        """The case's case.json (None: not registered); `DocumentError` for one that is not a registration."""

        async def read() -> CaseRecord | None:
            key = case_key(case, CASE_RECORD)
            try:
                data = await self.storage.get(key)
            except ObjectNotFoundError:
                return None
            record = CaseRecord.read(data, key)
            if record.case != case:
                raise DocumentError(f"{key}: registers case {record.case}, not this one")
            return record

        return await self._registrations.get(case, read)

    async def reports(self, case: str) -> Versions[Report]:
        """The signed report and its amendments that verify, in order, and the refused objects (viewer/reports.py)."""
        return await self._reports.get(case, lambda: numbered(self.storage, case, Report, self.trusted))

    def forget_reports(self, case: str) -> None:
        self._reports.forget(case)

    async def signed_at(self, case: str) -> str | None:
        """When the first report was signed: the end of the case's clock (an amendment never moves it)."""
        reports = (await self.reports(case)).verified
        return reports[0].document.signed_at if reports else None

    async def scan_qc(self, root: str) -> ScanQc | None:
        """The station's checks of the slide version's scan (None: none sent); `DocumentError` for a malformed one."""
        key = scan_qc_key(SlideRef.parse(root))
        try:
            return ScanQc.read(await self.storage.get_range(key, 0, SCAN_QC_LIMIT + 1), key)  # a larger one is refused whole
        except ObjectNotFoundError:
            return None

    async def macro(self, root: str) -> bytes:
        """The slide version's macro image as the station sent it (label blanked), decoded and encoded again here: a
        JPEG of at most MACRO_SIDE px a side, without anything of the station's file but its pixels;
        `ImageError` for anything else, `ObjectNotFoundError` where there is none."""
        return await station_jpeg(self.storage, macro_key(SlideRef.parse(root)), "a macro image", MACRO_BYTES, MACRO_SIDE)

    async def _document(self, key: str, read: Callable[[bytes, str], D]) -> D | None:
        """The document at `key` as its type's reader parses it (`DocumentError` for a malformed one); None when there
        is none."""
        try:
            data = await self.storage.get(key)
        except ObjectNotFoundError:
            return None
        return read(data, key)


def _scan_qc(checked: ScanQc | str) -> dict[str, Any]:
    """A slide's scan checks as the case page shows them: every line, the failed ones as `advice`; a malformed
    scan_qc.json is its one "unreadable" line."""
    if isinstance(checked, str):
        return {"unreadable": checked, "lines": [], "advice": [], "macro": False}
    return {"lines": [printable(check.line) for check in checked.checks], "advice": [printable(line) for line in checked.advice],
            "macro": checked.macro}  # fmt: skip


def _unsent(unsent: list[UnsentSlide | str]) -> list[dict[str, str]]:
    return [{"kind": "unreadable", "reason": record} if isinstance(record, str) else
            {"kind": record.kind, "reason": record.reason, "at": record.at} for record in unsent]  # fmt: skip


def _missing(slides: list[dict[str, Any]], unsent: list[UnsentSlide | str]) -> str | None:
    """What the pathologist must know before reading the case as whole: "3 of 6 slides failed at the hospital: ...",
    counting the slides that failed on their way and those the station could not send; None when none did."""
    failed = [slide for slide in slides if slide["state"] == "failed"]
    if not failed and not unsent:
        return None
    total = len(slides) + len(unsent)
    reasons = Counter(UNSENT_KINDS["unreadable"] if isinstance(record, str) else record.reason for record in unsent)
    reasons.update({"the send failed": len(failed)} if failed else {})
    said = "; ".join(f"{reason} ({count})" if count > 1 else reason for reason, count in reasons.items())
    return f"{len(failed) + len(unsent)} of {total} slides failed at the hospital: {said}"


async def top_folders(storage: Storage) -> list[str]:
    """The folders at the store's root (`caseformat.layout.is_legacy` tells a store of the previous layout by them)."""
    try:
        return await storage.list_dirs()
    except ObjectNotFoundError:
        return []


async def case_ids(storage: Storage) -> list[str]:
    """Every case of the store: each station's case folders whose ID names that station (a case filed under another
    station's name is not believed, `caseformat.layout`). Two LISTs and one per station."""
    try:
        stations = [name for name in await storage.list_dirs(STATION_TREES) if STATION_PATTERN.fullmatch(name)]
    except ObjectNotFoundError:  # a new store: no station has written yet
        return []
    return [case for station in stations for case in await storage.list_dirs(station_folder(station).rstrip("/"))
            if is_case(case) and station_of(case) == station]  # fmt: skip


def by_urgency(entries: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Worklist rows most urgent first (`Cases.worklist`); worklist.js sorts merged rows by the same rule."""

    def urgency(e: dict[str, Any]) -> tuple[Any, ...]:
        started = _parse_time(e["started_at"])
        minutes_left = (started + TURNAROUND - now) // timedelta(minutes=1) if started else 0
        score = (e["triage"] or {}).get("score")
        return (e["reported_at"] is not None, started is None, minutes_left, score is None, -(score or 0.0), e["case"])

    return sorted(entries, key=urgency)


def _send_state(manifest: Manifest | None) -> tuple[str, str | None]:
    """(state, failure reason) of a slide version's send; no manifest (an image written by another tool, or a local
    conversion) counts as complete."""
    return (COMPLETE, None) if manifest is None else (manifest.state, manifest.failure)


async def _readable(reading: Awaitable[T]) -> T | str:
    """What `reading` gives, or "unreadable: reason" for a malformed document: it costs its own row, no more."""
    try:
        return await reading
    except DocumentError as error:
        return f"{UNREADABLE}: {printable(str(error))}"


def _parse_time(text: Any) -> datetime | None:
    """An ISO time as the store holds it (with Z or an offset, years 2000-2200: a clock from year 9999 would
    overflow the urgency sum); None for anything else."""
    try:
        return parse_time(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _triage(triage: Triage | None) -> dict[str, Any] | None:
    """Score, what produced it and whether it is final: an edge triage's coarse map never is (`inference.heatmap`).
    With the model's words when the triage names them: what it detects and its validation record in one line. The
    score is only `Triage.valid_score`: a refused slide ("no validated AI for skin") and a score that was never
    routed (an old triage, an edge's made before routing) show the words "no validated AI" and QC, never a number."""
    if triage is None:
        return None
    if triage.valid_score is not None:
        about = {key: triage.summary[key] for key in ("detects", "validation") if triage.summary.get(key)}
        return {"score": triage.valid_score, "stage": triage.stage, "final": triage.final(), **about}
    if triage.refused is None and (triage.routed is not None or triage.score is None and not triage.tiles_scored):
        return None  # routed, nothing scored yet
    return {"score": None, "stage": triage.stage, "final": triage.final(), "refused": triage.refused or UNROUTED,
            "qc": _qc(triage), "tissue_tiles": triage.tissue_tiles}


def _case_triage(slides: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The case's AI result, on the worklist and in the case page's header alike: its most suspicious slide's (a
    refusal has no score: any scored slide comes first); None while no slide has one."""
    scored = [triage for triage in slides if triage]
    return max(scored, key=lambda t: -1.0 if t["score"] is None else t["score"]) if scored else None


def _specimen(context: dict[str, str]) -> str | None:
    """What the specimen is, as the worklist and the case page name it: its type and site from case.json."""
    return " · ".join(context[name] for name in ("specimen_type", "specimen_site") if name in context) or None


def _qc(triage: Triage) -> dict[str, float | None]:
    """The QC shown in place of a score, as `Triage.read` checked it: blurry and pen-marked fractions of the tiles
    measured."""
    qc = triage.summary.get("qc") or {}
    return {"blur_fraction": qc.get("blur_fraction"), "pen_fraction": qc.get("pen_fraction"), "tiles": qc.get("focus_tiles")}


def _regions(triage: Triage | None) -> list[dict[str, float]]:
    """triage.json's top regions (level-0 boxes, hottest first), where its score may be shown; the page jumps to them."""
    regions = (triage.summary.get("top_regions") if triage and triage.valid_score is not None else None) or []
    return [{key: float(region[key]) for key in ("x", "y", "width", "height", "score")} for region in regions]


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


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")



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

    async def list_dirs(self, prefix: str = "") -> list[str]:
        tree = {STATION_TREES: self.ref.station, station_folder(self.ref.station).rstrip("/"): self.case,
                slides_key(self.case).rstrip("/"): self.ref.slide,
                slides_key(self.case, self.ref.slide).rstrip("/"): self.ref.version}  # fmt: skip
        return [tree[prefix]] if prefix in tree else await self._beside.list_dirs(prefix)
