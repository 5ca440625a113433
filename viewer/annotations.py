"""Annotations: points, lines and polygons a pathologist draws on a slide version, kept with the case.

One object per annotation, `CASE/annotations/{id}.json` (`caseformat.documents.Annotation`, signed by the centre),
created once and never replaced, so two people annotating at once never overwrite each other. Points are level-0
image pixels of the slide version they were drawn on (another scan of the slide has other pixels: a version's
annotations stay with it). The author is the signed-in person, never a name the page sends. An object in the folder
that does not verify (a station wrote or changed it, or copied one from another case) is refused: one line, never
drawn.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from caseformat.bounded import load, utc_now
from caseformat.documents import (
    ANNOTATION_ID,
    ANNOTATION_KINDS,
    ANNOTATION_TEXT_LIMIT,
    MAX_COORDINATE,
    Annotation,
    Author,
    Person,
)
from caseformat.errors import DocumentError
from caseformat.layout import SLIDE_PATTERN, VERSION_PATTERN, annotation_key, annotations_folder, stamp
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import ObjectInfo, ObjectNotFoundError, Storage, oversized
from slides.errors import printable
from viewer.cache import AsyncCache

Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE, allow_inf_nan=False)]


class AnnotationIn(BaseModel):
    """What the page sends: the slide version it was drawn on, the shape in its level-0 pixels, a short text."""

    slide: str = Field(pattern=f"^{SLIDE_PATTERN.pattern}$")
    version: str = Field(pattern=f"^{VERSION_PATTERN.pattern}$")
    kind: Literal["point", "line", "polygon"]
    points: list[tuple[Coordinate, Coordinate]]
    text: str = Field(default="", max_length=ANNOTATION_TEXT_LIMIT)

    @model_validator(mode="after")
    def _corners(self) -> AnnotationIn:
        fewest, most = ANNOTATION_KINDS[self.kind]
        if not fewest <= len(self.points) <= most:
            raise ValueError(f"a {self.kind} has {fewest}{'' if fewest == most else f' to {most}'} points, not {len(self.points)}")
        return self


async def save(storage: Storage, key: SigningKey, case: str, form: AnnotationIn, person: Person) -> dict[str, Any]:
    """Write a new annotation under a fresh ID (time first, so the folder lists in drawing order); the signed
    document is returned as stored."""
    while True:
        created_at = utc_now()
        annotation = Annotation(f"{stamp(created_at)}-{secrets.token_hex(4)}", case, form.slide, form.version, form.kind,
                                tuple(form.points), Author(person.id, person.name, person.role), created_at, form.text.strip())  # fmt: skip
        data = annotation.to_json(key)
        if await storage.create(annotation_key(case, annotation.id), data):
            return load(data, annotation_key(case, annotation.id))


async def listed(storage: Storage, trusted: TrustedKeys, case: str,
                 documents: AsyncCache[str, dict[str, Any] | str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every annotation of the case that verifies, as signed, in the order they were made; and one line per object
    that does not.

    An annotation is never replaced, so `documents` keeps each one read: a page polling for others' annotations
    costs one LIST."""
    try:
        found = await storage.list(annotations_folder(case).rstrip("/"))
    except ObjectNotFoundError:
        return [], []
    objects = sorted((info for info in found if ANNOTATION_ID.fullmatch(info.key.rsplit("/", 1)[-1].removesuffix(".json"))),
                     key=lambda info: info.key)  # fmt: skip
    limit = asyncio.Semaphore(16)

    async def read(info: ObjectInfo) -> dict[str, Any] | str:
        key = info.key
        if refusal := oversized(info):
            return refusal
        async with limit:
            data = await storage.get(key)  # not found: raised, so the cache forgets it
        try:
            annotation = Annotation.read(data, key, trusted)
        except DocumentError as error:
            return printable(str(error))
        if annotation.case != case or annotation_key(case, annotation.id) != key:
            return printable(f"{key}: the centre signed it as annotation {annotation.id} of case {annotation.case}; refused")
        return load(data, key)

    async def cached(info: ObjectInfo) -> dict[str, Any] | str | None:
        try:
            return await documents.get(info.key, lambda: read(info))
        except ObjectNotFoundError:
            return None

    results = await asyncio.gather(*(cached(info) for info in objects))
    return [item for item in results if isinstance(item, dict)], [item for item in results if isinstance(item, str)]
