"""`slidestream send` when things go wrong: corrupted bodies, kill -9, link loss, bad credentials, full disk.

After each fault the test checks what a user would: the bytes on the server, the journal's content, the exit code
and the one line on stderr.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest
from conftest import REPO, S3Server, sample
from support import (
    STATION,
    Proxy,
    corrupt_slide,
    journal_dump,
    journal_objects,
    journal_sends,
    local_pieces,
    send_args,
    server_objects,
    sha256,
    slidestream,
    start_slidestream,
    wait_for,
)

from caseformat.layout import CASE_RECORD, SlideRef, case_key, qualified_case, slide_claim_key, station_folder, unsent_folder
from tiling import Piece, PieceKind
from transfer import Destination, Journal, parse_destination

pytestmark = pytest.mark.slow  # the emulated link and killed sends

CMU = "CMU-1-Small-Region.svs"
CASE = qualified_case(STATION, "fault-case")  # one case throughout (each test has its own bucket): local pieces are produced once


@pytest.fixture
def proxy_factory(s3_server: S3Server) -> Iterator[type[Proxy]]:
    made: list[Proxy] = []

    def make(corrupt: str | None = None, times: int = 1) -> Proxy:
        proxy = Proxy(s3_server.endpoint_url, corrupt, times)
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.close()


def first_shard(pieces: tuple[Piece, ...]) -> str:
    return next(piece.key for piece in pieces if piece.kind is PieceKind.SHARD)


def slide_version(bucket: str, case: str) -> Destination:
    """Where a send of CMU with `--case case` puts its first slide version."""
    return parse_destination(f"s3://{bucket}/cases", case)


def image_on_server(server: S3Server, bucket: str, case: str) -> dict[str, bytes]:
    return server_objects(server, bucket, slide_version(bucket, case).image_key(""))


def expected_image(pieces: tuple[Piece, ...], case: str) -> dict[str, bytes]:
    return {slide_version("unused", case).image_key(piece.key): piece.data for piece in pieces}


def manifest_of(server: S3Server, bucket: str, case: str) -> dict | None:  # type: ignore[type-arg]
    client = server.client()
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=slide_version(bucket, case).manifest_key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


# -- corruption ------------------------------------------------------------------------------------------------
def test_a_corrupted_body_is_sent_again_and_recorded_only_once_verified(s3_server, s3_bucket, tmp_path, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    case = CASE
    pieces = local_pieces(sample(CMU), case)
    shard = first_shard(pieces)
    proxy = proxy_factory(corrupt=f"image.zarr/{shard}")
    args = [f"s3://{s3_bucket}/cases", "--endpoint-url", proxy.endpoint_url, "--state-dir", tmp_path, "--station", STATION, "--case", case, "--json", "--no-edge"]
    result = slidestream("send", sample(CMU), *args)
    assert result.returncode == 0, result.stderr
    path = f"/{s3_bucket}/{slide_version(s3_bucket, case).image_key(shard)}"
    assert proxy.corrupted[path] == 1 and proxy.puts[path] == 2  # corrupted once, sent again once
    assert json.loads(result.stdout)["retries"] >= 1
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)
    assert journal_objects(tmp_path) == {piece.key: (sha256(piece.data), len(piece.data), "sent-verified") for piece in pieces}


def test_an_object_the_server_keeps_corrupting_fails_the_send_and_is_never_recorded(s3_server, s3_bucket, tmp_path, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    case = CASE
    pieces = local_pieces(sample(CMU), case)
    shard = first_shard(pieces)
    proxy = proxy_factory(corrupt=f"image.zarr/{shard}", times=1000)
    args = [f"s3://{s3_bucket}/cases", "--endpoint-url", proxy.endpoint_url, "--state-dir", tmp_path, "--station", STATION, "--case", case, "--no-edge"]
    result = slidestream("send", sample(CMU), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not recorded as sent" in result.stderr and shard in result.stderr
    assert journal_objects(tmp_path) == {}  # given up: retracted, nothing of it is on the server any more
    assert journal_sends(tmp_path)[SlideRef(case)][1] == result.stderr.removeprefix("slidestream: error: ").strip()
    assert image_on_server(s3_server, s3_bucket, case) == {}
    manifest = manifest_of(s3_server, s3_bucket, case)
    assert manifest is not None and manifest["state"] == "failed" and manifest["complete"] is False and shard in manifest["failed"]


def test_a_send_that_fails_on_its_slide_retracts_what_it_wrote(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A corrupt tile found mid-way: one line, exit 2; the store holds a manifest saying "failed" and why (without
    the file name) and none of the image objects that had gone out; the viewer, `analyze` and `resume` agree."""
    case, state, client = CASE, tmp_path / "state", s3_server.client()
    slide = corrupt_slide(tmp_path)
    client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})  # keeps what was deleted
    result = slidestream("send", slide, *send_args(s3_server, s3_bucket, state, "--case", case))
    assert_one_line_error(result, 2, "tile")

    versions = client.list_object_versions(Bucket=s3_bucket, Prefix=slide_version(s3_bucket, case).case_root)
    written = [v for v in versions.get("Versions", []) if "/image.zarr/" in v["Key"]]
    manifests = sorted((v for v in versions["Versions"] if v["Key"].endswith("manifest.json")), key=lambda v: v["LastModified"])
    assert any(v["Key"].endswith("image.zarr/zarr.json") for v in written)  # metadata had gone out before the failure
    assert image_on_server(s3_server, s3_bucket, case) == {}  # and is gone
    first = json.loads(client.get_object(Bucket=s3_bucket, Key=manifests[0]["Key"], VersionId=manifests[0]["VersionId"])["Body"].read())
    assert first["state"] == "sending" and all(manifests[0]["LastModified"] <= v["LastModified"] for v in written)
    raw = client.get_object(Bucket=s3_bucket, Key=slide_version(s3_bucket, case).manifest_key)["Body"].read()
    manifest = json.loads(raw)
    assert manifest["state"] == "failed" and manifest["complete"] is False and manifest["planned"] == manifest["arrived"] == []
    assert manifest["failed"] in result.stderr.replace(str(slide), "the slide")
    assert b"DOE" not in raw and b"ACC-2024" not in raw

    assert journal_objects(state) == {} and journal_sends(state)[SlideRef(case)][0] is not None
    resumed = slidestream("resume", "--state-dir", state)
    assert resumed.returncode == 0 and resumed.stderr.strip() == "nothing to resume"

    report = tmp_path / "report.csv"
    analyzed = slidestream("analyze", f"s3://{s3_bucket}/cases", "--report", report, "--endpoint-url", s3_server.endpoint_url)
    assert analyzed.returncode == 1, analyzed.stderr
    [row] = list(csv.DictReader(report.open()))
    assert row["case"] == f"{case}/{SlideRef(case).path}" and row["status"] == "error" and "send failed" in row["error"] and manifest["failed"] in row["error"]
    assert row["score"] == ""


def test_a_slide_that_fails_in_watch_leaves_only_its_failed_manifest_and_resume_nothing_to_fail_on(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In a hot folder the edge triage outlives its send (the next slide goes meanwhile): when the slide fails for
    good, the triage is stopped and nothing it would publish (heatmap, triage.json) stays beside the failed case."""
    folder, state = tmp_path / "scans", tmp_path / "state"
    folder.mkdir()
    corrupt_slide(folder)
    watched = slidestream("watch", folder, f"s3://{s3_bucket}/cases", "--endpoint-url", s3_server.endpoint_url, "--state-dir", state,
                          "--station", STATION, "--once", "--edge", "--settle", 0)  # fmt: skip
    assert watched.returncode == 1, watched.stderr
    stations = f"cases/{station_folder(STATION)}"
    folders = [entry["Prefix"] for entry in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=stations, Delimiter="/")["CommonPrefixes"]]
    [case] = [folder.removeprefix(stations).rstrip("/") for folder in folders if not folder.startswith(f"{stations}_")]
    dest = slide_version(s3_bucket, case)
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=dest.case_root).get("Contents", [])
    unsent = [entry["Key"] for entry in listed if entry["Key"].startswith(dest.key(unsent_folder(case)))]
    assert len(unsent) == 1, listed  # the centre is told the specimen's slide will not come (`UnsentSlide`)
    assert sorted(entry["Key"] for entry in listed if entry["Key"] not in unsent) == [
        dest.key(case_key(case, CASE_RECORD)), dest.key(slide_claim_key(case, "s1")), dest.manifest_key]
    assert manifest_of(s3_server, s3_bucket, case)["state"] == "failed"
    assert (folder / "failed" / "ACC-2024-0001_DOE_JANE.svs").exists()
    for _ in range(2):  # the failed slide's journal entry is given up: resume has nothing to fail on
        resumed = slidestream("resume", "--state-dir", state)
        assert resumed.returncode == 0 and resumed.stderr.strip() == "nothing to resume", resumed.stderr


# -- kill -9 ---------------------------------------------------------------------------------------------------
def wait_for_journal(state: Path, count: int, process: subprocess.Popen[str]) -> None:
    def journaled() -> bool:
        with contextlib.suppress(sqlite3.Error):
            return len(journal_objects(state)) >= count
        return False

    wait_for(journaled, f"{count} objects journaled", 600, process=process, every=0.02)


def check_after_kill(server: S3Server, bucket: str, case: str, state: Path, pieces: tuple[Piece, ...], in_flight: int) -> int:
    """The journal tells the truth, and the server holds no partial object; returns the number journaled."""
    produced = {piece.key: piece.data for piece in pieces}
    journal = journal_objects(state) if (state / "journal.sqlite3").exists() else {}
    on_server = {key.rpartition("/image.zarr/")[2]: data for key, data in image_on_server(server, bucket, case).items()}
    for key, (digest, size, status) in journal.items():
        assert (
            status == "sent-verified" and on_server[key] == produced[key] and sha256(produced[key]) == digest and size == len(produced[key])
        )
    assert all(produced[key] == data for key, data in on_server.items())  # every object there is whole
    assert len(set(on_server) - set(journal)) <= in_flight  # all that a rerun can send twice
    manifest = manifest_of(server, bucket, case)
    if manifest is not None:
        assert manifest["complete"] is False and set(manifest["arrived"]) <= set(journal)
    return len(journal)


def test_kill_9_at_random_points_then_resume_completes_byte_identical(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    case, state, concurrency = CASE, tmp_path / "state", 2
    pieces = local_pieces(sample(CMU), case)
    rng = random.Random()
    args = ["send", sample(CMU), *send_args(s3_server, s3_bucket, state, "--case", case, "--max-rate", 4, "--concurrency", concurrency)]
    first_shard = next(index for index, piece in enumerate(pieces) if piece.kind is PieceKind.SHARD)
    # the last object that takes a while at 4 Mbit/s (the tissue label's few kB follow it): a kill by journal count
    # past it could land after the send finished by itself
    last_large = max(index for index, piece in enumerate(pieces) if len(piece.data) > 100_000)

    # 1: at a random moment (start-up, metadata or the first shard)
    first = start_slidestream(*args)
    delay = rng.uniform(0.5, 4.0)
    time.sleep(delay)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    check_after_kill(s3_server, s3_bucket, case, state, pieces, concurrency)

    # 2: the same command again, killed after a random number of verified objects, while a large shard still travels
    second = start_slidestream(*args)
    target = rng.randint(first_shard + 1, last_large)
    wait_for_journal(state, target, second)
    second.send_signal(signal.SIGKILL)
    second.communicate()
    journaled = check_after_kill(s3_server, s3_bucket, case, state, pieces, concurrency)

    # 3: `resume` with no arguments finishes it, sending only what the journal lacks
    resumed = slidestream("resume", "--state-dir", state, "--json")
    assert resumed.returncode == 0, f"{resumed.stderr} (killed after {delay:.2f} s, then at {target} objects)"
    [summary] = json.loads(resumed.stdout)
    assert summary["objects_skipped"] == journaled and summary["objects"] == len(pieces) - journaled
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)
    assert manifest_of(s3_server, s3_bucket, case)["complete"] is True  # type: ignore[index]
    assert slidestream("resume", "--state-dir", state).stderr.strip() == "nothing to resume"


def test_a_send_stopped_by_sigterm_during_edge_triage_leaves_no_process_behind(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`kill` (SIGTERM) of a send, or of a watch, while its triage process works: that process ends with it instead
    of holding the CPU and the send's output pipes (communicate() would wait for it)."""
    args = ["send", sample("TCGA-CR-7395-jp2k.svs"), *send_args(s3_server, s3_bucket, tmp_path / "state", "--edge", "--max-rate", 2)]
    process = start_slidestream(*args)
    deadline = time.monotonic() + 120
    triage = None
    while triage is None:
        assert process.poll() is None and time.monotonic() < deadline, "the triage process never started"
        triage = next((pid for pid in children(process.pid) if "spawn_main" in cmdline(pid)), None)
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{triage}").exists() and "spawn_main" in cmdline(triage):
        assert time.monotonic() < deadline, "the triage process outlived the send"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# -- link loss -------------------------------------------------------------------------------------------------
def test_link_down_past_the_deadline_exits_3_and_resume_finishes(s3_server, s3_bucket, tmp_path, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    case, state = CASE, tmp_path / "state"
    pieces = local_pieces(sample(CMU), case)
    proxy = proxy_factory()
    args = [f"s3://{s3_bucket}/cases", "--endpoint-url", proxy.endpoint_url, "--state-dir", state, "--station", STATION, "--case", case, "--no-edge"]
    # two puts in flight, as check_after_kill allows: auto concurrency would have up to eight whose answers the dead
    # link swallows (on the server, not journaled)
    process = start_slidestream("send", sample(CMU), *args, "--max-rate", 4, "--deadline", 2, "--concurrency", 2)
    wait_for_journal(state, sum(piece.kind is not PieceKind.SHARD for piece in pieces) + 1, process)
    proxy.set_down(True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3
    *before, error = stderr.splitlines()  # milestones the send reached before the link went down, then the error
    assert error.startswith("slidestream: error: no working connection to") and "slidestream resume" in error
    assert all(" available after " in line for line in before), before
    journaled = check_after_kill(s3_server, s3_bucket, case, state, pieces, in_flight=2)
    assert 0 < journaled < len(pieces)

    proxy.set_down(False)
    resumed = slidestream("resume", "--state-dir", state, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)[0]["objects_skipped"] == journaled
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)


def wait_for_send_journaled(state: Path, case: str, process: subprocess.Popen[str]) -> None:
    def journaled() -> bool:
        with contextlib.suppress(sqlite3.Error):
            return (state / "journal.sqlite3").exists() and SlideRef(case) in journal_sends(state)
        return False

    wait_for(journaled, "the send journaled", 600, process=process, every=0.05)


def test_a_send_started_while_the_link_is_down_waits_for_it(s3_server, s3_bucket, tmp_path, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    """No link at the start is an outage like any other: the send is journaled, waits, and goes once the link is up."""
    case, state = CASE, tmp_path / "state"
    proxy = proxy_factory()
    proxy.set_down(True)
    args = [f"s3://{s3_bucket}/cases", "--endpoint-url", proxy.endpoint_url, "--state-dir", state, "--station", STATION, "--case", case, "--json", "--no-edge"]
    process = start_slidestream("send", sample(CMU), *args, "--deadline", 600)
    wait_for_send_journaled(state, case, process)
    time.sleep(2)  # a few failed tries later it still waits
    assert process.poll() is None and journal_sends(state)[SlideRef(case)] == (None, None) and journal_objects(state) == {}
    proxy.set_down(False)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    pieces = local_pieces(sample(CMU), case)
    assert json.loads(stdout)["objects"] == len(pieces)
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)


def test_a_send_that_never_reached_the_server_exits_3_and_resume_sends_it(s3_server, s3_bucket, tmp_path, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    case, state = CASE, tmp_path / "state"
    proxy = proxy_factory()
    proxy.set_down(True)
    args = [f"s3://{s3_bucket}/cases", "--endpoint-url", proxy.endpoint_url, "--state-dir", state, "--station", STATION, "--case", case, "--no-edge"]
    started = time.monotonic()
    result = slidestream("send", sample(CMU), *args, "--deadline", 3)
    assert time.monotonic() - started < 3 + 30  # generous: Python start-up and the slide's opening on a busy machine
    assert_one_line_error(result, 3, f"no working connection to {proxy.endpoint_url}", "--deadline 3", "slidestream resume")
    assert journal_sends(state)[SlideRef(case)][0] is None and manifest_of(s3_server, s3_bucket, case) is None

    proxy.set_down(False)
    resumed = slidestream("resume", "--state-dir", state, "--json")
    assert resumed.returncode == 0, resumed.stderr
    pieces = local_pieces(sample(CMU), case)
    assert json.loads(resumed.stdout)[0]["objects"] == len(pieces)
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)
    assert manifest_of(s3_server, s3_bucket, case)["state"] == "complete"  # type: ignore[index]


def load_link() -> ModuleType | None:
    path = REPO / "bench" / "link.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_link", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


LINK_SLOT = 211  # apart from the benchmark's slot 0 and bench link tests' 201-203


def test_outage_on_an_emulated_5g_link_heals_by_itself(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    link = load_link()
    if link is None:
        pytest.skip("bench/link.py (the emulated link) does not exist")
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("the emulated link needs root and iproute2")
    case, state = CASE, tmp_path / "state"
    pieces = local_pieces(sample(CMU), case)
    split = urlsplit(s3_server.endpoint_url)
    with link.EmulatedLink("5g", (split.hostname, split.port), slot=LINK_SLOT) as emulated:
        args = [f"s3://{s3_bucket}/cases", "--endpoint-url", emulated.endpoint_url, "--state-dir", state, "--station", STATION, "--case", case, "--json", "--no-edge"]
        process = start_slidestream("send", sample(CMU), *args, "--max-rate", 4, "--deadline", 120)
        wait_for_journal(state, sum(piece.kind is not PieceKind.SHARD for piece in pieces) + 1, process)
        emulated.outage(6)
        stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["objects"] == len(pieces)
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)


# -- configuration and local errors ----------------------------------------------------------------------------
OTHER_CASE = qualified_case(STATION, "other-case")


@pytest.fixture
def used_journal(tmp_path: Path) -> Path:
    """A station's state dir whose journal already remembers another case (and holds the registry's tables): errors
    must leave it as it was, registering nothing."""
    from station.registry import Registry

    state = tmp_path / "state"
    with Journal(state) as journal:
        other = parse_destination("s3://other-bucket/x", OTHER_CASE, "http://elsewhere:9000")
        journal.begin(other, {"slide": "/nowhere.svs"})
        journal.record(other, "zarr.json", hashlib.sha256(b"{}").hexdigest(), 2, "etag")
    Registry(state).close()
    return state


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("slidestream: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture(scope="module")
def strict_server(s3_server: S3Server) -> Iterator[str]:
    """An endpoint that checks credentials: the test server itself, or (moto accepts any key) a moto with auth on."""
    if not s3_server.name.startswith("moto"):
        yield s3_server.endpoint_url
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "moto with auth did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_wrong_credentials(strict_server, s3_bucket, used_journal) -> None:  # type: ignore[no-untyped-def]
    before = journal_dump(used_journal)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    result = slidestream(
        "send", sample(CMU), f"s3://{s3_bucket}/cases", "--endpoint-url", strict_server, "--state-dir", used_journal, env=env
    )
    assert_one_line_error(result, 2, f"credentials rejected by {strict_server}")
    assert "not-the-secret-at-all" not in result.stderr + result.stdout
    assert journal_dump(used_journal) == before


def test_each_send_takes_the_credentials_of_its_time(s3_server, s3_bucket, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A hot folder runs for months while keys get rotated: clients share the parsed API, never the credentials."""
    from botocore.exceptions import ClientError

    from objectstore.clients import make_client

    if s3_server.name.startswith("moto"):
        pytest.skip("moto accepts any key")
    before = make_client(s3_server.endpoint_url)
    before.list_objects_v2(Bucket=s3_bucket, MaxKeys=1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAROTATEDROTATED01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-key-that-was-revoked")
    with pytest.raises(ClientError) as refused:
        make_client(s3_server.endpoint_url).list_objects_v2(Bucket=s3_bucket, MaxKeys=1)
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    before.list_objects_v2(Bucket=s3_bucket, MaxKeys=1)  # a send under way keeps the keys it started with


def test_unknown_bucket(s3_server, used_journal) -> None:  # type: ignore[no-untyped-def]
    before = journal_dump(used_journal)
    result = slidestream(
        "send", sample(CMU), "s3://no-such-bucket-here/cases", "--endpoint-url", s3_server.endpoint_url, "--state-dir", used_journal
    )
    assert_one_line_error(result, 2, "does not exist", "NoSuchBucket")
    assert journal_dump(used_journal) == before


@pytest.mark.parametrize(("endpoint", "reason"), [("http://127.0.0.1:{port}", "connection refused"), ("http://s3.invalid:9000", "")])
def test_unreachable_endpoint(used_journal, endpoint, reason) -> None:  # type: ignore[no-untyped-def]
    """An endpoint that cannot be reached may be a link that is down: waited for until --deadline, then exit 3 with
    the send journaled for `resume` (the other case the journal knew is left as it was)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = endpoint.format(port=sock.getsockname()[1])  # bound, not listening: refused
        result = slidestream("send", sample(CMU), "s3://bucket/cases", "--endpoint-url", url, "--state-dir", used_journal,
                             "--station", STATION, "--case", "unreached", "--deadline", 2)  # fmt: skip
    assert_one_line_error(result, 3, f"no working connection to {url}", reason)
    assert journal_sends(used_journal) == {SlideRef(OTHER_CASE): (None, None),
                                           SlideRef(qualified_case(STATION, "unreached")): (None, result.stderr.removeprefix("slidestream: error: ").strip())}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_journal_on_a_full_disk(s3_server, s3_bucket, tmp_path, tiny_disk) -> None:  # type: ignore[no-untyped-def]
    """256 KiB fill up during the send (the station's registry shares the journal's file; with the registry's
    publication and delivery tables 160 KiB no longer holds both before the first object): one line, exit 2, and a
    journal that tells the truth and resumes."""
    case = CASE
    result = slidestream("send", sample(CMU), *send_args(s3_server, s3_bucket, tiny_disk, "--case", case))
    assert_one_line_error(result, 2, "disk full", str(tiny_disk / "journal.sqlite3"))
    pieces = local_pieces(sample(CMU), case)
    journal_dump(tiny_disk)  # opens, passes integrity_check
    journaled = check_after_kill(s3_server, s3_bucket, case, tiny_disk, pieces, in_flight=32)
    assert 0 < journaled < len(pieces), "the disk must fill during the send, not before its first object"

    roomy = tmp_path / "roomy"
    shutil.copytree(tiny_disk, roomy)
    resumed = slidestream("resume", "--state-dir", roomy, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)[0]["objects_skipped"] == journaled
    assert image_on_server(s3_server, s3_bucket, case) == expected_image(pieces, case)
