"""The structured frozen-section report and the pathologist's requests to the hospital, as the store keeps them.

A report is signed by a named pathologist and is final: `CASE/reports/0001.json` is the signed report, each
correction the next number (an amendment naming the one it amends), every version created once and never replaced
(`Storage.create`), so two pathologists signing at once cannot overwrite each other: the second is told. Requests
(`CASE/requests/NNNN.json`) are numbered the same way. When case.json names the station that registered the case,
a copy of each goes to `_stations/{station}/` (`notice_key`), where that station's `watch` finds it with one LIST.
Formats: `slidestream-report/2`, `slidestream-request/1` (README, "Case format").
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from slides import SlidestreamError
from caseformat.layout import REPORTS, REQUESTS, SLIDE_PATTERN, notice_key, report_key, request_key
from viewer.storage import ObjectNotFoundError, Storage

REPORT_FORMAT = "slidestream-report/2"
REQUEST_FORMAT = "slidestream-request/1"
CATEGORIES = ("benign", "malignant", "deferred", "insufficient")
MAX_TEXT = 20_000


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


class RequestIn(BaseModel):
    what: str = Field(min_length=1, max_length=2000)
    slide: str | None = Field(default=None, pattern=f"^{SLIDE_PATTERN.pattern}$")


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def numbered(storage: Storage, case: str, folder: str) -> list[dict[str, Any]]:
    """Every version in CASE/{reports,requests}/, in number order."""
    try:
        listed = await storage.list(f"{case}/{folder}")
    except ObjectNotFoundError:
        return []
    keys = sorted(info.key for info in listed if info.key.rsplit("/", 1)[-1].removesuffix(".json").isdigit())

    async def load(key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(await storage.get(key))
        except (ObjectNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    return [value for value in await asyncio.gather(*(load(key) for key in keys)) if value]


async def sign(storage: Storage, case: str, form: ReportIn, author: dict[str, str], slides: list[dict[str, str]],
               station: str | None) -> dict[str, Any]:
    """Write the next version (the signed report, or an amendment of the newest one) and its station notice."""
    existing = await numbered(storage, case, REPORTS)
    newest = existing[-1]["number"] if existing else None
    if form.amends != newest:
        if newest is None:
            raise ReportConflict(f"case {case} has no signed report to amend")
        signer = existing[-1].get("author", {}).get("name", "another pathologist")
        raise ReportConflict(f"case {case}: report {newest} was signed by {signer} at {existing[-1].get('signed_at')}; read it before amending")
    number = (newest or 0) + 1
    document = {
        "format": REPORT_FORMAT, "case": case, "number": number, "kind": "signed" if number == 1 else "amendment",
        "category": form.category, "diagnosis": form.diagnosis, "margins": form.margins or None, "comment": form.comment or None,
        "author": {"id": author["id"], "name": author["name"]}, "signed_at": iso_now(), "slides": slides,
        "amends": newest,
    }  # fmt: skip
    if not await storage.create(report_key(case, number), json.dumps(document, indent=1).encode()):
        raise ReportConflict(f"case {case}: report {number} was signed by someone else a moment ago; reload to read it")
    if station:
        await storage.put(notice_key(station, document["signed_at"], case, "report", number), json.dumps(document, indent=1).encode())
    return document


async def ask(storage: Storage, case: str, form: RequestIn, author: dict[str, str], station: str | None) -> dict[str, Any]:
    """Write the next request to the hospital and its station notice (a taken number: the next one)."""
    while True:
        existing = await numbered(storage, case, REQUESTS)
        number = (existing[-1]["number"] if existing else 0) + 1
        document = {"format": REQUEST_FORMAT, "case": case, "number": number, "what": form.what, "slide": form.slide,
                    "author": {"id": author["id"], "name": author["name"]}, "asked_at": iso_now()}  # fmt: skip
        if await storage.create(request_key(case, number), json.dumps(document, indent=1).encode()):
            break
    if station:
        await storage.put(notice_key(station, document["asked_at"], case, "request", number), json.dumps(document, indent=1).encode())
    return document
