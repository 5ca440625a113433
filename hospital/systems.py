"""The hospital's own systems as the station sees them: one object that takes each verified report once and hands it
to the LIS (HL7 v2 ORU^R01 over MLLP) and the hospital's FHIR server (a DiagnosticReport with the PDF), and with the
case's first final report its slides to the PACS (DICOM WSI by STOW-RS, `hospital.pacs`), through their durable
outboxes, and renders the PDF the operating room's outbox holds.

Only the station knows the patient: it passes the registry's identity of the specimen with each report, and the
messages are built here, at the hospital. Which systems exist is the hospital's configuration (`watch --lis`,
`--fhir`, `--pacs`); with none, the PDF is all this does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from caseformat.documents import Report
from hospital import fhir, mllp, pacs
from hospital.hl7 import HL7Error, Patient, Routing, report_message
from hospital.pdf import report_pdf

NOT_FINAL = ("deferred",)  # a report category that says the answer is still to come: no slides go to the PACS yet


@dataclass
class HospitalSystems:
    """The LIS and FHIR endpoints of one station (either may be None), with their outboxes in `folder` (the
    station's private state folder: the queued messages hold the patient's identity)."""

    folder: Path
    lis: mllp.Endpoint | None = None
    fhir_server: fhir.Server | None = None
    routing: Routing = field(default_factory=Routing)
    profile: fhir.Profile = field(default_factory=fhir.Profile)
    images: PacsTarget | None = None

    def report(self, report: Report, identity: Mapping[str, str], corrects_final: bool | None) -> tuple[bytes | None, list[str]]:
        """Queue `report` for each configured system; returns its PDF (None without a patient ID to head it) and the
        lines to say (a report that cannot go to the LIS: the reason, naming no patient). Queuing twice is harmless:
        each outbox keeps one message per report."""
        lines: list[str] = []
        try:
            patient = Patient.from_identity(identity)
        except HL7Error as error:
            return None, [f"HL7 {report.case} report {report.number}: not sent to the hospital's systems: {error}"]
        pdf = report_pdf(report, patient) if patient.patient_id else None
        if self.lis is not None:
            if not patient.patient_id:
                lines.append(f"HL7 {report.case} report {report.number}: not sent to the LIS: the specimen has no patient ID")
            else:
                with mllp.Outbox(self.folder) as outbox:
                    outbox.enqueue(report_message(report, patient, self.routing, corrects_final=corrects_final))
        if self.fhir_server is not None and patient.patient_id:
            with fhir.Outbox(self.folder) as outbox:
                outbox.enqueue(fhir.diagnostic_report(report, patient, self.profile, pdf, corrects_final=corrects_final))
        if self.images is not None and report.category not in NOT_FINAL:
            read = pacs.slides_read([(slide.slide, slide.version) for slide in report.slides])
            if not patient.patient_id:
                lines.append(f"PACS {report.case}: the slides are not sent to the PACS: the specimen has no patient ID")
            elif read:
                with pacs.Outbox(self.folder) as outbox:
                    outbox.enqueue(pacs.CaseImages(report.case, read, patient))
        return pdf, lines

    def deliver(self, say: Callable[[str], None]) -> None:
        """One delivery round of each outbox: what is due goes, an outage is said once (`hospital.outbox`)."""
        if self.lis is not None:
            with mllp.Outbox(self.folder) as outbox:
                outbox.deliver(self.lis, say)
        if self.fhir_server is not None:
            with fhir.Outbox(self.folder) as outbox:
                outbox.deliver(self.fhir_server, say)

    def deliver_images(self, say: Callable[[str], None]) -> None:
        """One delivery round of the PACS outbox: apart from the reports' round, since a slide's series takes
        minutes and a report must not wait behind it."""
        if self.images is not None:
            with pacs.Outbox(self.folder) as outbox:
                outbox.deliver(self.images.export, self.images.store, say)


@dataclass(frozen=True)
class PacsTarget:
    """How the station's slides reach its PACS: `export` makes a slide version's identified series (from the store,
    which the wiring knows), `store` sends a series folder to the PACS."""

    export: pacs.Export
    store: pacs.Store
