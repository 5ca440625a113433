"""A case's documents as the viewer reads them (registration, slides, triage, scan checks, unsent records, reports),
and the case page and the slide status built from them.

Documents are cached for a second or two at most (`viewer.cache`), so the server stays stateless: any number of
processes may serve the same store, and a restart loses nothing. Every document is untrusted input
(`caseformat.bounded`): one that is malformed costs only its own case or slide (`viewer.summary.readable`).

The rest of what the viewer reads has a module of its own: a slide's image, arrival and tiles `viewer.tiles`, the AI
overlay `viewer.heatmap`, the worklist's rows and urgency `viewer.worklist`, what both pages show of a document
`viewer.summary`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

from caseformat.documents import CaseRecord, Report, UnsentSlide
from caseformat.errors import DocumentError, SendFailedError
from caseformat.layout import (
    CASE_RECORD,
    EDGE,
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
    version_number,
)
from caseformat.results import SCAN_QC_LIMIT, ScanQc, Triage
from caseformat.signing import TrustedKeys
from objectstore import ObjectNotFoundError, Storage
from slides.errors import printable
from viewer.cache import LIVE_TTL, SIDECAR_TTL, AsyncCache
from viewer.heatmap import Heatmaps
from viewer.image import CaseNotFoundError, station_jpeg
from viewer.reports import Versions, numbered
from viewer.summary import UNREADABLE, case_triage, missing_slides, readable, send_state, specimen_name, triage_summary
from viewer.tiles import TILE_CACHE_BYTES, Tiles

UNSENT_LIMIT = 200  # unsent-slide records read of one case (a specimen has a few slides; a hostile station no more)
MACRO_BYTES, MACRO_SIDE = 4 * 2**20, 4096  # a station's macro.jpg read at most (a real one is ~100 KB), its side at most


class Cases:
    """Read access to every case of one store, plus the report each case gets; the images of its slides are `tiles`,
    the maps drawn over them `heatmaps`."""

    def __init__(self, storage: Storage, trusted: TrustedKeys, tile_cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self.storage = storage
        self.trusted = trusted
        self.tiles = Tiles(storage, tile_cache_bytes)
        self.heatmaps = Heatmaps(self.tiles, self.triage)
        self._sidecars: AsyncCache[str, Triage | None] = AsyncCache(1024, SIDECAR_TTL)
        self._slides: AsyncCache[str, list[SlideRef]] = AsyncCache(1024, LIVE_TTL)
        self._unsent: AsyncCache[str, list[UnsentSlide | str]] = AsyncCache(1024, LIVE_TTL)
        self._registrations: AsyncCache[str, CaseRecord | None] = AsyncCache(1024, SIDECAR_TTL)
        self._reports: AsyncCache[str, Versions[Report]] = AsyncCache(1024, SIDECAR_TTL)

    # -- what a page polls, and the case page ----------------------------------------------------------------
    async def status(self, root: str) -> dict[str, Any]:
        """Arrival per level, triage, heatmap version and report time: everything on a page that changes.

        A send that was given up has no image: its status says "failed" and why, with no levels."""
        try:
            arrival = await self.tiles.arrival(root)
        except SendFailedError as failed:
            manifest = await self.tiles.manifest(root)  # read once already: the failed state came from it
            return {"manifest": True, "state": "failed", "failed": failed.reason, "complete": False,
                    "started_at": manifest and manifest.started_at, "updated_at": manifest and manifest.updated_at, "levels": [],
                    "triage": None, "top_regions": [], "heatmap": None, "report": None}  # fmt: skip
        case = SlideRef.parse(root).case
        triage, heatmap, signed_at, corrupt = await asyncio.gather(
            readable(self.triage(root)), self.heatmaps.heatmap(root), self.signed_at(case),
            self.tiles.corrupt(root, arrival.started_at),
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
            "triage": triage_summary(triage),
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
            readable(self.registration(case)), self.slides(case), self.signed_at(case), self.unsent(case))
        unreadable = registration if isinstance(registration, str) else None
        registration = None if isinstance(registration, str) else registration
        if registration is None and unreadable is None and not slides and not unsent:
            raise CaseNotFoundError(f"case {case}: not on this store")
        entries: list[dict[str, Any]] = []
        triages: dict[str, dict[str, Any] | None] = {}
        for ref in slides:
            manifest, triage = await asyncio.gather(readable(self.tiles.manifest(ref.root)), readable(self.triage(ref.root)))
            if isinstance(manifest, str):
                entries.append({"slide": ref.slide, "version": ref.version, "state": UNREADABLE, "failed": None, "unreadable": manifest})
                failed = None
            else:
                state, failed = send_state(manifest)
                entries.append({"slide": ref.slide, "version": ref.version, "state": state, "failed": failed})
            triages[ref.slide] = None if failed or isinstance(triage, str) else triage_summary(triage)  # as the worklist row's
        for entry, checked in zip(entries, await asyncio.gather(*(readable(self.scan_qc(ref.root)) for ref in slides)), strict=True):
            if checked is not None:  # a slide the station sent its checks of
                entry["scan_qc"] = _scan_qc(checked)
        context = dict(registration.context) if registration else {}
        return {
            "case": case,
            "unreadable": unreadable,
            "registered_at": registration.registered_at if registration else None,
            "station": registration.station if registration else None,
            "hospital": context.get("hospital") or station_of(case),
            "specimen": specimen_name(context),
            "triage": case_triage(list(triages.values())),
            "triages": triages,  # each slide's (by slide): the page says which slide the case's score is
            "context": context,
            "slides": entries,
            "unsent": _unsent(unsent),
            "missing": missing_slides(entries, unsent),
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

    def forget_case(self, case: str) -> None:
        """Drop what is cached of the case's own documents (registration, report, slides, unsent records): news of
        it (viewer/worklist.py) is read from the store, not from the seconds before."""
        for cache in (self._registrations, self._reports, self._slides, self._unsent):
            cache.forget(case)

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


def _regions(triage: Triage | None) -> list[dict[str, float]]:
    """triage.json's top regions (level-0 boxes, hottest first), where its score may be shown; the page jumps to them."""
    regions = (triage.summary.get("top_regions") if triage and triage.valid_score is not None else None) or []
    return [{key: float(region[key]) for key in ("x", "y", "width", "height", "score")} for region in regions]


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

