"""The hospital station: registers specimens, gives each slide file its case, slide and version, and reads what the
pathology centre sends back (reports and requests): only what the centre signed for this station, as its key names it
(`Station.notice`); every other store document is refused in one line. Store text is shown as text
(`slides.errors.printable`), in the log and in the outbox file, and a delivered report is never replaced. What comes
back is delivered once per (case, kind, number), as the registry's ledger records it (`Station.deliver`): the
`centre/{station}/_notices/` notices are the fast path, and the station also reads the reports of its own open cases
(`Station.reconcile`), so a notice that lands late, or never, loses no report.

One registration path for `send` and `watch`: a specimen (a hot-folder subfolder, a `--context-file`, or a slide
file alone) is registered once, first in the local registry (station/registry.py, with the patient's identity:
the case ID and the clock are chosen and recorded there before any store request, so a timeout, a retry or a restart
finds the same case and clock), then on the store (case.json, create-only, with the station, the clinical context and
that clock, `registered_at`; one already there for the case from this station is the same registration).
A new slide's number is claimed on the store with a create-only `CASE/slides/sN/slide.json`, so two stations adding
slides to one case never take the same number.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from caseformat.bounded import DOCUMENT_LIMIT, utc_now
from caseformat.documents import (
    ACKNOWLEDGED,
    CONTEXT_FIELDS,
    CONTEXT_LIMIT,
    FULFILLED,
    CaseRecord,
    GrossMark,
    OrderStatus,
    Report,
    Request,
    SlideRead,
    UnsentSlide,
    read_notice,
)
from caseformat.errors import DocumentError
from caseformat.layout import (
    CASE_RECORD,
    LAYOUT_FORMAT,
    REPORTS,
    REQUESTS,
    NoticeName,
    SlideRef,
    case_key,
    gross_mark_key,
    gross_marks_folder,
    next_name,
    notices_folder,
    number_of,
    numbered_folder,
    order_status_folder,
    order_status_key,
    qualified_case,
    report_key,
    request_key,
    slides_key,
    stamp,
    station_of,
    unsent_folder,
    unsent_key,
    validate_station,
)
from caseformat.signing import KeyFileError, TrustedKeys
from objectstore.clients import parse_endpoint, read_ca_bundle
from objectstore.errors import AccessDeniedError, ObjectNotFoundError, StorageError, UnreachableError
from slides import SlidestreamError
from slides.errors import printable
from station.registry import (
    FileFacts,
    Registry,
    Specimen,
    new_case_id,
    storable,
    store_key,
)
from transfer.errors import JournalError
from transfer.identity import content_sha256, sample_digest
from transfer.target import parse_store_url

if TYPE_CHECKING:
    from hospital.systems import HospitalSystems
    from objectstore import S3Storage

T = TypeVar("T")

SIDECAR = "specimen.json"
IDENTITY_FIELDS = ("accession", "patient_name", "patient_id", "birth_date", "sex")  # kept in the local registry only
RESEND, DUPLICATE, RESCAN, NEW_SLIDE = "resend", "duplicate", "rescan", "new slide"
# seconds a notice's time stamp must lie in the past before the cursor moves over it: a notice the centre is still
# uploading may carry an older stamp than one already listed, and a planted key stamped in the future must not move
# the cursor past every genuine notice to come (newer ones are remembered in memory until then)
NOTICE_SETTLE = 60
LOCAL_NAME_LIMIT = 100  # characters of the specimen's name in an outbox file name
# the reconciliation (`Station.reconcile`): the reports of the cases this station registered in the last RECONCILE_HOURS
# are read from the case itself, RECONCILE_CASES cases a round; those without a final report delivered yet (any
# category but "deferred", which says the answer is still to come) first, then those with one (an amendment may follow)
RECONCILE_HOURS, RECONCILE_CASES = 24, 20
AWAITING_HOURS = 12  # a case registered this recently without a final report keeps its station's notices polled each second
NOT_FINAL = ("deferred",)


class SpecimenError(SlidestreamError, ValueError):
    """A specimen cannot be registered as described (a sidecar that cannot be read, or context that identifies)."""


class AlreadySent(Exception):
    """The same bytes were sent before from another file (a copy): watch logs it and sends nothing."""

    def __init__(self, resolution: Resolution) -> None:
        super().__init__(resolution.ref.label)
        self.resolution = resolution


def default_station() -> str:
    """This machine's station ID when none is given (a single-machine set-up; an enrolled station is given its ID):
    its host name, made a valid station ID."""
    return validate_station(re.sub(r"[^a-z0-9]+", "-", socket.gethostname().lower()).strip("-")[:32].strip("-") or "station")


@dataclass(frozen=True)
class SpecimenInfo:
    """What the hospital says of a specimen before it is registered: its local name and key, the patient's identity
    (never sent) and the clinical context (sent, in case.json)."""

    name: str
    source: str | None = None  # "accession:A", "folder:PATH" or, for a slide file sent alone, "file:PATH"
    identity: tuple[tuple[str, str], ...] = ()
    context: tuple[tuple[str, str], ...] = ()


def read_sidecar(path: Path, name: str, folder: Path | None = None) -> SpecimenInfo:
    """A specimen.json: identity fields (IDENTITY_FIELDS) and context fields (CONTEXT_FIELDS), all strings.

    The context passes the de-identification gate: text that names the sidecar's own patient (an identifier's digits,
    the birth date in any format, a part of the name) is refused, so a surgeon typing the patient's name into the
    question stops it here."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpecimenError(f"{name}/{SIDECAR}: cannot read it: {getattr(error, 'strerror', None) or error}") from None
    if not isinstance(document, dict):
        raise SpecimenError(f"{name}/{SIDECAR}: expected a JSON object of fields")
    unknown = sorted(set(document) - {*IDENTITY_FIELDS, *CONTEXT_FIELDS})
    if unknown:
        raise SpecimenError(f"{name}/{SIDECAR}: unknown field {unknown[0]!r} (known: {', '.join((*IDENTITY_FIELDS, *CONTEXT_FIELDS))})")
    for key, value in document.items():
        if not isinstance(value, str) or (key in CONTEXT_FIELDS and len(value) > CONTEXT_LIMIT):
            raise SpecimenError(f"{name}/{SIDECAR}: {key!r} must be text of at most {CONTEXT_LIMIT} characters")
    identity = tuple((key, document[key].strip()) for key in IDENTITY_FIELDS if document.get(key, "").strip())
    context = tuple((key, document[key].strip()) for key in CONTEXT_FIELDS if document.get(key, "").strip())
    check_context(context, dict(identity), f"{name}/{SIDECAR}")
    accession = dict(identity).get("accession")
    source = f"accession:{accession}" if accession else f"folder:{(folder or path.parent).resolve()}"
    return SpecimenInfo(name, source, identity, context)


def check_context(context: tuple[tuple[str, str], ...], identity: dict[str, str], where: str) -> None:
    """Refuse context that names the patient (station/identity_gate.py compares normalised forms: an identifier's
    digits, the birth date in any common format, name parts as whole words); the one line says which field holds
    which identity, its piece masked, so the refusal itself repeats no identity."""
    from station.identity_gate import identifying_piece

    for field, text in context:
        if piece := identifying_piece(text, identity):
            raise SpecimenError(f"{where}: {field} contains the {piece.label} ({piece.kind}, '{piece.hint}'); "
                                f"remove it from {SIDECAR} and send again")


def file_facts(path: Path) -> FileFacts:
    """A slide's path, size, newest mtime and sample digest (a folder: over its files)."""
    from transfer.identity import slide_files

    try:
        stats = [file.stat() for file in slide_files(path)]
        return FileFacts(storable(str(path.resolve())), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0), sample_digest(path))
    except OSError as error:  # gone or unreadable since it opened: one line, like a send's
        from slides import SlideNotFoundError, UnsupportedSlideError

        kind = SlideNotFoundError if isinstance(error, FileNotFoundError) else UnsupportedSlideError
        raise kind(f"{path.name}: cannot read it: {error.strerror or error}") from None


@dataclass(frozen=True)
class Resolution:
    """What a slide file is on the store: its slide version, and why (resend, duplicate, rescan, new slide)."""

    ref: SlideRef
    kind: str
    earlier: str | None = None  # a duplicate's: the path the same bytes were sent from
    new_specimen: bool = False  # registered by this resolution (undone with the version when the send cannot start)


@dataclass(frozen=True)
class Store:
    """s3://BUCKET/PREFIX on an endpoint, as the station reads and writes it."""

    endpoint: str | None
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str, endpoint: str | None) -> Store:
        bucket, prefix = parse_store_url(url)
        return cls(parse_endpoint(endpoint), bucket, prefix)

    @classmethod
    def from_key(cls, key: str) -> Store:
        """The store a registry key names (see `registry.store_key`)."""
        endpoint, bucket, prefix = (key.split(" ", 2) + ["", ""])[:3]
        return cls(None if endpoint == "aws" else endpoint, bucket, prefix)

    @property
    def journal_endpoint(self) -> str:
        return self.endpoint or "aws"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


class Station:
    """One station's view of one store, with the local registry: every mapping from files to slide versions."""

    def __init__(self, store: Store, registry: Registry, station: str, ca_bundle: str | None = None) -> None:
        self.store, self.registry, self.name = store, registry, validate_station(station)
        self.key = store_key(store)
        if ca_bundle is not None:
            read_ca_bundle(ca_bundle)  # a file that cannot serve is said now, not at the first request
        self._ca_bundle = ca_bundle
        self._recent: set[str] = set()  # notices handled by this run that the cursor does not cover yet
        self._looked: dict[str, float] = {}  # case -> when this run last read its reports (the reconciliation)
        self._said: set[str] = set()  # refusals and conflicts this run said already (the reconciliation repeats)
        self.systems: HospitalSystems | None = None  # the hospital's LIS and FHIR server, and the report's PDF (watch)

    # -- the store ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def _storage(self) -> S3Storage:
        """The store's one client (`objectstore`), made at the first request: a 403 of a read is a missing object, what
        an enrolled station is answered for one of its own folders (`transfer.network.ABSENT`)."""
        from objectstore import S3Storage

        return S3Storage(self.store.bucket, "", self.store.endpoint, absent_when_denied=True, ca_bundle=self._ca_bundle)

    def _call(self, request: Callable[[S3Storage], Coroutine[Any, Any, T]], absent_means_bucket: bool = False) -> T:
        """One request, run on zarr's event loop as `objectstore.location` runs them. A failure is one line of the
        send's error family, which the station's callers handle (the link down: `NetworkError`, exit 3); a missing
        object is `ObjectNotFoundError`, except to a write or a listing, where only the bucket can be missing."""
        from zarr.core.sync import sync

        from transfer.errors import BucketNotFoundError, CredentialsError, NetworkError, TransferError

        try:
            return sync(request(self._storage))
        except ObjectNotFoundError:
            if absent_means_bucket:
                raise BucketNotFoundError(f"bucket of s3://{self.store.bucket} does not exist on {self.store.endpoint or 'AWS S3'} "
                                          "(NoSuchBucket)") from None  # fmt: skip
            raise
        except StorageError as error:
            kind = NetworkError if isinstance(error, UnreachableError) else CredentialsError if isinstance(error, AccessDeniedError) else TransferError
            raise kind(str(error)) from None

    def put(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        """Write (or replace) one object of this station's: a record, an order's status, a photograph."""
        self._call(lambda storage: storage.put(key, body, content_type), absent_means_bucket=True)

    def holds(self, key: str) -> bool:
        """Whether the store has `key` (a HEAD)."""
        return self._call(lambda storage: storage.exists(key))

    def _create(self, key: str, body: bytes) -> bool:
        """PUT only if no object has `key` (If-None-Match: *); False when one has."""
        return self._call(lambda storage: storage.create(key, body), absent_means_bucket=True)

    def report_unsent(self, info: SpecimenInfo, path: Path, kind: str) -> str:
        """Tell the centre that a slide file of the specimen `info` will not be sent, and why (`kind`, one of
        `caseformat.documents.UNSENT_KINDS`): the specimen is registered (a specimen whose only slide failed is a case
        the centre sees failed, not one it never hears of) and its case gets an unsent record. The record names the
        file by a digest of its path, never by its name. Returns the case ID; the store failing raises."""
        specimen = self.register(info)
        token = hashlib.sha256(f"{specimen.case}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.put(self.store.key(unsent_key(specimen.case, token)), UnsentSlide(specimen.case, token, kind, utc_now()).to_json())
        return specimen.case

    def unsent(self, case: str) -> tuple[list[UnsentSlide], list[str]]:
        """The slide files of the case this station could not send (its own records, `report_unsent`), and one line
        for each object in their folder that is not one."""
        found, refused = [], []
        for key in self._keys(self.store.key(unsent_folder(case))):
            data = self.read_bytes(key)
            try:
                found += [UnsentSlide.read(data, key)] if data is not None else []
            except DocumentError as error:
                refused.append(printable(f"refused {error}"))
        return found, refused

    def _folders(self, prefix: str) -> set[str]:
        """Names of the folders right below the folder `prefix` (paged LISTs)."""
        return set(self._call(lambda storage: storage.list_dirs(prefix.rstrip("/")), absent_means_bucket=True))

    def read_bytes(self, key: str) -> bytes | None:
        """The object at `key`, None when there is none; at most one byte more than a document may have (the
        document's reader refuses it), so a planted giant costs no memory."""
        try:
            return self._call(lambda storage: storage.get_at_most(key, DOCUMENT_LIMIT + 1))
        except ObjectNotFoundError:
            return None

    def _keys(self, prefix: str, after: str = "") -> list[str]:
        """Every key below the folder `prefix` (after `after`), in the store's order (paged LISTs)."""
        folder = prefix.rstrip("/")
        listed = self._call(lambda storage: storage.list_after(folder, after) if after else storage.list(folder), absent_means_bucket=True)
        return [info.key for info in listed]

    # -- registration ------------------------------------------------------------------------------------------
    def _look(self, read: Any, default: Any) -> Any:
        """A look at the store while resolving: where it does not answer (a link down at the start, a missing bucket)
        the registry decides alone, and the send itself waits for the link and says what is wrong."""
        from transfer.errors import TransferError

        try:
            return read()
        except TransferError:
            return default

    def register(self, info: SpecimenInfo, case: str | None = None, publish: bool = True, found_at: str | None = None) -> Specimen:
        """The specimen's case: found in the registry by its source (a send retried after a failure, a timeout or a
        restart finds it too), else registered now. The registry records the case ID (a new random one, or `case`)
        and the clock (`found_at`: when the specimen was found; else now) before any store request, so no retry makes
        a second case or a later clock; then, with `publish`, the store gets case.json (see `publish`). A case the
        store has already (send --case) keeps its clock; without `publish` the send creates case.json before its
        first manifest."""
        case = qualified_case(self.name, case) if case is not None else None
        known = self.registry.specimen(self.key, case=case) if case else self.registry.specimen(self.key, source=info.source)
        if known is not None:
            if publish and self.registry.unpublished(self.key, known.case):
                self.publish(known)
            return known
        given = case is not None
        case = case if case is not None else qualified_case(self.name, new_case_id())
        stored = self._stored_record(case) if given else None
        specimen = Specimen(case, info.name, info.source, dict(info.identity), dict(info.context), self.name,
                            stored.registered_at if stored else found_at or utc_now())  # fmt: skip
        self.registry.add_specimen(self.key, specimen, unpublished=publish and stored is None)
        if publish and stored is None:
            self.publish(specimen)
        return specimen

    def publish(self, specimen: Specimen) -> None:
        """case.json, create-only, with the registry's clock; the registry then knows the store has it. A case.json
        already there for this ID is this registration's (an earlier attempt whose answer was lost) unless it is
        another station's case record: `SpecimenError`. A store that fails raises and the case stays unpublished: the
        next attempt publishes the same case with the same clock."""
        key = self.store.key(case_key(specimen.case, CASE_RECORD))
        if not self._create(key, self.record(specimen).to_json()):
            data = self.read_bytes(key)
            try:
                stored = CaseRecord.read(data) if data is not None else None
            except DocumentError:
                stored = None  # not a case record: as good as none, and create-only never replaces it
            if stored is not None and stored.station != self.name:
                raise SpecimenError(f"{specimen.name}: case {specimen.case} on the store was registered by station {stored.station or '(none)'}, not {self.name}")
        self.registry.published(self.key, specimen.case)

    def _stored_record(self, case: str) -> CaseRecord | None:
        """The case.json the store has for `case`; None where it has none, or one that is not a case record (its
        clock cannot be trusted: this registration starts its own, and create-only never replaces the bad one)."""
        data = self._look(lambda: self.read_bytes(self.store.key(case_key(case, CASE_RECORD))), None)
        try:
            return CaseRecord.read(data) if data is not None else None
        except DocumentError:
            return None

    def record(self, specimen: Specimen) -> CaseRecord:
        return CaseRecord(specimen.case, specimen.registered_at, specimen.station, tuple(specimen.context.items()))

    def case_record(self, case: str) -> CaseRecord:
        """case.json as this station registers it (the registry's clock and context; now, for a case it never saw)."""
        specimen = self.registry.specimen(self.key, case=case)
        return self.record(specimen) if specimen else CaseRecord(case, utc_now(), self.name)

    def _free_slide(self, case: str) -> tuple[str, str]:
        """The next slide number of `case` that neither the registry nor the store has, and the slide.json that
        claims it (the sender creates it, create-only, before anything of the slide: see `Sender.claim`)."""
        stored = self._look(lambda: self._folders(self.store.key(slides_key(case))), set())
        slide = next_name(stored | set(self.registry.slides(self.key, case)), "s")
        claim = {"format": LAYOUT_FORMAT, "case": case, "slide": slide, "station": self.name, "claimed_at": utc_now()}
        return slide, json.dumps(claim)

    def _next_version(self, case: str, slide: str) -> str:
        stored = self._look(lambda: self._folders(self.store.key(slides_key(case, slide))), set())
        return next_name(stored | set(self.registry.versions(self.key, case, slide)), "v")

    # -- which slide version a file is -------------------------------------------------------------------------
    def resolve(self, path: Path, info: SpecimenInfo | None = None, case: str | None = None) -> Resolution:
        """The slide version `path` is sent as (see the registry's rules); registers what is new. With `case`
        (send --case), only that case's slides count and a new file becomes its next slide."""
        facts = file_facts(path)
        info = info or SpecimenInfo(path.name, f"file:{facts.path}")
        scope = qualified_case(self.name, case) if case else None
        known = self.registry.specimen(self.key, case=scope) if scope else self.registry.specimen(self.key, source=info.source)
        if scope:
            self.register(info, scope, publish=False)
        same = self.registry.same_file(self.key, facts, scope)
        if same is not None:
            return Resolution(same, RESEND)
        mine: str | None = None
        for ref, earlier, mtime, known in self.registry.same_sample(self.key, facts, scope):
            mine = mine or content_sha256(path)
            theirs = known or _sha256_if_unchanged(Path(earlier), facts.size, mtime)
            if theirs is not None and known is None:
                self.registry.set_sha256(self.key, ref, theirs)
            if theirs == mine:
                return Resolution(ref, RESEND if earlier == facts.path else DUPLICATE, earlier)
        rescanned = self.registry.slide_at(self.key, facts.path, scope)
        claim = None
        if rescanned is not None:
            ref = SlideRef(rescanned[0], rescanned[1], self._next_version(*rescanned))
            kind = RESCAN
        else:
            specimen = self.register(info, scope, publish=False)
            slide, claim = self._free_slide(specimen.case)
            ref, kind = SlideRef(specimen.case, slide, "v1"), NEW_SLIDE
        self.registry.add_version(self.key, ref, facts, mine, claim)
        return Resolution(ref, kind, new_specimen=known is None)

    def claim(self, ref: SlideRef) -> bytes:
        """The slide.json of `ref`'s slide, as this station claimed it."""
        claim = self.registry.claim(self.key, ref.case, ref.slide)
        return (claim or json.dumps({"format": LAYOUT_FORMAT, "case": ref.case, "slide": ref.slide, "station": self.name})).encode()

    def forget(self, resolution: Resolution) -> None:
        """A new slide version whose send could not start (refused by the store, or its number taken): the registry
        forgets it, and the specimen this resolution registered, so a wrong bucket leaves no trace."""
        if resolution.kind in (RESCAN, NEW_SLIDE):
            self.registry.forget(self.key, resolution.ref)
            if resolution.new_specimen:
                self.registry.forget_specimen(self.key, resolution.ref.case)

    def settle(self, resolution: Resolution) -> None:
        """After a send: the version's full SHA-256, so a later copy or a touched file is known for the same bytes;
        and a new slide (or a rescan) fulfils the case's oldest open rework order it answers (`fulfil`)."""
        ref = resolution.ref
        known = self.registry.version_file(self.key, ref)
        if known is not None and known[1] is None and os.path.exists(known[0]):
            self.registry.set_sha256(self.key, ref, content_sha256(Path(known[0])))
        if resolution.kind in (NEW_SLIDE, RESCAN):
            self._look(lambda: self.fulfil(ref, resolution.kind == RESCAN), None)  # a store down now leaves it acknowledged

    # -- rework orders -----------------------------------------------------------------------------------------
    def acknowledge(self, request: Request) -> None:
        """The order of `request` reached the lab: orders/{n}.json says "acknowledged", create-only, so a delivery
        repeated after the order was fulfilled leaves it fulfilled. A request of free text is no order: nothing."""
        if request.order is None:
            return
        status = OrderStatus(request.case, request.number, request.order, ACKNOWLEDGED, utc_now(), request.slide)
        self._create(self.store.key(order_status_key(request.case, request.number)), status.to_json())

    def open_orders(self, case: str) -> list[OrderStatus]:
        """The case's acknowledged orders not fulfilled yet, oldest first, as this station wrote them (an object in
        its orders/ folder that is not one is passed over)."""
        found = []
        for key in self._keys(self.store.key(order_status_folder(case))):
            data = self.read_bytes(key)
            try:
                status = OrderStatus.read(data, key) if data is not None else None
            except DocumentError:
                continue
            if status is not None and status.state == ACKNOWLEDGED and (status.case, status.number) == (case, number_of(key)):
                found.append(status)
        return sorted(found, key=lambda status: status.number)

    def fulfil(self, ref: SlideRef, rescan: bool) -> OrderStatus | None:
        """The oldest open order of `ref`'s case that this slide version answers (a rescan of the slide a rescan
        order names; any other order, a new slide) marked fulfilled by it; None when it answers none."""
        for status in self.open_orders(ref.case):
            if (status.order == "rescan") == rescan and (not rescan or status.slide == ref.slide):
                done = OrderStatus(status.case, status.number, status.order, FULFILLED, utc_now(), status.slide, SlideRead(ref.slide, ref.version))
                self.put(self.store.key(order_status_key(ref.case, status.number)), done.to_json())
                return done
        return None

    # -- what comes back ---------------------------------------------------------------------------------------
    def new_notices(self) -> list[tuple[str, bytes | None]]:
        """(key, bytes) of what came to this station's folder since the last one handled, in the store's (time)
        order: one LIST, start-after the cursor, less the keys this run handled already. `handled` moves on."""
        self._settle()
        keys = self._keys(self.store.key(notices_folder(self.name)), self.registry.cursor(self.key, self.name))
        return [(key, self.read_bytes(key)) for key in keys if key not in self._recent]

    def notice(self, key: str, data: bytes | None, trusted: TrustedKeys) -> Report | Request:
        """The report or request at `key` if the centre signed it, for this station, as its key names it;
        `DocumentError` naming the key and why otherwise."""
        name = NoticeName.parse(key)
        if name is None:
            raise DocumentError(f"{key}: not a notice's name ({{time}}_{{case}}_{{report|request}}_{{n}}.json)")
        if data is None:
            raise DocumentError(f"{key}: gone before it could be read")
        document = read_notice(data, key, trusted, name.kind)
        if (document.case, document.number) != (name.case, name.number):
            raise DocumentError(f"{key}: holds {name.kind} {document.number} of case {document.case}, not what its name says")
        if document.station != self.name or station_of(document.case) != self.name:
            raise DocumentError(f"{key}: is for station {document.station or '(none)'}, not {self.name}")
        return document

    def handled(self, key: str) -> None:
        """`key` is not offered again: the cursor moves over it once its time stamp is NOTICE_SETTLE seconds old,
        until then this run remembers it."""
        self._recent.add(key)
        self._settle()

    def _settle(self) -> None:
        settled = stamp(utc_now(datetime.now(UTC) - timedelta(seconds=NOTICE_SETTLE)))
        for key in sorted(self._recent):
            if key.rsplit("/", 1)[-1] >= settled:
                return
            self.registry.set_cursor(self.key, self.name, key)
            self._recent.discard(key)

    def reports(self, case: str, trusted: TrustedKeys, skip: frozenset[int] | set[int] = frozenset(),
                kind: type[Report] | type[Request] | type[GrossMark] = Report) -> tuple[list[Any], list[str]]:
        """A case's signed report and amendments (or, with `kind` Request, its requests; GrossMark, the marks on its
        gross photographs), in order, as the centre signed them (less the numbers in `skip`, never read); and one
        line for each document in their folder that is not one."""
        name = {Report: "report", Request: "request", GrossMark: "mark"}[kind]
        folder = gross_marks_folder(case) if kind is GrossMark else numbered_folder(case, REPORTS if kind is Report else REQUESTS)
        found: list[Any] = []
        refused = []
        for key in self._keys(self.store.key(folder)):
            if number_of(key) in skip:
                continue
            data = self.read_bytes(key)
            try:
                document = kind.read(data, key, trusted) if data is not None else None
                if document is not None and (document.case, document.number) != (case, number_of(key)):
                    raise DocumentError(f"{key}: holds {name} {document.number} of case {document.case}, not what its name says")
            except DocumentError as error:
                refused.append(printable(f"refused {name} {error}"))
                continue
            found += [document] if document is not None else []
        return sorted(found, key=lambda document: document.number), refused

    # -- delivery ----------------------------------------------------------------------------------------------
    def deliver(self, outbox: Path, notice: Report | Request, where: str, say: Callable[[str], None]) -> None:
        """`notice` to the operating room once per (case, kind, number), whichever way it came (`where`: a notice's
        or a report's key): the registry's ledger decides, not the notice cursor. Says the notice and its outbox file
        when written, a conflict (once a run) when another text than the one delivered comes under its number, and
        nothing when it was delivered before. A registry or outbox that cannot be used raises: tried again later."""
        kind = "request" if isinstance(notice, Request) else "report"
        specimen = self.registry.specimen(self.key, case=notice.case)
        digest = hashlib.sha256(notice_text(notice, specimen).encode()).hexdigest()
        delivered = self.registry.delivered(self.key, notice.case, kind, notice.number)
        if delivered is None:
            written, outcome = write_outbox(outbox, notice, specimen)
            if isinstance(notice, Request) and outcome != CONFLICT:
                self.acknowledge(notice)  # before the ledger: a store that fails now has it delivered again, and acknowledged
            if outcome == WRITTEN:
                say(notice_line(notice, specimen.name if specimen else notice.case))
                say(f"OUTBOX {written}")
            if isinstance(notice, Report) and self.systems is not None and specimen is not None and outcome != CONFLICT:
                # queued before the ledger records the delivery: a crash between them queues it again, which the
                # outboxes ignore (one message per report)
                corrects = self.registry.has_final(self.key, notice.case) if notice.number > 1 else False
                pdf, lines = self.systems.report(notice, specimen.identity, corrects)
                for line in lines:
                    say(line)
                if pdf is not None and create_whole(written.with_suffix(".pdf"), pdf):
                    say(f"OUTBOX {written.with_suffix('.pdf')}")
            delivered = digest if outcome != CONFLICT else hashlib.sha256(written.read_bytes()).hexdigest()
            final = isinstance(notice, Report) and notice.category not in NOT_FINAL
            self.registry.set_delivered(self.key, notice.case, kind, notice.number, delivered, final)
        conflict = f"{notice.case} {kind} {notice.number} {digest}"
        if delivered != digest and conflict not in self._said:
            self._said.add(conflict)
            say(f"CONFLICT {where}: another text than {outbox_file(outbox, notice, specimen)}, delivered first under the same number; "
                "that one is kept, nothing was written")  # fmt: skip

    def awaiting_report(self) -> bool:
        """Whether a case this station registered in the last AWAITING_HOURS has no final report delivered yet: then
        its notices are polled at once, else at a slower pace (`watch`). A registry that cannot be read says yes."""
        since = utc_now(datetime.now(UTC) - timedelta(hours=AWAITING_HOURS))
        try:
            return any(not final for _, final in self.registry.recent_cases(self.key, self.name, since))
        except JournalError:  # a busy or broken registry must not slow a report down
            return True

    def reconcile(self, trusted: TrustedKeys, outbox: Path, say: Callable[[str], None], limit: int = RECONCILE_CASES,
                  marks: Callable[[GrossMark], None] | None = None) -> None:
        """The `_notices/` are the fast path; this is the one that misses nothing: the numbered reports and
        requests of this station's recent cases (`Registry.recent_cases`), `limit` cases a round, those still waiting
        for a final report first, then those read longest ago, each one not delivered yet delivered now (and with
        `marks`, the gross photographs' marks, given to it). A notice that lands late, or never, then costs nothing,
        for an amendment after the final report too."""
        since = utc_now(datetime.now(UTC) - timedelta(hours=RECONCILE_HOURS))
        recent = self.registry.recent_cases(self.key, self.name, since)
        by_need = sorted(recent, key=lambda item: (item[1], self._looked.get(item[0], 0.0)))  # not final first, then least recently read
        cases = [case for case, _ in by_need][:limit]
        for case in cases:
            self._looked[case] = time.monotonic()
            refused = []
            for kind, name, key_of in ((Report, "report", report_key), (Request, "request", request_key)):
                found, unreadable = self.reports(case, trusted, self.registry.delivered_numbers(self.key, case, name), kind)
                refused += unreadable
                for document in found:
                    key = self.store.key(key_of(case, document.number))
                    if document.station == self.name:
                        self.deliver(outbox, document, key, say)
                    else:
                        refused.append(printable(f"refused {name} {key}: is for station {document.station or '(none)'}, not {self.name}"))
            if marks is not None:
                found, unreadable = self.reports(case, trusted, self.registry.delivered_numbers(self.key, case, "mark"), GrossMark)
                refused += unreadable
                for mark in found:
                    if mark.station == self.name:
                        marks(mark)
                    else:
                        refused.append(printable(f"refused mark {self.store.key(gross_mark_key(case, mark.number))}: is for station "
                                                 f"{mark.station or '(none)'}, not {self.name}"))  # fmt: skip
            for line in refused:
                if line not in self._said:
                    self._said.add(line)
                    say(line)


def _sha256_if_unchanged(path: Path, size: int, mtime: float) -> str | None:
    """The SHA-256 of an earlier version's file, if it is still there as it was sent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return content_sha256(path) if stat.st_size == size and stat.st_mtime == mtime else None


def load_trusted(path: Path) -> tuple[TrustedKeys | None, str]:
    """The centre's public keys at `path`; without them (None), the one line that says why nothing the centre sends
    can be read."""
    try:
        return TrustedKeys.load(path), ""
    except KeyFileError as error:
        reason = "" if not path.exists() else f" ({str(error).removeprefix(f'{path}: ')})"
        return None, printable(f"no centre public key at {path}{reason}: ask the centre for it (slidestream keys export)")


def notice_line(notice: Report | Request, specimen: str) -> str:
    """One line about a report or request, as watch prints it: the store's text made printable."""
    if isinstance(notice, Request) and notice.order_words:
        return printable(f"REWORK ORDER {notice.number} case {specimen} ({notice.case}): {notice.order_words} — {notice.what} — "
                         f"asked by {notice.author.name} at {notice.asked_at}")  # fmt: skip
    if isinstance(notice, Request):
        slide = f" (slide {notice.slide})" if notice.slide else ""
        return printable(f"REQUEST case {specimen} ({notice.case}): {notice.what}{slide} — asked by {notice.author.name} at {notice.asked_at}")
    amendment = f" AMENDMENT {notice.number} (amends report {notice.amends})" if notice.kind == "amendment" else ""
    return printable(f"REPORT{amendment} case {specimen} ({notice.case}): {notice.category} — {notice.diagnosis} — "
                     f"signed by {notice.author.name} at {notice.signed_at}")  # fmt: skip


def notice_text(notice: Report | Request, specimen: Specimen | None) -> str:
    """The outbox file: what a person in the operating room reads (the local name and identity stay local). Each
    line is made printable: a field's own newlines or escape sequences cannot forge a line or a heading."""
    lines = [notice_line(notice, specimen.name if specimen else notice.case), ""]
    if specimen is not None:
        lines += [f"Specimen: {specimen.name}   Case: {specimen.case}"]
        lines += [f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in specimen.identity.items()]
    if isinstance(notice, Request):
        lines += [*([f"Rework order {notice.number}: {notice.order_words}"] if notice.order_words else []),
                  f"Request {notice.number}: {notice.what}", *([f"Slide: {notice.slide}"] if notice.slide else []),
                  f"Asked by: {notice.author.name} at {notice.asked_at}"]  # fmt: skip
    else:
        title = "AMENDMENT" if notice.kind == "amendment" else "SIGNED REPORT"
        lines += [f"{title} {notice.number}" + (f" (amends report {notice.amends})" if notice.amends else ""),
                  f"Category: {notice.category.upper()}", f"Diagnosis: {notice.diagnosis}"]  # fmt: skip
        lines += [f"{label}: {text}" for label, text in (("Margins", notice.margins), ("Comment", notice.comment)) if text]
        read_on = ", ".join(f"{read.slide} {read.version}" for read in notice.slides)
        lines += [f"Slides read: {read_on or '?'}", *([f"MISSING when signed: {notice.missing}"] if notice.missing else []),
                  f"Signed by: {notice.author.name} at {notice.signed_at}"]  # fmt: skip
    return "".join(printable(line) + "\n" for line in lines)


WRITTEN, ALREADY_THERE, CONFLICT = "written", "already there", "conflict"


def outbox_file(outbox: Path, notice: Report | Request, specimen: Specimen | None) -> Path:
    """Where a notice is delivered (`outbox_path`)."""
    return outbox_path(outbox, specimen.name if specimen else notice.case, notice.case, "request" if isinstance(notice, Request) else "report",
                       notice.number)  # fmt: skip


def outbox_path(outbox: Path, local: str, case: str, kind: str, number: int) -> Path:
    """{name}_{case}_{kind}_{n}.txt in the outbox: the specimen's local name made a file name, then what it is."""
    name = re.sub(r"[^\w.-]+", "_", local).strip("._")[:LOCAL_NAME_LIMIT] or "specimen"
    return outbox / f"{name}_{case}_{kind}_{number:04d}.txt"


def write_outbox(outbox: Path, notice: Report | Request, specimen: Specimen | None) -> tuple[Path, str]:
    """The notice as a text file (`outbox_file`), created whole and never over another: a delivered report is what
    the operating room acted on. Returns the file and WRITTEN, ALREADY_THERE (the same text) or CONFLICT (another
    text under that name: kept, nothing written)."""
    target = outbox_file(outbox, notice, specimen)
    text = notice_text(notice, specimen).encode()
    outbox.mkdir(parents=True, exist_ok=True)
    if create_whole(target, text):
        return target, WRITTEN
    return target, ALREADY_THERE if target.read_bytes() == text else CONFLICT


def create_whole(target: Path, data: bytes) -> bool:
    """Creates `target` holding `data`, seen whole or not at all (a temporary file, linked: a link never replaces);
    False where `target` exists. The temporary file is gone afterwards, whatever happens."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".", suffix=".tmp") as handle:
        handle.write(data)
        handle.flush()
        try:
            os.link(handle.name, target)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            try:  # a share without hard links (FAT, some SMB): created exclusively, written in place
                with open(target, "xb") as file:
                    file.write(data)
            except FileExistsError:
                return False
    return True
