"""The hub's order of work and what it publishes: a case whose report is signed never holds the queue, and the
hub never replaces the station's edge map with a map of nothing scored.

Against the real S3 server, with the real model and real slides; the hub runs as a subprocess, as a pathology
centre runs it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import S3Server
from support import ARRIVING, STATION, colorectal_context, final_triage, running_hub, scorable, slide_version, wait_for

from caseformat.documents import Author, SlideRead
from caseformat.layout import TRIAGE, SlideRef, qualified_case
from caseformat.results import Triage
from caseformat.signing import SigningKey, TrustedKeys
from viewer import S3Storage, reports

pytestmark = pytest.mark.slow  # a running hub


def send(slide: Path, store: str, endpoint: str, state: Path, case: str, *extra: str) -> subprocess.Popen[str]:
    """`slidestream send` of `slide` as slide s1 of `case`, a colorectal specimen (which the model may score)."""
    station, local = case.split(".", 1)
    return subprocess.Popen([sys.executable, "-m", "slidestream", "send", str(slide), store, "--case", local, "--station", station,
                             "--endpoint-url", endpoint, "--no-edge", "--state-dir", str(state), "--context-file",
                             str(colorectal_context()), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def sent(slide: Path, store: str, endpoint: str, state: Path, case: str, *extra: str) -> None:
    """The same, waited for: the send is complete."""
    process = send(slide, store, endpoint, state, case, *extra)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def hub_lines(log: Path, case: str) -> list[int]:
    """Indices of the hub's log lines that publish a map of `case` (PARTIAL, TRIAGED, DONE)."""
    name = SlideRef(case).label
    return [i for i, line in enumerate(log.read_text().splitlines()) if line.startswith((f"PARTIAL {name}", f"TRIAGED {name}", f"DONE {name}"))]


def test_a_new_case_behind_a_large_signed_case_is_scored_first(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store, endpoint = f"s3://{s3_bucket}/queue", s3_server.endpoint_url
    signed, new = qualified_case(STATION, "SIGNED-1"), qualified_case(STATION, "NEW-1")
    sent(scorable(ARRIVING), store, endpoint, tmp_path / "signed", signed)  # registered first: less time left on its clock
    key = SigningKey.generate()
    form = reports.ReportIn(category="benign", diagnosis="no tumour at the margin")
    asyncio.run(reports.sign(S3Storage(s3_bucket, "queue", endpoint), key, TrustedKeys([key.public]), signed, form,
                             Author("u0123abcd", "Dr A"), [SlideRead("s1", "v1")], STATION))  # fmt: skip
    sent(scorable("CMU-1-Small-Region.svs"), store, endpoint, tmp_path / "new", new)
    log = tmp_path / "hub.log"
    with running_hub(store, endpoint, log):
        wait_for(lambda: f"DONE {SlideRef(new).label}" in log.read_text(), "the new case's final map", 600, output=log.read_text)
        wait_for(lambda: hub_lines(log, signed), "the signed case's first map, once no other case has work", 600, output=log.read_text)
    assert max(hub_lines(log, new)) < min(hub_lines(log, signed)), log.read_text()  # the new case scored through, first
    assert f"SIGNED {signed}" in log.read_text()
    assert final_triage(slide_version(store, endpoint, new)) is not None


def test_the_hub_never_publishes_a_map_with_nothing_scored(s3_server: S3Server, tmp_path: Path) -> None:
    """Every version of the centre's triage.json ever written, read back from a versioned bucket: the hub's map of an
    arriving slide replaces what readers see only once it shows a scored tile."""
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store, endpoint = f"s3://{bucket}/versioned", s3_server.endpoint_url
    case = qualified_case(STATION, "ARRIVING-1")
    key = f"versioned/{SlideRef(case).centre_key(TRIAGE)}"
    try:
        with running_hub(store, endpoint, tmp_path / "hub.log"):
            sent(scorable(ARRIVING), store, endpoint, tmp_path / "state", case, "--max-rate", "2")  # slow: the hub sees it arrive
            wait_for(lambda: final_triage(slide_version(store, endpoint, case)), "the hub's final map", 600)
        versions = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        written = [Triage.read(client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()) for v in versions]
        assert len(written) >= 2 and any(not triage.complete for triage in written)  # partial maps while it arrived
        assert [triage.tiles_scored for triage in written if triage.tiles_scored == 0] == [], [t.summary for t in written]
    finally:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):  # a versioned bucket's every version
            if objects := [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
