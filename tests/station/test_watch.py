"""`slidestream watch`: a scanner's hot folder; each slide sent once, when complete; bad ones set aside; resumable."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import sample
from support import wait_for

from caseformat.layout import TRIAGE, SlideRef

pytestmark = pytest.mark.slow  # a running watch


def watch_command(hot: Path, s3_server, bucket: str, state: Path, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
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
    result = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "1.5"), capture_output=True, text=True, timeout=300)
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
    again = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.5"), capture_output=True, text=True, timeout=300)
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
    result = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "600"), capture_output=True, text=True, timeout=180)
    writer.join()
    assert result.returncode == 0, result.stderr
    sent = [line for line in _log(state) if " SENT " in line]
    assert len(sent) == 1 and "S26-00124.svs" in sent[0], _log(state)
    manifests = _manifests(s3_server, s3_bucket)
    assert len(manifests) == 1 and manifests[0]["complete"] is True
    with sqlite3.connect(state / "journal.sqlite3") as db:
        assert db.execute("SELECT size FROM versions").fetchall() == [(source.stat().st_size,)], "the registry saw the whole file"


def test_corrupt_slide_is_moved_aside_with_its_reason(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "broken.svs").write_bytes(sample("broken.svs").read_bytes())
    (hot / "notes.txt").write_text("not a slide, not ours to touch\n")
    result = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2"), capture_output=True, text=True, timeout=120)
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
    watcher = subprocess.Popen(watch_command(hot, s3_server, s3_bucket, state, "--settle", "0.2", "--max-rate", "8", "--concurrency", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    result = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sent = [line for line in _log(state) if " SENT " in line]
    assert len(sent) == 1
    skipped = int(sent[0].split(" already there")[0].rsplit(" ", 1)[1])
    assert skipped >= 3, sent[0]
    assert _manifests(s3_server, s3_bucket)[0]["complete"] is True


def _stop(process: subprocess.Popen) -> str:  # type: ignore[type-arg]
    assert process.poll() is None, "watch is still running"
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[1].decode(errors="replace")


def test_no_bad_entry_stops_the_folder(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """A truncated slide, a symlink loop, a FIFO with a slide's name, a FIFO beside a DICOM file (openslide opens every
    file of a DICOM file's folder) and a name that is not UTF-8: the bad ones go to failed/ with one log line each, the
    good ones are sent, a slide placed afterwards is still sent, and watch never dies."""
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    data = sample("CMU-1-Small-Region.svs").read_bytes()
    (hot / "truncated.svs").write_bytes(data[: len(data) // 2])
    os.symlink("loop.svs", hot / "loop.svs")
    os.mkfifo(hot / "pipe.svs")
    os.mkfifo(hot / "pipe")
    (hot / "dicom.dcm").write_bytes(sample("wsi2dcm-jpeg.dcm").read_bytes())
    odd = os.fsdecode(bytes(hot) + b"/S26-\xff\xfe.tiff")
    Path(odd).write_bytes(sample("synthetic-boxes.tiff").read_bytes())
    watcher = subprocess.Popen(watch_command(hot, s3_server, s3_bucket, state, "--settle", "0.5", "--no-edge"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def handled() -> int:
            return sum(" SENT " in line or " FAILED " in line for line in _log(state))

        wait_for(lambda: handled() >= 5, "every entry handled", 120, process=watcher)
        (hot / "good.svs").write_bytes(data)  # written after the bad ones were met
        wait_for(lambda: any(" SENT good.svs" in line for line in _log(state)), "the good slide sent", 120, process=watcher)
    finally:
        stderr = _stop(watcher)
    log = _log(state)
    assert "Traceback" not in stderr, stderr
    failed = {line.split(" FAILED ")[1].split(":")[0] for line in log if " FAILED " in line}
    assert failed == {"truncated.svs", "loop.svs", "pipe.svs"}, log
    reasons = {name: (hot / "failed" / f"{name}.reason.txt").read_text() for name in failed}
    assert "truncated or damaged" in reasons["truncated.svs"]
    assert "symbolic link loop" in reasons["loop.svs"]
    assert "FIFO" in reasons["pipe.svs"]
    assert (hot / "failed" / "loop.svs").is_symlink() and not (hot / "loop.svs").is_symlink()
    sent = [line for line in log if " SENT " in line]
    assert len(sent) == 3 and any("dicom.dcm" in line for line in sent), log
    assert any("S26-\\udcff\\udcfe.tiff" in line for line in sent), "the odd name is logged with visible escapes"
    assert (hot / "pipe").exists(), "a file that is no slide is not touched"
    manifests = _manifests(s3_server, s3_bucket)
    assert len(manifests) == 3 and all(m["complete"] for m in manifests)


def test_a_slide_vanishing_while_it_is_sent_costs_only_itself(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "vanishing.svs").write_bytes(sample("TCGA-CR-7395-jp2k.svs").read_bytes())
    watcher = subprocess.Popen(watch_command(hot, s3_server, s3_bucket, state, "--settle", "0.2", "--no-edge", "--max-rate", "8", "--concurrency", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = s3_server.client()
    try:
        wait_for(lambda: any("/c/" in o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])), "the first shard", 120, process=watcher)
        (hot / "vanishing.svs").unlink()
        (hot / "good.svs").write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
        wait_for(lambda: any(" SENT good.svs" in line for line in _log(state)), "the next slide sent", 300, process=watcher)
    finally:
        stderr = _stop(watcher)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in _log(state) if "vanishing.svs" in line]
    vanishing, told = [line for line in lines if " UNSENT " not in line], [line for line in lines if " UNSENT " in line]
    # the open slide may still be read whole (the reader holds it open) or fail; either way one line, and it is gone;
    # one that failed is told to the centre once (`UnsentSlide`), one that was sent is not
    assert len(vanishing) == 1 and (" SENT " in vanishing[0] or "(it is gone)" in vanishing[0]), vanishing
    assert len(told) == (0 if " SENT " in vanishing[0] else 1), told


@pytest.mark.parametrize("problem", ["missing bucket", "connection refused"])
def test_a_failing_store_is_retried_with_backoff_and_reported_once(tmp_path: Path, s3_server, problem: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "a.svs").write_bytes(sample("synthetic-boxes.tiff").read_bytes())
    bucket = f"absent-{os.urandom(4).hex()}"
    endpoint = s3_server.endpoint_url
    if problem == "connection refused":
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    command = [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/site-a", "--endpoint-url", endpoint,
               "--state-dir", str(state), "--settle", "0.2", "--no-edge", "--deadline", "0"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: any(" RETRY " in line for line in _log(state)), "the first failure", 120, process=watcher)
        first = time.monotonic()
        # attempts at +1, +3, +7 s: without backoff (every poll) this would be dozens of attempts, each one logged
        wait_for(lambda: time.monotonic() - first > 8, "eight seconds", 120, process=watcher)
        if problem == "missing bucket":
            s3_server.client().create_bucket(Bucket=bucket)
            wait_for(lambda: any(" SENT a.svs" in line for line in _log(state)), "the send once the bucket exists", 120, process=watcher)
    finally:
        stderr = _stop(watcher)
    assert "Traceback" not in stderr, stderr
    retries = [line for line in _log(state) if " RETRY " in line]
    assert len(retries) == 1, retries
    assert "retrying after 1 s, then up to every 60 s" in retries[0]
    if problem == "missing bucket":
        assert bucket in retries[0] and any("the store answers again" in line for line in _log(state))
    else:
        assert not any(" SENT " in line for line in _log(state))


@pytest.mark.parametrize("endpoint, destination", [
    ("http//host:9000", "s3://bucket/site-a"), ("host:9000", "s3://bucket/site-a"), ("http://127.0.0.1:9", "bucket/site-a"),
])
def test_configuration_errors_stop_watch_at_start_with_one_line(tmp_path: Path, endpoint: str, destination: str) -> None:
    command = [sys.executable, "-m", "slidestream", "watch", str(tmp_path), destination, "--endpoint-url", endpoint, "--state-dir", str(tmp_path / "s")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and (endpoint in lines[0] if "//host" in endpoint or "host:" in endpoint else destination in lines[0]), result.stderr


def test_backoff_doubles_from_one_second_to_a_minute_and_speaks_once_per_kind_of_failure() -> None:
    from station.hotfolder import Backoff
    from transfer import BucketNotFoundError, NetworkError

    backoff, now, waits, said = Backoff(), 0.0, [], []
    for attempt in range(9):
        assert backoff.due(now)
        said.append(backoff.failed(now, NetworkError("refused") if attempt < 8 else BucketNotFoundError("gone")))
        start = now
        while not backoff.due(now):
            now += 0.5
        waits.append(now - start)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert said[0] is not None and said[1:8] == [None] * 7 and said[8] is not None, "once per kind of failure"
    assert backoff.succeeded() and backoff.due(now) and not backoff.succeeded()



def test_the_next_slide_is_sent_while_the_previous_slides_triage_runs(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """Edge triage (on by default) of slide A (a colorectal specimen) finishes in the background: B's send starts, and
    is logged sent, before A's heatmap is; both triages end (B's synthetic slide has no specimen site: no model may
    score it, and the two TRIAGED lines come in either order)."""
    hot, state = tmp_path / "hot", tmp_path / "state"
    (hot / "colon").mkdir(parents=True)
    (hot / "colon" / "specimen.json").write_text('{"specimen_site": "sigmoid colon"}')
    (hot / "colon" / "a.svs").write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
    (hot / "b.tiff").write_bytes(sample("synthetic-boxes.tiff").read_bytes())
    result = subprocess.run(watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    log = _log(state)
    order = [line.split(" ")[1:3] for line in log]
    assert order.index(["SENT", "b.tiff:"]) < order.index(["TRIAGED", "colon/a.svs:"]), log
    assert any(" TRIAGED b.tiff: " in line and "no validated AI: the specimen site is not known (QC only)" in line for line in log), log
    [case] = [line.split(" SENT colon/a.svs: case ")[1].split(" ")[0] for line in log if " SENT colon/a.svs: " in line]
    assert any(f"TRIAGED colon/a.svs: {case}/s1/v1: heatmap readable after" in line for line in log), log
    triage = s3_server.client().get_object(Bucket=s3_bucket, Key=f"site-a/{SlideRef(case).key(TRIAGE)}")["Body"].read()
    assert json.loads(triage)["score"] is not None


def test_a_duplicate_slide_is_recognised_by_its_content_and_not_sent_again(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    (hot / "first.svs").write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
    (hot / "copy of first.svs").write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
    watch = watch_command(hot, s3_server, s3_bucket, state, "--once", "--settle", "0.2", "--no-edge")
    assert subprocess.run(watch, capture_output=True, text=True, timeout=300).returncode == 0
    (hot / "later copy.svs").write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())  # and once more, next run
    assert subprocess.run(watch, capture_output=True, text=True, timeout=300).returncode == 0
    [case] = {manifest["case"] for manifest in _manifests(s3_server, s3_bucket)}
    log = _log(state)
    sent = [line for line in log if " SENT " in line]
    duplicates = [line.split(" ", 1)[1] for line in log if " DUPLICATE " in line]
    assert len(sent) == 1 and f"case {case}" in sent[0], log
    first = "copy of first.svs" if " SENT first.svs" in sent[0] else "first.svs"
    assert sorted(duplicates) == sorted([
        f"DUPLICATE {first}: the same slide as {'first.svs' if first != 'first.svs' else 'copy of first.svs'} (case {case}), not triaged or sent again",
        f"DUPLICATE later copy.svs: the same slide as {sent[0].split(' SENT ')[1].split(':')[0]} (case {case}), not triaged or sent again",
    ]), log
    assert len(_manifests(s3_server, s3_bucket)) == 1
