"""The station when its link or its disk fails: one specimen is one case whatever fails, its clock starts when the
specimen is found (not when the store answers), a full state disk never stops `watch`, and every report the centre
signed for the station reaches the outbox exactly once, whether its notice (centre/{station}/_notices/) lands late, never, or the
watch restarts in between. Against the real S3 server, through a proxy the test stalls."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from support import Proxy, wait_for
from support.station import (
    CENTRE,
    PREFIX,
    STATION,
    centre_keys_file,
    outbox_texts,
    put_notice,
    put_object,
    signed_report,
    time_ago,
    watch_once,
)

from caseformat.documents import Author, CaseRecord, Request
from caseformat.layout import CASE_RECORD, report_key, request_key

pytestmark = pytest.mark.slow  # a running watch through a stalling proxy


class StallingProxy(Proxy):
    """A link that stalls: while `flowing` is clear, requests still reach the store but its answers are held (the
    client times out not knowing whether its PUT landed), and they flow again once it is set."""

    def __init__(self, target: str) -> None:
        self.flowing = threading.Event()
        self.flowing.set()
        super().__init__(target)

    def hold_answer(self) -> None:
        self.flowing.wait()


def _command(tmp_path: Path, endpoint: str, bucket: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "slidestream", "watch", str(tmp_path / "hot"), f"s3://{bucket}/{PREFIX}", "--endpoint-url", endpoint,
            "--state-dir", str(tmp_path / "state"), "--station", STATION, "--no-edge", "--settle", "0.2", *extra]  # fmt: skip


class Watcher:
    """A running `watch`, its stdout and stderr in files (a pipe nobody reads would stop it)."""

    started: list[subprocess.Popen[bytes]] = []  # killed after each test, whatever it asserted

    def __init__(self, tmp_path: Path, endpoint: str, bucket: str, *extra: str, run: int = 1) -> None:
        (tmp_path / "hot").mkdir(exist_ok=True)
        self.stdout, self.stderr = tmp_path / f"watch-{run}.out", tmp_path / f"watch-{run}.err"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(_command(tmp_path, endpoint, bucket, *extra), stdout=out, stderr=err)
        self.started.append(self.process)
        self.wait_for(lambda: "watching " in self.stderr.read_text(), "watch to start")
        time.sleep(0.5)  # past its start: its loop is running

    def out(self) -> str:
        return self.stdout.read_text()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        wait_for(predicate, what, timeout, process=self.process, output=self.tails)

    def tails(self) -> str:
        return f"stderr: {self.stderr.read_text()[-2000:]!r} stdout: {self.out()[-2000:]!r}"

    def stop(self) -> tuple[str, str]:
        """Stops it (it must still be running); its stdout and stderr."""
        assert self.process.poll() is None, f"watch died (exit {self.process.returncode}): {self.stderr.read_text()[-2000:]}"
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.out(), self.stderr.read_text()


def _kill_watchers() -> None:
    for process in Watcher.started:
        if process.poll() is None:
            process.kill()
            process.wait()
    Watcher.started.clear()


@pytest.fixture(autouse=True)
def _no_watch_left() -> Iterator[None]:
    yield
    _kill_watchers()


def _specimen(tmp_path: Path, name: str) -> float:
    """A specimen folder with its sidecar appears in the hot folder; returns when (epoch seconds)."""
    folder = tmp_path / "hot" / name
    folder.mkdir(parents=True)
    (folder / "specimen.json").write_text(json.dumps({"accession": f"S26-{name}", "clinical_question": "margins clear?"}))
    return time.time()


def _registered(stdout: str, name: str) -> str:
    """The case watch registered the specimen `name` under (its REGISTERED line)."""
    [case] = [line.split(f" REGISTERED {name}: case ")[1].split(",")[0] for line in stdout.splitlines() if f" REGISTERED {name}: " in line]
    return case


def _case_records(s3_server: Any, bucket: str) -> list[CaseRecord]:
    client = s3_server.client()
    keys = [entry["Key"] for entry in client.list_objects_v2(Bucket=bucket).get("Contents", []) if entry["Key"].endswith(f"/{CASE_RECORD}")]
    return [CaseRecord.read(client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _registry_specimens(tmp_path: Path) -> list[tuple[str, str]]:
    """(case, registered_at) of every specimen in the station's registry."""
    from station.registry import Registry

    with Registry(tmp_path / "state") as registry:
        return [(specimen.case, specimen.registered_at) for _, specimen in registry.specimens()]


def test_a_store_that_stalls_while_a_specimen_registers_makes_one_case_with_the_clock_of_its_finding(
        tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:  # fmt: skip
    """The store takes the case.json but its answer is held past the client's timeout (20 s), then the link heals:
    the retry finds the same case (the store's case.json is this registration's), not a second one, and the clock
    is when the specimen appeared, not when the store answered."""
    proxy = StallingProxy(s3_server.endpoint_url)
    try:
        proxy.flowing.clear()
        watcher = Watcher(tmp_path, proxy.endpoint_url, s3_bucket)
        found = _specimen(tmp_path, "frozen-a")
        watcher.wait_for(lambda: any(path.endswith(f"/{CASE_RECORD}") for path in proxy.puts), "the case.json to reach the store")
        watcher.wait_for(lambda: " RETRY registering specimens: " in watcher.out(), "the registration to time out")
        proxy.flowing.set()
        watcher.wait_for(lambda: " REGISTERED frozen-a: " in watcher.out(), "the registration once the link heals")
        stdout, stderr = watcher.stop()
    finally:
        proxy.close()
    assert "Traceback" not in stderr, stderr
    [record] = _case_records(s3_server, s3_bucket)
    assert record.station == STATION and _registered(stdout, "frozen-a") == record.case, stdout
    assert abs(_epoch(record.registered_at) - found) < 2, f"the clock started at {record.registered_at}, the specimen appeared at {found}"
    assert _registry_specimens(tmp_path) == [(record.case, record.registered_at)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The station's state folder on a 512 KiB tmpfs of its own (so the test can fill it)."""
    folder = tmp_path / "state"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full state disk needs a small tmpfs, and mounting one needs root")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(folder)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("a full state disk needs a small tmpfs: no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"a full state disk needs a small tmpfs, which cannot be mounted here: {mounted.stderr.strip() or 'not permitted'}")
    try:
        yield folder
    finally:
        _kill_watchers()  # none left holding a file there
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Fills `folder`'s file system to the last byte; returns the file that does (remove it to free the space)."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    try:
        while True:
            os.write(descriptor, b"\0")
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)
    return filler


def test_a_full_state_disk_never_stops_watch_and_each_specimen_keeps_its_first_clock(
        tmp_path: Path, s3_server: Any, s3_bucket: str, small_disk: Path) -> None:  # fmt: skip
    """A specimen appears while the state disk is full, first before watch could open its registry, then while it
    has it open: watch keeps running (its log cannot be written: said once on stderr), registers nothing anywhere
    (no case on the store without the registry's row), and once space is back the specimen gets one case whose
    clock is when it appeared."""
    from station.registry import Registry

    Registry(small_disk).close()  # the station's registry exists, as on any station that ran before
    filler = _fill(small_disk)
    watcher = Watcher(tmp_path, s3_server.endpoint_url, s3_bucket)
    found, cases = {}, {}

    def appears_while_full(name: str, filler: Path) -> None:
        tried = watcher.out().count(" RETRY registering specimens: ")
        found[name] = _specimen(tmp_path, name)
        watcher.wait_for(lambda: watcher.out().count(" RETRY registering specimens: ") > tried, "the registry to refuse the write")
        time.sleep(3)  # more attempts while the disk is full
        assert watcher.process.poll() is None, watcher.stderr.read_text()
        assert len(_case_records(s3_server, s3_bucket)) == len(cases), "nothing reaches the store while the registry cannot record it"
        filler.unlink()
        watcher.wait_for(lambda: f" REGISTERED {name}: " in watcher.out(), "the registration once space is back")
        cases[name] = _registered(watcher.out(), name)

    appears_while_full("frozen-b1", filler)  # before watch could open its registry
    appears_while_full("frozen-b2", _fill(small_disk))  # while it has it open
    stdout, stderr = watcher.stop()
    assert "Traceback" not in stderr, stderr
    records = {record.case: record for record in _case_records(s3_server, s3_bucket)}
    assert sorted(records) == sorted(cases.values()) and sorted(_registry_specimens(tmp_path)) == sorted((c, r.registered_at) for c, r in records.items())
    for name, case in cases.items():
        assert abs(_epoch(records[case].registered_at) - found[name]) < 2, f"{name}: clock {records[case].registered_at}, appeared at {found[name]}"
    said = [line for line in stderr.splitlines() if line.startswith("cannot write ")]
    assert 1 <= len(said) <= 2 and all("watch-" in line and "No space left on device" in line for line in said), "once each time the disk fills: " + stderr
    [log] = small_disk.glob("watch-*.log")
    assert any(" REGISTERED frozen-b2: " in line for line in log.read_text().splitlines()), "the log is written again once there is space"


def _reports_said(stdout: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in stdout.splitlines() if " REPORT " in line]


def test_a_report_whose_notice_never_came_reaches_the_outbox_once(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The centre's copy for the station failed: only CASE/reports/0001.json is on the store. The station reads its
    open case's reports itself and delivers it; the next run delivers nothing again."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-c")
    case = _registered(watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout, "frozen-c")
    report = signed_report(case, diagnosis="no tumour at the margin")
    put_object(s3_server, s3_bucket, report_key(case, 1), report.to_json(CENTRE))
    first = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert _reports_said(first.stdout) == [f"REPORT case frozen-c ({case}): malignant — no tumour at the margin — signed by Dr P. Kovacs at "
                                           f"{report.signed_at}"], first.stdout  # fmt: skip
    assert list(outbox_texts(tmp_path)) == [f"frozen-c_{case}_report_0001.txt"]
    assert "Diagnosis: no tumour at the margin" in outbox_texts(tmp_path)[f"frozen-c_{case}_report_0001.txt"]
    again = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert _reports_said(again.stdout) == [] and " CONFLICT " not in again.stdout, again.stdout


def test_a_request_whose_notice_never_came_reaches_the_outbox_once(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The same for what the pathologist asks of the hospital: only CASE/requests/0001.json is on the store."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-r")
    case = _registered(watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout, "frozen-r")
    request = Request(case, 1, "a deeper level of block A", Author("u0123abcd", "Dr P. Kovacs"), time_ago(0), STATION, "s1")
    put_object(s3_server, s3_bucket, request_key(case, 1), request.to_json(CENTRE))
    first = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert f"REQUEST case frozen-r ({case}): a deeper level of block A (slide s1)" in first.stdout, first.stdout
    assert list(outbox_texts(tmp_path)) == [f"frozen-r_{case}_request_0001.txt"]
    again = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert "REQUEST case" not in again.stdout and " CONFLICT " not in again.stdout, again.stdout


def test_a_notice_that_lands_after_a_later_stamped_one_is_still_delivered(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Case 2's notice is stamped before case 1's but lands after the station has handled case 1's: its report is
    delivered all the same, once."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-d1")
    _specimen(tmp_path, "frozen-d2")
    registered = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout
    first, late = _registered(registered, "frozen-d1"), _registered(registered, "frozen-d2")
    for case, stamped in ((first, time_ago(5)), (late, time_ago(10))):
        report = signed_report(case, signed_at=stamped)
        put_object(s3_server, s3_bucket, report_key(case, 1), report.to_json(CENTRE))
        put_notice(s3_server, s3_bucket, stamped, case, report.to_json(CENTRE))
        result = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
        assert [line.split(" (")[0] for line in _reports_said(result.stdout)] == [f"REPORT case {'frozen-d1' if case == first else 'frozen-d2'}"], \
            result.stdout
    assert sorted(outbox_texts(tmp_path)) == sorted([f"frozen-d1_{first}_report_0001.txt", f"frozen-d2_{late}_report_0001.txt"])


def test_a_restart_of_watch_delivers_nothing_twice(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Report 1 (deferred to the permanent sections) comes with its notice and is delivered; the operating room takes
    the file away; watch restarts (the notice is still recent) and the amendment with the final diagnosis is on the
    store without its notice: the restarted watch delivers the amendment once and report 1 never again."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-e")
    case = _registered(watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout, "frozen-e")
    report = replace(signed_report(case, signed_at=time_ago(0)), category="deferred", diagnosis="deferred to permanent sections")
    put_object(s3_server, s3_bucket, report_key(case, 1), report.to_json(CENTRE))
    put_notice(s3_server, s3_bucket, time_ago(0), case, report.to_json(CENTRE))
    watcher = Watcher(tmp_path, s3_server.endpoint_url, s3_bucket, "--centre-keys", keys)
    watcher.wait_for(lambda: bool(outbox_texts(tmp_path)), "report 1 in the outbox")
    before, _ = watcher.stop()
    (tmp_path / "hot" / "outbox" / f"frozen-e_{case}_report_0001.txt").unlink()  # read, and filed with the patient's notes

    put_object(s3_server, s3_bucket, report_key(case, 2), signed_report(case, 2, diagnosis="amended: clear margins").to_json(CENTRE))
    watcher = Watcher(tmp_path, s3_server.endpoint_url, s3_bucket, "--centre-keys", keys, run=2)
    watcher.wait_for(lambda: bool(outbox_texts(tmp_path)), "the amendment in the outbox")
    time.sleep(3)  # several polls of the notices
    after, stderr = watcher.stop()
    assert "Traceback" not in stderr, stderr
    assert [line.split(" (")[0] for line in _reports_said(before)] == ["REPORT case frozen-e"], before
    assert [line.split(" (")[0] for line in _reports_said(after)] == ["REPORT AMENDMENT 2"], after
    assert list(outbox_texts(tmp_path)) == [f"frozen-e_{case}_report_0002.txt"]


def test_an_amendment_after_the_final_report_whose_notice_never_came_reaches_the_outbox(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    """Report 1 is final (malignant) and delivered; the pathologist amends it, and the amendment's copy for the station
    is lost: the station still reads its recent cases' reports, final ones too, and delivers the amendment once."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-f")
    case = _registered(watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout, "frozen-f")
    put_object(s3_server, s3_bucket, report_key(case, 1), signed_report(case, diagnosis="carcinoma at the margin").to_json(CENTRE))
    first = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert [line.split(" (")[0] for line in _reports_said(first.stdout)] == ["REPORT case frozen-f"], first.stdout
    put_object(s3_server, s3_bucket, report_key(case, 2), signed_report(case, 2, diagnosis="amended: margin clear on deeper levels").to_json(CENTRE))
    second = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert [line.split(" (")[0] for line in _reports_said(second.stdout)] == ["REPORT AMENDMENT 2"], second.stdout
    assert sorted(outbox_texts(tmp_path)) == [f"frozen-f_{case}_report_0001.txt", f"frozen-f_{case}_report_0002.txt"]
    again = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert _reports_said(again.stdout) == [], again.stdout


def test_an_outbox_that_cannot_be_written_is_said_as_such_once_and_the_report_waits(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    """The outbox cannot take the report (here a folder stands where its file goes; a full or read-only disk alike):
    watch says so once, naming the outbox, not the store, and delivers the report once the outbox can take it."""
    keys = str(centre_keys_file(tmp_path))
    _specimen(tmp_path, "frozen-g")
    case = _registered(watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys).stdout, "frozen-g")
    put_object(s3_server, s3_bucket, report_key(case, 1), signed_report(case, diagnosis="no tumour at the margin").to_json(CENTRE))
    outbox = tmp_path / "hot" / "outbox"
    blocking = outbox / f"frozen-g_{case}_report_0001.txt"
    blocking.mkdir(parents=True)
    watcher = Watcher(tmp_path, s3_server.endpoint_url, s3_bucket, "--centre-keys", keys)
    watcher.wait_for(lambda: "cannot deliver" in watcher.out(), "the outbox failure said")
    time.sleep(3)  # several polls
    stdout, _ = watcher.stop()
    said = [line for line in stdout.splitlines() if "comes back to station" in line]
    assert len(said) == 1 and f"(outbox {outbox})" in said[0] and "cannot read" not in said[0], stdout
    assert _reports_said(stdout) == [], stdout
    blocking.rmdir()
    delivered = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert [line.split(" (")[0] for line in _reports_said(delivered.stdout)] == ["REPORT case frozen-g"], delivered.stdout


class CountingProxy(Proxy):
    """Counts GET request lines too (LISTs are GETs of the bucket with a query)."""

    REQUEST = re.compile(rb"(?:PUT|GET) (\S+) HTTP/1\.1\r\n")

    def notice_lists(self) -> int:
        return sum(count for path, count in list(self.puts.items()) if "list-type=2" in path and "_notices" in unquote(path))


def test_an_idle_station_polls_its_notices_slowly_and_a_waiting_one_each_second(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    """With no case awaiting a report the station LISTs its notices every IDLE_NOTICE_POLL seconds, not every
    second (90 idle stations: 7.8 million LISTs a day otherwise); once a specimen registers, every second again."""
    from station.hotfolder import IDLE_NOTICE_POLL, NOTICE_POLL

    proxy = CountingProxy(s3_server.endpoint_url)
    try:
        watcher = Watcher(tmp_path, proxy.endpoint_url, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path)))
        time.sleep(6)
        idle = proxy.notice_lists()
        _specimen(tmp_path, "frozen-h")
        watcher.wait_for(lambda: " REGISTERED frozen-h: " in watcher.out(), "the registration")
        waiting_from = proxy.notice_lists()
        time.sleep(6)
        waiting = proxy.notice_lists() - waiting_from
        watcher.stop()
    finally:
        proxy.close()
    assert 1 <= idle <= 1 + 6 // IDLE_NOTICE_POLL, f"{idle} LISTs of the notices in 6 idle seconds"
    assert waiting >= 6 / NOTICE_POLL / 2, f"{waiting} LISTs of the notices in 6 s while a case awaits its report"
