"""`slidestream watch`: a scanner's hot folder; each slide sent once, when complete; bad ones set aside; resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import sample
from transfer import case_id_for


def _watch(hot: Path, s3_server, bucket: str, state: Path, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/site-a",
        "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(state), *extra,
    ]


def _log(state: Path) -> list[str]:
    logs = list(state.glob("watch-*.log"))
    return logs[0].read_text().splitlines() if logs else []


def _slow_copy(source: Path, target: Path, pieces: int = 8, pause: float = 0.4) -> None:
    data = source.read_bytes()
    step = -(-len(data) // pieces)
    with target.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(pause)


def _manifests(s3_server, bucket: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if o["Key"].endswith("manifest.json")]
    return [json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]


def test_slide_copied_slowly_is_sent_once_after_it_is_complete(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    copier = threading.Thread(target=_slow_copy, args=(sample("CMU-1-Small-Region.svs"), hot / "S26-00123 frozen.svs"))
    copier.start()
    time.sleep(0.3)  # the scanner has started writing before the watcher looks
    result = subprocess.run(_watch(hot, s3_server, s3_bucket, state, "--once", "--settle", "1.5"), capture_output=True, text=True, timeout=300)
    copier.join()
    assert result.returncode == 0, result.stderr
    sent = [line for line in _log(state) if " SENT " in line]
    assert len(sent) == 1 and "S26-00123 frozen.svs" in sent[0]
    manifests = _manifests(s3_server, s3_bucket)
    assert len(manifests) == 1 and manifests[0]["complete"] is True
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not any("S26" in key or "frozen" in key for key in keys), "the file name (an accession number) must not reach the store"
    # the whole file was sent: level 0 of the stored image has every planned shard
    assert set(manifests[0]["arrived"]) == set(manifests[0]["planned"])
    again = subprocess.run(_watch(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.5"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert len([line for line in _log(state) if " SENT " in line]) == 1, "a slide already sent is not sent again"


def test_slide_written_without_a_visible_writer_is_sent_once_its_structure_is_whole(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """A scanner on a network share shows no local writer: its slide is sent as soon as the TIFF structure is whole,
    long before the settle time, and never while it is not (the pauses between its writes leave it unchanged for
    several looks)."""
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    source, target = sample("CMU-1-Small-Region.svs"), hot / "S26-00124.svs"
    data = source.read_bytes()
    step = -(-len(data) // 8)

    def append_in_pieces() -> None:  # each piece opened and closed again, as a share's writes arrive
        for start in range(step, len(data), step):
            time.sleep(0.6)
            with target.open("ab") as handle:
                handle.write(data[start : start + step])

    target.write_bytes(data[:step])
    writer = threading.Thread(target=append_in_pieces)
    writer.start()
    result = subprocess.run(_watch(hot, s3_server, s3_bucket, state, "--once", "--settle", "600"), capture_output=True, text=True, timeout=180)
    writer.join()
    assert result.returncode == 0, result.stderr
    sent = [line for line in _log(state) if " SENT " in line]
    assert len(sent) == 1 and "S26-00124.svs" in sent[0], _log(state)
    manifests = _manifests(s3_server, s3_bucket)
    assert len(manifests) == 1 and manifests[0]["complete"] is True
    assert manifests[0]["case"] == case_id_for(source), "the case ID comes from the content: the whole file was read"


def test_corrupt_slide_is_moved_aside_with_its_reason(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "broken.svs").write_bytes(sample("broken.svs").read_bytes())
    (hot / "notes.txt").write_text("not a slide, not ours to touch\n")
    result = subprocess.run(_watch(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert not (hot / "broken.svs").exists() and (hot / "failed" / "broken.svs").exists()
    reason = (hot / "failed" / "broken.svs.reason.txt").read_text()
    assert "not a supported slide format" in reason
    assert (hot / "notes.txt").exists()
    assert any(" FAILED broken.svs" in line for line in _log(state))


def test_restart_resumes_an_interrupted_send(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "slide.svs").write_bytes(sample("TCGA-CR-7395-jp2k.svs").read_bytes())
    watcher = subprocess.Popen(_watch(hot, s3_server, s3_bucket, state, "--settle", "0.2", "--max-rate", "8", "--concurrency", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = s3_server.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
        if sum("/c/" in o["Key"] for o in listed) >= 3:
            break
        time.sleep(0.2)
    watcher.send_signal(signal.SIGKILL)
    watcher.wait()
    assert not any(" SENT " in line for line in _log(state)), "killed before it finished"
    result = subprocess.run(_watch(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sent = [line for line in _log(state) if " SENT " in line]
    assert len(sent) == 1
    skipped = int(sent[0].split(" already there")[0].rsplit(" ", 1)[1])
    assert skipped >= 3, sent[0]
    assert _manifests(s3_server, s3_bucket)[0]["complete"] is True
