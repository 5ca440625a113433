"""Annotations: points, lines and polygons a pathologist draws on a slide version, kept with the case.

One object per annotation, `CASE/annotations/{id}.json` (`slidestream-annotation/1`), created once and never
replaced, so two people annotating at once never overwrite each other. Points are level-0 image pixels of the slide
version they were drawn on (another scan of the slide has other pixels: a version's annotations stay with it). The
author is the signed-in person, never a name the page sends.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from caseformat.layout import ANNOTATIONS, SLIDE_PATTERN, VERSION_PATTERN, annotation_key, stamp
from viewer.cache import AsyncCache
from viewer.reports import iso_now
from viewer.storage import ObjectNotFoundError, Storage

ANNOTATION_FORMAT = "slidestream-annotation/1"
TEXT_LIMIT = 200  # a short note ("another section from here"), not a report
MAX_CORNERS = 500
MAX_COORDINATE = 10_000_000  # level-0 pixels: beyond any slide
POINTS = {"point": (1, 1), "line": (2, 2), "polygon": (3, MAX_CORNERS)}  # corners each kind takes (fewest, most)
ANNOTATION_ID = re.compile(r"[0-9]{8}T[0-9]+Z-[0-9a-f]{8}")
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE, allow_inf_nan=False)]


class AnnotationIn(BaseModel):
    """What the page sends: the slide version it was drawn on, the shape in its level-0 pixels, a short text."""

    slide: str = Field(pattern=f"^{SLIDE_PATTERN.pattern}$")
    version: str = Field(pattern=f"^{VERSION_PATTERN.pattern}$")
    kind: Literal["point", "line", "polygon"]
    points: list[tuple[Coordinate, Coordinate]]
    text: str = Field(default="", max_length=TEXT_LIMIT)

    @model_validator(mode="after")
    def _corners(self) -> AnnotationIn:
        fewest, most = POINTS[self.kind]
        if not fewest <= len(self.points) <= most:
            raise ValueError(f"a {self.kind} has {fewest}{'' if fewest == most else f' to {most}'} points, not {len(self.points)}")
        return self


async def save(storage: Storage, case: str, form: AnnotationIn, author: dict[str, str]) -> dict[str, Any]:
    """Write a new annotation under a fresh ID (time first, so the folder lists in drawing order)."""
    while True:
        created_at = iso_now()
        annotation = f"{stamp(created_at)}-{secrets.token_hex(4)}"
        document = {
            "format": ANNOTATION_FORMAT, "id": annotation, "case": case, "slide": form.slide, "version": form.version,
            "kind": form.kind, "points": [[x, y] for x, y in form.points], "text": form.text.strip(),
            "author": {"id": author["id"], "name": author["name"], "role": author["role"]}, "created_at": created_at,
        }  # fmt: skip
        if await storage.create(annotation_key(case, annotation), json.dumps(document, indent=1).encode()):
            return document


async def listed(storage: Storage, case: str, documents: AsyncCache[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Every annotation of the case, in the order they were made (unreadable objects left out).

    An annotation is never replaced, so `documents` keeps each one read: a page polling for others' annotations
    costs one LIST."""
    try:
        found = await storage.list(f"{case}/{ANNOTATIONS}")
    except ObjectNotFoundError:
        return []
    keys = sorted(info.key for info in found if ANNOTATION_ID.fullmatch(info.key.rsplit("/", 1)[-1].removesuffix(".json")))
    limit = asyncio.Semaphore(16)

    async def load(key: str) -> dict[str, Any] | None:
        async with limit:
            data = await storage.get(key)  # not found: raised, so the cache forgets it
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) and value.get("format") == ANNOTATION_FORMAT else None

    async def cached(key: str) -> dict[str, Any] | None:
        try:
            return await documents.get(key, lambda: load(key))
        except ObjectNotFoundError:
            return None

    return [value for value in await asyncio.gather(*(cached(key) for key in keys)) if value]
