"""The turnaround the centre must prove: CAP ANP.11820 asks that at least 90% of frozen sections be reported within 20
minutes of the specimen's arrival, with the reason recorded for each one that is not (`viewer.reports.sign` refuses a
late first report without it). This page and its CSV export are the record a laboratory inspector asks for.

Per case: when the hospital registered it (case.json: the clock's start, as on the worklist), when its first slide
became viewable (the earliest "overview" milestone of any send of any slide: `transfer.manifest.OVERVIEW`, seconds
after that send's `started_at`), when the first report was signed (an amendment never moves the clock), by whom, its
category (a deferral is "deferred") and the reason given for a late one. Figures (overall, per hospital, per
pathologist) count the cases that were signed and registered: a case with no registration has no clock to hold.

Everything is read from the store as the worklist reads it (documents a station wrote are untrusted: one that is
unreadable costs its own figure, never the page); nothing is stored, so any viewer process answers the same.
"""

from __future__ import annotations

import asyncio
import csv
import io
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from caseformat.bounded import parse_time, utc_now
from caseformat.documents import CaseRecord, Report
from caseformat.errors import DocumentError
from caseformat.layout import SLIDE_PATTERN, VERSION_PATTERN, SlideRef, slides_key, station_of
from objectstore import ObjectNotFoundError
from transfer.manifest import OVERVIEW
from viewer.cases import Cases, case_ids
from viewer.reports import REPORT_WITHIN
from viewer.tokens import SESSION_COOKIE, bearer
from viewer.worklist import TURNAROUND

if TYPE_CHECKING:  # viewer.app includes this router
    from viewer.app import ViewerState

STATIC = Path(__file__).with_name("static")
LIMITS = {"20": REPORT_WITHIN, "30": TURNAROUND}  # the shares shown: reported within 20 and within 30 minutes
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would read as a formula (CSV injection)
CSV_COLUMNS = ("case", "hospital", "station", "registered_at", "first_viewable_at", "signed_at", "minutes_to_viewable",
               "minutes_to_report", "within_20", "within_30", "category", "deferred", "pathologist", "late_reason")  # fmt: skip
router = APIRouter()


@dataclass(frozen=True)
class CaseTimes:
    """One case's clock, as the store records it."""

    case: str
    hospital: str
    registered_at: str | None
    first_viewable_at: str | None
    report: Report | None  # the first signed report

    def minutes_after_registration(self, moment: str | None) -> float | None:
        if self.registered_at is None or moment is None:
            return None
        return (parse_time(moment) - parse_time(self.registered_at)) / timedelta(minutes=1)

    @property
    def minutes(self) -> float | None:
        """Registration to the signed report: the figure the rule is about."""
        return self.minutes_after_registration(self.report.signed_at if self.report else None)

    def within(self, limit: timedelta) -> bool | None:
        minutes = self.minutes
        return None if minutes is None else minutes <= limit / timedelta(minutes=1)

    def row(self) -> dict[str, Any]:
        report, to_view, minutes = self.report, self.minutes_after_registration(self.first_viewable_at), self.minutes
        return {
            "case": self.case,
            "hospital": self.hospital,
            "station": station_of(self.case),
            "registered_at": self.registered_at,
            "first_viewable_at": self.first_viewable_at,
            "signed_at": report.signed_at if report else None,
            "minutes_to_viewable": None if to_view is None else round(to_view, 1),
            "minutes_to_report": None if minutes is None else round(minutes, 1),
            **{f"within_{name}": self.within(limit) for name, limit in LIMITS.items()},
            "category": report.category if report else None,
            "deferred": report.category == "deferred" if report else None,
            "pathologist": report.author.name if report else None,
            "pathologist_id": report.author.id if report else None,
            "late_reason": report.late_reason if report else None,
        }


def figures(times: Iterable[CaseTimes]) -> dict[str, Any]:
    """How many of a group's cases were signed (and registered), the share of them within 20 and 30 minutes, the
    deferrals and the median minutes to the report."""
    cases = list(times)
    timed = [case for case in cases if case.minutes is not None]
    within = {name: sum(1 for case in timed if case.within(limit)) for name, limit in LIMITS.items()}
    minutes = [case.minutes for case in timed if case.minutes is not None]
    return {
        "cases": len(cases),
        "signed": len(timed),
        **{f"within_{name}": count for name, count in within.items()},
        **{f"share_{name}": count / len(timed) if timed else None for name, count in within.items()},
        "deferred": sum(1 for case in timed if case.report and case.report.category == "deferred"),
        "median_minutes": round(statistics.median(minutes), 1) if minutes else None,
    }


def grouped(times: list[CaseTimes], key: Callable[[CaseTimes], tuple[str, str] | None], name: str) -> list[dict[str, Any]]:
    """`figures` per group (`key`: (group ID, what the page calls it); None: in no group), by what the page calls them."""
    groups: dict[str, tuple[str, list[CaseTimes]]] = {}
    for case in times:
        found = key(case)
        if found is not None:
            groups.setdefault(found[0], (found[1], []))[1].append(case)
    return [{name: label, **({"id": group} if group != label else {}), **figures(cases)}
            for group, (label, cases) in sorted(groups.items(), key=lambda item: item[1][0])]  # fmt: skip


async def case_times(cases: Cases, case: str, registration: CaseRecord | None) -> CaseTimes:
    reports, viewable = await asyncio.gather(cases.reports(case), first_viewable(cases, case))
    context = dict(registration.context) if registration else {}
    report = reports.verified[0].document if reports.verified else None
    return CaseTimes(case, context.get("hospital") or station_of(case), registration.registered_at if registration else None, viewable, report)


async def _registration(cases: Cases, case: str) -> CaseRecord | None:
    try:
        return await cases.registration(case)
    except DocumentError:  # an unreadable case.json: no clock (the worklist says why)
        return None


async def first_viewable(cases: Cases, case: str) -> str | None:
    """When a pathologist could first see any slide of the case at low power: the earliest overview milestone of
    every slide version's current send (a rescan does not make the case's first view later)."""
    moments = [moment for ref in await _versions(cases, case) if (moment := await _overview_at(cases, ref)) is not None]
    return utc_now(min(moments)) if moments else None


async def _overview_at(cases: Cases, ref: SlideRef) -> datetime | None:
    try:
        manifest = await cases.tiles.manifest(ref.root)
    except DocumentError:
        return None
    seconds = manifest.milestones.get(OVERVIEW) if manifest else None
    if manifest is None or manifest.started_at is None or seconds is None:
        return None
    return parse_time(manifest.started_at) + timedelta(seconds=seconds)


async def _versions(cases: Cases, case: str) -> list[SlideRef]:
    async def names(prefix: str, pattern: Any) -> list[str]:
        try:
            return [name for name in await cases.storage.list_dirs(prefix.rstrip("/")) if pattern.fullmatch(name)]
        except ObjectNotFoundError:
            return []

    slides = await names(slides_key(case), SLIDE_PATTERN)
    versions = await asyncio.gather(*(names(slides_key(case, slide), VERSION_PATTERN) for slide in slides))
    return [SlideRef(case, slide, version) for slide, found in zip(slides, versions, strict=True) for version in found]


async def turnaround(cases: Cases, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Every case registered in [since, until) (each a bound or none; a case with no registration only without
    bounds), newest first, with the figures overall, per hospital and per pathologist."""
    limit = asyncio.Semaphore(16)

    def in_period(registration: CaseRecord | None) -> bool:
        if since is None and until is None:
            return True
        registered = parse_time(registration.registered_at) if registration else None
        return registered is not None and (since is None or registered >= since) and (until is None or registered < until)

    async def read(case: str) -> CaseTimes | None:
        """The case's times; None outside the period (known from its registration: nothing more is read of it)."""
        async with limit:
            registration = await _registration(cases, case)
            return await case_times(cases, case, registration) if in_period(registration) else None

    found = await asyncio.gather(*(read(case) for case in await case_ids(cases.storage)))
    times = sorted((case for case in found if case is not None),
                   key=lambda case: (case.registered_at is None, _descending(case.registered_at), case.case))  # fmt: skip
    return {
        "now": utc_now(),
        "since": utc_now(since) if since else None,
        "until": utc_now(until) if until else None,
        "limits_minutes": [int(limit / timedelta(minutes=1)) for limit in LIMITS.values()],
        "overall": figures(times),
        "hospitals": grouped(times, lambda case: (case.hospital, case.hospital), "hospital"),
        "pathologists": grouped(times, lambda case: (case.report.author.id, case.report.author.name) if case.report else None, "pathologist"),
        "cases": [case.row() for case in times],
    }


def _descending(registered_at: str | None) -> float:
    return -parse_time(registered_at).timestamp() if registered_at else 0.0


def spreadsheet_safe(value: Any) -> str:
    """A CSV cell no spreadsheet runs as a formula: text starting with = + - @ (or a tab or CR) gets a leading
    apostrophe; yes/no for booleans, nothing for None."""
    text = "" if value is None else ("yes" if value else "no") if isinstance(value, bool) else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([spreadsheet_safe(row[column]) for column in CSV_COLUMNS] for row in rows)
    return out.getvalue()


def _moment(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise HTTPException(400, f"{name}: not an ISO 8601 time with its zone (2026-12-05T00:00:00Z)") from None


async def _figures(request: Request, since: str | None, until: str | None) -> dict[str, Any]:
    """The figures, for a signed-in pathologist only (the centre's own record of its pathologists)."""
    state: ViewerState = request.app.state.viewer
    identity = await state.identify(bearer(request.headers.get("authorization")), request.cookies.get(SESSION_COOKIE))
    identity.pathologist("see the centre's turnaround")
    return await turnaround(state.cases, _moment(since, "since"), _moment(until, "until"))


@router.get("/turnaround", include_in_schema=False)
async def turnaround_page() -> FileResponse:
    return FileResponse(STATIC / "turnaround.html", headers={"Cache-Control": "no-cache"})


@router.get("/api/turnaround")
async def turnaround_json(request: Request, since: str | None = None, until: str | None = None) -> JSONResponse:
    """Each case's times and the figures (overall, per hospital, per pathologist) of the cases registered in [since, until)."""
    return JSONResponse(await _figures(request, since, until), headers={"Cache-Control": "no-store"})


@router.get("/api/turnaround.csv")
async def turnaround_csv(request: Request, since: str | None = None, until: str | None = None) -> Response:
    """One row per case, for a spreadsheet: cells that would start a formula are neutralised."""
    body = as_csv((await _figures(request, since, until))["cases"])
    headers = {"Cache-Control": "no-store", "Content-Disposition": 'attachment; filename="turnaround.csv"'}
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
