"""Where everything of a case lives on the store: the key layout `slidestream-case/1` and the IDs that form keys.

Every key is built here and every key read back is parsed here; no other module spells a store path. A case is a
specimen; it holds one or more slides, each sent as one or more versions (a rescan is a new version; nothing of one
version is ever shown with another's image):

    {case}/case.json                          registration: when the clock started, clinical context (no identity)
    {case}/slides/{slide}/slide.json          the slide's claim: the station that took the number (created once)
    {case}/slides/{slide}/{version}/          one scan of one slide ("a slide version"), e.g. slides/s1/v1/:
        image.zarr/                           the OME-Zarr image (tiling/)
        manifest.json                         what of the image has arrived, and how the send ended
        pyramid.json                          the shards of the in-between levels the hub built
        heatmap.zarr/                         the triage heatmap, an NGFF image (inference/)
        triage.json                           the triage result: score, summary, stage (inference/)
        hub.lease                             which hub is analysing this slide version, until when
    {case}/reports/{n:04d}.json               the signed report and its amendments, append-only (signed by the centre)
    {case}/requests/{n:04d}.json              what the pathologist asks of the hospital (signed by the centre)
    {case}/annotations/{id}.json              marks on a slide version, with their author (signed by the centre)
    _arrivals/{time}_{case}_{slide}_{version}  one empty object per slide version sent, in time order
    _stations/{station}/{time}_{case}_{kind}_{n}.json   a copy of a signed report or request for its station
    _people/{user}.json                       the centre's users (signed by the centre)
    _audit/{date}/{time}_{random}.json        who opened or signed what, append-only (signed by the centre)

Names that start with "_" are never case IDs (a case ID starts with a letter or digit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from caseformat.errors import InvalidIdError

LAYOUT_FORMAT = "slidestream-case/1"
CASE_RECORD = "case.json"
SLIDE_CLAIM = "slide.json"
SLIDES = "slides"
REPORTS = "reports"
REQUESTS = "requests"
ANNOTATIONS = "annotations"
ARRIVALS = "_arrivals"
STATIONS = "_stations"
PEOPLE = "_people"
AUDIT = "_audit"
IMAGE = "image.zarr"
MANIFEST = "manifest.json"
HEATMAP = "heatmap.zarr"
# beside the NGFF level in heatmap.zarr: float32 (4, rows, cols) score, focus, pen, measured (1/0), the exact
# per-tile results a restarted hub continues from (level 0 holds scores rounded to 1/255 and no QC)
TILE_STATE = "tile_state"
TRIAGE = "triage.json"
IMAGE_METADATA = f"{IMAGE}/zarr.json"  # below a slide version: the image's root group, there once any of it is
LEASE = "hub.lease"
PYRAMID = "pyramid.json"
# triage.json's "stage", what produced it: the edge triage's coarse map before the send, the hub's
# full-magnification map of an arriving case, or a batch `analyze`; only the last two are final
EDGE, HUB, ANALYZE = "edge", "hub", "analyze"
FINAL_STAGES = (HUB, ANALYZE)
CASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLIDE_PATTERN = re.compile(r"s([1-9][0-9]{0,3})")  # s1, s2, ...: ordinal within the case, never a label
VERSION_PATTERN = re.compile(r"v([1-9][0-9]{0,3})")  # v1, v2, ...: v2 is the first rescan
NOTICE_KINDS = ("report", "request")
_NOTICE_NAME = re.compile(r"([0-9TZ]{1,32})_(.+)_(report|request)_([0-9]{4,9})\.json")
_NUMBERED_NAME = re.compile(r"([0-9]{4,9})\.json")


@dataclass(frozen=True, order=True)
class SlideRef:
    """One slide version of a case: the unit that is sent, triaged and viewed."""

    case: str
    slide: str = "s1"
    version: str = "v1"

    @property
    def path(self) -> str:
        """Below the case folder: slides/{slide}/{version}."""
        return f"{SLIDES}/{self.slide}/{self.version}"

    @property
    def root(self) -> str:
        """Below the store's prefix, without a trailing slash: {case}/slides/{slide}/{version}."""
        return f"{self.case}/{self.path}"

    @property
    def label(self) -> str:
        """How logs and triage.json name it: the case ID, slide and version, never a file name."""
        return f"{self.case}/{self.slide}/{self.version}"

    def key(self, name: str) -> str:
        """{case}/slides/{slide}/{version}/{name}: an object of this slide version (manifest.json, image.zarr/...)."""
        return f"{self.root}/{name}"

    @property
    def claim_key(self) -> str:
        """{case}/slides/{slide}/slide.json: the claim of this version's slide number."""
        return slide_claim_key(self.case, self.slide)

    def arrival_key(self, started_at: str) -> str:
        """The `_arrivals/` key of this version's send, in time order."""
        return f"{ARRIVALS}/{stamp(started_at)}_{self.case}_{self.slide}_{self.version}"

    @classmethod
    def parse(cls, root: str) -> SlideRef:
        """{case}/slides/{slide}/{version}, as `root` writes it; `InvalidIdError` otherwise."""
        parts = root.strip("/").split("/")
        if len(parts) != 4 or parts[1] != SLIDES:
            raise InvalidIdError(f"{root!r} is not a slide version ({{case}}/{SLIDES}/{{slide}}/{{version}})")
        return cls(validate_case(parts[0]), validate_slide(parts[2]), validate_version(parts[3]))

    @classmethod
    def from_arrival(cls, key: str) -> SlideRef | None:
        """The slide version an `_arrivals/` key names, None for a key that is not one."""
        parts = key.rsplit("/", 1)[-1].split("_")
        if len(parts) < 4:
            return None
        try:
            return cls(validate_case("_".join(parts[1:-2])), validate_slide(parts[-2]), validate_version(parts[-1]))
        except InvalidIdError:
            return None


@dataclass(frozen=True)
class NoticeName:
    """What a `_stations/{station}/` key says: when, which case, a report or a request, and its number."""

    stamp: str
    case: str
    kind: str
    number: int

    @classmethod
    def parse(cls, key: str) -> NoticeName | None:
        """The name of `key` ({time}_{case}_{kind}_{n}.json; a case ID may hold "_"), None for anything else."""
        match = _NOTICE_NAME.fullmatch(key.rsplit("/", 1)[-1])
        if not match or not is_case(match.group(2)):
            return None
        return cls(match.group(1), match.group(2), match.group(3), int(match.group(4)))


def stamp(iso_time: str) -> str:
    """An ISO time without its punctuation (20261201T223001123Z): keys that start with it sort in time order."""
    return re.sub(r"[^0-9TZ]", "", iso_time)


def case_key(case: str, name: str) -> str:
    """{case}/{name}: a document of the case itself (case.json)."""
    return f"{validate_case(case)}/{name}"


def slides_key(case: str, slide: str | None = None) -> str:
    """{case}/slides/ or {case}/slides/{slide}/: the folder a new slide or version number is chosen in."""
    return f"{validate_case(case)}/{SLIDES}/" + (f"{validate_slide(slide)}/" if slide else "")


def slide_claim_key(case: str, slide: str) -> str:
    """{case}/slides/{slide}/slide.json: the create-only claim of a slide number."""
    return f"{slides_key(case, slide)}{SLIDE_CLAIM}"


def numbered_key(case: str, folder: str, number: int) -> str:
    """{case}/{reports|requests}/{n:04d}.json: numbered versions, created once, never replaced."""
    if folder not in (REPORTS, REQUESTS):
        raise InvalidIdError(f"{folder!r} is not a numbered folder")
    return f"{validate_case(case)}/{folder}/{number:04d}.json"


def report_key(case: str, number: int) -> str:
    """{case}/reports/0001.json: the signed report is 1, each amendment the next (created, never replaced)."""
    return numbered_key(case, REPORTS, number)


def request_key(case: str, number: int) -> str:
    """{case}/requests/0001.json: what the pathologist asks of the hospital, numbered like reports."""
    return numbered_key(case, REQUESTS, number)


def numbered_folder(case: str, folder: str) -> str:
    """{case}/{reports|requests}/: where `numbered_key` writes."""
    return numbered_key(case, folder, 1).rsplit("/", 1)[0] + "/"


def number_of(key: str) -> int | None:
    """The number a `numbered_key` ends in, None for a key that is not one."""
    match = _NUMBERED_NAME.fullmatch(key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def annotation_key(case: str, annotation: str) -> str:
    """{case}/annotations/{id}.json: one mark on a slide version (`id` starts with its time: keys sort in time order)."""
    return f"{annotations_folder(case)}{annotation}.json"


def annotations_folder(case: str) -> str:
    return f"{validate_case(case)}/{ANNOTATIONS}/"


def notice_key(station: str, at: str, case: str, kind: str, number: int) -> str:
    """_stations/{station}/{time}_{case}_{kind}_{n}.json: a copy of a report or request for the station that
    registered the case, so a station finds everything addressed to it with one LIST (kind: "report" or "request")."""
    if kind not in NOTICE_KINDS:
        raise InvalidIdError(f"notice kind {kind!r} is not one of {', '.join(NOTICE_KINDS)}")
    return f"{notices_folder(station)}{stamp(at)}_{validate_case(case)}_{kind}_{number:04d}.json"


def notices_folder(station: str) -> str:
    return f"{STATIONS}/{validate_station(station)}/"


def person_key(user: str) -> str:
    """_people/{id}.json (the ID is checked by the people format: u and 8 hex digits)."""
    return f"{PEOPLE}/{user}.json"


def audit_key(at: str, suffix: str) -> str:
    """_audit/{YYYY-MM-DD}/{time}_{suffix}.json: one event, in time order within its day."""
    return f"{audit_folder(at[:10])}{stamp(at)}_{suffix}.json"


def audit_folder(date: str | None = None) -> str:
    """_audit/ or _audit/{YYYY-MM-DD}/."""
    if date is not None and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date):
        raise InvalidIdError(f"{date!r} is not a date (YYYY-MM-DD)")
    return f"{AUDIT}/" + (f"{date}/" if date else "")


def is_case(name: str) -> bool:
    return bool(CASE_PATTERN.fullmatch(name)) and ".." not in name


def validate_case(case: str) -> str:
    """A case ID becomes part of every key: letters, digits, '.', '_', '-', at most 64, never '..'."""
    if not isinstance(case, str) or not is_case(case):
        raise InvalidIdError(
            f"case ID {case!r} is not allowed (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..')"
        )
    return case


def validate_station(station: str) -> str:
    """A station name becomes part of keys: the rules of case IDs."""
    if not isinstance(station, str) or not is_case(station):
        raise InvalidIdError(f"station name {station!r} is not allowed (1-64 letters, digits, '.', '_' or '-')")
    return station


def validate_slide(slide: str) -> str:
    if not isinstance(slide, str) or not SLIDE_PATTERN.fullmatch(slide):
        raise InvalidIdError(f"slide {slide!r} is not allowed (s1, s2, ...)")
    return slide


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidIdError(f"version {version!r} is not allowed (v1, v2, ...)")
    return version


def version_number(name: str) -> int:
    """2 for "v2" (and for "s2"): versions and slides sort by number, not as text (v10 after v9)."""
    return int(name[1:])


def next_name(existing: Iterable[str], letter: str) -> str:
    """The first free ordinal name after `existing` ("s3" after s1, s2; "v1" when there is none)."""
    numbers = [version_number(name) for name in existing if re.fullmatch(letter + r"[1-9][0-9]{0,3}", name)]
    return f"{letter}{max(numbers, default=0) + 1}"


def is_final(triage: dict[str, Any] | None, model: str | None = None) -> bool:
    """Whether `triage` (triage.json) is a complete full-magnification result (of `model`, when given): an edge
    result, or one from before stages were recorded, never is."""
    return bool(triage and triage.get("complete") and triage.get("stage") in FINAL_STAGES
                and (model is None or triage.get("model") == model))


def version_key(ref: SlideRef, name: str) -> str:
    """{case}/slides/{slide}/{version}/{name}: a document of one slide version (manifest.json, triage.json)."""
    return ref.key(name)


def is_plain_key(key: str) -> bool:
    """Whether a listed key is one this layout could have written: '/'-separated names, none empty, "." or "..",
    no backslash and no control character. A listing skips any other (a hostile station's `_arrivals//x`)."""
    parts = key.split("/")
    return bool(key) and "\\" not in key and key.isprintable() and not any(part in ("", ".", "..") for part in parts)


def image_key(name: str) -> str:
    """image.zarr/{name}, below a slide version: a level's metadata (0/zarr.json), a shard, the tissue label."""
    return f"{IMAGE}/{name}"


def heatmap_folder() -> str:
    """heatmap.zarr/, below a slide version: everything of the triage map."""
    return f"{HEATMAP}/"


def arrivals_since(moment: str) -> str:
    """The `_arrivals/` key to list after: everything stamped at or after `moment` (an ISO time or a stamp)."""
    return f"{ARRIVALS}/{stamp(moment)}"


def member(root: str, *names: str) -> str:
    """{root}/{name}/...: an object below a slide version's root as a reader holds it (CASE/slides/s1/v1)."""
    return "/".join((root, *names))


CORRUPT = "corrupt.json"  # below a slide version: the image's pieces found corrupt, for the station to send again
