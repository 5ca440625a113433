"""What the sender and the hub write about one slide version, typed: the arrival manifest, the triage result, the
hub's lease and its pyramid record, and the bounds of an image's array metadata.

All of them lie on a store ninety stations write to, so each is read like any untrusted document: `read` decodes it
with `caseformat.bounded` and checks every field the readers use, raising `DocumentError` (one line naming the
document and the field). A reader that gets one shows or logs that slide version as unreadable and carries on.

Image bounds (`check_array`), checked from an array's metadata before anything is sized by it: at most
MAX_SIDE px a side, chunk sides of at least MIN_CHUNK_SIDE px (or the whole side, for arrays smaller than that),
at most MAX_CHUNKS chunks and MAX_SHARDS shards per array, dtype uint8 or float32 (what tiling and inference
write), at most MAX_LEVELS levels. A 32768 x 32768 px level in 1 px chunks (a billion chunks) is refused at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from caseformat.bounded import Fields, dump, load
from caseformat.errors import DocumentError, SendFailedError
from caseformat.layout import ANALYZE, EDGE, FINAL_STAGES, HUB, IMAGE, validate_case, validate_slide, validate_version

MANIFEST_FORMATS = ("slidestream-manifest/1", "slidestream-manifest/2")
MANIFEST_FORMAT = MANIFEST_FORMATS[-1]
TRIAGE_FORMAT = "slidestream-triage/1"
PYRAMID_FORMAT = "slidestream-hub-pyramid/1"
SENDING, COMPLETE, FAILED = "sending", "complete", "failed"
STAGES = (EDGE, HUB, ANALYZE)
MANIFEST_LIMIT = 8 * 1024 * 1024  # bytes: a manifest lists every shard key (~20 bytes each), 200,000 at most
SHARDS_LIMIT = 200_000  # shard keys one manifest or pyramid record may list
LEVELS_LIMIT = MAX_LEVELS = 32
REGIONS_LIMIT = 100
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
OBJECT_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}){0,9}")  # "0/c/0/3/5"
MAX_SIDE = 2**20  # px: 2.5 m of tissue at 0.25 um/px, beyond any slide
MIN_CHUNK_SIDE = 16
MAX_CHUNKS = 4 * 1024 * 1024  # per array: 2^20 px a side in 512 px chunks
MAX_SHARDS = 1024 * 1024
DTYPES = ("uint8", "float32")
BIG = 10**15  # bytes, tiles, seconds since the epoch: counts no store reaches


@dataclass(frozen=True)
class LevelCount:
    """One level of a manifest's summary: shards planned and arrived."""

    level: int
    planned: int
    arrived: int
    overview: bool = False


@dataclass(frozen=True)
class Manifest:
    """manifest.json (`transfer.manifest`): which shards of the image are planned and which arrived, and the send's
    state. `slidestream-manifest/1` had no `state` (and may name no slide version or start): `read` reads both."""

    case: str | None = None
    slide: str | None = None
    version: str | None = None
    started_at: str | None = None
    state: str = SENDING
    failed: str | None = None
    plan_final: bool = True
    planned: tuple[str, ...] = ()
    arrived: tuple[str, ...] = ()
    hub_levels: dict[str, int] = field(default_factory=dict)  # a level the hub builds -> the level it is built from
    hub_planned: tuple[str, ...] | None = None  # None: a send without hub levels
    updated_at: str | None = None
    levels: tuple[LevelCount, ...] = ()
    milestones: dict[str, float | None] = field(default_factory=dict)
    bytes_sent: int = 0

    @property
    def failure(self) -> str | None:
        """The reason the send was given up, None unless it failed."""
        return (self.failed or "the send failed") if self.state == FAILED else None

    def check_not_failed(self, where: str) -> None:
        """Raise `SendFailedError` (naming `where`) for a send that was given up: whatever objects remain are not an
        image to read."""
        if self.state == FAILED:
            raise SendFailedError(where, self.failure or "")

    def to_dict(self) -> dict[str, Any]:
        hub = {"hub_levels": self.hub_levels, "hub_planned": list(self.hub_planned)} if self.hub_planned is not None else {}
        failed = {"failed": self.failed} if self.state == FAILED else {}
        return {"format": MANIFEST_FORMAT, "case": self.case, "slide": self.slide, "version": self.version, "image": IMAGE,
                "started_at": self.started_at, "updated_at": self.updated_at, "state": self.state,
                "complete": self.state == COMPLETE, **failed, "plan_final": self.plan_final, "planned": list(self.planned),
                "arrived": list(self.arrived),
                "levels": [{"level": c.level, "planned": c.planned, "arrived": c.arrived, "overview": c.overview} for c in self.levels],
                "milestones": self.milestones, "bytes_sent": self.bytes_sent, **hub}  # fmt: skip

    def to_json(self) -> bytes:
        return dump(self.to_dict())

    @classmethod
    def read(cls, data: bytes, what: str = "manifest.json") -> Manifest:
        return cls.from_document(load(data, what, MANIFEST_LIMIT), what)

    @classmethod
    def from_document(cls, document: Any, what: str = "manifest.json") -> Manifest:
        """The manifest in an already decoded `document` (what a reader that got JSON holds), with the same checks."""
        fields = Fields(document, what)
        fields.choice("format", MANIFEST_FORMATS)
        state = fields.choice("state", (SENDING, COMPLETE, FAILED), optional=True)
        if state is None:  # slidestream-manifest/1
            state = COMPLETE if fields.boolean("complete", optional=True) else SENDING
        hub = fields.fields("hub_levels", optional=True)
        hub_levels = {name: hub.integer(name, 0, LEVELS_LIMIT) for name in hub.document} if hub is not None else {}
        if any(not name.isdigit() or int(name) >= LEVELS_LIMIT for name in hub_levels):
            raise fields.fail("hub_levels", f"level numbers below {LEVELS_LIMIT}")
        hub_planned = _shard_keys(fields, "hub_planned") if fields.document.get("hub_planned") is not None else None
        milestones = fields.fields("milestones", optional=True)
        return cls(fields.checked("case", validate_case, optional=True), fields.checked("slide", validate_slide, optional=True),
                   fields.checked("version", validate_version, optional=True), fields.time("started_at", optional=True), state,
                   fields.text("failed", 5000, optional=True), bool(fields.boolean("plan_final", optional=True) is not False),
                   _shard_keys(fields, "planned"), _shard_keys(fields, "arrived"), hub_levels, hub_planned,
                   fields.time("updated_at", optional=True), tuple(fields.items("levels", LEVELS_LIMIT, _level_count, optional=True)),
                   {name: milestones.number(name, 0, BIG, optional=True) for name in milestones.document} if milestones else {},
                   fields.integer("bytes_sent", 0, BIG, optional=True) or 0)  # fmt: skip

    def with_hub_pyramid(self, pyramid: PyramidRecord | None) -> Manifest:
        """The manifest as a reader needs it where a hub builds levels: the shards of `hub_planned` are planned, those
        the hub's record (`pyramid`, None while it wrote none) lists as built have arrived, those it found empty are
        background. A manifest without hub levels is returned as it is."""
        if self.hub_planned is None:
            return self
        empty = set(pyramid.empty if pyramid else ())
        planned = [key for key in self.hub_planned if key not in empty]
        built = set(pyramid.built if pyramid else ())
        return replace(self, planned=self.planned + tuple(planned), arrived=self.arrived + tuple(key for key in planned if key in built))

    def hub_pyramid_done(self, pyramid: PyramidRecord | None) -> bool:
        """Whether every shard the hub is to build is built or known empty (trivially, without hub levels)."""
        if self.hub_planned is None:
            return True
        if not self.plan_final:
            return False
        done = set(pyramid.built if pyramid else ()) | set(pyramid.empty if pyramid else ())
        return all(key in done for key in self.hub_planned)


@dataclass(frozen=True)
class Region:
    """A connected group of hot tiles, as a level-0 box, and its peak score."""

    x: int
    y: int
    width: int
    height: int
    score: float

    @classmethod
    def from_fields(cls, fields: Fields) -> Region:
        return cls(fields.integer("x", 0, BIG), fields.integer("y", 0, BIG), fields.integer("width", 0, BIG),
                   fields.integer("height", 0, BIG), fields.number("score", 0, 1))


@dataclass(frozen=True)
class Routed:
    """What a score was held to before the model ran (`inference.routing`): the specimen site, the stain seen and the
    slide's um/px, all inside the model's intended use. A triage without it was not routed: no reader shows its score."""

    site: str
    stain: str
    mpp: float

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "stain": self.stain, "mpp": self.mpp}

    @classmethod
    def from_fields(cls, fields: Fields) -> Routed:
        return cls(fields.text("site", 200), fields.text("stain", 50), fields.number("mpp", 0, 1000))


@dataclass(frozen=True)
class Triage:
    """triage.json (`inference.heatmap`): the slide's score, what produced it (`stage`, `model`) and whether the map
    is complete, with its summary (tile counts, hot regions, focus and pen quality)."""

    source: str
    score: float | None
    model: str
    stage: str
    complete: bool
    summary: dict[str, Any] = field(default_factory=dict)  # as written; its fields are checked by `read`
    score_method: str = ""
    refused: str | None = None
    """Why no model scored the slide ("no validated AI for skin"): then `score` is None and the summary holds QC only."""
    routed: Routed | None = None
    """The intended use the model was held to; a score without it is not shown (written before routing, or unrouted)."""

    @property
    def valid_score(self) -> float | None:
        """The score a pathologist may see: only from a routed, unrefused triage with tiles scored."""
        if self.routed is None or self.refused is not None or self.tiles_scored == 0:
            return None
        return self.score

    def final(self, model: str | None = None) -> bool:
        """A complete full-magnification result (of `model`, when given): an edge result never is."""
        return self.complete and self.stage in FINAL_STAGES and (model is None or self.model == model)

    @property
    def tiles_scored(self) -> int:
        return int(self.summary.get("tiles_scored") or 0)

    @property
    def tissue_tiles(self) -> int:
        return int(self.summary.get("tissue_tiles") or 0)

    def to_dict(self) -> dict[str, Any]:
        refused = {"refused": self.refused} if self.refused is not None else {}
        routed = {"routed": self.routed.to_dict()} if self.routed is not None else {}
        return {"format": TRIAGE_FORMAT, "source": self.source, "score": self.score, "score_method": self.score_method,
                "summary": self.summary, "model": self.model, "stage": self.stage, "complete": self.complete, **refused,
                **routed}  # fmt: skip

    def to_json(self) -> bytes:
        return dump(self.to_dict())

    @classmethod
    def read(cls, data: bytes, what: str = "triage.json") -> Triage:
        fields = Fields(load(data, what), what)
        fields.choice("format", (TRIAGE_FORMAT,))
        summary = fields.fields("summary")
        assert summary is not None
        for name in ("tiles_scored", "tissue_tiles", "tiles_measured", "coarse_tiles"):
            summary.integer(name, 0, BIG, optional=True)
        summary.number("tile_level0_px", 0, BIG, optional=True)
        for name in ("max", "mean", "threshold"):
            summary.number(name, 0, 1, optional=True)
        summary.number("area_above_threshold_mm2", 0, BIG, optional=True)
        summary.number("mpp", 0, 1000, optional=True)
        summary.boolean("mpp_assumed", optional=True)
        summary.text("note", 500, optional=True)
        summary.text("detects", 200, optional=True)  # what the model finds, and its validation record in one line
        summary.text("validation", 500, optional=True)
        summary.text("model_sha256", 64, optional=True, pattern=SHA256_PATTERN)  # which weights made the score
        summary.items("top_regions", REGIONS_LIMIT, Region.from_fields, optional=True)
        qc = summary.fields("qc", optional=True)
        if qc is not None:
            qc.integer("focus_tiles", 0, BIG, optional=True)
            for name in ("blur_fraction", "pen_fraction"):
                qc.number(name, 0, 1, optional=True)
            for name in ("blur_threshold", "focus_median"):
                qc.number(name, 0, BIG, optional=True)
        return cls(fields.text("source", 1000), fields.number("score", 0, 1, optional=True), fields.text("model", 200),
                   fields.choice("stage", STAGES), fields.boolean("complete"), summary.document,
                   fields.text("score_method", 200, optional=True, empty=True) or "", fields.text("refused", 200, optional=True),
                   _routed(fields))  # fmt: skip


def _routed(fields: Fields) -> Routed | None:
    routed = fields.fields("routed", optional=True)
    return None if routed is None else Routed.from_fields(routed)


@dataclass(frozen=True)
class Lease:
    """hub.lease: which hub works on a slide version until when (seconds since the epoch); `finished` once done."""

    owner: str
    expires: float
    finished: bool = False

    def to_json(self) -> bytes:
        return dump({"owner": self.owner, "expires": self.expires, **({"finished": True} if self.finished else {})})

    @classmethod
    def read(cls, data: bytes, what: str = "hub.lease") -> Lease:
        fields = Fields(load(data, what), what)
        return cls(fields.text("owner", 200), fields.number("expires", 0, BIG), bool(fields.boolean("finished", optional=True)))


@dataclass(frozen=True)
class PyramidRecord:
    """pyramid.json (`hub.pyramid`): the hub shards built and those found empty, for the send that
    started at `started_at` (a rescan under the same case ID starts a new record)."""

    started_at: str | None
    complete: bool = False
    built: tuple[str, ...] = ()
    empty: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return dump({"format": PYRAMID_FORMAT, "started_at": self.started_at, "complete": self.complete,
                     "built": sorted(self.built), "empty": sorted(self.empty)})  # fmt: skip

    @classmethod
    def read(cls, data: bytes, what: str = "pyramid.json") -> PyramidRecord:
        fields = Fields(load(data, what, MANIFEST_LIMIT), what)
        fields.choice("format", (PYRAMID_FORMAT,))
        return cls(fields.time("started_at", optional=True), bool(fields.boolean("complete")),
                   _shard_keys(fields, "built"), _shard_keys(fields, "empty"))  # fmt: skip


def check_array(what: str, shape: Sequence[int], chunk: Sequence[int], shard: Sequence[int] | None, dtype: str) -> None:
    """`DocumentError` ("unreadable: reason") for an array whose declared geometry is beyond the bounds above; checked
    before a reader sizes anything (a grid of states, a read) by it. `shard` None: not sharded."""
    if len(shape) != len(chunk) or not shape or any(not isinstance(n, int) or n < 1 for n in (*shape, *chunk)):
        raise DocumentError(f"{what}: unreadable: shape {list(shape)} with chunks {list(chunk)}")
    if max(shape) > MAX_SIDE:
        raise DocumentError(f"{what}: unreadable: {max(shape):,} px a side, more than the {MAX_SIDE:,} any slide has")
    if any(c < min(MIN_CHUNK_SIDE, s) for c, s in zip(chunk[-2:], shape[-2:])):
        raise DocumentError(f"{what}: unreadable: chunks of {list(chunk)} px, smaller than {MIN_CHUNK_SIDE} px a side")
    chunks = math.prod(-(-s // c) for s, c in zip(shape, chunk))
    if chunks > MAX_CHUNKS:
        raise DocumentError(f"{what}: unreadable: {chunks:,} chunks, more than {MAX_CHUNKS:,}")
    if shard is not None:
        if len(shard) != len(shape) or any(not isinstance(n, int) or n < c or n % c for n, c in zip(shard, chunk)):
            raise DocumentError(f"{what}: unreadable: shards {list(shard)} of chunks {list(chunk)}")
        shards = math.prod(-(-s // n) for s, n in zip(shape, shard))
        if shards > MAX_SHARDS:
            raise DocumentError(f"{what}: unreadable: {shards:,} shards, more than {MAX_SHARDS:,}")
    if str(dtype) not in DTYPES:
        raise DocumentError(f"{what}: unreadable: data type {dtype}, not {' or '.join(DTYPES)}")


def check_levels(what: str, count: int) -> None:
    if not 1 <= count <= MAX_LEVELS:
        raise DocumentError(f"{what}: unreadable: {count} levels, not 1 to {MAX_LEVELS}")


def _shard_keys(fields: Fields, name: str) -> tuple[str, ...]:
    keys = fields.raw_list(name, SHARDS_LIMIT, optional=True)
    if not all(isinstance(key, str) and OBJECT_KEY.fullmatch(key) for key in keys):
        raise fields.fail(name, "a list of object keys of the image (LEVEL/c/0/ROW/COLUMN)")
    return tuple(keys)


def _level_count(fields: Fields) -> LevelCount:
    return LevelCount(fields.integer("level", 0, LEVELS_LIMIT), fields.integer("planned", 0, BIG), fields.integer("arrived", 0, BIG),
                      bool(fields.boolean("overview", optional=True)))  # fmt: skip


CORRUPT_FORMAT = "slidestream-corrupt/1"


@dataclass(frozen=True)
class CorruptRecord:
    """corrupt.json beside a slide version's manifest: the image's objects a reader found corrupt (a shard whose index
    or chunk fails its CRC32C), for the send that started at `started_at`. It is the centre's request to the station,
    which still holds the slide, to send those objects again (`transfer.manifest.resend_keys`); every reader refuses
    them meanwhile (no tile shown, scored or built on), and a reader that finds one whole again takes it off."""

    started_at: str | None
    keys: tuple[str, ...] = ()  # image-relative, as the manifest lists them: "0/c/0/3/5"
    updated_at: str | None = None

    def with_key(self, key: str, started_at: str | None, now: str) -> CorruptRecord:
        """This record with `key` added; a record of an earlier send (another `started_at`) is started over."""
        keys = self.keys if self.started_at == started_at else ()
        return CorruptRecord(started_at, tuple(sorted({*keys, key})), now)

    def without(self, keys: set[str], now: str) -> CorruptRecord:
        return CorruptRecord(self.started_at, tuple(key for key in self.keys if key not in keys), now)

    def to_json(self) -> bytes:
        return dump({"format": CORRUPT_FORMAT, "started_at": self.started_at, "updated_at": self.updated_at, "keys": list(self.keys)})

    @classmethod
    def read(cls, data: bytes, what: str = "corrupt.json") -> CorruptRecord:
        fields = Fields(load(data, what, MANIFEST_LIMIT), what)
        fields.choice("format", (CORRUPT_FORMAT,))
        return cls(fields.time("started_at", optional=True), _shard_keys(fields, "keys"), fields.time("updated_at", optional=True))


SCAN_QC_FORMAT = "slidestream-scan-qc/1"
SCAN_QC_LIMIT = 64 * 1024  # bytes: 32 checks of a 300-character line each fit with room to spare
CHECK_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")  # "tissue-missed", "focus": a newer station's new check reads too
CHECKS_LIMIT = 32
CHECK_LINE_LIMIT = 300  # characters: one line for the technician and the pathologist


@dataclass(frozen=True)
class ScanCheck:
    """One check of a scan: `passed` False is a reason to rescan, told as `line` ("rescan advised: ..."); None is a
    check that could not be made (the line says why); `measure` is the number it was judged by, where there is one."""

    name: str
    passed: bool | None
    line: str
    measure: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "line": self.line, "measure": self.measure}

    @classmethod
    def from_fields(cls, fields: Fields) -> ScanCheck:
        passed = fields.document.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise fields.fail("passed", "true, false or null")
        return cls(fields.text("name", 32, pattern=CHECK_NAME), passed, fields.text("line", CHECK_LINE_LIMIT),
                   fields.number("measure", -BIG, BIG, optional=True))  # fmt: skip


@dataclass(frozen=True)
class ScanQc:
    """scan_qc.json, in the station's folder of a slide version: what the station found wrong with the scan while
    sending it (`tiling.scan_qc`), so the centre sees with the case what the technician was told. `macro`: whether a
    de-identified macro.jpg was sent beside it."""

    case: str
    slide: str
    version: str
    checked_at: str
    checks: tuple[ScanCheck, ...] = ()
    macro: bool = False

    @property
    def advice(self) -> list[str]:
        """The lines of the checks that failed: what the technician is told at once, and the case shows."""
        return [check.line for check in self.checks if check.passed is False]

    def to_json(self) -> bytes:
        return dump({"format": SCAN_QC_FORMAT, "case": self.case, "slide": self.slide, "version": self.version,
                     "checked_at": self.checked_at, "macro": self.macro, "checks": [check.to_dict() for check in self.checks]})  # fmt: skip

    @classmethod
    def read(cls, data: bytes, what: str = "scan_qc.json") -> ScanQc:
        fields = Fields(load(data, what, SCAN_QC_LIMIT), what)
        fields.choice("format", (SCAN_QC_FORMAT,))
        return cls(fields.checked("case", validate_case), fields.checked("slide", validate_slide),
                   fields.checked("version", validate_version), fields.time("checked_at"),
                   tuple(fields.items("checks", CHECKS_LIMIT, ScanCheck.from_fields)), bool(fields.boolean("macro", optional=True)))  # fmt: skip
