"""The structured frozen-section report and the pathologist's requests to the hospital, as the store keeps them.

A report is signed by a named pathologist and is final: `CASE/reports/0001.json` is the signed report, each
correction the next number (an amendment naming the one it amends), every version created once and never replaced
(`Storage.create`), so two pathologists signing at once cannot overwrite each other: the second is told. Requests
(`CASE/requests/NNNN.json`) are numbered the same way. When case.json names the station that registered the case,
a copy of each (the same signed bytes) goes to `centre/{station}/_notices/` (`notice_key`), where that station's `watch`
finds it with one LIST. Formats: `caseformat.documents.Report` and `Request`.

Each version is the centre's word: signed with its key and verified on every read. Stations can write to the store,
so an object in these folders that does not verify (unsigned, signed by another key, changed after signing, or a
genuine version copied from another case or number) is refused: listed as one line, never shown as a version, and
it holds no number: numbering counts verified versions only, and the centre's next version replaces such an object
at its key (`write_version`), so a forgery never blocks the pathologist's signature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from caseformat.bounded import load, parse_time, utc_now
from caseformat.documents import (
    LATE_REASON_LIMIT,
    STAIN_LIMIT,
    TEXT_LIMIT,
    Author,
    OrderStatus,
    Report,
    Request,
    SlideRead,
    order_problem,
    order_words,
)
from caseformat.errors import DocumentError
from caseformat.layout import (
    REPORTS,
    REQUESTS,
    SLIDE_PATTERN,
    notice_key,
    number_of,
    numbered_folder,
    order_status_folder,
    report_key,
    request_key,
)
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import ObjectNotFoundError, Storage, StorageError, read_each
from slides import SlidestreamError
from slides.errors import printable

log = logging.getLogger("slidestream.viewer")
MAX_TEXT = TEXT_LIMIT
Version = TypeVar("Version", Report, Request)
# CAP ANP.11820: a frozen section is reported within 20 minutes of the specimen's arrival (registration), or the report
# says why it was not
REPORT_WITHIN = timedelta(minutes=20)


class ReportConflict(SlidestreamError):
    """The report cannot be written as asked: nothing arrived to report on, or another version was signed first
    (HTTP 409, with the reason)."""


class ReportIn(BaseModel):
    """What the form sends: `amends` is the number of the newest version the pathologist read (None to sign the
    first report), so an amendment never silently follows one they have not seen."""

    category: Literal["benign", "malignant", "deferred", "insufficient"]
    diagnosis: str = Field(min_length=1, max_length=MAX_TEXT)
    margins: str | None = Field(default=None, max_length=MAX_TEXT)
    comment: str | None = Field(default=None, max_length=MAX_TEXT)
    amends: int | None = Field(default=None, ge=1)
    # the "N of M slides failed at the hospital" line the page showed, echoed: signing past missing slides is a choice
    missing_seen: str | None = Field(default=None, max_length=2000)
    # why the first report comes more than `REPORT_WITHIN` after the registration: required then, recorded in the report
    late_reason: str | None = Field(default=None, max_length=LATE_REASON_LIMIT)


class RequestIn(BaseModel):
    """Free text, or a rework order (one of `ORDERS`, of `slide` or the specimen; a stain order names its stain) with
    text if the pathologist adds any."""

    what: str = Field(default="", max_length=2000)
    slide: str | None = Field(default=None, pattern=f"^{SLIDE_PATTERN.pattern}$")
    order: str | None = Field(default=None, max_length=40)  # one of ORDERS (`order_problem`)
    stain: str | None = Field(default=None, min_length=1, max_length=STAIN_LIMIT)

    @model_validator(mode="after")
    def _carried_out(self) -> RequestIn:
        if problem := order_problem(self.order, self.stain, self.slide):
            raise ValueError(problem)
        if not self.what.strip() and self.order is None:
            raise ValueError("say what to ask, or choose an order")
        return self


@dataclass(frozen=True)
class Verified(Generic[Version]):
    """A version that verified: typed, and as the centre signed it (what the API shows, signature included)."""

    document: Version
    signed: dict[str, Any]


@dataclass(frozen=True)
class Versions(Generic[Version]):
    """What a numbered folder holds: the verified versions in number order, and one line per refused object."""

    verified: list[Verified[Version]]
    refused: list[str]

    @property
    def newest(self) -> Version | None:
        return self.verified[-1].document if self.verified else None


def read_version(kind: type[Version], data: bytes, key: str, case: str, trusted: TrustedKeys) -> Verified[Version]:
    """The version at `key` if the centre signed it for this case and number; `DocumentError` otherwise."""
    document = kind.read(data, key, trusted)
    if document.case != case or document.number != number_of(key):
        raise DocumentError(f"{key}: the centre signed it as number {document.number} of case {document.case}, not this one; refused")
    return Verified(document, load(data, key))


async def numbered(storage: Storage, case: str, kind: type[Version], trusted: TrustedKeys) -> Versions[Version]:
    """Every version in CASE/{reports,requests}/ that verifies, in number order, and the refused ones as lines."""
    folder = REPORTS if kind is Report else REQUESTS
    try:
        listed = await storage.list(numbered_folder(case, folder).rstrip("/"))
    except ObjectNotFoundError:
        return Versions([], [])
    found = sorted((info for info in listed if number_of(info.key) is not None), key=lambda info: number_of(info.key) or 0)

    read_all = await read_each(storage, found, lambda data, key: read_version(kind, data, key, case, trusted))
    return Versions([item for item in read_all if isinstance(item, Verified)], [item for item in read_all if isinstance(item, str)])


async def write_version(storage: Storage, kind: type[Version], key: str, data: bytes, case: str, trusted: TrustedKeys) -> bool:
    """Create the version at `key`; False when a verified version holds it already. An object there that does not
    verify is not the centre's and holds no number: it is replaced, then read back, so a writer whose version another
    replaced is told. (Without a conditional replace on the store, two pathologists replacing the same forgery
    within one request of each other could both be told they wrote; the later one's version is the one kept.)"""
    if await storage.create(key, data):
        return True
    try:
        read_version(kind, await storage.get(key), key, case, trusted)
        return False
    except ObjectNotFoundError:
        return await storage.create(key, data)
    except DocumentError:
        await storage.put(key, data)
    return await storage.get(key) == data


async def sign(storage: Storage, key: SigningKey, trusted: TrustedKeys, case: str, form: ReportIn, author: Author,
               slides: list[SlideRead], station: str | None, missing: str | None = None, registered_at: str | None = None) -> dict[str, Any]:
    """Write the next version (the signed report, or an amendment of the newest one) and its station notice; the
    signed document is returned as stored. With slides `missing` (`viewer.summary.missing_slides`), the form must echo the line the
    pathologist was shown, and the report records it. A first report signed more than `REPORT_WITHIN` after the
    case's `registered_at` needs the form's `late_reason`, which it records (None: no registration, no clock)."""
    if missing and form.missing_seen != missing:
        raise ReportConflict(f"case {case}: {missing}; confirm that the report is signed knowing it")
    newest = (await numbered(storage, case, Report, trusted)).newest
    if form.amends != (newest.number if newest else None):
        if newest is None:
            raise ReportConflict(f"case {case} has no signed report to amend")
        raise ReportConflict(
            f"case {case}: report {newest.number} was signed by {newest.author.name} at {newest.signed_at}; read it before amending"
        )
    number = (newest.number if newest else 0) + 1
    signed_at = utc_now()
    # the first report's clock (an amendment's, or a case's without registration, never runs late)
    elapsed = parse_time(signed_at) - parse_time(registered_at) if number == 1 and registered_at else timedelta(0)
    late_reason = ((form.late_reason or "").strip() or None) if elapsed > REPORT_WITHIN else None  # recorded where it is asked for
    if elapsed > REPORT_WITHIN and late_reason is None:
        raise ReportConflict(f"case {case}: signed {elapsed // timedelta(minutes=1)} minutes after its registration, past the "
                             f"{REPORT_WITHIN // timedelta(minutes=1)} minutes of CAP ANP.11820; give the reason for the delay (late_reason)")
    report = Report(case, number, form.category, form.diagnosis, author, signed_at, station, form.margins or None,
                    form.comment or None, tuple(slides), newest.number if newest else None, missing, late_reason)  # fmt: skip
    data = report.to_json(key)
    if not await write_version(storage, Report, report_key(case, number), data, case, trusted):
        raise ReportConflict(f"case {case}: report {number} was signed by someone else a moment ago; reload to read it")
    await notify(storage, station, notice_key(station, report.signed_at, case, "report", number) if station else None, data)
    return load(data, report_key(case, number))


async def notify(storage: Storage, station: str | None, key: str | None, data: bytes) -> None:
    """The station's copy of a signed report or request: the fast path only. The signed document is the truth and
    is saved already; a station also reads its open cases' reports and requests itself (`Station.reconcile`), so a
    copy the store refuses now is logged, never an error that would make the pathologist sign again."""
    if station is None or key is None:
        return
    try:
        await storage.put(key, data)
    except StorageError as error:
        log.warning("%s", printable(f"the copy for station {station} ({key}) was not written ({error}); the station reads the case itself"))


async def ask(storage: Storage, key: SigningKey, trusted: TrustedKeys, case: str, form: RequestIn, author: Author,
              station: str | None) -> dict[str, Any]:
    """Write the next request to the hospital and its station notice (a number another request took: the next one)."""
    while True:
        newest = (await numbered(storage, case, Request, trusted)).newest
        number = (newest.number if newest else 0) + 1
        what = form.what.strip() or order_words(form.order or "", form.stain, form.slide)  # an order needs no words of its own
        request = Request(case, number, what, author, utc_now(), station, form.slide, form.order, form.stain)
        data = request.to_json(key)
        if await write_version(storage, Request, request_key(case, number), data, case, trusted):
            break
    await notify(storage, station, notice_key(station, request.asked_at, case, "request", number) if station else None, data)
    return load(data, request_key(case, number))


async def order_states(storage: Storage, case: str) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """How far the station got with each rework order of the case (request number -> its orders/{n}.json as read),
    and one line for each object in that folder of the station's that is no order status of this case."""
    try:
        listed = await storage.list(order_status_folder(case).rstrip("/"))
    except ObjectNotFoundError:
        return {}, []

    def read(data: bytes, key: str) -> OrderStatus:
        status = OrderStatus.read(data, key)
        if (status.case, status.number) != (case, number_of(key)):
            raise DocumentError(f"{key}: the state of order {status.number} of case {status.case}, not of this one; refused")
        return status

    read_all = await read_each(storage, listed, read)
    states = {status.number: {"state": status.state, "at": status.at,
                              "fulfilled_by": {"slide": status.fulfilled_by.slide, "version": status.fulfilled_by.version} if status.fulfilled_by else None}
              for status in read_all if isinstance(status, OrderStatus)}  # fmt: skip
    return states, [item for item in read_all if isinstance(item, str)]
