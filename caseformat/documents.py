"""The documents of a case and of the centre, typed: each is written by `to_json` and read back by `read`, the one
bounded parse of its format, so writer and readers cannot drift apart.

Who writes what decides how it is read. A station writes its cases' registration (case.json) and slide claims
(slide.json): read as untrusted input, bounded. The centre writes reports, requests, people, annotations and the
audit log for others to act on: each is signed (`caseformat.signing`) and `read` refuses one that does not verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from caseformat.bounded import Fields, dump, load, parse_time
from caseformat.errors import DocumentError
from caseformat.layout import (
    LAYOUT_FORMAT,
    station_of,
    validate_case,
    validate_slide,
    validate_station,
    validate_version,
)
from caseformat.signing import SigningKey, TrustedKeys

UNSENT_TOKEN = re.compile(r"[0-9a-f]{16}")
CONTEXT_FIELDS = ("specimen_site", "specimen_type", "clinical_question", "surgeon", "callback", "hospital")
CONTEXT_LIMIT = 500  # characters per field: context, not a record
NAME_LIMIT = 100
LATE_REASON_LIMIT = 500  # characters: why a frozen section was reported after 20 minutes, in a line or two
TEXT_LIMIT = 20_000
NUMBER_LIMIT = 9999
SLIDES_LIMIT = 100
USER_PATTERN = re.compile(r"u[0-9a-f]{8}")
CATEGORIES = ("benign", "malignant", "deferred", "insufficient")
PATHOLOGIST, STATION = "pathologist", "station"
ROLES = (PATHOLOGIST, STATION)
SIGN_IN, SIGN_OUT = "sign-in", "sign-out"
AUDIT_ACTIONS = ("open-case", "open-slide", "sign", "amend", "request", "annotate", SIGN_IN, SIGN_OUT)
SIGN_IN_METHODS = ("link", "oidc")  # a personal sign-in link; the centre's directory (OpenID Connect)
ANNOTATION_KINDS = {"point": (1, 1), "line": (2, 2), "polygon": (3, 500)}  # corners each kind takes (fewest, most)
ANNOTATION_TEXT_LIMIT = 200
MAX_COORDINATE = 10_000_000  # level-0 pixels: beyond any slide
ANNOTATION_ID = re.compile(r"[0-9]{8}T[0-9]+Z-[0-9a-f]{8}")
Signed = TypeVar("Signed", bound="CentreDocument")


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
        return dump({"format": LAYOUT_FORMAT, "case": self.case, "registered_at": self.registered_at,
                     "station": self.station, "context": dict(self.context)})  # fmt: skip

    @classmethod
    def read(cls, data: bytes, what: str = "case.json") -> CaseRecord:
        fields = Fields(load(data, what), what)
        context = fields.fields("context", optional=True)
        pairs = tuple((name, text) for name in CONTEXT_FIELDS
                      if context is not None and (text := context.text(name, CONTEXT_LIMIT, optional=True, empty=True)))  # fmt: skip
        case, station = fields.checked("case", validate_case), fields.checked("station", validate_station, optional=True)
        if station not in (None, station_of(case)):  # the station a case belongs to is the one its ID names
            raise DocumentError(f"{what}: station {station!r} is not the one case {case} belongs to ({station_of(case)})")
        return cls(case, fields.time("registered_at"), station_of(case), pairs)


@dataclass(frozen=True)
class SlideClaim:
    """slide.json: which station took a slide number of a case (created once, never replaced)."""

    case: str
    slide: str
    station: str
    claimed_at: str | None = None

    def to_json(self) -> bytes:
        return dump({"format": LAYOUT_FORMAT, "case": self.case, "slide": self.slide, "station": self.station,
                     "claimed_at": self.claimed_at})  # fmt: skip

    @classmethod
    def read(cls, data: bytes, what: str = "slide.json") -> SlideClaim:
        fields = Fields(load(data, what), what)
        claim = cls(fields.checked("case", validate_case), fields.checked("slide", validate_slide),
                    fields.checked("station", validate_station), fields.time("claimed_at", optional=True))  # fmt: skip
        if claim.station != station_of(claim.case):
            raise DocumentError(f"{what}: station {claim.station!r} is not the one case {claim.case} belongs to")
        return claim


UNSENT_FORMAT = "slidestream-unsent/1"
# why a slide of a specimen never left the hospital: the station's word for it, never the file's name (which may
# hold an accession number or a patient's name)
UNSENT_KINDS = {
    "unreadable": "the slide file could not be read (damaged, truncated or not a slide)",
    "unsupported": "the slide file is in a format slidestream does not read",
    "duplicate": "a copy of a slide sent before",
    "refused": "the hospital's checks refused it (identity in the clinical context, or the store refused it)",
}


@dataclass(frozen=True)
class UnsentSlide:
    """unsent/{token}.json of a case, in the station's folder: one slide file of the specimen that the station could
    not send, so the centre knows what is missing ("3 of 6 slides failed at the hospital") instead of waiting for it.
    `token` names the file without naming it (a digest of the case and the file's path at the hospital)."""

    case: str
    token: str
    kind: str
    at: str

    @property
    def reason(self) -> str:
        return UNSENT_KINDS[self.kind]

    def to_json(self) -> bytes:
        return dump({"format": UNSENT_FORMAT, "case": self.case, "token": self.token, "kind": self.kind, "at": self.at})

    @classmethod
    def read(cls, data: bytes, what: str = "unsent slide") -> UnsentSlide:
        fields = Fields(load(data, what), what)
        fields.choice("format", (UNSENT_FORMAT,))
        return cls(fields.checked("case", validate_case), fields.text("token", 16, pattern=UNSENT_TOKEN),
                   fields.choice("kind", tuple(UNSENT_KINDS)), fields.time("at"))  # fmt: skip


@dataclass(frozen=True)
class Author:
    """A named person of the centre, as a signed document names them (`role` where the format records it)."""

    id: str
    name: str
    role: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, **({"role": self.role} if self.role else {})}

    @classmethod
    def from_fields(cls, fields: Fields) -> Author:
        return cls(fields.text("id", 9, pattern=USER_PATTERN), fields.text("name", NAME_LIMIT),
                   fields.choice("role", ROLES, optional=True))  # fmt: skip


@dataclass(frozen=True)
class CentreDocument:
    """A document only the centre writes: `to_json` signs it, `read` verifies it before anything else."""

    FORMAT: ClassVar[str]
    EARLIER: ClassVar[tuple[str, ...]] = ()  # earlier formats this reader still reads

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, key: SigningKey) -> bytes:
        return dump(key.sign({"format": self.FORMAT, **self.to_dict()}))

    @classmethod
    def from_fields(cls: type[Signed], fields: Fields) -> Signed:
        raise NotImplementedError

    @classmethod
    def read(cls: type[Signed], data: bytes, what: str, trusted: TrustedKeys) -> Signed:
        """The document in `data` if the centre signed it and it is well formed; `DocumentError` naming `what`."""
        document = trusted.verify(load(data, what), what)
        fields = Fields(document, what)
        fields.choice("format", (cls.FORMAT, *cls.EARLIER))
        return cls.from_fields(fields)


@dataclass(frozen=True)
class SlideRead:
    """A slide version a report was signed on."""

    slide: str
    version: str

    @classmethod
    def from_fields(cls, fields: Fields) -> SlideRead:
        return cls(fields.checked("slide", validate_slide), fields.checked("version", validate_version))


@dataclass(frozen=True)
class Report(CentreDocument):
    """CASE/reports/NNNN.json: the signed report (1) or an amendment (2, 3, ...), for the station named in it."""

    FORMAT: ClassVar[str] = "slidestream-report/3"
    case: str
    number: int
    category: str
    diagnosis: str
    author: Author
    signed_at: str
    station: str | None = None
    margins: str | None = None
    comment: str | None = None
    slides: tuple[SlideRead, ...] = ()
    amends: int | None = None
    missing: str | None = None  # the slides missing when it was signed, as the pathologist was shown and confirmed them
    late_reason: str | None = None  # why report 1 came after 20 minutes of the registration (CAP ANP.11820)

    @property
    def kind(self) -> str:
        return "signed" if self.number == 1 else "amendment"

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "number": self.number, "kind": self.kind, "station": self.station,
                "category": self.category, "diagnosis": self.diagnosis, "margins": self.margins, "comment": self.comment,
                "author": self.author.to_dict(), "signed_at": self.signed_at,
                "slides": [{"slide": read.slide, "version": read.version} for read in self.slides], "amends": self.amends,
                **({"missing": self.missing} if self.missing else {}),
                **({"late_reason": self.late_reason} if self.late_reason else {})}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> Report:
        number = fields.integer("number", 1, NUMBER_LIMIT)
        amends = fields.integer("amends", 1, NUMBER_LIMIT, optional=True)
        if amends != (number - 1 if number > 1 else None) or fields.choice("kind", ("signed", "amendment")) != ("signed" if number == 1 else "amendment"):
            raise DocumentError(f"{fields.what}: number {number}, kind and amends disagree")
        author = fields.fields("author")
        assert author is not None
        return cls(fields.checked("case", validate_case), number, fields.choice("category", CATEGORIES),
                   fields.text("diagnosis", TEXT_LIMIT), Author.from_fields(author), fields.time("signed_at"),
                   fields.checked("station", validate_station, optional=True), fields.text("margins", TEXT_LIMIT, optional=True),
                   fields.text("comment", TEXT_LIMIT, optional=True), tuple(fields.items("slides", SLIDES_LIMIT, SlideRead.from_fields)),
                   amends, fields.text("missing", 2000, optional=True), fields.text("late_reason", LATE_REASON_LIMIT, optional=True))  # fmt: skip


# rework orders, as IHE DPOW (Digital Pathology Workflow) names what a pathologist orders of the lab, and their words
ORDERS = {"recut": "recut", "deeper-level": "deeper level", "additional-section": "additional section", "stain": "stain",
          "rescan": "rescan", "new-block": "new block"}  # fmt: skip
STAIN_LIMIT = 100  # characters: a stain's name ("PAS", "cytokeratin AE1/AE3")


@dataclass(frozen=True)
class Request(CentreDocument):
    """CASE/requests/NNNN.json: what the pathologist asks of the hospital: free text, or a rework order (`order`, one of
    ORDERS, of `slide` or of the specimen; `stain` names the stain a "stain" order asks for). The station acknowledges
    an order and marks it fulfilled by the slide that answers it (`OrderStatus`)."""

    FORMAT: ClassVar[str] = "slidestream-request/3"
    EARLIER: ClassVar[tuple[str, ...]] = ("slidestream-request/2",)  # free text only
    case: str
    number: int
    what: str
    author: Author
    asked_at: str
    station: str | None = None
    slide: str | None = None
    order: str | None = None
    stain: str | None = None

    kind: ClassVar[str] = "request"

    @property
    def order_words(self) -> str | None:
        """The order as a person reads it ("deeper level of s1", "stain PAS of the specimen"); None for free text."""
        return order_words(self.order, self.stain, self.slide) if self.order is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "number": self.number, "what": self.what, "slide": self.slide, "order": self.order,
                "stain": self.stain, "station": self.station, "author": self.author.to_dict(), "asked_at": self.asked_at}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> Request:
        author = fields.fields("author")
        assert author is not None
        request = cls(fields.checked("case", validate_case), fields.integer("number", 1, NUMBER_LIMIT), fields.text("what", 2000),
                      Author.from_fields(author), fields.time("asked_at"), fields.checked("station", validate_station, optional=True),
                      fields.checked("slide", validate_slide, optional=True), fields.choice("order", tuple(ORDERS), optional=True),
                      fields.text("stain", STAIN_LIMIT, optional=True))  # fmt: skip
        if problem := order_problem(request.order, request.stain, request.slide):
            raise DocumentError(f"{fields.what}: {problem}")
        return request


def order_words(order: str, stain: str | None, slide: str | None) -> str:
    stain_name = f" {stain}" if stain else ""
    return f"{ORDERS[order]}{stain_name} of {slide or 'the specimen'}"


def order_problem(order: str | None, stain: str | None, slide: str | None) -> str | None:
    """Why an order cannot be carried out as given (None: it can): a stain order names its stain and no other order
    does, a rescan names the slide it rescans."""
    if order is not None and order not in ORDERS:
        return f"order {order!r} is not one of {', '.join(ORDERS)}"
    if (order == "stain") != (stain is not None):
        return "a stain order names its stain, and only a stain order does"
    if order == "rescan" and slide is None:
        return "a rescan names the slide to rescan"
    return None


ORDER_STATUS_FORMAT = "slidestream-order-status/1"
ACKNOWLEDGED, FULFILLED = "acknowledged", "fulfilled"
ORDER_STATES = (ACKNOWLEDGED, FULFILLED)


@dataclass(frozen=True)
class OrderStatus:
    """The station's orders/{n}.json of a case: how far it got with request n's rework order. Written by the station
    in its own folder, so read as untrusted input: "acknowledged" when the order reached the lab, "fulfilled" with the
    slide version that answers it (a new slide of the specimen, or for a rescan a new version of its slide)."""

    case: str
    number: int
    order: str
    state: str
    at: str
    slide: str | None = None  # the slide the order names (a rescan's, which only a new version of it fulfils)
    fulfilled_by: SlideRead | None = None

    def to_json(self) -> bytes:
        fulfilled = {"slide": self.fulfilled_by.slide, "version": self.fulfilled_by.version} if self.fulfilled_by else None
        return dump({"format": ORDER_STATUS_FORMAT, "case": self.case, "number": self.number, "order": self.order, "slide": self.slide,
                     "state": self.state, "at": self.at, "fulfilled_by": fulfilled})  # fmt: skip

    @classmethod
    def read(cls, data: bytes, what: str = "order status") -> OrderStatus:
        fields = Fields(load(data, what), what)
        fields.choice("format", (ORDER_STATUS_FORMAT,))
        state = fields.choice("state", ORDER_STATES)
        fulfilled = fields.fields("fulfilled_by", optional=state != FULFILLED)
        if state == ACKNOWLEDGED and fulfilled is not None:
            raise DocumentError(f"{what}: an acknowledged order names no slide that fulfils it")
        return cls(fields.checked("case", validate_case), fields.integer("number", 1, NUMBER_LIMIT), fields.choice("order", tuple(ORDERS)),
                   state, fields.time("at"), fields.checked("slide", validate_slide, optional=True),
                   SlideRead.from_fields(fulfilled) if fulfilled is not None else None)  # fmt: skip


def read_notice(data: bytes, what: str, trusted: TrustedKeys, kind: str) -> Report | Request:
    """A `centre/{station}/_notices/` copy of a report or request (`kind`, from its key): the signed document itself."""
    if kind not in ("report", "request"):  # a gross mark's notice is read by `GrossMark.read`
        raise DocumentError(f"{what}: not a report or request")
    return Report.read(data, what, trusted) if kind == "report" else Request.read(data, what, trusted)


@dataclass(frozen=True)
class Person(CentreDocument):
    """_people/{id}.json: one user of the centre, and until when their links work (`serial` ends earlier links).

    A station user names the enrolled station whose cases they see (`station`), never a display name."""

    FORMAT: ClassVar[str] = "slidestream-person/2"
    id: str
    name: str
    role: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None
    serial: int = 1
    station: str | None = None

    @property
    def who(self) -> dict[str, str]:
        """How the audit log and reports name them."""
        return {"id": self.id, "name": self.name, "role": self.role}

    def refusal(self, now: datetime) -> str | None:
        """Why this person's links do not work now, or None."""
        if self.revoked_at:
            return f"user {self.id} ({self.name}) was revoked at {self.revoked_at}; ask the centre for access"
        if self.expires_at and parse_time(self.expires_at) <= now:
            return f"the access of user {self.id} ({self.name}) expired at {self.expires_at}; ask the centre to renew it"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked_at": self.revoked_at, "serial": self.serial, "station": self.station}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> Person:
        return cls(fields.text("id", 9, pattern=USER_PATTERN), fields.text("name", NAME_LIMIT), fields.choice("role", ROLES),
                   fields.time("created_at"), fields.time("expires_at", optional=True), fields.time("revoked_at", optional=True),
                   fields.integer("serial", 1, 2**31), fields.checked("station", validate_station, optional=True))  # fmt: skip


@dataclass(frozen=True)
class AuditEvent(CentreDocument):
    """_audit/DATE/...json: who opened or signed what, and who signed in or out how (`method`, no case). IDs and
    numbers only, never a file name or free text."""

    FORMAT: ClassVar[str] = "slidestream-audit/2"
    at: str
    action: str
    case: str | None  # None: a sign-in or sign-out, which opens no case
    user: Author | None = None  # None: a case link (`case_token`)
    slide: str | None = None
    version: str | None = None
    report: int | None = None
    method: str | None = None  # how a sign-in or sign-out's session was opened: one of SIGN_IN_METHODS

    def to_dict(self) -> dict[str, Any]:
        user = self.user.to_dict() if self.user else {"case_token": self.case}
        return {"at": self.at, "user": user, "action": self.action, "case": self.case, "slide": self.slide,
                "version": self.version, "report": self.report, **({"method": self.method} if self.method else {})}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> AuditEvent:
        action = fields.choice("action", AUDIT_ACTIONS)
        signing_in = action in (SIGN_IN, SIGN_OUT)
        case = None if signing_in else fields.checked("case", validate_case)
        method = fields.choice("method", SIGN_IN_METHODS, optional=not signing_in)
        user = fields.fields("user")
        assert user is not None
        author = None if "case_token" in user.document else Author.from_fields(user)
        if author is None and (signing_in or user.checked("case_token", validate_case) != case):
            raise DocumentError(f"{fields.what}: a case link's event names another case, or signs in")
        if (signing_in and fields.document.get("case") is not None) or (method is not None and not signing_in):
            raise DocumentError(f"{fields.what}: a sign-in or sign-out names a method and no case; nothing else does")
        return cls(fields.time("at"), action, case, author,
                   fields.checked("slide", validate_slide, optional=True), fields.checked("version", validate_version, optional=True),
                   fields.integer("report", 1, NUMBER_LIMIT, optional=True), method)  # fmt: skip


@dataclass(frozen=True)
class Annotation(CentreDocument):
    """CASE/annotations/{id}.json: a point, line or polygon in level-0 pixels of one slide version, with its author."""

    FORMAT: ClassVar[str] = "slidestream-annotation/2"
    id: str
    case: str
    slide: str
    version: str
    kind: str
    points: tuple[tuple[float, float], ...]
    author: Author
    created_at: str
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "case": self.case, "slide": self.slide, "version": self.version, "kind": self.kind,
                "points": [[x, y] for x, y in self.points], "text": self.text, "author": self.author.to_dict(),
                "created_at": self.created_at}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> Annotation:
        kind = fields.choice("kind", tuple(ANNOTATION_KINDS))
        fewest, most = ANNOTATION_KINDS[kind]
        raw = fields.raw_list("points", most)
        points = tuple(_point(point, fields.what) for point in raw)
        if len(points) < fewest:
            raise DocumentError(f"{fields.what}: a {kind} has at least {fewest} points")
        author = fields.fields("author")
        assert author is not None
        return cls(fields.text("id", 40, pattern=ANNOTATION_ID), fields.checked("case", validate_case),
                   fields.checked("slide", validate_slide), fields.checked("version", validate_version), kind, points,
                   Author.from_fields(author), fields.time("created_at"), fields.text("text", ANNOTATION_TEXT_LIMIT, optional=True, empty=True) or "")  # fmt: skip


def _point(value: Any, what: str) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) and abs(c) <= MAX_COORDINATE for c in value)):  # fmt: skip
        raise DocumentError(f"{what}: points must be [x, y] pairs within ±{MAX_COORDINATE:,} pixels")
    return float(value[0]), float(value[1])


GROSS_MARK_KINDS = {"point": 1, "line": 2}  # "sample here"; a line along a margin
GROSS_PHOTO_SIDE = 4096  # px: a gross photograph's longest side as the station sends it, and a mark's bound


@dataclass(frozen=True)
class GrossMark(CentreDocument):
    """CASE/gross-marks/{n:04d}.json: the pathologist's mark on one gross photograph of the case (`photo`: its token),
    in the photo's pixels as the station sent it: a point ("sample here") or a two-point line (a margin), with a
    short text, for the station named in it (a copy goes to its notices, like a report's)."""

    FORMAT: ClassVar[str] = "slidestream-gross-mark/1"
    case: str
    number: int
    photo: str
    kind: str
    points: tuple[tuple[float, float], ...]
    text: str
    author: Author
    created_at: str
    station: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "number": self.number, "photo": self.photo, "kind": self.kind,
                "points": [[x, y] for x, y in self.points], "text": self.text, "author": self.author.to_dict(),
                "created_at": self.created_at, "station": self.station}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Fields) -> GrossMark:
        kind = fields.choice("kind", tuple(GROSS_MARK_KINDS))
        points = tuple(_point(point, fields.what) for point in fields.raw_list("points", GROSS_MARK_KINDS[kind]))
        if len(points) != GROSS_MARK_KINDS[kind] or not all(0 <= c <= GROSS_PHOTO_SIDE for point in points for c in point):
            raise DocumentError(f"{fields.what}: a {kind} has {GROSS_MARK_KINDS[kind]} points within the photo ({GROSS_PHOTO_SIDE} px)")
        author = fields.fields("author")
        assert author is not None
        return cls(fields.checked("case", validate_case), fields.integer("number", 1, NUMBER_LIMIT),
                   fields.text("photo", 16, pattern=UNSENT_TOKEN), kind, points,
                   fields.text("text", ANNOTATION_TEXT_LIMIT, optional=True, empty=True) or "", Author.from_fields(author),
                   fields.time("created_at"), fields.checked("station", validate_station, optional=True))  # fmt: skip
