"""Two hospitals on one Ceph RGW store, each with nothing but the credential `slidestream stations add` gave it.

The malicious-station suite of the trust model (docs/trust.md): both stations send under their own policy (edge
triage on), the centre's hub and a pathologist's signature work over what they sent, the report reaches its own
station and no other, and every way hospital A could change, read or stop hospital B's work is refused by the
store, or, where the store must let A write (its own folder), ignored by the centre's readers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import S3Server, delete_bucket, sample

from caseformat.documents import Author, CaseRecord, Report, SlideRead
from caseformat.layout import (
    MANIFEST,
    TRIAGE,
    SlideRef,
    audit_key,
    case_key,
    notice_key,
    person_key,
    qualified_case,
    report_key,
)
from caseformat.results import HUB, Triage
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import S3Storage
from objectstore.enrolment import RgwAdmin, station_uid
from viewer.cases import Cases
from viewer.reports import ReportIn, RequestIn, ask, sign
from viewer.worklist import read_worklist

pytestmark = pytest.mark.slow

PREFIX = "alliance"
STATIONS = ("hosp-a", "hosp-b")
SLIDE = "CMU-1-Small-Region.svs"


@dataclass
class Alliance:
    server: S3Server
    bucket: str
    keys: Path  # the centre's key folder
    env: dict[str, dict[str, str]]  # station -> its enrolment's environment
    cases: dict[str, str]  # station -> the case it sent
    state: dict[str, Path]  # station -> its state folder

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def client(self, station: str) -> Any:
        """An S3 client with nothing but the station's own credential."""
        env = self.env[station]
        return boto3.client("s3", endpoint_url=self.server.endpoint_url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip

    def run(self, station: str | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A slidestream command as the station (its credential only) or, with None, as the centre."""
        env = {**os.environ, **(self.env[station] if station else {})}
        return subprocess.run([sys.executable, "-m", "slidestream", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _read_env(path: Path) -> dict[str, str]:
    return {name: value for line in path.read_text().splitlines() if line.startswith("export ")
            for name, _, value in [shlex.split(line[len("export "):])[0].partition("=")]}  # fmt: skip


@pytest.fixture(scope="module")
def alliance(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alliance]:
    if not s3_server.name.startswith("ceph"):
        pytest.skip("per-station users and policies need Ceph RGW (.ci/s3-server)")
    work = tmp_path_factory.mktemp("alliance")
    bucket = s3_server.new_bucket()
    found = Alliance(s3_server, bucket, work / "centre-keys", {}, {}, {})
    try:
        for station in STATIONS:
            enrolled = found.run(None, "stations", "add", station, "--store", found.store, "--endpoint-url", s3_server.endpoint_url,
                                 "--out", str(work / "enrolment"), "--key-dir", str(found.keys))  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
            found.env[station] = _read_env(work / "enrolment" / station / "station.env")
            found.state[station] = work / f"state-{station}"
            trusted = found.run(station, "keys", "trust", str(work / "enrolment" / station / "centre-keys.pem"), "--state-dir", str(found.state[station]))
            assert trusted.returncode == 0, trusted.stderr
        for station in STATIONS:
            context = work / f"{station}.json"  # hospital A registers a colorectal specimen, B one of unknown site
            context.write_text('{"specimen_site": "sigmoid colon"}' if station == "hosp-a" else "{}")
            sent = found.run(station, "send", str(sample(SLIDE)), found.store, "--endpoint-url", s3_server.endpoint_url,
                             "--station", station, "--case", "frozen-1", "--state-dir", str(found.state[station]),
                             "--context-file", str(context), "--deadline", "60", "--json")  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            found.cases[station] = qualified_case(station, "frozen-1")
        yield found
    finally:
        admin = RgwAdmin.from_environment(s3_server.endpoint_url)
        for station in STATIONS:
            try:
                admin.remove_user(station_uid(station))
            except Exception:  # noqa: BLE001 - cleanup must never fail a test
                pass
        delete_bucket(s3_server.client(), bucket)


def _everything(alliance: Alliance) -> dict[str, bytes]:
    client = alliance.server.client()
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=alliance.bucket, Prefix=f"{PREFIX}/")
            for item in page.get("Contents", [])]  # fmt: skip
    return {key: client.get_object(Bucket=alliance.bucket, Key=key)["Body"].read() for key in keys}


def test_each_station_wrote_only_its_own_folder_with_its_edge_triage(alliance: Alliance) -> None:
    stored = _everything(alliance)
    for station, case in alliance.cases.items():
        ref = SlideRef(case)
        mine = [key for key in stored if f"/{station}." in key or f"/{station}/" in key]
        assert mine and all(key.startswith(f"{PREFIX}/stations/{station}/") for key in mine), mine[:5]
        assert f"{PREFIX}/{ref.key(MANIFEST)}" in stored
        edge = Triage.read(stored[f"{PREFIX}/{ref.key(TRIAGE)}"])
        assert edge.stage == "edge"


def _denied(attempt: Callable[[], object]) -> None:
    with pytest.raises(ClientError) as refused:
        attempt()
    assert refused.value.response["Error"]["Code"] == "AccessDenied", refused.value.response


def test_a_station_cannot_change_read_or_list_another_hospitals_work_nor_write_the_centres_word(alliance: Alliance) -> None:
    before = _everything(alliance)
    a, bucket = alliance.client("hosp-a"), alliance.bucket
    theirs, mine = SlideRef(alliance.cases["hosp-b"]), SlideRef(alliance.cases["hosp-a"])
    forged = b'{"format": "slidestream-report/3", "category": "benign"}'

    def put(key: str) -> Callable[[], object]:
        return lambda: a.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=forged)

    for key in (
        report_key(theirs.case, 1),  # B's report before the pathologist signs
        report_key(mine.case, 1),  # even its own: a report is the centre's word
        notice_key("hosp-b", "2026-12-05T10:00:00Z", theirs.case, "report", 1),
        notice_key("hosp-a", "2026-12-05T10:00:00Z", mine.case, "report", 1),
        person_key("u0badf00d"),  # promoting itself to pathologist
        audit_key("2026-12-05T10:00:00Z", "forged"),
        case_key(theirs.case, "case.json"),  # diverting B's requests
        theirs.key("image.zarr/0/c/0/0/0"),  # erasing B's tissue
        theirs.key(MANIFEST),
        theirs.centre_key(TRIAGE),  # a final triage for B's case: the hub would never score it
        mine.centre_key(TRIAGE),  # nor for its own
    ):
        _denied(put(key))
    _denied(lambda: a.delete_object(Bucket=bucket, Key=f"{PREFIX}/{case_key(theirs.case, 'case.json')}"))
    _denied(lambda: a.get_object(Bucket=bucket, Key=f"{PREFIX}/{theirs.key(MANIFEST)}"))  # B's images and context
    _denied(lambda: a.get_object(Bucket=bucket, Key=f"{PREFIX}/{case_key(theirs.case, 'case.json')}"))
    _denied(lambda: a.copy_object(Bucket=bucket, Key=f"{PREFIX}/{mine.key('copied')}",
                                  CopySource={"Bucket": bucket, "Key": f"{PREFIX}/{theirs.key(MANIFEST)}"}))  # fmt: skip
    for prefix in (f"{PREFIX}/stations/hosp-b/", f"{PREFIX}/centre/hosp-b/", f"{PREFIX}/centre/_people/", f"{PREFIX}/", ""):
        _denied(lambda prefix=prefix: a.list_objects_v2(Bucket=bucket, Prefix=prefix))  # type: ignore[misc]
    _denied(lambda: a.list_multipart_uploads(Bucket=bucket))  # case IDs leaked through the upload listing
    assert _everything(alliance) == before  # nothing of anyone's changed


def test_what_a_station_may_write_in_its_own_folder_the_centre_does_not_believe(alliance: Alliance) -> None:
    """A case filed in A's folder under B's name, an arrival marker for B's case, a "final" triage of its own: the
    store lets A write them (they are in its folder); the viewer lists no such case and shows A's map as the edge's."""
    a, bucket = alliance.client("hosp-a"), alliance.bucket
    impostor = "hosp-b.impostor"
    planted = {
        f"stations/hosp-a/{impostor}/case.json": CaseRecord(impostor, "2026-12-05T10:00:00.000Z", "hosp-b").to_json(),
        f"stations/hosp-a/_arrivals/20261205T100000Z_{alliance.cases['hosp-b']}_s1_v9": b"",
        SlideRef(alliance.cases["hosp-a"]).key(TRIAGE): Triage("x", 0.01, "m", HUB, True, {}).to_json(),
    }
    for key, body in planted.items():
        a.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=body)
    cases = Cases(S3Storage(bucket, PREFIX, alliance.server.endpoint_url), TrustedKeys.load(alliance.keys / "centre-keys.pem"))
    listed = asyncio.run(read_worklist(cases))
    assert {entry["case"] for entry in listed} == set(alliance.cases.values())
    own = next(entry for entry in listed if entry["case"] == alliance.cases["hosp-a"])
    assert own["stage"] == "edge", own  # its own "final" map is read as what it is: the station's


def test_the_signed_report_its_amendment_and_a_request_reach_their_own_station_and_no_other(alliance: Alliance) -> None:
    storage = S3Storage(alliance.bucket, PREFIX, alliance.server.endpoint_url)
    key = SigningKey.load_or_create(alliance.keys)
    trusted = TrustedKeys.load(alliance.keys / "centre-keys.pem")
    case, pathologist = alliance.cases["hosp-b"], Author("u12345678", "Dr Remote")
    form = ReportIn(category="benign", diagnosis="Reactive lymph node, no tumour.")
    asyncio.run(sign(storage, key, trusted, case, form, pathologist, [SlideRead("s1", "v1")], "hosp-b"))
    amended = ReportIn(category="malignant", diagnosis="Isolated tumour cells on the deeper level.", amends=1)
    asyncio.run(sign(storage, key, trusted, case, amended, pathologist, [SlideRead("s1", "v1")], "hosp-b"))
    asyncio.run(ask(storage, key, trusted, case, RequestIn(what="Two deeper levels of block A, please."), pathologist, "hosp-b"))
    for station in STATIONS:
        (alliance.state[station] / "hot").mkdir(exist_ok=True)
        watched = alliance.run(station, "watch", str(alliance.state[station] / "hot"), alliance.store, "--endpoint-url",
                               alliance.server.endpoint_url, "--station", station, "--state-dir", str(alliance.state[station]),
                               "--no-edge", "--once", timeout=120)  # fmt: skip
        assert watched.returncode == 0, watched.stderr
        outbox = alliance.state[station] / "hot" / "outbox"
        written = "".join(path.read_text() for path in sorted(outbox.glob("*.txt"))) if outbox.exists() else ""
        status = alliance.run(station, "status", alliance.store, "--endpoint-url", alliance.server.endpoint_url, "--station",
                              station, "--state-dir", str(alliance.state[station]), timeout=120)  # fmt: skip
        assert status.returncode == 0, status.stderr
        if station == "hosp-b":
            assert "Reactive lymph node" in written and "Isolated tumour cells" in written and "deeper levels" in written, written
            assert "AMENDMENT 2" in written, written
            assert "malignant" in status.stdout.lower(), status.stdout  # the amendment is the station's current word
        else:
            assert not written and "REPORT" not in watched.stdout, (watched.stdout, written)
            assert "benign" not in status.stdout.lower() and "malignant" not in status.stdout.lower(), status.stdout
    assert Report.read(storage_bytes(alliance, report_key(case, 1)), "report", trusted).station == "hosp-b"


def storage_bytes(alliance: Alliance, key: str) -> bytes:
    return alliance.server.client().get_object(Bucket=alliance.bucket, Key=f"{PREFIX}/{key}")["Body"].read()


def test_the_hub_reads_every_station_s_case_into_the_centre_s_folder(alliance: Alliance) -> None:
    hub = alliance.run(None, "hub", alliance.store, "--endpoint-url", alliance.server.endpoint_url, "--once", "--poll", "0.5", timeout=600)
    assert hub.returncode == 0, hub.stderr[-2000:]
    scored = Triage.read(storage_bytes(alliance, SlideRef(alliance.cases["hosp-a"]).centre_key(TRIAGE)))
    assert scored.final() and scored.score is not None and scored.refused is None, scored
    refused = Triage.read(storage_bytes(alliance, SlideRef(alliance.cases["hosp-b"]).centre_key(TRIAGE)))
    assert refused.score is None and refused.refused and "no validated AI" in refused.refused, refused  # site unknown
    assert json.loads(storage_bytes(alliance, SlideRef(alliance.cases["hosp-b"]).key(TRIAGE)))["stage"] == "edge"  # the edge's stays
