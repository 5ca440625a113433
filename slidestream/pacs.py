"""`slidestream pacs-send`: a completed case's DICOM WSI series into the hospital's PACS by STOW-RS; and for `watch
--pacs`, the export and send of a signed case's slides into the station's own PACS, filed under the patient.

The centre sends a case from the store, or a station from its own archive; the series is `export-dicom`'s (wsidicom,
de-identified). Its series and instance UIDs are new at each export, so the export of a case is kept in the state
folder (`pacs/CASE-DIGEST`, the digest naming the case as it was given) and a rerun sends that same export: the PACS,
asked by QIDO-RS, says which instances it still lacks (`transfer.stow`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from slidestream import options as o

if TYPE_CHECKING:
    from wsidicom.metadata import Patient as DicomPatient

    from hospital.hl7 import Patient as HospitalPatient
    from hospital.systems import PacsTarget

stdout = Console()


def pacs_send(
    source: Annotated[str, typer.Argument(
        metavar="CASE_OR_EXPORT",
        help="A case as export-dicom takes it (s3://BUCKET/PREFIX/stations/STATION/CASE, a slide version, a local case "
             "folder), or export-dicom's output folder.",
    )],
    stow: Annotated[str, typer.Option("--stow", metavar="URL", help="The PACS's DICOMweb root, e.g. http://pacs:8042/dicom-web. "
                                      "Credentials from SLIDESTREAM_PACS_TOKEN (bearer), or SLIDESTREAM_PACS_USER and "
                                      "SLIDESTREAM_PACS_PASSWORD (basic).")],
    endpoint_url: o.EndpointUrl = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Where a case's export is kept for reruns (default $XDG_STATE_HOME/slidestream).")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=1000, help="Instances per STOW-RS request (and at most 256 MB).")] = 16,
    retries: Annotated[
        int, typer.Option(min=0, max=20, help="Tries again after a network failure or a busy PACS (back-off 1 s doubling).")
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
) -> None:
    """Send a case's DICOM WSI series to a PACS by STOW-RS: only the instances it lacks, each confirmed by its answer."""
    from slidestream.stored import is_stored_case
    from transfer.stow import Pacs, credentials, read_series, send_series

    token, basic = credentials()
    pacs = Pacs(stow, token, basic, retries=retries)
    folder = _exported_case(source, endpoint_url, state_dir) if is_stored_case(source) else Path(source)
    result = send_series(read_series(folder), pacs, batch)
    summary = {**result.summary(), "export": str(folder)}
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    stdout.print(f"{folder}: {result.instances} instances, {result.sent} sent, {result.already} already in the PACS",
                 markup=False, highlight=False, soft_wrap=True)


def _exported_case(source: str, endpoint_url: str | None, state_dir: Path | None) -> Path:
    """The case's export in the state folder: made once, kept so that every rerun sends the same instances."""
    from slidestream.stored import open_stored_case
    from tiling.dicom import export_dicom
    from transfer import default_state_dir

    stored = open_stored_case(source, endpoint_url)
    named = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:12]
    folder = (state_dir or default_state_dir()) / "pacs" / f"{stored.case_id}-{named}"
    if not folder.is_dir():  # published only when complete (`OUT.partial` until then)
        export_dicom(stored, folder, stored.case_id)
    return folder


def station_images(stow: str, store: str, endpoint_url: str | None, state_dir: Path) -> PacsTarget:
    """`watch --pacs`: how the station's signed cases reach its own PACS. A slide version is exported from the store
    (the station's own folder; the hub completed its pyramid there) with the patient and accession of the station's
    registry, into the state folder (`pacs/{case}-{slide}-{version}`, until the PACS holds it), and stored by STOW-RS.
    A malformed URL or credentials are one line at start (`typer.BadParameter`)."""
    from caseformat.layout import SlideRef
    from hospital.pacs import CaseImages, PacsRefused, PacsUnreachable
    from hospital.systems import PacsTarget
    from slidestream.stored import open_stored_case
    from tiling.dicom import export_dicom
    from transfer.errors import DestinationError, NetworkError
    from transfer.stow import Pacs, PacsError, credentials, read_series, send_series

    try:
        token, basic = credentials()
        pacs = Pacs(stow, token, basic, retries=2)
    except DestinationError as error:
        raise typer.BadParameter(str(error), param_hint="--pacs") from None

    def export(images: CaseImages, slide: str, version: str) -> Path:
        folder = state_dir / "pacs" / f"{images.case}-{slide}-{version}"
        if not folder.is_dir():  # published only when complete: a rerun sends this same export
            ref = SlideRef(images.case, slide, version)
            stored = open_stored_case(f"{store.rstrip('/')}/{ref.root}", endpoint_url, images.case)
            export_dicom(stored, folder, images.case, patient=_dicom_patient(images.patient), accession=images.patient.accession)
        return folder

    def send(folder: Path) -> str:
        try:
            result = send_series(read_series(folder, identified=True), pacs)
        except NetworkError as error:
            raise PacsUnreachable(str(error)) from None
        except PacsError as error:
            raise PacsRefused(str(error)) from None
        return f"{result.instances} instances, {result.sent} sent, {result.already} already in the PACS"

    return PacsTarget(export, send)


def _dicom_patient(patient: HospitalPatient) -> DicomPatient:
    """The registry's patient as DICOM's patient module: name as Family^Given, HL7 sex M/F/O/A/N mapped to DICOM's
    M/F/O (U: not known, left empty)."""
    from wsidicom.metadata import Patient
    from wsidicom.metadata.patient import PatientSex

    name = "^".join(part for part in (patient.family_name, patient.given_name) if part) or None
    sex = {"M": PatientSex.M, "F": PatientSex.F, "O": PatientSex.O, "A": PatientSex.O, "N": PatientSex.O}.get(patient.sex or "")
    return Patient(name=name, identifier=patient.patient_id, birth_date=patient.birth_date, sex=sex)
