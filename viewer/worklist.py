"""The worklist: each case's row (`worklist_entry`), the urgency the rows are sorted by (`by_urgency`, the rule
worklist.js repeats for merged rows), and the list as an index kept in the server's memory: read whole once, then
only what changed.

`read_worklist` reads every case's documents at every call, about eight requests a case (1,000 cases: 5 to 20 s a
call, with the machine's load), and a store keeps every case it ever had. `OpenCases` reads every case once (the first poll), then refreshes at
most every `REFRESH_EVERY` seconds, however many pages poll, with:

- one LIST of the stations, and per station one LIST page of its `_arrivals/` markers and one of the centre's
  `_notices/` for it, each from a day back (start-after; senders' clocks may be a little off ours): a marker not seen
  before (a case's first send, another slide, a rescan) or a report's notice makes its case news;
- one LIST of the case folders of `FOLDER_STATIONS` stations in turn: a case registered before any slide was sent
  (case.json alone) is found, and a case whose folder is gone leaves the list;
- re-reads of the cases in flight only: news of the last `NEWS_WATCH` seconds (a marker comes before the manifest it
  announces), and unsigned cases not settled (a slide still arriving, or arrived without its final triage) that
  changed in the last `QUIET_AFTER` seconds;
- a sweep of at most `SWEEP_CASES` unsigned cases not read for `SWEEP_AFTER` seconds, for what changes without news
  (an unsent slide's record, a hub's triage after a long wait, a send resumed after an outage).

A signed case is closed: it stays on the list (signed ones last), read again only on news of it (another slide sent,
an amendment). Its clock stopped at the first report, which never changes, so an amendment or a request to the
hospital re-opens nothing; a slide the hospital sends after the report is news, and shows.

A page polls with the token of its last answer (`since`) and gets the rows changed and the cases removed since; a
token this process did not give (a restart, another server) gets the whole list again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from caseformat.bounded import parse_time
from caseformat.layout import (
    STATION_TREES,
    NoticeName,
    SlideRef,
    arrivals_folder,
    arrivals_since,
    is_case,
    is_station,
    notices_folder,
    notices_since,
    station_folder,
    station_of,
)
from objectstore import ObjectNotFoundError, Storage
from viewer.cases import Cases, case_ids
from viewer.summary import UNREADABLE, case_triage, missing_slides, readable, send_state, specimen_name, triage_summary

TURNAROUND = timedelta(minutes=30)  # the intraoperative rule the clock is held to (common.js: amber 20, red 30)
REFRESH_EVERY = 2.0  # seconds: the most a poll's answer may lag the store, and the least time between two refreshes
NEWS_WATCH = 30.0  # seconds a case with news is re-read at every refresh: what a marker announces is written after it
QUIET_AFTER = 600.0  # seconds an unsettled case is re-read at every refresh after its last change
SWEEP_CASES = 8  # unsigned cases re-read per refresh without news ...
SWEEP_AFTER = 60.0  # ... once they were not read for this long
FOLDER_STATIONS = 8  # stations whose case folders one refresh lists
LOOK_BACK = timedelta(days=1)  # how far back each refresh lists `_arrivals/` and `_notices/`
READS = 16  # cases read at once


@dataclass
class Row:
    """One case on the list: its row as `worklist_entry` made it, and when it last changed or had news."""

    entry: dict[str, Any]
    changed: int  # the sequence number of its last change: what a `since` token compares with
    changed_at: float  # time.monotonic() of its last change
    read_at: float
    news_until: float = 0.0


class OpenCases:
    """The worklist of one store, in memory: the whole list at the first poll, then only what changed (module doc)."""

    def __init__(self, cases: Cases) -> None:
        self.cases = cases
        self.storage = cases.storage
        self.sequence = 0  # bumped by every change of a row, and every removal
        self.rows: dict[str, Row] = {}
        self.removed: dict[str, int] = {}  # case -> the sequence number of its removal
        self._generation = secrets.token_hex(6)  # tokens of another process (or an earlier run) are not this one's
        self._waiting: dict[str, float] = {}  # cases with news and nothing to show yet -> until when to look again
        self._seen: dict[str, set[str]] = {}  # `_arrivals/` or `_notices/` folder -> the keys of its last listing
        self._turn = 0  # the next station whose case folders are listed
        self._refreshed: float | None = None
        self._lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(READS)

    async def poll(self, since: str | None, now: datetime) -> dict[str, Any]:
        """/api/worklist's body: every case most urgent first ("cases"), or with the token of an earlier answer the
        rows changed since ("changed") and the cases gone ("removed"); "since": the token to ask with next."""
        await self.refresh()
        after = self._sequence_of(since)
        token = f"{self._generation}.{self.sequence}"
        if after is None:
            return {"cases": by_urgency((row.entry for row in self.rows.values()), now), "since": token}
        changed = [row.entry for row in self.rows.values() if row.changed > after]
        return {"changed": changed, "removed": [case for case, at in self.removed.items() if at > after], "since": token}

    async def refresh(self) -> None:
        """Bring the list up to date: the whole store the first time, then what changed (at most every
        `REFRESH_EVERY` seconds; polls meanwhile are answered from memory)."""
        async with self._lock:
            if self._refreshed is not None and time.monotonic() - self._refreshed < REFRESH_EVERY:
                return
            await (self._update() if self._refreshed is not None else self._build())
            self._refreshed = time.monotonic()

    async def _build(self) -> None:
        """Every case of every station, and the markers and notices there are now (known: no news)."""
        stations = await self._stations()
        await asyncio.gather(*(self._news(station) for station in stations))
        folders = await asyncio.gather(*(self._case_folders(station) for station in stations))
        await self._read({case for found in folders for case in found}, listed=True)

    async def _update(self) -> None:
        """News first (marked before any read, so a failed read leaves it to the next refresh), then the folders of
        the stations in turn, then the reads (module doc)."""
        stations = await self._stations()
        now = time.monotonic()
        news = set().union(*await asyncio.gather(*(self._news(station) for station in stations)))
        for case in news:
            self.cases.forget_case(case)  # read afresh, not from the cache of the seconds before
            if case in self.rows:
                self.rows[case].news_until = now + NEWS_WATCH
            else:
                self._waiting[case] = now + NEWS_WATCH
        self._waiting = {case: until for case, until in self._waiting.items() if until > now and case not in self.rows}
        chosen = set(self._next_stations(stations))
        folders = set().union(*await asyncio.gather(*(self._case_folders(station) for station in chosen)))
        listed = folders - self.rows.keys()
        for case in [case for case in self.rows if case not in folders and station_of(case) in chosen]:
            self._remove(case)
        live = {case for case, row in self.rows.items() if self._live(row, now)}
        unsigned = sorted((row.read_at, case) for case, row in self.rows.items()
                          if case not in live and row.entry["reported_at"] is None and now - row.read_at > SWEEP_AFTER)  # fmt: skip
        sweep = {case for _, case in unsigned[:SWEEP_CASES]}
        for case in sweep:
            self.cases.forget_case(case)  # from the store: a case page polling it may have cached it a second ago
        await self._read(listed, listed=True)
        await self._read((live | sweep | self._waiting.keys()) - listed, listed=False)

    async def _read(self, cases: set[str], listed: bool) -> None:
        """Read `cases` again; one not on the list yet joins it when `listed` (its folder is there) or when it has
        something to show (news names a case before its first document is written)."""
        entries = await asyncio.gather(*(worklist_entry(self.cases, case, self._limit) for case in sorted(cases)))
        now = time.monotonic()
        for entry in entries:
            case = entry["case"]
            row = self.rows.get(case)
            if row is None:
                if not listed and not _shows(entry):
                    continue
                self.sequence += 1
                self.rows[case] = Row(entry, self.sequence, now, now, self._waiting.pop(case, 0.0))
                self.removed.pop(case, None)
                continue
            row.read_at = now
            if entry != row.entry:
                self.sequence += 1
                row.entry, row.changed, row.changed_at = entry, self.sequence, now

    def _remove(self, case: str) -> None:
        del self.rows[case]
        self.sequence += 1
        self.removed[case] = self.sequence

    @staticmethod
    def _live(row: Row, now: float) -> bool:
        """Re-read at every refresh: news of it lately, or unsigned and not settled and changed lately."""
        return now < row.news_until or not _settled(row.entry) and now - row.changed_at < QUIET_AFTER

    async def _stations(self) -> list[str]:
        try:
            return [name for name in await self.storage.list_dirs(STATION_TREES) if is_station(name)]
        except ObjectNotFoundError:  # a new store: no station has written yet
            return []

    async def _case_folders(self, station: str) -> set[str]:
        """The station's case folders whose ID names it (as `viewer.cases.case_ids`)."""
        try:
            names = await self.storage.list_dirs(station_folder(station).rstrip("/"))
        except ObjectNotFoundError:
            return set()
        return {name for name in names if is_case(name) and station_of(name) == station}

    def _next_stations(self, stations: list[str]) -> list[str]:
        """`FOLDER_STATIONS` of `stations`, the next ones in turn: each station's folders are listed every
        len(stations) / FOLDER_STATIONS refreshes."""
        if len(stations) <= FOLDER_STATIONS:
            return stations
        start = self._turn % len(stations)
        self._turn = start + FOLDER_STATIONS
        return (stations[start:] + stations[:start])[:FOLDER_STATIONS]

    async def _news(self, station: str) -> set[str]:
        """The cases of `station` with a marker or a report's notice this process has not listed before."""
        since = (datetime.now(UTC) - LOOK_BACK).strftime("%Y%m%dT%H%M%S")  # a stamp, as the markers' names start
        arrivals = await self._new_keys(arrivals_folder(station), arrivals_since(station, since))
        notices = await self._new_keys(notices_folder(station), notices_since(station, since))
        cases = {ref.case for ref in map(SlideRef.from_arrival, arrivals) if ref is not None}
        for notice in filter(None, map(NoticeName.parse, notices)):
            if notice.kind == "report" and station_of(notice.case) == station:
                cases.add(notice.case)
        return cases

    async def _new_keys(self, folder: str, after: str) -> list[str]:
        """The keys of `folder` after `after` that its last listing did not have (none at the first refresh: it
        reads every case anyway)."""
        keys = await keys_after(self.storage, folder.rstrip("/"), after)
        known, self._seen[folder] = self._seen.get(folder, set()), set(keys)
        return [key for key in keys if key not in known] if self._refreshed is not None else []

    def _sequence_of(self, token: str | None) -> int | None:
        """The sequence number a token of this process names; None for none, or one it did not give."""
        generation, _, sequence = (token or "").partition(".")
        if generation != self._generation or not sequence.isdigit() or int(sequence) > self.sequence:
            return None
        return int(sequence)


def _settled(entry: dict[str, Any]) -> bool:
    """Nothing of the case changes without news: signed, or every slide's send ended (a failed or unreadable one
    included) and every arrived slide has its final triage."""
    if entry["reported_at"] is not None:
        return True
    return bool(entry["slides"]) and all(slide["state"] in ("failed", UNREADABLE)
                                         or slide["state"] == "complete" and (slide["triage"] or {}).get("final")
                                         for slide in entry["slides"])  # fmt: skip


def _shows(entry: dict[str, Any]) -> bool:
    """Whether a case has anything on the store yet: a registration, a slide or an unsent record."""
    return bool(entry["slides"] or entry["started_at"] or entry["unreadable"] or entry["missing"])


async def keys_after(storage: Storage, folder: str, after: str) -> list[str]:
    """The keys under `folder` that sort after `after`: on S3 one LIST from there (a page per 1,000 keys)."""
    try:
        return [info.key for info in await storage.list_after(folder, after)]
    except ObjectNotFoundError:
        return []


async def read_worklist(cases: Cases, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every case, most urgent first, with what the list shows: hospital, specimen, slides, arrival, the AI
    result's stage, the clock and the signature.

    A case's score is its most suspicious slide's; it is sending while any slide is, failed when all failed.
    Urgency: unsigned cases by the whole minutes left of their turnaround (`TURNAROUND` from registration, else
    from the first send), then by score (unscored after scored); cases without a clock after them; signed ones last.

    Every case's documents are read at every call (about eight requests a case): `OpenCases` keeps the list in
    memory instead and reads only what changed."""
    limit = asyncio.Semaphore(16)
    entries = await asyncio.gather(*(worklist_entry(cases, case, limit) for case in await case_ids(cases.storage)))
    return by_urgency(entries, now or datetime.now(UTC))


async def worklist_entry(cases: Cases, case: str, limit: asyncio.Semaphore) -> dict[str, Any]:
    """The case's row of the worklist, from its registration, report, slides (manifest and triage) and unsent
    records; `limit` bounds the reads in flight."""

    async def slide_entry(ref: SlideRef) -> dict[str, Any]:
        async with limit:
            manifest, triage = await asyncio.gather(readable(cases.tiles.manifest(ref.root)), readable(cases.triage(ref.root)))
        unreadable = next((reason for reason in (manifest, triage) if isinstance(reason, str)), None)
        if isinstance(manifest, str):
            state, failed, manifest = UNREADABLE, None, None
        else:
            state, failed = send_state(manifest)
        return {
            "slide": ref.slide,
            "version": ref.version,
            "triage": None if failed or isinstance(triage, str) else triage_summary(triage),
            "planned": len(manifest.planned) if manifest else 0,
            "arrived": len(manifest.arrived) if manifest else 0,
            "state": state,
            "failed": failed,
            "unreadable": unreadable,
            "started_at": manifest and manifest.started_at,
        }

    async with limit:
        registration, signed_at, slides, unsent = await asyncio.gather(
            readable(cases.registration(case)), cases.signed_at(case), cases.slides(case), cases.unsent(case)
        )
    entries = await asyncio.gather(*(slide_entry(ref) for ref in slides))
    unreadable = registration if isinstance(registration, str) else None
    registration = None if isinstance(registration, str) else registration
    context = dict(registration.context) if registration else {}
    states = {e["state"] for e in entries if e["state"] != UNREADABLE} or ({UNREADABLE} if entries else set())
    scored = [e["triage"] for e in entries if e["triage"]]
    failed = [e["failed"] for e in entries if e["failed"]]
    missing = missing_slides(entries, unsent)
    if not entries and missing:  # nothing that can still arrive: failed, never "arriving" for ever
        states, failed = {"failed"}, [missing]
    state = ("sending" if "sending" in states or not entries and not missing else "failed" if states == {"failed"}
             else UNREADABLE if states == {UNREADABLE} else "complete")  # fmt: skip
    triage = case_triage(scored)
    return {
        "case": case,
        "unreadable": unreadable or next((e["unreadable"] for e in entries if e["unreadable"]), None),
        "hospital": context.get("hospital") or (registration.station if registration else None),
        "specimen": specimen_name(context),
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


def by_urgency(entries: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Worklist rows most urgent first (`read_worklist`, `OpenCases.poll`); worklist.js sorts merged rows by the same
    rule."""

    def urgency(e: dict[str, Any]) -> tuple[Any, ...]:
        started = _parse_time(e["started_at"])
        minutes_left = (started + TURNAROUND - now) // timedelta(minutes=1) if started else 0
        score = (e["triage"] or {}).get("score")
        return (e["reported_at"] is not None, started is None, minutes_left, score is None, -(score or 0.0), e["case"])

    return sorted(entries, key=urgency)


def _parse_time(text: Any) -> datetime | None:
    """An ISO time as the store holds it (with Z or an offset, years 2000-2200: a clock from year 9999 would
    overflow the urgency sum); None for anything else."""
    try:
        return parse_time(text) if isinstance(text, str) else None
    except ValueError:
        return None
