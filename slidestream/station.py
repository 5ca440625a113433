"""The hospital station: registers specimens, gives each slide file its case, slide and version, and reads what the
pathology centre sends back (reports and requests, under `_stations/{station}/`).

One registration path for `send` and `watch`: a specimen (a hot-folder subfolder, a `--context-file`, or a slide
file alone) is registered once, in the local registry (slidestream/registry.py, with the patient's identity) and on
the store (case.json, create-only, with the station and the clinical context: its `registered_at` starts the clock).
A new slide's number is claimed on the store with a create-only `CASE/slides/sN/slide.json`, so two stations adding
slides to one case never take the same number.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slides import SlidestreamError
from slidestream.registry import (
    FileFacts,
    Registry,
    Specimen,
    new_case_id,
    storable,
    store_key,
)
from transfer.identity import content_sha256, sample_digest
from transfer.journal import utc_now
from caseformat.layout import CASE_RECORD, LAYOUT_FORMAT, REPORTS, SLIDES, STATIONS, SlideRef, next_name, validate_case, validate_station
from caseformat.documents import CONTEXT_FIELDS, CONTEXT_LIMIT, CaseRecord
from transfer.target import parse_endpoint, parse_store_url

SIDECAR = "specimen.json"
IDENTITY_FIELDS = ("accession", "patient_name", "patient_id", "birth_date")  # kept in the local registry only
RESEND, DUPLICATE, RESCAN, NEW_SLIDE = "resend", "duplicate", "rescan", "new slide"


class SpecimenError(SlidestreamError, ValueError):
    """A specimen cannot be registered as described (a sidecar that cannot be read, or context that identifies)."""


class AlreadySent(Exception):
    """The same bytes were sent before from another file (a copy): watch logs it and sends nothing."""

    def __init__(self, resolution: Resolution) -> None:
        super().__init__(resolution.ref.label)
        self.resolution = resolution


def default_station() -> str:
    """This machine's station name: its host name, made a valid key part."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.")[:64] or "station"
    return validate_station(name.replace("..", "-"))


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

    The context passes the de-identification gate: text that contains one of the sidecar's own identifiers (or a
    part of the patient's name) is refused, so a surgeon typing the patient's name into the question stops it here."""
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
    """Refuse context that names the patient: any identity value, or a part of the name of three letters or more."""
    needles = set(identity.values()) | {part for part in re.split(r"[\^,\s]+", identity.get("patient_name", "")) if len(part) >= 3}
    for field, text in context:
        found = next((needle for needle in needles if len(needle) >= 3 and needle.casefold() in text.casefold()), None)
        if found is not None:
            which = next((key for key, value in identity.items() if found in (value, *re.split(r"[\^,\s]+", value))), "identity")
            raise SpecimenError(f"{where}: {field} contains the {which.replace('_', ' ')}; identifying text never leaves the hospital")


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
        from transfer.network import make_client

        self.store, self.registry, self.name = store, registry, validate_station(station)
        self.key = store_key(store)
        self.client = make_client(store.endpoint, ca_bundle)

    # -- the store ---------------------------------------------------------------------------------------------
    def _call(self, where: str, method: str, **kwargs: Any) -> Any:
        """One request; an error is one line (network: exit 3)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from transfer.network import fatal

        try:
            return getattr(self.client, method)(Bucket=self.store.bucket, **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise fatal(error, self.store.endpoint, f"s3://{self.store.bucket}/{where}") from None

    def _create(self, key: str, body: bytes) -> bool:
        """PUT only if no object has `key` (If-None-Match: *); False when one has."""
        from botocore.exceptions import ClientError

        from transfer.network import error_code, fatal

        try:
            self.client.put_object(Bucket=self.store.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
            return True
        except ClientError as error:
            if error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise fatal(error, self.store.endpoint, f"s3://{self.store.bucket}/{key}") from None
        except Exception as error:  # noqa: BLE001 - botocore's connection errors: one line
            raise fatal(error, self.store.endpoint, f"s3://{self.store.bucket}/{key}") from None

    def _folders(self, prefix: str) -> set[str]:
        """Names of the folders right below `prefix` (one LIST page per 1000)."""
        names: set[str] = set()
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
        while True:
            page = self._call(prefix, "list_objects_v2", **kwargs)
            names |= {entry["Prefix"][len(prefix):].rstrip("/") for entry in page.get("CommonPrefixes", [])}
            if not page.get("IsTruncated"):
                return names
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def read_json(self, key: str) -> Any:
        """The JSON object at `key`, None when there is none (or it is not JSON)."""
        from botocore.exceptions import ClientError

        from transfer.network import error_code, fatal

        try:
            body = self.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return None
            raise fatal(error, self.store.endpoint, f"s3://{self.store.bucket}/{key}") from None
        except Exception as error:  # noqa: BLE001
            raise fatal(error, self.store.endpoint, f"s3://{self.store.bucket}/{key}") from None
        try:
            return json.loads(body)
        except ValueError:
            return None

    # -- registration ------------------------------------------------------------------------------------------
    def _look(self, read: Any, default: Any) -> Any:
        """A look at the store while resolving: where it does not answer (a link down at the start, a missing bucket)
        the registry decides alone, and the send itself waits for the link and says what is wrong."""
        from transfer.errors import TransferError

        try:
            return read()
        except TransferError:
            return default

    def register(self, info: SpecimenInfo, case: str | None = None, publish: bool = True) -> Specimen:
        """The specimen's case: found in the registry by its source (a send retried after a failure finds it too), else registered now (a new random case ID, or
        `case` when given) locally and, with `publish`, on the store (case.json, create-only: a case the store has
        keeps its clock; without it the send creates it before its first manifest)."""
        known = self.registry.specimen(self.key, case=case) if case else self.registry.specimen(self.key, source=info.source)
        if known is not None:
            return known
        given = case is not None
        case = validate_case(case) if case is not None else new_case_id()
        stored = CaseRecord.parse(self._look(lambda: self.read_json(self.store.key(f"{case}/{CASE_RECORD}")), None)) if given else None
        specimen = Specimen(case, info.name, info.source, dict(info.identity), dict(info.context), self.name,
                            stored.registered_at if stored else utc_now())  # fmt: skip
        if stored is None and publish:
            self._create(self.store.key(f"{case}/{CASE_RECORD}"), self.record(specimen).to_json())
        self.registry.add_specimen(self.key, specimen)
        return specimen

    def record(self, specimen: Specimen) -> CaseRecord:
        return CaseRecord(specimen.case, specimen.registered_at, specimen.station, tuple(specimen.context.items()))

    def case_record(self, case: str) -> CaseRecord:
        """case.json as this station registers it (the registry's clock and context; now, for a case it never saw)."""
        specimen = self.registry.specimen(self.key, case=case)
        return self.record(specimen) if specimen else CaseRecord(case, utc_now(), self.name)

    def _free_slide(self, case: str) -> tuple[str, str]:
        """The next slide number of `case` that neither the registry nor the store has, and the slide.json that
        claims it (the sender creates it, create-only, before anything of the slide: see `Sender.claim`)."""
        stored = self._look(lambda: self._folders(self.store.key(f"{case}/{SLIDES}/")), set())
        slide = next_name(stored | set(self.registry.slides(self.key, case)), "s")
        claim = {"format": LAYOUT_FORMAT, "case": case, "slide": slide, "station": self.name, "claimed_at": utc_now()}
        return slide, json.dumps(claim)

    def _next_version(self, case: str, slide: str) -> str:
        stored = self._look(lambda: self._folders(self.store.key(f"{case}/{SLIDES}/{slide}/")), set())
        return next_name(stored | set(self.registry.versions(self.key, case, slide)), "v")

    # -- which slide version a file is -------------------------------------------------------------------------
    def resolve(self, path: Path, info: SpecimenInfo | None = None, case: str | None = None) -> Resolution:
        """The slide version `path` is sent as (see the registry's rules); registers what is new. With `case`
        (send --case), only that case's slides count and a new file becomes its next slide."""
        facts = file_facts(path)
        info = info or SpecimenInfo(path.name, f"file:{facts.path}")
        scope = validate_case(case) if case else None
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

    def settle(self, ref: SlideRef) -> None:
        """After a send: the version's full SHA-256, so a later copy or a touched file is known for the same bytes."""
        known = self.registry.version_file(self.key, ref)
        if known is not None and known[1] is None and os.path.exists(known[0]):
            self.registry.set_sha256(self.key, ref, content_sha256(Path(known[0])))

    # -- what comes back ---------------------------------------------------------------------------------------
    def new_notices(self) -> list[tuple[str, dict[str, Any]]]:
        """Reports and requests for this station since the last one handled: (key, document), in time order (one
        LIST, start-after the cursor). The cursor moves with `handled`."""
        prefix = self.store.key(f"{STATIONS}/{self.name}/")
        kwargs: dict[str, Any] = {"Prefix": prefix}
        cursor = self.registry.cursor(self.key, self.name)
        if cursor:
            kwargs["StartAfter"] = cursor
        found = []
        while True:
            page = self._call(prefix, "list_objects_v2", **kwargs)
            for entry in page.get("Contents", []):
                document = self.read_json(entry["Key"])
                found.append((entry["Key"], document if isinstance(document, dict) else {}))
            if not page.get("IsTruncated"):
                return found
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def handled(self, key: str) -> None:
        self.registry.set_cursor(self.key, self.name, key)

    def reports(self, case: str) -> list[dict[str, Any]]:
        """A case's signed report and amendments, in order."""
        prefix = self.store.key(f"{case}/{REPORTS}/")
        page = self._call(prefix, "list_objects_v2", Prefix=prefix)
        documents = [self.read_json(entry["Key"]) for entry in page.get("Contents", []) if entry["Key"].endswith(".json")]
        return [document for document in documents if isinstance(document, dict)]


def _sha256_if_unchanged(path: Path, size: int, mtime: float) -> str | None:
    """The SHA-256 of an earlier version's file, if it is still there as it was sent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return content_sha256(path) if stat.st_size == size and stat.st_mtime == mtime else None


def notice_line(kind: str, document: dict[str, Any], specimen: str) -> str:
    """One line about a report or request, as watch prints it."""
    case, author = document.get("case", "?"), (document.get("author") or {}).get("name", "?")
    if kind == "request":
        slide = f" (slide {document['slide']})" if document.get("slide") else ""
        return f"REQUEST case {specimen} ({case}): {document.get('what', '')}{slide} — asked by {author} at {document.get('asked_at', '?')}"
    amendment = f" AMENDMENT {document.get('number')} (amends report {document.get('amends')})" if document.get("kind") == "amendment" else ""
    return (f"REPORT{amendment} case {specimen} ({case}): {document.get('category', '?')} — {document.get('diagnosis', '')} — "
            f"signed by {author} at {document.get('signed_at', '?')}")  # fmt: skip


def notice_text(kind: str, document: dict[str, Any], specimen: Specimen | None) -> str:
    """The outbox file: what a person in the operating room reads (the local name and identity stay local)."""
    name = specimen.name if specimen else document.get("case", "?")
    lines = [notice_line(kind, document, name), ""]
    if specimen is not None:
        lines += [f"Specimen: {specimen.name}   Case: {specimen.case}"]
        lines += [f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in specimen.identity.items()]
    author = document.get("author") or {}
    if kind == "request":
        lines += [f"Request {document.get('number')}: {document.get('what', '')}"]
        if document.get("slide"):
            lines += [f"Slide: {document['slide']}"]
        lines += [f"Asked by: {author.get('name', '?')} at {document.get('asked_at', '?')}"]
    else:
        title = "AMENDMENT" if document.get("kind") == "amendment" else "SIGNED REPORT"
        lines += [f"{title} {document.get('number')}" + (f" (amends report {document.get('amends')})" if document.get("amends") else ""),
                  f"Category: {str(document.get('category', '?')).upper()}", f"Diagnosis: {document.get('diagnosis', '')}"]  # fmt: skip
        lines += [f"{label}: {document[key]}" for key, label in (("margins", "Margins"), ("comment", "Comment")) if document.get(key)]
        read_on = ", ".join(f"{entry.get('slide')} {entry.get('version')}" for entry in document.get("slides") or [] if isinstance(entry, dict))
        lines += [f"Slides read: {read_on or '?'}", f"Signed by: {author.get('name', '?')} at {document.get('signed_at', '?')}"]
    return "\n".join(lines) + "\n"


def write_outbox(outbox: Path, kind: str, document: dict[str, Any], specimen: Specimen | None) -> Path:
    """The notice as a text file, written whole (temp file, then rename): {name}_{case}_{kind}_{n}.txt."""
    case = str(document.get("case", "case"))
    local = re.sub(r"[^\w.-]+", "_", specimen.name if specimen else case).strip("._") or "specimen"
    number = document.get("number") if isinstance(document.get("number"), int) else 0
    target = outbox / f"{local}_{case}_{kind}_{number:04d}.txt"
    outbox.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=outbox, prefix=".", suffix=".tmp", delete=False) as handle:
        handle.write(notice_text(kind, document, specimen))
    os.replace(handle.name, target)
    return target


def notice_kind(key: str) -> str | None:
    """"report" or "request", from a `_stations/` key ({time}_{case}_{kind}_{n}.json)."""
    parts = key.rsplit("/", 1)[-1].removesuffix(".json").split("_")
    return parts[-2] if len(parts) >= 4 and parts[-2] in ("report", "request") else None
