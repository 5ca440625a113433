"""The signed report as a FHIR `DiagnosticReport`, sent from the station to the hospital's FHIR server.

Models: `fhir.resources` 8 ships FHIR R5 at its top level and R4B (4.3.0) under `fhir.resources.R4B`, no plain R4;
R4B's DiagnosticReport, Patient and Specimen are R4's (the same elements), so the JSON built here is what an R4
server reads.

The resource (`diagnostic_report`), one per signed report and one per amendment:
- identifier `urn:slidestream:report|{case}/{number}` (`REPORT_SYSTEM`), and the case itself under
  `urn:slidestream:case`, so the reports and amendments of a case can be found together;
- status: `final`, `amended` for an amendment that corrects a final report, `preliminary` for a deferred report (the
  answer is still to come), decided as `hospital.hl7.result_status` decides F, C and P;
- category LOINC LP7839-6 "Pathology", code LOINC 11526-1 "Pathology study";
- subject: the patient as the station's registry holds them, either contained (identifier = the patient ID, type MR,
  name, birth date, gender) or, for a server that keeps its own patients (an MPI), the conditional reference
  `Patient?identifier={system}|{patient ID}` (`Profile.patient`);
- specimen: a contained Specimen: the case ID as its identifier, the hospital's accession (where the registry has
  one) as its accessionIdentifier and as `basedOn`, the order (a ServiceRequest named by that identifier);
- issued: when the report was signed; resultsInterpreter: the signing pathologist (display name, centre user ID);
- conclusion: the diagnosis; conclusionCode: the category (a local code system, `Profile.category_system`);
- presentedForm: the PDF (`hospital.pdf.report_pdf`): application/pdf, base64 data, title, size, and hash, the
  base64 of its SHA-1 as FHIR's Attachment.hash defines it.

Sending (`send`): a conditional update, `PUT {base}/DiagnosticReport?identifier=urn:slidestream:report|{case}/{number}`:
the server creates the resource the first time and updates it on every resend, so a resend whose answer was lost never
makes a second report (a create with `ifNoneExist` would leave a rebuilt report unchanged on the server). The outbox
(`Outbox`) keeps one entry per report identifier and leaves it only on the server's answer:
- 200 or 201: delivered, never sent again; only its identifier stays (the identity it carried is dropped);
- 4xx other than 408 and 429: refused, kept with the server's reason (its OperationOutcome diagnostics, the patient's
  identity blanked out) and not sent again: a person decides;
- 408, 429, 5xx, a connection lost before the answer: sent again later, the wait doubling
  (`hospital.outbox.RETRY_FIRST` up to `RETRY_LONGEST`);
- no connection: the round stops and everything stays queued for the next one (the outage said once).
The outbox (the file `fhir-outbox.sqlite3`) is a `hospital.outbox.Queue`: private, it holds the patients' identity
until each report is delivered; an amendment waits while an earlier report of its case is queued (see that module).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Literal

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from caseformat.documents import Report
from hospital.hl7 import CORRECTED, PRELIMINARY, Patient, result_status
from hospital.outbox import Outcome, Queue, Round, delivered, refused, retry, unreachable
from hospital.pdf import report_pdf
from slides import SlidestreamError
from slides.errors import one_line, printable

REPORT_SYSTEM, CASE_SYSTEM, PERSON_SYSTEM = "urn:slidestream:report", "urn:slidestream:case", "urn:slidestream:person"
LOINC = "http://loinc.org"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDERS = {"F": "female", "M": "male", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}  # HL7 table 0001 to FHIR
STATUSES = {CORRECTED: "amended", PRELIMINARY: "preliminary"}  # HL7 result status to FHIR; anything else is final
FHIR_JSON = "application/fhir+json"
TIMEOUT = 30.0  # seconds to connect and for the answer
ANSWER_LIMIT = 64 * 1024  # bytes of a server's answer read for its reason
REASON_LIMIT = 300  # characters of the server's reason kept in a line
RETRY_STATUSES = (408, 429)  # 4xx answers that mean "later", not "never"
OUTBOX_FILE = "fhir-outbox.sqlite3"


class FhirError(SlidestreamError, OSError):
    """A report that could not be built or delivered; the message names the report and why, never the patient."""


class Unreachable(FhirError):
    """No connection to the FHIR server: nothing was sent."""


class Refused(FhirError):
    """The server answered 4xx: sending the same resource again would earn the same answer."""


@dataclass(frozen=True)
class Profile:
    """What the hospital's FHIR server expects (its interface team says): whether the patient travels contained in the
    report or is referenced among the server's own (`conditional`, by the patient ID under `patient_system`), and the
    systems of the patient IDs, the accessions and the category codes."""

    patient: Literal["contained", "conditional"] = "contained"
    patient_system: str = ""  # e.g. "urn:oid:1.2.276.0.76.3.1.123" or "https://st-mary.example/mrn"
    accession_system: str = ""
    category_system: str = "urn:slidestream:category"

    def __post_init__(self) -> None:
        if self.patient == "conditional" and not self.patient_system:
            raise FhirError("FHIR profile: a conditional patient reference needs the patient IDs' system (patient_system)")


@dataclass(frozen=True)
class Server:
    """The hospital's FHIR base URL (`parse`), the bearer token its server wants (if any), and the CA certificate that
    signs its TLS certificate where that is the hospital's own CA."""

    base_url: str
    token: str | None = None
    ca_file: Path | None = None
    timeout: float = TIMEOUT

    @classmethod
    def parse(cls, url: str, token: str | None = None, ca_file: Path | None = None) -> Server:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise FhirError(printable(f"FHIR server {url!r}: expected http(s)://HOST[:PORT]/BASE"))
        if parts.username or parts.password:
            raise FhirError("FHIR server: credentials in the URL are refused (give a bearer token instead)")
        return cls(url.rstrip("/"), token or None, ca_file)

    def __str__(self) -> str:
        return self.base_url


def report_identifier(report: Report) -> str:
    """The value of the report's identifier under REPORT_SYSTEM: the same for every build of one report."""
    return f"{report.case}/{report.number}"


def report_status(report: Report, corrects_final: bool | None = None) -> str:
    """final, amended or preliminary, as `hospital.hl7.result_status` decides F, C or P (`corrects_final` likewise)."""
    return STATUSES.get(result_status(report, corrects_final), "final")


def _identifier(system: str, value: str, **more: Any) -> dict[str, Any]:
    return {**({"system": system} if system else {}), "value": value, **more}


def diagnostic_report(report: Report, patient: Patient, profile: Profile, pdf: bytes | None = None, *,
                      corrects_final: bool | None = None) -> DiagnosticReport:  # fmt: skip
    """The DiagnosticReport of a verified report (or amendment) for `patient`, validated by fhir.resources, with `pdf`
    (by default `hospital.pdf.report_pdf`'s) as its presented form. See the module's docstring."""
    pdf = report_pdf(report, patient) if pdf is None else pdf
    patient_id = _identifier(profile.patient_system, patient.patient_id, type={"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "MR"}]})
    contained: list[dict[str, Any]] = []
    if profile.patient == "contained":
        person: dict[str, Any] = {"resourceType": "Patient", "id": "patient", "identifier": [patient_id]}
        if patient.family_name or patient.given_name:
            person["name"] = [{**({"family": patient.family_name} if patient.family_name else {}),
                               **({"given": [patient.given_name]} if patient.given_name else {})}]  # fmt: skip
        if patient.birth_date:
            person["birthDate"] = patient.birth_date.isoformat()
        if patient.sex:
            person["gender"] = GENDERS[patient.sex]
        contained.append(person)
        subject: dict[str, Any] = {"reference": "#patient"}
    else:
        query = urllib.parse.urlencode({"identifier": f"{profile.patient_system}|{patient.patient_id}"}, safe=":/|")
        subject = {"reference": f"Patient?{query}", "type": "Patient", "identifier": patient_id}
    specimen: dict[str, Any] = {"resourceType": "Specimen", "id": "specimen", "identifier": [_identifier(CASE_SYSTEM, report.case)],
                                "subject": subject}  # fmt: skip
    order: list[dict[str, Any]] = []
    if patient.accession:
        specimen["accessionIdentifier"] = _identifier(profile.accession_system, patient.accession)
        order = [{"type": "ServiceRequest", "identifier": _identifier(profile.accession_system, patient.accession)}]
    contained.append(specimen)
    body = {
        "resourceType": "DiagnosticReport",
        "contained": contained,
        "identifier": [_identifier(REPORT_SYSTEM, report_identifier(report), use="official"), _identifier(CASE_SYSTEM, report.case)],
        **({"basedOn": order} if order else {}),
        "status": report_status(report, corrects_final),
        "category": [{"coding": [{"system": LOINC, "code": "LP7839-6", "display": "Pathology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "11526-1", "display": "Pathology study"}]},
        "subject": subject,
        "issued": report.signed_at,
        "resultsInterpreter": [{"display": report.author.name, "identifier": _identifier(PERSON_SYSTEM, report.author.id)}],
        "specimen": [{"reference": "#specimen"}],
        "conclusion": report.diagnosis,
        "conclusionCode": [{"coding": [{"system": profile.category_system, "code": report.category, "display": report.category.capitalize()}]}],
        "presentedForm": [{"contentType": "application/pdf", "language": "en", "data": base64.b64encode(pdf).decode("ascii"),
                           "size": len(pdf), "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode("ascii"),
                           "title": f"Pathology report {report.case} #{report.number}", "creation": report.signed_at}],
    }  # fmt: skip
    try:
        return DiagnosticReport.model_validate(body)
    except ValidationError as error:  # pydantic's text repeats the values: it may be the patient's name
        fields = ", ".join(".".join(str(part) for part in problem["loc"]) for problem in error.errors()[:3])
        raise FhirError(printable(f"report {report.number} of case {report.case}: not a valid DiagnosticReport ({fields})")) from None


def resource_json(resource: DiagnosticReport) -> str:
    """The resource as the JSON a FHIR server reads (elements without a value left out)."""
    return resource.model_dump_json(exclude_none=True, by_alias=True)


def _identity(resource: dict[str, Any]) -> list[str]:
    """The patient's identity as it appears in a built resource (contained Patient, accession, conditional reference):
    what a server's answer must not carry into a log. Longest first, so a name is blanked before a part of it."""
    found = [resource.get("subject", {}).get("identifier", {}).get("value", "")]
    for item in resource.get("contained", []):
        if item.get("resourceType") == "Patient":
            found += [identifier.get("value", "") for identifier in item.get("identifier", [])]
            for name in item.get("name", []):
                parts = [name.get("family", ""), *name.get("given", [])]
                found += parts + [piece for part in parts for piece in re.split(r"[\s'-]+", part)]
            if birth := item.get("birthDate"):
                found += [birth, birth.replace("-", "")]
        found.append(item.get("accessionIdentifier", {}).get("value", ""))
    found += [urllib.parse.quote(text, safe="") for text in found]
    return sorted({text for text in found if len(text) >= 2}, key=len, reverse=True)


def _reason(answer: bytes, fallback: str, identity: list[str]) -> str:
    """The server's reason in one bounded line: its OperationOutcome's diagnostics (or details), with the patient's
    identity blanked out; `fallback` (the HTTP reason phrase) where it gave none."""
    try:
        outcome = json.loads(answer)
        issues = outcome.get("issue", []) if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome" else []
        texts = [issue.get("diagnostics") or (issue.get("details") or {}).get("text") for issue in issues if isinstance(issue, dict)]
        reason = "; ".join(text for text in texts if isinstance(text, str) and text.strip())
    except (ValueError, AttributeError):
        reason = ""
    reason = " ".join((reason or fallback or "no reason given").split())
    for text in identity:  # as whole words: a two-letter given name must not blank out the middle of "allowed"
        reason = re.sub(rf"(?<!\w){re.escape(text)}(?!\w)", "[patient]", reason, flags=re.IGNORECASE)
    return printable(reason[:REASON_LIMIT] + ("..." if len(reason) > REASON_LIMIT else ""))


def send(server: Server, resource: str) -> str:
    """PUTs `resource` (a DiagnosticReport's JSON) as a conditional update by its REPORT_SYSTEM identifier and returns
    the server's answer in a line ("201 DiagnosticReport/17/_history/1"). Raises `Unreachable` where no connection
    was made, `Refused` for a 4xx that means never, FhirError for anything to try again later."""
    content = json.loads(resource)
    value = next((item["value"] for item in content.get("identifier", []) if item.get("system") == REPORT_SYSTEM), None)
    if not value:
        raise Refused(f"FHIR {server}: a DiagnosticReport without an identifier under {REPORT_SYSTEM} cannot be sent")
    what = f"FHIR {server}: DiagnosticReport {value}"
    url = f"{server.base_url}/DiagnosticReport?" + urllib.parse.urlencode({"identifier": f"{REPORT_SYSTEM}|{value}"}, safe=":/")
    headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8", "Accept": FHIR_JSON, "Prefer": "return=minimal"}
    if server.token:
        headers["Authorization"] = f"Bearer {server.token}"
    request = urllib.request.Request(url, resource.encode("utf-8"), headers, method="PUT")
    context = ssl.create_default_context(cafile=server.ca_file) if server.ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=server.timeout, context=context) as answer:
            answer.read(ANSWER_LIMIT)
            location = answer.headers.get("Location") or answer.headers.get("Content-Location") or ""
            return f"{answer.status} {location.removeprefix(server.base_url + '/')}".strip()
    except urllib.error.HTTPError as error:
        reason = _reason(error.read(ANSWER_LIMIT), str(error.reason), _identity(content))
        error.close()
        if 400 <= error.code < 500 and error.code not in RETRY_STATUSES:
            raise Refused(printable(f"{what}: refused (HTTP {error.code}): {reason}")) from None
        raise FhirError(printable(f"{what}: HTTP {error.code}: {reason}")) from None
    except urllib.error.URLError as error:
        reason = error.reason.strerror if isinstance(error.reason, OSError) and error.reason.strerror else str(error.reason)
        raise Unreachable(printable(f"FHIR {server} unreachable: {reason}")) from None
    except (OSError, HTTPException) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else one_line(error)
        raise FhirError(printable(f"{what}: no answer: {reason}")) from None


@dataclass(frozen=True)
class Entry:
    """A report in the outbox, as `Outbox.entries` reports it."""

    identifier: str
    state: str
    attempts: int
    reply: str
    resource: str


def _send(server: Server, resource: str) -> Outcome:
    """`send` with its answer read as what becomes of the queued report (see the module's docstring)."""
    try:
        return delivered(send(server, resource))
    except Unreachable as error:
        return unreachable(str(error))
    except Refused as error:
        return refused(str(error))
    except FhirError as error:
        return retry(str(error))


class Outbox(Queue):
    """The durable queue of DiagnosticReports to the FHIR server (see the module's docstring). One connection per
    process."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / OUTBOX_FILE, "FHIR", "report(s)", FhirError)

    def enqueue(self, resource: DiagnosticReport) -> bool:
        """Queues `resource` under its report identifier; False where that report is queued or was sent already."""
        value = next((item.value for item in resource.identifier or [] if item.system == REPORT_SYSTEM and item.value), None)
        if value is None:
            raise FhirError(f"FHIR outbox: cannot queue a DiagnosticReport without an identifier under {REPORT_SYSTEM}")
        return self._add(value, value.rpartition("/")[0], resource_json(resource))

    def entries(self) -> list[Entry]:
        """Every report ever queued, in queue order."""
        return [Entry(*row) for row in self._rows()]

    def deliver(self, server: Server, say: Callable[[str], None], now: float | None = None) -> Round:
        """Sends the queued reports that are due, in order, and records each answer. Says one line per refusal and
        error, and an outage once until it changes."""
        return self._deliver(lambda _identifier, resource: _send(server, resource), say, now)
