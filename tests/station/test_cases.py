"""Cases, slides and versions at the hospital, against the real S3 server: the registry gives each specimen a random
case, each slide file a slide and each scan a version; a resend changes nothing; the clock starts at registration;
what the centre sends back reaches the station's outbox; the patient's identity never leaves the hospital."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import S3Server, sample
from support import corrupt_slide, slidestream, wait_for

from caseformat.documents import Author, CaseRecord, Report, SlideRead
from caseformat.layout import CASE_RECORD, SlideRef, case_key, notice_key, report_key, slide_claim_key, slides_key
from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey
from transfer.identity import sample_digest

pytestmark = pytest.mark.slow  # several sends and a running watch

CMU, TCGA = "CMU-1-Small-Region.svs", "TCGA-CR-7395-jp2k.svs"
PATIENT, ACCESSION, MRN = "DOE^JANE", "S26-004711", "MRN-7777123"


def send(server: S3Server, bucket: str, state: Path, slide: Path, *extra: object) -> dict[str, Any]:
    result = slidestream("send", slide, f"s3://{bucket}/site", "--endpoint-url", server.endpoint_url, "--state-dir", state,
                         "--station", "theatre-3", "--json", *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listing(server: S3Server, bucket: str) -> dict[str, str]:
    """key -> ETag of everything in the bucket."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def read_bytes(server: S3Server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_json(server: S3Server, bucket: str, key: str) -> Any:
    return json.loads(read_bytes(server, bucket, key))


def root(ref: dict[str, Any]) -> str:
    return f"site/{SlideRef(ref['case'], ref['slide'], ref['version']).root}"


def test_two_slides_of_one_case_each_arrive_with_their_own_manifest_and_triage(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """send --case adds a slide as the case's next free slide, on the store too: a number another station claimed
    (its slide.json) is skipped."""
    state = tmp_path / "state"
    first = send(s3_server, s3_bucket, state, sample(CMU), "--edge")
    assert (first["slide"], first["version"]) == ("s1", "v1")
    case = first["case"]
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"site/{slide_claim_key(case, 's2')}", Body=b'{"station": "elsewhere"}')
    second = send(s3_server, s3_bucket, state, sample(TCGA), "--edge", "--case", case)
    assert (second["case"], second["slide"], second["version"]) == (case, "s3", "v1")
    keys = listing(s3_server, s3_bucket)
    for ref in (first, second):
        manifest = read_json(s3_server, s3_bucket, f"{root(ref)}/manifest.json")
        assert (manifest["case"], manifest["slide"], manifest["version"], manifest["state"]) == (case, ref["slide"], "v1", "complete")
        triage = read_json(s3_server, s3_bucket, f"{root(ref)}/triage.json")  # its edge triage: no site registered, no AI
        assert triage["source"] == f"{case}/{ref['slide']}/v1" and triage["refused"] == "no validated AI: the specimen site is not known"
    assert read_json(s3_server, s3_bucket, f"site/{slide_claim_key(case, 's3')}")["station"] == "theatre-3"
    assert not any(key.startswith(f"site/{slides_key(case, 's2')}v") for key in keys)
    again = send(s3_server, s3_bucket, state, sample(CMU), "--edge")  # a resend triages nothing again either
    assert (again["case"], again["slide"], again["objects"]) == (case, "s1", 0) and listing(s3_server, s3_bucket) == keys


def test_a_resend_changes_nothing_on_the_store_and_keeps_the_clock(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same file again (same path; with --case; a copy elsewhere, known by its full SHA-256) is the same slide
    version: the journal finds everything there, no object is written, case.json's registered_at stays."""
    state, slide = tmp_path / "state", tmp_path / "scans" / "a.svs"
    slide.parent.mkdir()
    shutil.copyfile(sample(CMU), slide)
    first = send(s3_server, s3_bucket, state, slide, "--no-edge")
    before = listing(s3_server, s3_bucket)
    registered = read_json(s3_server, s3_bucket, f"site/{case_key(first['case'], CASE_RECORD)}")
    copy = tmp_path / "copy of a.svs"
    shutil.copyfile(slide, copy)
    for again in (send(s3_server, s3_bucket, state, slide, "--no-edge"), send(s3_server, s3_bucket, state, slide, "--no-edge", "--case", first["case"]),
                  send(s3_server, s3_bucket, state, copy, "--no-edge")):  # fmt: skip
        assert (again["case"], again["slide"], again["version"], again["objects"]) == (first["case"], "s1", "v1", 0)
    assert listing(s3_server, s3_bucket) == before
    assert read_json(s3_server, s3_bucket, f"site/{case_key(first['case'], CASE_RECORD)}") == registered


def test_a_rescan_is_the_next_version_and_leaves_v1_its_results(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    state, slide = tmp_path / "state", tmp_path / "frozen.svs"
    shutil.copyfile(sample(CMU), slide)
    first = send(s3_server, s3_bucket, state, slide, "--edge")
    v1 = {key: etag for key, etag in listing(s3_server, s3_bucket).items() if key.startswith(root(first) + "/")}
    assert f"{root(first)}/triage.json" in v1
    shutil.copyfile(sample(TCGA), slide)  # the slide scanned again, to the same file name
    second = send(s3_server, s3_bucket, state, slide, "--no-edge")
    assert (second["case"], second["slide"], second["version"]) == (first["case"], "s1", "v2")
    after = listing(s3_server, s3_bucket)
    assert {key: etag for key, etag in after.items() if key.startswith(root(first) + "/")} == v1
    rescan = [key for key in after if key.startswith(root(second) + "/")]
    assert f"{root(second)}/manifest.json" in rescan
    assert not any("triage.json" in key or "heatmap.zarr" in key for key in rescan), "the old scan's results stay with it"
    assert read_json(s3_server, s3_bucket, f"{root(second)}/manifest.json")["state"] == "complete"


def test_files_that_differ_only_mid_file_are_different_slides(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same size, same first and last MiB (the old case ID's sample): two scans all the same, two cases; with
    --case, two slides of one."""
    pixels = np.random.default_rng(7).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    a, b = tmp_path / "a" / "scan.tiff", tmp_path / "b" / "scan.tiff"
    for path in (a, b):
        path.parent.mkdir()
    tifffile.imwrite(a, pixels, tile=(256, 256), photometric="rgb")
    pixels[700:720] = 255 - pixels[700:720]
    tifffile.imwrite(b, pixels, tile=(256, 256), photometric="rgb")
    assert a.stat().st_size == b.stat().st_size > 3 << 20 and sample_digest(a) == sample_digest(b) and a.read_bytes() != b.read_bytes()
    state = tmp_path / "state"
    first, second = send(s3_server, s3_bucket, state, a, "--no-edge"), send(s3_server, s3_bucket, state, b, "--no-edge")
    assert first["case"] != second["case"] and second["objects"] > 0
    third = send(s3_server, s3_bucket, state, b, "--no-edge", "--case", first["case"])
    assert (third["case"], third["slide"], third["version"]) == (first["case"], "s2", "v1")


# -- the hot folder with specimen folders ----------------------------------------------------------------------
def watch_command(hot: Path, server: S3Server, bucket: str, state: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/site", "--endpoint-url", server.endpoint_url,
               "--state-dir", str(state), "--station", "theatre-3", "--settle", "0.3", "--no-edge", *extra]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _log(state: Path) -> list[str]:
    logs = list(state.glob("watch-*.log"))
    return logs[0].read_text().splitlines() if logs else []


def test_a_specimen_folder_registers_at_once_sends_its_slides_and_hears_back(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The specimen folder's sidecar registers the case (clock, station, context) before any slide; its slides are
    s1, s2 (a truncated one fails alone); a sidecar whose context names the patient is refused; a report written to
    the station's folder is printed and lands in the outbox; `status` says what the hospital knows; the patient's
    name and accession are on no key or body of the store."""
    hot, state = tmp_path / "hot", tmp_path / "state"
    specimen = hot / ACCESSION
    specimen.mkdir(parents=True)
    sidecar = {"accession": ACCESSION, "patient_name": PATIENT, "patient_id": MRN, "birth_date": "1961-04-12",
               "specimen_site": "left breast, sentinel node", "clinical_question": "metastasis?", "surgeon": "Dr Meyer", "callback": "theatre 3, ext 4471"}  # fmt: skip
    (specimen / "specimen.json").write_text(json.dumps(sidecar))
    refused = hot / "S26-004712"
    refused.mkdir()
    (refused / "specimen.json").write_text(json.dumps({"patient_name": PATIENT, "clinical_question": "Jane Doe, frozen section"}))
    centre_key = SigningKey.load_or_create(tmp_path / "centre")  # the centre's key; the station trusts its public half
    centre_keys = str(tmp_path / "centre" / PUBLIC_KEYS_FILE)
    watcher = watch_command(hot, s3_server, s3_bucket, state, "--centre-keys", centre_keys)
    try:
        wait_for(lambda: any(" REGISTERED " in line for line in _log(state)), "registration", 240, process=watcher)
        [line] = [line for line in _log(state) if " REGISTERED " in line]
        case = line.split(" case ")[1].split(",")[0]
        record = CaseRecord.read(read_bytes(s3_server, s3_bucket, f"site/{case_key(case, CASE_RECORD)}"))
        assert record is not None and record.station == "theatre-3" and dict(record.context)["clinical_question"] == "metastasis?"
        assert not any(key.startswith(f"site/{slides_key(case)}") for key in listing(s3_server, s3_bucket)), "registered before any slide"
        wait_for(lambda: any(" REFUSED S26-004712" in line for line in _log(state)), "the refusal", 240, process=watcher)

        shutil.copyfile(sample(CMU), specimen / "block A.svs")
        corrupt_slide(specimen, "block B.svs")
        wait_for(lambda: sum(" SENT " in line or " FAILED " in line for line in _log(state)) >= 2, "both slides handled", 240, process=watcher)
        manifests = {name: read_json(s3_server, s3_bucket, f"site/{SlideRef(case, name).root}/manifest.json") for name in ("s1", "s2")}
        assert sorted(m["state"] for m in manifests.values()) == ["complete", "failed"], manifests
        assert read_json(s3_server, s3_bucket, f"site/{case_key(case, CASE_RECORD)}")["registered_at"] == record.registered_at

        report = Report(case, 1, "malignant", "metastatic carcinoma in one sentinel node", Author("u0c0ffee1", "Dr P. Kovacs"),
                        "2026-12-01T10:12:30.000Z", "theatre-3", slides=(SlideRead("s1", "v1"),))  # fmt: skip
        body = report.to_json(centre_key)
        s3_server.client().put_object(Bucket=s3_bucket, Key=f"site/{report_key(case, 1)}", Body=body)
        s3_server.client().put_object(Bucket=s3_bucket, Key=f"site/{notice_key('theatre-3', report.signed_at, case, 'report', 1)}", Body=body)
        outbox = hot / "outbox"
        wait_for(lambda: list(outbox.glob("*.txt")), "the outbox file", 60, process=watcher)
    finally:
        watcher.terminate()
        stdout, _ = watcher.communicate(timeout=60)
    expected = (f"REPORT case {ACCESSION} ({case}): malignant — metastatic carcinoma in one sentinel node — "
                f"signed by Dr P. Kovacs at 2026-12-01T10:12:30.000Z")  # fmt: skip
    assert any(line.endswith(expected) for line in stdout.splitlines()), stdout
    [written] = outbox.glob("*.txt")
    assert written.name == f"{ACCESSION}_{case}_report_0001.txt"
    text = written.read_text()
    assert "Category: MALIGNANT" in text and "Dr P. Kovacs" in text and PATIENT in text  # the outbox is local: the OR matches the patient

    shown = slidestream("status", f"s3://{s3_bucket}/site", "--endpoint-url", s3_server.endpoint_url, "--state-dir", state,
                        "--centre-keys", centre_keys)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{ACCESSION} (case {case}, registered {record.registered_at}): signed: malignant at 2026-12-01T10:12:30.000Z by Dr P. Kovacs" in shown.stdout
    assert "failed: " in shown.stdout and ": complete" in shown.stdout, shown.stdout

    client = s3_server.client()
    for key in listing(s3_server, s3_bucket):
        data = key.encode() + client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        for secret in (PATIENT, ACCESSION, MRN, "1961-04-12", "block A", "block B"):
            assert secret.encode() not in data, (secret, key)
        # the surname alone is 3 bytes, which image bytes and signatures hold by chance: looked for in keys and text
        text = re.sub(rb'"signature": ?"[^"]*"', b"", data) if b"\x00" not in data and data.isascii() else key.encode()
        assert b"DOE" not in text, key


def test_a_slide_number_another_station_claimed_first_is_never_shared(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The race the LIST cannot close: another station creates s2's claim between our look and our claim. The send
    stops before writing anything of the slide, says so in one line, and the journal does not offer it to resume."""
    from transfer import Journal, Sender, parse_destination
    from transfer.errors import SlideTakenError

    case = "theatre-3.c0ffee0123456789"
    claim = f"site/{slide_claim_key(case, 's2')}"
    dest = parse_destination(f"s3://{s3_bucket}/site", case, s3_server.endpoint_url, slide="s2")
    theirs = b'{"station": "theatre-1"}'
    s3_server.client().put_object(Bucket=s3_bucket, Key=claim, Body=theirs)
    with Journal(tmp_path) as journal:
        sender = Sender(dest, journal)
        sender.begin({"slide": "unused"})
        with pytest.raises(SlideTakenError, match="slide s2 of case theatre-3.c0ffee0123456789 was taken by another station"):
            sender.claim(b'{"station": "theatre-3"}')
        assert journal.unfinished() == []
    assert listing(s3_server, s3_bucket).keys() == {claim}
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=claim)["Body"].read() == theirs


def test_send_with_a_context_file_registers_like_watch_and_refuses_identifying_context(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """send --context-file reads a specimen.json as watch does: the context goes to case.json, the identity stays
    here, and the accession names the specimen (a second slide of it joins its case); context naming the patient is
    one line, exit 2, nothing on the store."""
    state, sidecar = tmp_path / "state", tmp_path / "specimen.json"
    sidecar.write_text(json.dumps({"accession": ACCESSION, "patient_name": PATIENT, "specimen_site": "thyroid, left lobe"}))
    first = send(s3_server, s3_bucket, state, sample(CMU), "--no-edge", "--context-file", sidecar)
    record = CaseRecord.read(read_bytes(s3_server, s3_bucket, f"site/{case_key(first['case'], CASE_RECORD)}"))
    assert record is not None and dict(record.context) == {"specimen_site": "thyroid, left lobe"} and record.station == "theatre-3"
    second = send(s3_server, s3_bucket, state, sample(TCGA), "--no-edge", "--context-file", sidecar)
    assert (second["case"], second["slide"]) == (first["case"], "s2")
    client = s3_server.client()
    for key in listing(s3_server, s3_bucket):
        data = key.encode() + client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert PATIENT.encode() not in data and ACCESSION.encode() not in data, key

    before = listing(s3_server, s3_bucket)
    sidecar.write_text(json.dumps({"accession": "S26-009999", "patient_name": PATIENT, "clinical_question": "Mrs Doe: margins?"}))
    refused = slidestream("send", sample(CMU), f"s3://{s3_bucket}/site", "--endpoint-url", s3_server.endpoint_url, "--state-dir", state,
                          "--context-file", sidecar, "--no-edge")  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "clinical_question contains the patient name" in refused.stderr
    assert listing(s3_server, s3_bucket) == before
