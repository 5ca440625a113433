"""`slidestream watch`: failed/ keeps which specimen a broken slide came from, and never replaces an earlier failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sample

pytestmark = pytest.mark.slow  # a running watch


def _watch_once(hot: Path, s3_server, bucket: str, state: Path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    command = [
        sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/site-a",
        "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(state), "--once", "--settle", "0.2", "--no-edge",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _broken(marker: str) -> bytes:
    """broken.svs (random bytes named .svs) with a marker after it: still no slide, but each copy can be told apart."""
    return sample("broken.svs").read_bytes() + marker.encode()


def test_failed_slides_keep_their_specimen_folder_and_never_replace_one_another(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """Two specimens each with a broken "block A.svs", and the first specimen's failing again after it was set aside:
    each lands under its own specimen's folder in failed/, the second failure of a path gets a numbered name, and
    every failed file has exactly one reason file, named after it, saying what is wrong in one line."""
    hot, state = tmp_path / "hot", tmp_path / "state"
    for specimen in ("S26-0001", "S26-0002"):
        (hot / specimen).mkdir(parents=True)
        (hot / specimen / "block A.svs").write_bytes(_broken(f"{specimen} first"))
    assert _watch_once(hot, s3_server, s3_bucket, state).returncode == 1
    (hot / "S26-0001" / "block A.svs").write_bytes(_broken("S26-0001 again"))  # the technician tries the same file again
    assert _watch_once(hot, s3_server, s3_bucket, state).returncode == 1

    failed = hot / "failed"
    expected = {
        failed / "S26-0001" / "block A.svs": _broken("S26-0001 first"),
        failed / "S26-0001" / "block A (2).svs": _broken("S26-0001 again"),
        failed / "S26-0002" / "block A.svs": _broken("S26-0002 first"),
    }
    kept = {path: path.read_bytes() for path in failed.rglob("*.svs")}
    assert kept == expected, sorted(map(str, kept))
    reasons = {path: path.read_text() for path in failed.rglob("*.reason.txt")}
    assert set(reasons) == {path.with_name(f"{path.name}.reason.txt") for path in expected}, sorted(map(str, reasons))
    for path, reason in reasons.items():
        assert "not a supported slide format" in reason and reason.count("\n") == 1 and reason.endswith("\n"), (path, reason)
    assert not list(hot.glob("*/block A.svs")), "nothing failed is left in the specimen folders"


def test_the_centre_is_told_of_every_slide_the_station_will_not_send_without_its_file_name(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """A specimen of three slides, one of them broken, and a specimen whose only slide is broken: the centre's case
    page says "1 of 3 slides failed at the hospital" for the first, the second is failed on the worklist (never
    "arriving"), and nothing on the store names the files."""
    import asyncio
    import json

    from caseformat.documents import UnsentSlide
    from caseformat.signing import TrustedKeys
    from objectstore import S3Storage
    from viewer.cases import Cases
    from viewer.worklist import read_worklist

    hot, state = tmp_path / "hot", tmp_path / "state"
    for name in ("frozen A.svs", "frozen B.svs"):
        (hot / "S26-0010").mkdir(parents=True, exist_ok=True)
        (hot / "S26-0010" / name).write_bytes(sample("CMU-1-Small-Region.svs").read_bytes() + name.encode())  # two slides
    (hot / "S26-0010" / "frozen C.svs").write_bytes(_broken("C"))
    (hot / "S26-0011").mkdir()
    (hot / "S26-0011" / "only block.svs").write_bytes(_broken("only"))
    watched = _watch_once(hot, s3_server, s3_bucket, state)
    assert watched.returncode == 1, watched.stderr
    assert (watched.stdout + watched.stderr).count("UNSENT ") == 2, watched.stdout + watched.stderr

    client = s3_server.client()
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="site-a/")
            for item in page.get("Contents", [])]  # fmt: skip
    unsent = [key for key in keys if "/unsent/" in key]
    assert len(unsent) == 2, keys
    records = [UnsentSlide.read(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()) for key in unsent]
    assert [record.kind for record in records] == ["unsupported", "unsupported"], records
    for key in keys:  # no file or specimen name anywhere on the store
        assert "frozen" not in key and "block" not in key and "S26-" not in key, key
    for key in unsent + [key for key in keys if key.endswith("case.json")]:
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
        assert "frozen" not in body and "block" not in body and "S26-" not in body, body

    cases = Cases(S3Storage(s3_bucket, "site-a", s3_server.endpoint_url), TrustedKeys([]))
    listed = {entry["case"]: entry for entry in asyncio.run(read_worklist(cases))}
    assert len(listed) == 2, json.dumps(listed, indent=1)
    partly, nothing = sorted(listed.values(), key=lambda entry: len(entry["slides"]), reverse=True)
    assert partly["missing"].startswith("1 of 3 slides failed at the hospital"), partly
    assert nothing["state"] == "failed" and nothing["failed"].startswith("1 of 1 slides failed at the hospital"), nothing

    # and at the station: `status` says the same, never "arriving" for a specimen none of whose slides can arrive
    status = subprocess.run([sys.executable, "-m", "slidestream", "status", f"s3://{s3_bucket}/site-a", "--endpoint-url", s3_server.endpoint_url,
                             "--state-dir", str(state)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stderr
    said = status.stdout.replace("\n  ", "  ").splitlines()
    only = next(line for line in said if line.startswith("S26-0011 "))
    assert ": failed" in only and "not sent: " in only, status.stdout
    partly_line = next(line for line in said if line.startswith("S26-0010 "))
    assert ": failed" not in partly_line.split("  ")[0] and "not sent: " in partly_line, status.stdout
