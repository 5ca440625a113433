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
