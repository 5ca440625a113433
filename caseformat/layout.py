"""Where everything of a case lives on the store: the key layout `slidestream-case/2` and the IDs that form keys.

Every key is built here and every key read back is parsed here; no other module spells a store path. The layout is
made so that one S3 policy per station confines it (`objectstore.enrolment`): everything a station writes lies
under `stations/{station}/`, everything the centre writes for that station under `centre/{station}/`, and the
centre's own records under `centre/_people/` and `centre/_audit/`. A case ID names its station
(`{station}.{local}`, e.g. `theatre-3.9f2c41d07a5e3b18`), so a reader finds both of a case's folders from its ID
alone, and a case found under another station's folder is refused rather than believed.

A case is a specimen; it holds one or more slides, each sent as one or more versions (a rescan is a new version;
nothing of one version is ever shown with another's image):

    stations/{station}/                          written by the station only
        {case}/case.json                         registration: when the clock started, clinical context (no identity)
        {case}/slides/{slide}/slide.json         the slide's claim (created once)
        {case}/unsent/{token}.json               a slide file of the specimen the station could not send, and why
        {case}/gross/{token}.jpg                 a gross photograph of the specimen, its pixels only (re-encoded)
        {case}/slides/{slide}/{version}/         one scan of one slide ("a slide version"), e.g. slides/s1/v1/:
            image.zarr/                          the OME-Zarr image (tiling/); the hub adds the shards of the in-between
                                                 levels a send leaves out, so the image stays one NGFF image other
                                                 readers open whole (they are the station's own pixels, downsampled)
            manifest.json                        what of the image has arrived, and how the send ended
            triage.json, heatmap.zarr/           the edge triage's coarse map (never final, whatever it says)
            scan_qc.json, macro.jpg              the station's checks of the scan; the whole-glass image, label blanked
        _arrivals/{time}_{case}_{slide}_{version}  one empty object per slide version sent, in time order
    centre/{station}/                            written by the centre only, readable by that station
        {case}/reports/{n:04d}.json              the signed report and its amendments, append-only (signed)
        {case}/requests/{n:04d}.json             what the pathologist asks of the hospital (signed)
        {case}/annotations/{id}.json             marks on a slide version, with their author (signed)
        {case}/gross-marks/{n:04d}.json          marks on a gross photograph ("sample here", a margin line; signed)
        {case}/slides/{slide}/{version}/         the centre's results for one slide version:
            triage.json, heatmap.zarr/           the hub's (or `analyze`'s) full-magnification map
            hub.lease                            which hub is analysing this slide version, until when
            pyramid.json                         the record of the in-between levels' shards the hub built
            corrupt.json                         the image's pieces found corrupt, for the station to send again
        _notices/{time}_{case}_{kind}_{n}.json   a copy of a signed report, request or gross mark for the station
    centre/_people/{user}.json                   the centre's users (signed)
    centre/_audit/{date}/{time}_{random}.json    who opened or signed what, append-only (signed)

Names that start with "_" are never station names or case IDs (those start with a letter or digit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from caseformat.errors import InvalidIdError

LAYOUT_FORMAT = "slidestream-case/2"
STATION_TREES = "stations"  # stations/{station}/: what that station writes
CENTRE_TREES = "centre"  # centre/{station}/: what the centre writes for that station; centre/_people, centre/_audit
CASE_RECORD = "case.json"
SLIDE_CLAIM = "slide.json"
SLIDES = "slides"
REPORTS = "reports"
REQUESTS = "requests"
ANNOTATIONS = "annotations"
UNSENT = "unsent"
ARRIVALS = "_arrivals"
NOTICES = "_notices"
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
CORRUPT = "corrupt.json"
CENTRE_RESULTS = (TRIAGE, HEATMAP, LEASE, PYRAMID, CORRUPT)  # what of a slide version lies in the centre's folder
# triage.json's "stage", what produced it: the edge triage's coarse map before the send, the hub's
# full-magnification map of an arriving case, or a batch `analyze`; only the last two are final, and only the
# centre's folder holds them (a station's own triage.json is read as the edge's whatever it says)
EDGE, HUB, ANALYZE = "edge", "hub", "analyze"
FINAL_STAGES = (HUB, ANALYZE)
# a station's ID is given by the centre at enrolment: short, lower case, no "." (a case ID's station ends at its first ".")
STATION_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a case's local part, a converted image's name
CASE_PATTERN = re.compile(rf"({STATION_PATTERN.pattern})\.({NAME_PATTERN.pattern})")
SLIDE_PATTERN = re.compile(r"s([1-9][0-9]{0,3})")  # s1, s2, ...: ordinal within the case, never a label
VERSION_PATTERN = re.compile(r"v([1-9][0-9]{0,3})")  # v1, v2, ...: v2 is the first rescan
NOTICE_KINDS = ("report", "request", "mark")  # a mark: the pathologist's mark on a gross photograph
_NOTICE_NAME = re.compile(r"([0-9TZ]{1,32})_(.+)_(report|request|mark)_([0-9]{4,9})\.json")
_NUMBERED_NAME = re.compile(r"([0-9]{4,9})\.json")


@dataclass(frozen=True, order=True)
class SlideRef:
    """One slide version of a case: the unit that is sent, triaged and viewed. It has two folders: the station's
    (`root`, `key`: the image and what the send wrote) and the centre's (`centre_root`, `centre_key`: its results)."""

    case: str
    slide: str = "s1"
    version: str = "v1"

    def __post_init__(self) -> None:
        validate_case(self.case), validate_slide(self.slide), validate_version(self.version)

    @property
    def station(self) -> str:
        return station_of(self.case)

    @property
    def path(self) -> str:
        """Below a case folder: slides/{slide}/{version}."""
        return f"{SLIDES}/{self.slide}/{self.version}"

    @property
    def root(self) -> str:
        """The station's folder of this version, without a trailing slash: stations/{station}/{case}/slides/{s}/{v}."""
        return f"{station_case_folder(self.case)}{self.path}"

    @property
    def centre_root(self) -> str:
        """The centre's folder of this version: centre/{station}/{case}/slides/{s}/{v}."""
        return f"{centre_case_folder(self.case)}{self.path}"

    @property
    def label(self) -> str:
        """How logs and triage.json name it: the case ID, slide and version, never a file name."""
        return f"{self.case}/{self.slide}/{self.version}"

    def key(self, name: str) -> str:
        """An object the station writes for this version (manifest.json, image.zarr/..., the edge's triage.json)."""
        return f"{self.root}/{name}"

    def centre_key(self, name: str) -> str:
        """An object the centre writes for this version (triage.json, heatmap.zarr/..., hub.lease, pyramid.json)."""
        return f"{self.centre_root}/{name}"

    @property
    def claim_key(self) -> str:
        """stations/{station}/{case}/slides/{slide}/slide.json: the claim of this version's slide number."""
        return slide_claim_key(self.case, self.slide)

    def arrival_key(self, started_at: str) -> str:
        """The station's `_arrivals/` key of this version's send, in time order."""
        return f"{arrivals_folder(self.station)}{stamp(started_at)}_{self.case}_{self.slide}_{self.version}"

    @classmethod
    def parse(cls, root: str) -> SlideRef:
        """stations/{station}/{case}/slides/{slide}/{version}, as `root` writes it; `InvalidIdError` otherwise
        (also for a case filed under a station that is not its own)."""
        parts = root.strip("/").split("/")
        if len(parts) != 6 or parts[0] != STATION_TREES or parts[3] != SLIDES:
            raise InvalidIdError(f"{root!r} is not a slide version ({STATION_TREES}/{{station}}/{{case}}/{SLIDES}/{{slide}}/{{version}})")
        ref = cls(validate_case(parts[2]), validate_slide(parts[4]), validate_version(parts[5]))
        if ref.station != parts[1]:
            raise InvalidIdError(f"case {ref.case!r} is filed under station {parts[1]!r}, not its own")
        return ref

    @classmethod
    def from_arrival(cls, key: str) -> SlideRef | None:
        """The slide version an `_arrivals/` key names, None for a key that is not one or that lies in another
        station's folder than the case's own (`stations/{station}/_arrivals/...`)."""
        folder, _, name = key.rpartition("/")
        parts = name.split("_")
        if len(parts) < 4:
            return None
        try:
            ref = cls(validate_case("_".join(parts[1:-2])), validate_slide(parts[-2]), validate_version(parts[-1]))
        except InvalidIdError:
            return None
        return ref if (folder + "/").endswith(arrivals_folder(ref.station)) else None


@dataclass(frozen=True)
class NoticeName:
    """What a `centre/{station}/_notices/` key says: when, which case, a report or a request, and its number."""

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


def station_folder(station: str) -> str:
    """stations/{station}/: everything the station writes, and nothing else (its policy's read-write prefix)."""
    return f"{STATION_TREES}/{validate_station(station)}/"


def centre_folder(station: str) -> str:
    """centre/{station}/: what the centre writes for the station (its policy's read-only prefix)."""
    return f"{CENTRE_TREES}/{validate_station(station)}/"


def stations_folder() -> str:
    """stations/: its subfolders are the stations that have written to the store."""
    return f"{STATION_TREES}/"


def station_case_folder(case: str) -> str:
    """stations/{station}/{case}/: the case as its station wrote it."""
    return f"{station_folder(station_of(case))}{case}/"


def centre_case_folder(case: str) -> str:
    """centre/{station}/{case}/: the centre's documents of the case."""
    return f"{centre_folder(station_of(case))}{case}/"


def case_key(case: str, name: str) -> str:
    """stations/{station}/{case}/{name}: a document of the case itself (case.json)."""
    return f"{station_case_folder(case)}{name}"


def slides_key(case: str, slide: str | None = None) -> str:
    """The station's {case}/slides/ or {case}/slides/{slide}/: the folder a new slide or version number is chosen in."""
    return f"{station_case_folder(case)}{SLIDES}/" + (f"{validate_slide(slide)}/" if slide else "")


def slide_claim_key(case: str, slide: str) -> str:
    """The station's {case}/slides/{slide}/slide.json: the create-only claim of a slide number."""
    return f"{slides_key(case, slide)}{SLIDE_CLAIM}"


def unsent_folder(case: str) -> str:
    """stations/{station}/{case}/unsent/: the slide files of the specimen its station could not send."""
    return f"{station_case_folder(case)}{UNSENT}/"


def unsent_key(case: str, token: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", token):
        raise InvalidIdError(f"{token!r} is not an unsent slide's token (16 hex digits)")
    return f"{unsent_folder(case)}{token}.json"


def numbered_key(case: str, folder: str, number: int) -> str:
    """centre/{station}/{case}/{reports|requests}/{n:04d}.json: numbered versions, created once, never replaced."""
    if folder not in (REPORTS, REQUESTS):
        raise InvalidIdError(f"{folder!r} is not a numbered folder")
    return f"{centre_case_folder(case)}{folder}/{number:04d}.json"


def report_key(case: str, number: int) -> str:
    """The signed report is 1, each amendment the next (created, never replaced)."""
    return numbered_key(case, REPORTS, number)


def request_key(case: str, number: int) -> str:
    """What the pathologist asks of the hospital, numbered like reports."""
    return numbered_key(case, REQUESTS, number)


def numbered_folder(case: str, folder: str) -> str:
    """centre/{station}/{case}/{reports|requests}/: where `numbered_key` writes."""
    return numbered_key(case, folder, 1).rsplit("/", 1)[0] + "/"


def number_of(key: str) -> int | None:
    """The number a `numbered_key` ends in, None for a key that is not one."""
    match = _NUMBERED_NAME.fullmatch(key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def annotation_key(case: str, annotation: str) -> str:
    """centre/{station}/{case}/annotations/{id}.json: one mark on a slide version (`id` starts with its time)."""
    return f"{annotations_folder(case)}{annotation}.json"


def annotations_folder(case: str) -> str:
    return f"{centre_case_folder(case)}{ANNOTATIONS}/"


def notice_key(station: str, at: str, case: str, kind: str, number: int) -> str:
    """centre/{station}/_notices/{time}_{case}_{kind}_{n}.json: a copy of a report or request for the station that
    registered the case, so a station finds everything addressed to it with one LIST (kind: "report" or "request")."""
    if kind not in NOTICE_KINDS:
        raise InvalidIdError(f"notice kind {kind!r} is not one of {', '.join(NOTICE_KINDS)}")
    return f"{notices_folder(station)}{stamp(at)}_{validate_case(case)}_{kind}_{number:04d}.json"


def notices_folder(station: str) -> str:
    return f"{centre_folder(station)}{NOTICES}/"


def people_folder() -> str:
    return f"{CENTRE_TREES}/{PEOPLE}/"


def person_key(user: str) -> str:
    """centre/_people/{id}.json (the ID is checked by the people format: u and 8 hex digits)."""
    return f"{people_folder()}{user}.json"


def audit_key(at: str, suffix: str) -> str:
    """centre/_audit/{YYYY-MM-DD}/{time}_{suffix}.json: one event, in time order within its day."""
    return f"{audit_folder(at[:10])}{stamp(at)}_{suffix}.json"


def audit_folder(date: str | None = None) -> str:
    """centre/_audit/ or centre/_audit/{YYYY-MM-DD}/."""
    if date is not None and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date):
        raise InvalidIdError(f"{date!r} is not a date (YYYY-MM-DD)")
    return f"{CENTRE_TREES}/{AUDIT}/" + (f"{date}/" if date else "")


def arrivals_folder(station: str) -> str:
    """stations/{station}/_arrivals/: the station's sends, in time order."""
    return f"{station_folder(station)}{ARRIVALS}/"


def arrivals_pattern(root: str) -> str:
    """A regular expression for every station's `_arrivals/` keys under the store's `root` (a bucket prefix, or ""):
    what a store event filter selects so that only arrivals wake the hub."""
    base = f"{re.escape(root.strip('/'))}/" if root.strip("/") else ""
    return f"^{base}{STATION_TREES}/[a-z0-9][a-z0-9-]{{0,31}}/{ARRIVALS}/.+"


def station_of_arrival(key: str) -> str | None:
    """The station whose `_arrivals/` folder holds `key` (a key relative to the store root); None for any other key."""
    parts = key.split("/")
    return parts[1] if len(parts) == 4 and parts[0] == STATION_TREES and parts[2] == ARRIVALS and is_station(parts[1]) else None


def arrivals_since(station: str, moment: str) -> str:
    """The key of `station`'s `_arrivals/` to list after: everything stamped at or after `moment` (ISO or stamp)."""
    return f"{arrivals_folder(station)}{stamp(moment)}"


def is_name(name: str) -> bool:
    """A case's local part or a converted image's name: letters, digits, '.', '_', '-', at most 64, never '..'."""
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name


def is_case(name: str) -> bool:
    match = CASE_PATTERN.fullmatch(name)
    return bool(match) and ".." not in name


def validate_case(case: str) -> str:
    """A case ID becomes part of every key: {station}.{local}, the local part 1-64 letters, digits, '.', '_', '-'."""
    if not isinstance(case, str) or not is_case(case):
        raise InvalidIdError(
            f"case ID {case!r} is not allowed ({{station}}.{{local}}: the station's ID, a '.', then 1-64 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit, no '..')"
        )
    return case


def validate_name(name: str) -> str:
    """A local name (a case ID's part after its station, a converted image's case name)."""
    if not isinstance(name, str) or not is_name(name):
        raise InvalidIdError(f"name {name!r} is not allowed (1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit, no '..')")
    return name


def station_of(case: str) -> str:
    """The station a case ID names: what comes before its first "."."""
    return validate_case(case).split(".", 1)[0]


def qualified_case(station: str, case: str) -> str:
    """`case` as a case ID of `station`: kept when it already names the station, else `{station}.{case}`."""
    validate_station(station)
    if isinstance(case, str) and case.startswith(station + ".") and is_case(case):
        return case
    return validate_case(f"{station}.{validate_name(case)}")


def is_station(name: str) -> bool:
    return bool(STATION_PATTERN.fullmatch(name))


def validate_station(station: str) -> str:
    """A station's ID becomes part of keys and case IDs: 1-32 lower-case letters, digits or '-'."""
    if not isinstance(station, str) or not is_station(station):
        raise InvalidIdError(f"station ID {station!r} is not allowed (1-32 lower-case letters, digits or '-', "
                             "starting with a letter or digit)")
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


def version_key(ref: SlideRef, name: str) -> str:
    """A document the station writes for one slide version (manifest.json, the edge's triage.json)."""
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


def member(root: str, *names: str) -> str:
    """{root}/{name}/...: an object below a slide version's root as a reader holds it."""
    return "/".join((root, *names))


def centre_twin(path: str) -> str | None:
    """The centre's folder of the slide version at `path` (a URL or key ending in
    stations/{station}/{case}/slides/{slide}/{version}), None for a path that is no such slide version (a local
    archive, `convert`'s output: their results lie beside their image)."""
    head, separator, tail = ("/" + path.rstrip("/")).rpartition(f"/{STATION_TREES}/")
    try:
        ref = SlideRef.parse(f"{STATION_TREES}/{tail}")
    except InvalidIdError:
        return None
    return f"{head[1:]}/{ref.centre_root}" if head else ref.centre_root


def is_legacy(top_level_folders: Iterable[str]) -> bool:
    """Whether a store's top-level folders are those of layout 1 (`_arrivals/`, `_people/`, `_stations/` at the root):
    its cases are read only after `slidestream migrate`."""
    return bool({"_arrivals", "_people", "_stations"} & {name.strip("/") for name in top_level_folders})


def case_folder_of(version: str) -> str | None:
    """The case folder of a slide version's path or URL (.../{case}/slides/{slide}/{version}), where its case.json
    lies; None for a folder that is no slide version of a case (a converted image of its own)."""
    head, _, tail = version.rstrip("/").rpartition(f"/{SLIDES}/")
    slide, _, name = tail.partition("/")
    return head if head and SLIDE_PATTERN.fullmatch(slide) and VERSION_PATTERN.fullmatch(name) else None


def notices_since(station: str, moment: str) -> str:
    """The key of `station`'s `_notices/` to list after: every copy written at or after `moment` (ISO or stamp)."""
    return f"{notices_folder(station)}{stamp(moment)}"


SCAN_QC = "scan_qc.json"
MACRO = "macro.jpg"


def scan_qc_key(ref: SlideRef) -> str:
    """The station's scan_qc.json of a slide version: its checks of the scan (`caseformat.results.ScanQc`)."""
    return ref.key(SCAN_QC)


def macro_key(ref: SlideRef) -> str:
    """The station's macro.jpg of a slide version: the whole-glass image with the label blanked (`slides.macro`)."""
    return ref.key(MACRO)


ORDERS = "orders"


def order_status_folder(case: str) -> str:
    """stations/{station}/{case}/orders/: where the station says how far it got with the centre's rework orders."""
    return f"{station_case_folder(case)}{ORDERS}/"


def order_status_key(case: str, number: int) -> str:
    """The station's orders/{n:04d}.json of a case: the state of request n's rework order (`documents.OrderStatus`)."""
    return f"{order_status_folder(case)}{number:04d}.json"


GROSS = "gross"
GROSS_MARKS = "gross-marks"
GROSS_TOKEN = re.compile(r"[0-9a-f]{16}")  # a gross photo's name: a digest of its path at the hospital, never its file name


def gross_folder(case: str) -> str:
    """stations/{station}/{case}/gross/: the specimen's gross photographs, as the station re-encoded them."""
    return f"{station_case_folder(case)}{GROSS}/"


def gross_photo_key(case: str, token: str) -> str:
    """The station's gross/{token}.jpg of a case (`token`: 16 hex digits)."""
    if not isinstance(token, str) or not GROSS_TOKEN.fullmatch(token):
        raise InvalidIdError(f"{token!r} is not a gross photo's token (16 hex digits)")
    return f"{gross_folder(case)}{token}.jpg"


def gross_marks_folder(case: str) -> str:
    """centre/{station}/{case}/gross-marks/: the pathologist's marks on the case's gross photographs."""
    return f"{centre_case_folder(case)}{GROSS_MARKS}/"


def gross_mark_key(case: str, number: int) -> str:
    """centre/{station}/{case}/gross-marks/{n:04d}.json: one mark, numbered, created once (`documents.GrossMark`)."""
    return f"{gross_marks_folder(case)}{number:04d}.json"
