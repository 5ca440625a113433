"""`slidestream pacs-send`: a case sent to the real S3 server goes into a real PACS, Debian's Orthanc with its DICOMweb
plugin, by STOW-RS; Orthanc's QIDO-RS lists the series, its WADO-RS serves a frame with the store's pixels, a rerun
sends nothing, and a PACS that goes down mid-way gets only the missing instances once it is back.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from conftest import REPO, sample
from PIL import Image
from pydicom.encaps import generate_frames
from support import PACS_PASSWORD, PACS_USER, Orthanc, free_port

from caseformat.layout import qualified_case, station_case_folder
from slidestream.stored import open_stored_case

pytestmark = pytest.mark.slow  # a send, exports, and an Orthanc started and stopped

STATION, LOCAL = "h1", "x"
CASE = qualified_case(STATION, LOCAL)
SOP_INSTANCE_UID, TOTAL_COLUMNS, REFERENCED_SOP_SEQUENCE = "00080018", "00480006", "00081199"
JPEG_BASELINE = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'


@dataclass(frozen=True)
class SentCase:
    url: str  # as pacs-send is given it
    endpoint: str


@pytest.fixture(scope="module")
def case(s3_server, tmp_path_factory: pytest.TempPathFactory) -> SentCase:  # type: ignore[no-untyped-def]
    """CMU-1 sent to the real S3 server with its whole pyramid (so no hub is needed)."""
    bucket = s3_server.new_bucket()
    run = subprocess.run(
        [sys.executable, "-m", "slidestream", "send", str(sample("CMU-1-Small-Region.svs")), f"s3://{bucket}/cases",
         "--case", LOCAL, "--station", STATION, "--full-pyramid", "--no-edge", "--endpoint-url", s3_server.endpoint_url,
         "--state-dir", str(tmp_path_factory.mktemp("state"))],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return SentCase(f"s3://{bucket}/cases/{station_case_folder(CASE).rstrip('/')}", s3_server.endpoint_url)


def pacs_send(source: SentCase | Path, stow: str, state: Path, *args: str,
              password: str = PACS_PASSWORD) -> subprocess.CompletedProcess[str]:
    """The real command line, credentials in the environment as a hospital's service would set them."""
    environment = {**os.environ, "SLIDESTREAM_PACS_USER": PACS_USER, "SLIDESTREAM_PACS_PASSWORD": password}
    named = [source.url, "--endpoint-url", source.endpoint] if isinstance(source, SentCase) else [str(source)]
    return subprocess.run(
        [sys.executable, "-m", "slidestream", "pacs-send", *named, "--stow", stow, "--state-dir", str(state), "--json", *args],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=environment,
    )  # fmt: skip


def summary(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def one_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_a_case_reaches_orthanc_which_serves_the_stores_pixels_and_a_rerun_sends_nothing(
    orthanc: Orthanc, case: SentCase, tmp_path: Path,
) -> None:
    first = summary(pacs_send(case, f"{orthanc.root}/dicom-web", tmp_path))
    export = Path(first["export"])
    files = sorted(export.iterdir())
    assert len(files) >= 3 and first["instances"] == len(files) and first["sent"] == len(files) and first["already"] == 0
    study, (series,) = first["study"], first["series"]

    listed = orthanc.series_instances(study, series)
    assert sorted(item[SOP_INSTANCE_UID]["Value"][0] for item in listed) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)
    level0 = max(listed, key=lambda item: item[TOTAL_COLUMNS]["Value"][0])
    uid = level0[SOP_INSTANCE_UID]["Value"][0]
    frame = orthanc.get(f"/dicom-web/studies/{study}/series/{series}/instances/{uid}/frames/1", Accept=JPEG_BASELINE)
    assert frame.status_code == 200, frame.text
    jpeg = frame_body(frame)
    (exported,) = [dataset for dataset in map(pydicom.dcmread, files) if dataset.SOPInstanceUID == uid]
    assert exported.PatientID == CASE
    assert jpeg.rstrip(b"\x00") == next(generate_frames(exported.PixelData, number_of_frames=exported.NumberOfFrames)).rstrip(b"\x00")
    served = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    stored = open_stored_case(case.url, case.endpoint).read_region((0, 0), 0, (exported.Columns, exported.Rows))
    assert served.shape == (exported.Rows, exported.Columns, 3) and served.std() > 10  # tissue, not a background frame
    np.testing.assert_array_equal(served, stored[..., :3])

    held = orthanc.instances()
    again = summary(pacs_send(case, f"{orthanc.root}/dicom-web", tmp_path))
    assert (again["sent"], again["already"], again["export"]) == (0, len(files), str(export))
    assert orthanc.instances() == held


def frame_body(response: requests.Response) -> bytes:
    """The one part of a WADO-RS multipart/related answer."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    part = response.content.split(b"--" + boundary)[1]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


class FrontProxy(ThreadingHTTPServer):
    """An HTTP front of the PACS (as a hospital's reverse proxy): forwards every request, answers 502 when the PACS
    is down, calls `after_first_store` once the PACS has answered the first STOW-RS request, and passes each STOW-RS
    answer through `stow_answer`."""

    daemon_threads = True

    def __init__(self, upstream: str, after_first_store: Callable[[], None] | None = None,
                 stow_answer: Callable[[bytes], bytes] = lambda answer: answer) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = upstream
        self.after_first_store = after_first_store
        self.stow_answer = stow_answer
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FrontProxy

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.forward(b"")

    def do_POST(self) -> None:  # noqa: N802
        self.forward(self.body())

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = bytearray()
        while size := int(self.rfile.readline().split(b";")[0], 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return bytes(data)

    def forward(self, body: bytes) -> None:
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {name: value for name, value in self.headers.items() if name.lower() not in skip}
        try:
            answer = requests.request(self.command, self.server.upstream + self.path, data=body or None, headers=headers, timeout=60)
            status, content, kind = answer.status_code, answer.content, answer.headers.get("Content-Type", "text/plain")
        except requests.ConnectionError:
            status, content, kind = 502, b"Bad Gateway: the PACS is down", "text/plain"
        if self.command == "POST" and status == 200:
            content = self.server.stow_answer(content)
            if self.server.after_first_store is not None:
                self.server.after_first_store()
                self.server.after_first_store = None
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: object) -> None:
        pass


def test_a_pacs_down_mid_way_gets_only_the_missing_instances_when_it_is_back(
    orthanc: Orthanc, case: SentCase, tmp_path: Path,
) -> None:
    proxy = FrontProxy(orthanc.root, orthanc.stop)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        before = orthanc.instances()
        cut = pacs_send(case, f"{proxy.url}/dicom-web", tmp_path, "--batch", "2", "--retries", "1")
    finally:
        proxy.shutdown()
        proxy.server_close()
        orthanc.start()
    assert cut.returncode == 3
    assert "HTTP 502 after 2 tries" in one_line(cut) and "run the same command again" in one_line(cut)
    assert orthanc.instances() == before + 2  # the first batch, which the PACS confirmed before it went down

    resumed = summary(pacs_send(case, f"{orthanc.root}/dicom-web", tmp_path, "--batch", "2"))
    instances = resumed["instances"]
    assert (resumed["already"], resumed["sent"]) == (2, instances - 2)
    assert orthanc.instances() == before + instances
    study, (series,) = resumed["study"], resumed["series"]
    assert len(orthanc.series_instances(study, series)) == instances
    assert summary(pacs_send(case, f"{orthanc.root}/dicom-web", tmp_path))["sent"] == 0
    assert orthanc.instances() == before + instances


def without_the_last_stored(answer: bytes) -> bytes:
    """A STOW-RS answer (DICOM JSON) whose ReferencedSOPSequence leaves out its last instance."""
    document = json.loads(answer)
    document[REFERENCED_SOP_SEQUENCE]["Value"].pop()
    return json.dumps(document).encode()


def test_an_instance_the_pacs_does_not_list_as_stored_is_not_sent(orthanc: Orthanc, case: SentCase, tmp_path: Path) -> None:
    proxy = FrontProxy(orthanc.root, stow_answer=without_the_last_stored)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        run = pacs_send(case, f"{proxy.url}/dicom-web", tmp_path, "--batch", "2")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert run.returncode == 2
    assert re.search(r"the PACS's answer does not list [0-9.]+\.dcm as stored$", one_line(run))


def test_wrong_credentials_are_one_line_and_store_nothing(orthanc: Orthanc, case: SentCase, tmp_path: Path) -> None:
    before = orthanc.instances()
    run = pacs_send(case, f"{orthanc.root}/dicom-web", tmp_path, password="wrong")
    assert run.returncode == 2
    assert "the PACS refused the credentials (HTTP 401)" in one_line(run) and "wrong" not in run.stderr
    assert orthanc.instances() == before


def test_a_pacs_that_cannot_be_reached_is_one_line_to_try_later(case: SentCase, tmp_path: Path) -> None:
    run = pacs_send(case, f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path, "--retries", "0")
    assert run.returncode == 3
    assert "cannot reach the PACS" in one_line(run) and "instances not sent yet" in one_line(run)


def test_credentials_in_the_url_are_refused(case: SentCase, tmp_path: Path) -> None:
    run = pacs_send(case, f"http://{PACS_USER}:{PACS_PASSWORD}@127.0.0.1:9/dicom-web", tmp_path)
    assert run.returncode == 2
    assert "holds credentials" in one_line(run) and PACS_PASSWORD not in run.stderr


def test_a_series_not_de_identified_is_refused(tmp_path: Path) -> None:
    """A scanner's own DICOM (no PatientIdentityRemoved YES) must not reach the PACS under slidestream's name."""
    folder = tmp_path / "scanner"
    folder.mkdir()
    shutil.copy(sample("wsi2dcm-jpeg.dcm"), folder)
    run = pacs_send(folder, "http://127.0.0.1:9/dicom-web", tmp_path)
    assert run.returncode == 2
    assert "not de-identified" in one_line(run)


def test_watch_sends_a_signed_cases_slides_to_its_pacs_filed_under_the_patient_and_no_identity_leaves(
    orthanc: Orthanc, s3_server: Any, tmp_path: Path,
) -> None:
    """`watch --pacs`: the specimen's sidecar names the patient; once the centre's final report for it is on the store,
    the slide it read goes into the hospital's PACS as DICOM WSI under that patient and accession (built at the
    station, from its registry), once; the store never holds the identity, and the identified export is not kept."""
    from caseformat.bounded import utc_now
    from caseformat.documents import Author, Report, SlideRead
    from caseformat.layout import report_key
    from caseformat.signing import SigningKey, public_pem

    bucket, centre = s3_server.new_bucket(), SigningKey.generate()
    (tmp_path / "centre.pem").write_bytes(public_pem(centre.public))
    specimen = tmp_path / "hot" / "frozen-p"
    specimen.mkdir(parents=True)
    (specimen / "specimen.json").write_text(json.dumps({
        "patient_id": "MRN-0042", "patient_name": "Doe, Jane", "birth_date": "1961-02-03", "sex": "F", "accession": "S26-0042",
        "specimen_site": "sigmoid colon", "clinical_question": "margin?"}))  # fmt: skip
    shutil.copy(sample("CMU-1-Small-Region.svs"), specimen / "block-A.svs")
    environment = {**os.environ, "SLIDESTREAM_PACS_USER": PACS_USER, "SLIDESTREAM_PACS_PASSWORD": PACS_PASSWORD}

    def watch_once() -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-m", "slidestream", "watch", str(tmp_path / "hot"), f"s3://{bucket}/alliance", "--endpoint-url",
             s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"), "--station", "st-anne", "--no-edge", "--full-pyramid",
             "--settle", "0.2", "--centre-keys", str(tmp_path / "centre.pem"), "--pacs", f"{orthanc.root}/dicom-web", "--once"],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)  # fmt: skip
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        return run

    before = orthanc.instances()
    sent = watch_once()
    [case] = re.findall(r" REGISTERED frozen-p: case (\S+),", sent.stdout)
    assert orthanc.instances() == before, "nothing goes to the PACS before the report is final"
    report = Report(case, 1, "benign", "No tumour at the margin.", Author("u00000001", "Dr Remote"), utc_now(), "st-anne",
                    slides=(SlideRead("s1", "v1"),))  # fmt: skip
    s3_server.client().put_object(Bucket=bucket, Key=f"alliance/{report_key(case, 1)}", Body=report.to_json(centre))
    delivered = watch_once()
    assert "REPORT case frozen-p" in delivered.stdout, delivered.stdout
    [study] = [entry for entry in orthanc.get("/dicom-web/studies?PatientID=MRN-0042&includefield=00080050").json()]
    assert study["00100010"]["Value"][0]["Alphabetic"] == "Doe^Jane" and study["00080050"]["Value"] == ["S26-0042"], study
    held = orthanc.instances() - before
    assert held >= 3, f"{held} instances in the PACS"
    again = watch_once()
    assert orthanc.instances() - before == held and "PACS" not in again.stdout, again.stdout
    assert not any((tmp_path / "state" / "pacs").iterdir()), "the identified export is removed once the PACS holds it"
    client = s3_server.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert b"MRN-0042" not in body and b"Doe" not in body and b"S26-0042" not in body, item["Key"]
