"""Gross photographs in the case view, and the pathologist's marks on them (issue #30).

The station sends a specimen's photographs as `stations/{station}/{case}/gross/{token}.jpg` (station/gross.py); the
page shows each, decoded and encoded again here as the macro images are (nothing of the station's file but its
pixels reaches a browser). A pathologist marks a photo with a point ("sample here") or a two-point line (a margin)
and a short text: `CASE/gross-marks/{n:04d}.json`, signed (`caseformat.documents.GrossMark`), numbered and created
once, and copied to the station's notices (`viewer.reports.notify`), so the station sees it at its next poll. The
author is the signed-in person. A mark that does not verify is refused in one line, never drawn.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from caseformat.bounded import load, utc_now
from caseformat.documents import ANNOTATION_TEXT_LIMIT, GROSS_MARK_KINDS, GROSS_PHOTO_SIDE, Author, GrossMark, Person
from caseformat.errors import DocumentError
from caseformat.layout import (
    GROSS_TOKEN,
    gross_folder,
    gross_mark_key,
    gross_marks_folder,
    gross_photo_key,
    notice_key,
    number_of,
    station_of,
)
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import ObjectNotFoundError, Storage, read_each
from viewer.image import station_jpeg
from viewer.reports import notify

PHOTO_BYTES = 16 * 2**20  # a station's photo read at most (a 4096 px JPEG is a few MB)
Coordinate = Annotated[float, Field(ge=0, le=GROSS_PHOTO_SIDE, allow_inf_nan=False)]


class GrossMarkIn(BaseModel):
    """What the page sends: the photo (its token), the mark in the photo's pixels, a short text."""

    photo: str = Field(pattern=f"^{GROSS_TOKEN.pattern}$")
    kind: Literal["point", "line"]
    points: list[tuple[Coordinate, Coordinate]]
    text: str = Field(default="", max_length=ANNOTATION_TEXT_LIMIT)

    @model_validator(mode="after")
    def _points(self) -> GrossMarkIn:
        if len(self.points) != GROSS_MARK_KINDS[self.kind]:
            raise ValueError(f"a {self.kind} has {GROSS_MARK_KINDS[self.kind]} points, not {len(self.points)}")
        return self


async def photos(storage: Storage, case: str) -> list[str]:
    """The tokens of the case's gross photographs, in the store's order (objects of another name are passed over)."""
    try:
        listed = await storage.list(gross_folder(case).rstrip("/"))
    except ObjectNotFoundError:
        return []
    names = (info.key.rsplit("/", 1)[-1] for info in listed if info.size <= PHOTO_BYTES)
    return sorted(name.removesuffix(".jpg") for name in names if name.endswith(".jpg") and GROSS_TOKEN.fullmatch(name.removesuffix(".jpg")))


async def photo(storage: Storage, case: str, token: str) -> bytes:
    """One gross photograph as a fresh JPEG of its pixels; `ImageError` for an object that is no such photo,
    `ObjectNotFoundError` where there is none."""
    return await station_jpeg(storage, gross_photo_key(case, token), "a gross photograph", PHOTO_BYTES, GROSS_PHOTO_SIDE)


async def marks(storage: Storage, trusted: TrustedKeys, case: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every mark of the case that verifies, as signed, in number order; and one line per object that does not."""
    try:
        listed = await storage.list(gross_marks_folder(case).rstrip("/"))
    except ObjectNotFoundError:
        return [], []

    def read(data: bytes, key: str) -> dict[str, Any]:
        mark = GrossMark.read(data, key, trusted)
        if mark.case != case or gross_mark_key(case, mark.number) != key:
            raise DocumentError(f"{key}: the centre signed it as mark {mark.number} of case {mark.case}; refused")
        return load(data, key)

    found = await read_each(storage, sorted((info for info in listed if number_of(info.key) is not None), key=lambda info: info.key), read)
    return [item for item in found if isinstance(item, dict)], [item for item in found if isinstance(item, str)]


async def save(storage: Storage, key: SigningKey, case: str, form: GrossMarkIn, person: Person) -> dict[str, Any]:
    """The next mark of the case, signed with its author, created once (a number another took: the next one), and
    its copy for the station that registered the case."""
    await storage.get_range(gross_photo_key(case, form.photo), 0, 2)  # 404 for a photo the case does not have
    station = station_of(case)
    while True:
        try:
            taken = [number_of(info.key) or 0 for info in await storage.list(gross_marks_folder(case).rstrip("/"))]
        except ObjectNotFoundError:
            taken = []
        number = max(taken, default=0) + 1
        mark = GrossMark(case, number, form.photo, form.kind, tuple(form.points), form.text.strip(),
                         Author(person.id, person.name, person.role), utc_now(), station)  # fmt: skip
        data = mark.to_json(key)
        if await storage.create(gross_mark_key(case, number), data):
            break
    await notify(storage, station, notice_key(station, mark.created_at, case, "mark", number), data)
    return load(data, gross_mark_key(case, number))
