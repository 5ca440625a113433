"""Where a case goes: s3://BUCKET/PREFIX/{case}/..., its objects' names, and the pseudonymous IDs.

The layout of a case on the store, format `slidestream-case/1`, defined here once and used by every writer and
reader (send, watch, the edge triage, hub, analyze, serve, export-dicom). A case is a specimen; it holds one or
more slides, each sent as one or more versions (a rescan is a new version; nothing of one version is ever shown
with another's image):

    {case}/case.json                          registration: when the clock started, clinical context (no identity)
    {case}/slides/{slide}/slide.json          the slide's claim: the station that took the number (created once, never
                                              replaced, so two stations adding slides to one case never share one)
    {case}/slides/{slide}/{version}/          one scan of one slide ("a slide version"), e.g. slides/s1/v1/:
        image.zarr/                           the OME-Zarr image (tiling/)
        manifest.json                         what of the image has arrived, and how the send ended (transfer/manifest.py)
        pyramid.json                          the shards of the in-between levels the hub built (slidestream/hub_pyramid.py)
        heatmap.zarr/                         the triage heatmap, an NGFF image (inference/)
        triage.json                           the triage result: score, summary, stage (inference/)
        hub.lease                             which hub is analysing this slide version, until when (slidestream/hub.py)
    {case}/reports/{n:04d}.json               the signed report and its amendments, append-only (viewer/)
    {case}/requests/{n:04d}.json              what the pathologist asks of the hospital (another slide, a deeper level)
    {case}/annotations/{id}.json              marks on a slide version, with their author
    _arrivals/{time}_{case}_{slide}_{version}  one empty object per slide version sent, in time order: how the hub
                                              and the worklist find new slides with one LIST, whatever the history
    _stations/{station}/{time}_{case}_{kind}_{n}.json   what goes back to a hospital station (reports, requests)
    _people/{user}.json                       the centre's users (pathologists, stations) and their access
    _audit/{date}/{time}_{random}.json        who opened or signed what, append-only

Names that start with "_" are never case IDs (a case ID starts with a letter or digit).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from transfer.errors import DestinationError

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
LEASE = "hub.lease"
PYRAMID = "pyramid.json"
# triage.json's "stage", what produced it: the edge triage's coarse map before the send, the hub's
# full-magnification map of an arriving case, or a batch `analyze`; only the last two are final
EDGE, HUB, ANALYZE = "edge", "hub", "analyze"
FINAL_STAGES = (HUB, ANALYZE)
CASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLIDE_PATTERN = re.compile(r"s([1-9][0-9]{0,3})")  # s1, s2, ...: ordinal within the case, never a label
VERSION_PATTERN = re.compile(r"v([1-9][0-9]{0,3})")  # v1, v2, ...: v2 is the first rescan
# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens); dotted-quad names are refused by S3 too
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Destination:
    """One case's folder in a bucket; `endpoint` is None for AWS itself."""

    endpoint: str | None
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    case: str
    slide: str = "s1"
    version: str = "v1"

    @property
    def ref(self) -> SlideRef:
        return SlideRef(self.case, self.slide, self.version)

    @property
    def case_root(self) -> str:
        """Key prefix of everything of this case, ending in "/"."""
        return f"{self.prefix}/{self.case}/" if self.prefix else f"{self.case}/"

    @property
    def root(self) -> str:
        """Key prefix of everything of this slide version, ending in "/"."""
        return self.case_root + self.ref.path + "/"

    def key(self, name: str) -> str:
        """The key of `name` relative to the prefix (a case's or the store's own folders, see the module)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def image_key(self, key: str) -> str:
        return f"{self.root}{IMAGE}/{key}"

    @property
    def manifest_key(self) -> str:
        return self.root + MANIFEST

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.root}{IMAGE}"

    @property
    def journal_endpoint(self) -> str:
        """The endpoint as the journal keys it: the same bucket name on two servers is two destinations."""
        return self.endpoint or "aws"


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

    def arrival_key(self, started_at: str) -> str:
        """The `_arrivals/` key of this version's send, in time order."""
        return f"{ARRIVALS}/{stamp(started_at)}_{self.case}_{self.slide}_{self.version}"

    @classmethod
    def parse(cls, root: str) -> SlideRef:
        """{case}/slides/{slide}/{version}, as `root` writes it; `DestinationError` otherwise."""
        parts = root.strip("/").split("/")
        if len(parts) != 4 or parts[1] != SLIDES:
            raise DestinationError(f"{root!r} is not a slide version ({{case}}/{SLIDES}/{{slide}}/{{version}})")
        return cls(validate_case(parts[0]), validate_slide(parts[2]), validate_version(parts[3]))

    @classmethod
    def from_arrival(cls, key: str) -> SlideRef | None:
        """The slide version an `_arrivals/` key names, None for a key that is not one."""
        name = key.rsplit("/", 1)[-1]
        parts = name.split("_")
        if len(parts) < 4:
            return None
        case, slide, version = "_".join(parts[1:-2]), parts[-2], parts[-1]
        try:
            return cls(validate_case(case), validate_slide(slide), validate_version(version))
        except DestinationError:
            return None


def stamp(iso_time: str) -> str:
    """An ISO time without its punctuation (20261201T223001123Z): keys that start with it sort in time order."""
    return re.sub(r"[^0-9TZ]", "", iso_time)


def report_key(case: str, number: int) -> str:
    """{case}/reports/0001.json: the signed report is 1, each amendment the next (created, never replaced)."""
    return f"{case}/{REPORTS}/{number:04d}.json"


def annotation_key(case: str, annotation: str) -> str:
    """{case}/annotations/{id}.json: one mark on a slide version (`id` starts with its time: keys sort in time order)."""
    return f"{case}/{ANNOTATIONS}/{annotation}.json"


def request_key(case: str, number: int) -> str:
    """{case}/requests/0001.json: what the pathologist asks of the hospital, numbered like reports."""
    return f"{case}/{REQUESTS}/{number:04d}.json"


def notice_key(station: str, at: str, case: str, kind: str, number: int) -> str:
    """_stations/{station}/{time}_{case}_{kind}_{n}.json: a copy of a report or request for the station that
    registered the case, so a station finds everything addressed to it with one LIST (kind: "report" or "request")."""
    return f"{STATIONS}/{validate_station(station)}/{stamp(at)}_{case}_{kind}_{number:04d}.json"


def validate_station(station: str) -> str:
    """A station name becomes part of keys: the rules of case IDs."""
    if not CASE_PATTERN.fullmatch(station) or ".." in station:
        raise DestinationError(f"station name {station!r} is not allowed (1-64 letters, digits, '.', '_' or '-')")
    return station


def version_number(name: str) -> int:
    """2 for "v2" (and for "s2"): versions and slides sort by number, not as text (v10 after v9)."""
    return int(name[1:])


def next_name(existing: Iterable[str], letter: str) -> str:
    """The first free ordinal name after `existing` ("s3" after s1, s2; "v1" when there is none)."""
    numbers = [version_number(name) for name in existing if re.fullmatch(letter + r"[1-9][0-9]*", name)]
    return f"{letter}{max(numbers, default=0) + 1}"


def is_final(triage: dict[str, Any] | None, model: str | None = None) -> bool:
    """Whether `triage` (triage.json) is a complete full-magnification result (of `model`, when given): an edge
    result, or one from before stages were recorded, never is."""
    return bool(triage and triage.get("complete") and triage.get("stage") in FINAL_STAGES
                and (model is None or triage.get("model") == model))


def parse_destination(url: str, case: str, endpoint: str | None = None, slide: str = "s1", version: str = "v1") -> Destination:
    """Split s3://BUCKET/PREFIX and check the endpoint, bucket name and IDs before anything is sent."""
    bucket, prefix = parse_store_url(url)
    return Destination(parse_endpoint(endpoint), bucket, prefix, validate_case(case), validate_slide(slide), validate_version(version))


def parse_store_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://BUCKET/PREFIX, with S3's bucket naming rules and no empty, '.' or '..' parts."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise DestinationError(f"{url}: not an S3 URL (expected s3://BUCKET/PREFIX)")
    bucket, prefix = match.group(1), match.group(2).strip("/")
    if not BUCKET_PATTERN.fullmatch(bucket):
        raise DestinationError(f"{url}: {bucket!r} is not a valid S3 bucket name")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise DestinationError(f"{url}: the prefix must not contain empty, '.' or '..' parts")
    return bucket, prefix


def parse_endpoint(endpoint: str | None) -> str | None:
    """The one check of an S3 endpoint URL (--endpoint-url, or $AWS_ENDPOINT_URL when it is None, which boto3 and
    obstore read themselves) before any client sees it: http or https, a host, an optional port, nothing else.
    botocore answers a malformed one with a page of traceback and obstore with a Rust panic. Returns `endpoint`."""
    value = endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL")
    if value is None:
        return None
    where = "--endpoint-url" if endpoint is not None else "AWS_ENDPOINT_URL"
    expected = f"{where} {value!r} is not an endpoint URL (expected http(s)://HOST[:PORT])"
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises for a port that is no number or out of range
    except ValueError as error:
        raise DestinationError(f"{expected}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment:
        raise DestinationError(expected)
    if parts.username is not None or parts.password is not None:
        raise DestinationError(f"{where}: credentials do not belong in the endpoint URL; use the AWS credential chain")
    if port == 0:
        raise DestinationError(f"{expected}: port 0")
    return endpoint


def validate_case(case: str) -> str:
    """A case ID becomes part of every key: letters, digits, '.', '_', '-', at most 64, never '..'."""
    if not CASE_PATTERN.fullmatch(case) or ".." in case:
        raise DestinationError(
            f"case ID {case!r} is not allowed (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..')"
        )
    return case


def validate_slide(slide: str) -> str:
    if not SLIDE_PATTERN.fullmatch(slide):
        raise DestinationError(f"slide {slide!r} is not allowed (s1, s2, ...)")
    return slide


def validate_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise DestinationError(f"version {version!r} is not allowed (v1, v2, ...)")
    return version


CONTEXT_FIELDS = ("specimen_site", "specimen_type", "clinical_question", "surgeon", "callback", "hospital")
CONTEXT_LIMIT = 500  # characters per field: context, not a record


@dataclass(frozen=True)
class CaseRecord:
    """case.json: the registration of a specimen, written once by the station that registers it.

    `registered_at` starts the case's 30-minute clock (a resend or a second slide never restarts it); the context is
    what the remote pathologist needs to read the case, and never the patient's identity (name, patient ID, birth
    date, accession number stay at the hospital, in its local registry)."""

    case: str
    registered_at: str
    station: str | None = None
    context: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        document = {"format": LAYOUT_FORMAT, "case": self.case, "registered_at": self.registered_at,
                    "station": self.station, "context": dict(self.context)}  # fmt: skip
        return json.dumps(document, indent=1).encode()

    @classmethod
    def parse(cls, document: Any) -> CaseRecord | None:
        """A case.json as read from the store; None for anything that is not one."""
        if not isinstance(document, dict) or not isinstance(document.get("case"), str) or not isinstance(document.get("registered_at"), str):
            return None
        context = document.get("context") if isinstance(document.get("context"), dict) else {}
        station = document.get("station") if isinstance(document.get("station"), str) else None
        pairs = tuple((name, str(context[name])[:CONTEXT_LIMIT]) for name in CONTEXT_FIELDS if context.get(name))
        return cls(document["case"], document["registered_at"], station, pairs)
