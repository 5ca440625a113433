"""The report into the hospital's FHIR server: a DiagnosticReport with its PDF, PUT to a small FHIR endpoint of the
test's own (http.server in a thread) that reads every resource back with fhir.resources and honours the conditional
update by identifier, as a FHIR server does; the PDF is opened with poppler (pdftoppm, pdftotext)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import shutil
import stat
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.specimen import Specimen
from pydantic import ValidationError
from support import free_port

from caseformat.bounded import utc_now
from caseformat.documents import Author, Report
from caseformat.signing import SigningKey, TrustedKeys
from hospital.fhir import (
    OUTBOX_FILE,
    REPORT_SYSTEM,
    FhirError,
    Outbox,
    Profile,
    Refused,
    Server,
    diagnostic_report,
    resource_json,
    send,
)
from hospital.hl7 import Patient
from hospital.outbox import RETRY_FIRST
from hospital.pdf import report_pdf

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.public])
CASE = "st-mary.3f9c2a7d1b4e6c08"
IDENTITY = {"accession": "S26-4711", "patient_name": "Müller-Lüdenscheidt, Hans", "patient_id": "MRN-004711",
            "birth_date": "1961-02-03", "sex": "M"}  # fmt: skip
PATIENT = Patient.from_identity(IDENTITY)
DIAGNOSIS = "Reactive lymph node <b>not bold</b> & more"
TOKEN = "s3cr3t-token"
PROFILE = Profile(patient_system="urn:oid:1.2.276.0.76.3.1.99", accession_system="https://st-mary.example/accession")


def signed_report(number: int = 1, category: str = "benign", diagnosis: str = DIAGNOSIS, case: str = CASE) -> Report:
    """A report as the station gets it: signed by the centre, read back verified."""
    report = Report(case, number, category, diagnosis, Author("u0123abcd", "Dr. Ana Pérez"), utc_now(), "st-mary",
                    "Clear: closest 2 mm (posterior)", "Frozen section; <i>permanent</i> sections follow", (),
                    number - 1 if number > 1 else None)  # fmt: skip
    return Report.read(report.to_json(KEY), f"{case}/reports/{number:04d}.json", TRUSTED)


def outcome(status: int, diagnostics: str) -> tuple[int, dict[str, Any]]:
    return status, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": diagnostics}]}


class FhirEndpoint:
    """A FHIR server's DiagnosticReport endpoint: `PUT /fhir/DiagnosticReport?identifier=system|value` is a conditional
    update (no match: created, 201; one match: updated, a new version, 200; several: 412), every body is read with
    fhir.resources (400 where it fails) and a bearer token is required; `answers` holds answers to give instead (each
    used once)."""

    def __init__(self, port: int = 0) -> None:
        self.stored: dict[str, dict[str, Any]] = {}  # resource ID: the latest version
        self.versions: dict[str, int] = {}
        self.puts: list[str] = []  # the report identifier of every PUT received
        self.answers: list[tuple[int, dict[str, Any]]] = []
        endpoint, self.lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with endpoint.lock:
                    status, answer, location = endpoint.put(path, urllib.parse.parse_qs(query), body, self.headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, path: str, query: dict[str, list[str]], body: bytes, headers: Any) -> tuple[int, dict[str, Any], str]:
        if headers["Authorization"] != f"Bearer {TOKEN}":
            return *outcome(401, "no valid bearer token"), ""
        if path != "/fhir/DiagnosticReport" or len(query.get("identifier", [])) != 1 or not headers["Content-Type"].startswith("application/fhir+json"):
            return *outcome(400, f"not a conditional update of a DiagnosticReport: {path}"), ""
        system, _, value = query["identifier"][0].partition("|")
        self.puts.append(value)
        if self.answers:
            return *self.answers.pop(0), ""
        try:
            resource = DiagnosticReport.model_validate_json(body)
        except ValidationError as error:
            return *outcome(400, f"not a DiagnosticReport: {error.error_count()} errors"), ""
        if not any(item.system == system and item.value == value for item in resource.identifier or []):
            return *outcome(400, "the resource does not carry the identifier of its conditional update"), ""
        matches = [key for key, stored in self.stored.items() if any(item.get("system") == system and item.get("value") == value
                                                                      for item in stored.get("identifier", []))]  # fmt: skip
        if len(matches) > 1:
            return *outcome(412, "several resources match"), ""
        resource_id = matches[0] if matches else str(len(self.stored) + 1)
        self.stored[resource_id] = json.loads(body)
        self.versions[resource_id] = self.versions.get(resource_id, 0) + 1
        location = f"{self.url}/DiagnosticReport/{resource_id}/_history/{self.versions[resource_id]}"
        return (200 if matches else 201), {}, location

    def received(self, identifier: str) -> dict[str, Any]:
        """The stored resource with that report identifier, as received."""
        found = [stored for stored in self.stored.values() if {"system": REPORT_SYSTEM, "value": identifier, "use": "official"} in stored["identifier"]]
        assert len(found) == 1, f"{len(found)} resources for {identifier}"
        return found[0]

    def report(self, identifier: str) -> DiagnosticReport:
        """The stored resource with that report identifier, read back with fhir.resources."""
        return DiagnosticReport.model_validate(self.received(identifier))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[FhirEndpoint]:
    server = FhirEndpoint()
    yield server
    server.close()


def server_of(endpoint: FhirEndpoint | str) -> Server:
    return Server.parse(endpoint.url if isinstance(endpoint, FhirEndpoint) else endpoint, TOKEN)


def contained(resource: DiagnosticReport, kind: type[Any]) -> Any:
    found = [item for item in resource.contained or [] if isinstance(item, kind)]
    assert len(found) == 1
    return found[0]


def presented_pdf(resource: dict[str, Any]) -> bytes:
    """The PDF of a received resource's presented form (its JSON as sent), after checking what FHIR says of it:
    content type, size, and hash the base64 of its SHA-1."""
    (form,) = resource["presentedForm"]
    assert form["contentType"] == "application/pdf"
    pdf = base64.b64decode(form["data"], validate=True)
    assert pdf.startswith(b"%PDF-") and form["size"] == len(pdf)
    assert form["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()
    return pdf


def pdf_text(pdf: bytes, folder: Path) -> str:
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext is not installed (Debian package poppler-utils)")
    (folder / "report.pdf").write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(folder / "report.pdf"), "-"], capture_output=True, text=True, check=True).stdout


def test_a_signed_report_reaches_the_fhir_server_as_a_diagnostic_report_with_its_pdf(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    report = signed_report()
    assert send(server_of(endpoint), resource_json(diagnostic_report(report, PATIENT, PROFILE))).startswith("201 DiagnosticReport/1")
    resource = endpoint.report(f"{CASE}/1")
    assert resource.status == "final"
    assert [(coding.system, coding.code) for concept in resource.category or [] for coding in concept.coding or []] == [("http://loinc.org", "LP7839-6")]
    assert [(coding.system, coding.code) for coding in resource.code.coding or []] == [("http://loinc.org", "11526-1")]
    assert resource.conclusion == DIAGNOSIS
    assert [coding.code for concept in resource.conclusionCode or [] for coding in concept.coding or []] == ["benign"]
    assert [interpreter.display for interpreter in resource.resultsInterpreter or []] == ["Dr. Ana Pérez"]
    assert resource.issued is not None and resource.issued.isoformat().startswith(report.signed_at[:19])
    # the patient, as the registry holds them, in the contained Patient the subject names
    patient = contained(resource, FhirPatient)
    assert resource.subject is not None and resource.subject.reference == f"#{patient.id}"
    assert [(item.system, item.value) for item in patient.identifier] == [(PROFILE.patient_system, "MRN-004711")]
    assert [(name.family, name.given) for name in patient.name] == [("Müller-Lüdenscheidt", ["Hans"])]
    assert str(patient.birthDate) == "1961-02-03" and patient.gender == "male"
    specimen = contained(resource, Specimen)
    assert [item.value for item in specimen.identifier] == [CASE] and specimen.accessionIdentifier.value == "S26-4711"
    assert [reference.reference for reference in resource.specimen or []] == [f"#{specimen.id}"]
    # the PDF: hashed as FHIR says, rendered by poppler, the diagnosis printed as written (markup not obeyed)
    pdf = presented_pdf(endpoint.received(f"{CASE}/1"))
    if not shutil.which("pdftoppm"):
        pytest.skip("pdftoppm is not installed (Debian package poppler-utils)")
    (tmp_path / "report.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "50", str(tmp_path / "report.pdf"), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 1 and pages[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and pages[0].stat().st_size > 5000
    text = pdf_text(pdf, tmp_path)
    for expected in (DIAGNOSIS, "Müller-Lüdenscheidt, Hans", "MRN-004711", "1961-02-03", CASE, "Dr. Ana Pérez (u0123abcd)", "BENIGN",
                     "Frozen section; <i>permanent</i> sections follow", "Clear: closest 2 mm (posterior)"):  # fmt: skip
        assert expected in text, expected
    assert "Amendment" not in text
    assert report_pdf(report, PATIENT) == pdf, "the same report renders to the same bytes"


def test_an_amendment_is_amended_and_a_deferred_report_preliminary(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    for number, category in ((1, "deferred"), (2, "malignant")):
        send(server_of(endpoint), resource_json(diagnostic_report(signed_report(number, category, f"Answer {number}"), PATIENT, PROFILE)))
    first, amendment = endpoint.report(f"{CASE}/1"), endpoint.report(f"{CASE}/2")
    assert (first.status, amendment.status) == ("preliminary", "amended")
    assert amendment.conclusion == "Answer 2" and contained(amendment, FhirPatient).identifier[0].value == "MRN-004711"
    text = pdf_text(presented_pdf(endpoint.received(f"{CASE}/2")), tmp_path)
    assert "Amendment 2, replaces report 1" in text and "Answer 2" in text
    # an amendment of a report that was never final (deferred) is the first final answer
    assert diagnostic_report(signed_report(2), PATIENT, PROFILE, corrects_final=False).status == "final"


def test_a_server_with_its_own_patients_gets_a_conditional_reference(endpoint: FhirEndpoint) -> None:
    profile = Profile("conditional", PROFILE.patient_system, PROFILE.accession_system)
    send(server_of(endpoint), resource_json(diagnostic_report(signed_report(), PATIENT, profile)))
    resource = endpoint.report(f"{CASE}/1")
    assert resource.subject is not None and resource.subject.reference == f"Patient?identifier={PROFILE.patient_system}|MRN-004711"
    assert not any(isinstance(item, FhirPatient) for item in resource.contained or [])
    specimen = contained(resource, Specimen)
    assert specimen.subject.reference == resource.subject.reference
    assert (specimen.accessionIdentifier.system, specimen.accessionIdentifier.value) == (PROFILE.accession_system, "S26-4711")
    with pytest.raises(FhirError, match="patient_system"):
        Profile("conditional")


def test_a_resend_updates_the_report_instead_of_adding_one(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    resource = diagnostic_report(signed_report(), PATIENT, PROFILE)
    assert send(server_of(endpoint), resource_json(resource)).startswith("201 ")
    assert send(server_of(endpoint), resource_json(resource)) == "200 DiagnosticReport/1/_history/2"
    assert len(endpoint.stored) == 1 and endpoint.versions == {"1": 2}
    # the outbox keeps one entry per report: queueing it again sends nothing again
    with Outbox(tmp_path / "state") as outbox:
        assert outbox.enqueue(resource) and not outbox.enqueue(resource)
        assert outbox.deliver(server_of(endpoint), print).delivered == 1
        assert not outbox.enqueue(resource)
        assert outbox.deliver(server_of(endpoint), print).delivered == 0
    assert len(endpoint.stored) == 1 and endpoint.puts == [f"{CASE}/1"] * 3


def test_an_outage_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    port, state, said = free_port(), tmp_path / "state", []
    down = Server.parse(f"http://127.0.0.1:{port}/fhir", TOKEN)
    with Outbox(state) as outbox:
        for number in (1, 2):
            assert outbox.enqueue(diagnostic_report(signed_report(number, "malignant"), PATIENT, PROFILE))
        assert outbox.enqueue(diagnostic_report(signed_report(case="st-mary.other"), PATIENT, PROFILE))
        for _ in range(2):
            done = outbox.deliver(down, said.append)
            assert (done.delivered, done.queued) == (0, 3)
    assert len(said) == 1 and "unreachable" in said[0] and "3 FHIR report(s) stay queued" in said[0], said
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE((state / OUTBOX_FILE).stat().st_mode) == 0o600
    server = FhirEndpoint(port)  # the server is back, and the station restarted meanwhile
    try:
        with Outbox(state) as outbox:
            done = outbox.deliver(down, said.append)
            assert (done.delivered, done.queued, done.refused) == (3, 0, 0)
            assert outbox.deliver(down, said.append).delivered == 0
            entries = outbox.entries()
        assert [entry.state for entry in entries] == ["delivered"] * 3 and all(entry.resource == "" for entry in entries)
        assert server.puts == [f"{CASE}/1", f"{CASE}/2", "st-mary.other/1"]  # each once, the amendment after what it amends
        assert len(server.stored) == 3 and set(server.versions.values()) == {1}
        assert server.report(f"{CASE}/2").status == "amended"
    finally:
        server.close()


def test_a_server_error_is_sent_again_later_and_the_amendment_waits(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    endpoint.answers.append(outcome(503, "database is restarting"))
    said: list[str] = []
    with Outbox(tmp_path / "state") as outbox:
        for number in (1, 2):
            outbox.enqueue(diagnostic_report(signed_report(number), PATIENT, PROFILE))
        done = outbox.deliver(server_of(endpoint), said.append, now=1000.0)
        assert (done.delivered, done.queued) == (0, 2) and endpoint.puts == [f"{CASE}/1"]
        assert len(said) == 1 and "HTTP 503: database is restarting; sent again later" in said[0]
        assert outbox.deliver(server_of(endpoint), said.append, now=1000.0 + RETRY_FIRST / 2).delivered == 0
        assert outbox.deliver(server_of(endpoint), said.append, now=1000.0 + RETRY_FIRST).delivered == 2
    assert endpoint.puts == [f"{CASE}/1", f"{CASE}/1", f"{CASE}/2"] and len(endpoint.stored) == 2


def test_one_process_delivers_at_a_time(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(diagnostic_report(signed_report(), PATIENT, PROFILE))
        with (tmp_path / "state" / f"{OUTBOX_FILE}.lock").open("w") as other:  # another process's round holds the lock
            fcntl.flock(other, fcntl.LOCK_EX)
            done = outbox.deliver(server_of(endpoint), print)
            assert (done.busy, done.delivered, endpoint.puts) == (True, 0, [])
        assert outbox.deliver(server_of(endpoint), print).delivered == 1


def test_a_refusal_is_one_line_naming_the_problem_without_the_patient(endpoint: FhirEndpoint, tmp_path: Path) -> None:
    echoed = ("Patient 'Müller-Lüdenscheidt, Hans' (MRN-004711, born 19610203, order S26-4711; family Lüdenscheidt, given hans): "
              "Patient.gender\nis not allowed here")  # fmt: skip
    endpoint.answers.append(outcome(422, echoed))
    resource = diagnostic_report(signed_report(), PATIENT, PROFILE)
    with pytest.raises(Refused) as refused:
        send(server_of(endpoint), resource_json(resource))
    line = str(refused.value)
    assert "\n" not in line and "HTTP 422" in line and f"DiagnosticReport {CASE}/1" in line and "Patient.gender is not allowed here" in line
    for identity in ("Müller", "Lüdenscheidt", "Hans", "MRN-004711", "19610203", "S26-4711", TOKEN):
        assert identity not in line, identity
    # in the outbox: refused once, said once, kept, not sent again
    endpoint.answers.append(outcome(400, "Patient.gender is not allowed here"))
    said: list[str] = []
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(resource)
        assert outbox.deliver(server_of(endpoint), said.append).refused == 1
        assert outbox.deliver(server_of(endpoint), said.append, now=10**10).refused == 0
        (entry,) = outbox.entries()
    assert entry.state == "refused" and "HTTP 400" in entry.reply and entry.resource
    assert len(said) == 1 and said[0].endswith("; not sent again") and "MRN-004711" not in said[0]
    assert endpoint.puts == [f"{CASE}/1"] * 2
    # a wrong token is a refusal too, and the line does not show the token
    with pytest.raises(Refused, match=r"refused \(HTTP 401\): no valid bearer token") as unauthorised:
        send(Server.parse(endpoint.url, "wrong"), resource_json(resource))
    assert "wrong" not in str(unauthorised.value)
