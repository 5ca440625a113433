"""A hospital station trusts only what the centre signed for it: `watch` and `status` read reports and requests only
when they verify with the centre's public keys, name this station and match their key; anything else on the store is
refused in one line and passed over, a delivered report is never replaced, and text from the store is shown as text.
The station's local files (registry, journal, watch log) are private."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import sample

from caseformat.documents import Author, Report, SlideRead
from caseformat.layout import notice_key, notices_folder, qualified_case, report_key
from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, public_pem

pytestmark = pytest.mark.slow  # a running watch

STATION, PREFIX = "theatre-3", "site"
CENTRE = SigningKey.generate()
AUTHOR = Author("u0123abcd", "Dr P. Kovacs", "pathologist")


def _case(local: str) -> str:
    """A case ID of this station (a case ID names its station)."""
    return qualified_case(STATION, local)


def _at(minutes_ago: float) -> str:
    """A time stamp in the past (old enough for the cursor to move over its notice)."""
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _report(case: str, number: int = 1, diagnosis: str = "metastatic carcinoma in one sentinel node", station: str | None = STATION,
            signed_at: str | None = None) -> Report:
    return Report(case, number, "malignant", diagnosis, AUTHOR, signed_at or _at(30), station, slides=(SlideRead("s1", "v1"),),
                  amends=number - 1 if number > 1 else None)


def _keys_file(tmp_path: Path, key: SigningKey = CENTRE) -> Path:
    path = tmp_path / "centre.pem"
    path.write_bytes(public_pem(key.public))
    return path


def _put(s3_server: Any, bucket: str, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=body)


def _notice(s3_server: Any, bucket: str, at: str, case: str, body: bytes, number: int = 1, station: str = STATION) -> str:
    """Writes `body` where the centre puts a notice for `station`; returns its store key."""
    key = notice_key(station, at, case, "report", number)
    _put(s3_server, bucket, key, body)
    return f"{PREFIX}/{key}"


def _signed(document: dict[str, Any], key: SigningKey = CENTRE) -> bytes:
    return json.dumps(key.sign(document)).encode()


def _watch(tmp_path: Path, s3_server: Any, bucket: str, *extra: str) -> list[str]:
    hot = tmp_path / "hot"
    hot.mkdir(exist_ok=True)
    return [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/{PREFIX}", "--endpoint-url", s3_server.endpoint_url,
            "--state-dir", str(tmp_path / "state"), "--station", STATION, "--no-edge", "--settle", "0.2", *extra]  # fmt: skip


def _once(tmp_path: Path, s3_server: Any, bucket: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(_watch(tmp_path, s3_server, bucket, "--once", *extra), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def _refused(stdout: str) -> dict[str, str]:
    """key -> reason, of each REFUSED notice line."""
    lines = [line.split(" REFUSED notice ", 1)[1] for line in stdout.splitlines() if " REFUSED notice " in line]
    return {key: reason for key, reason in (line.split(": ", 1) for line in lines)}


def _outbox(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "hot" / "outbox"
    return {path.name: path.read_text() for path in folder.iterdir()} if folder.exists() else {}


def test_only_a_report_the_centre_signed_for_this_station_reaches_the_outbox(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Unsigned, signed by another key, meant for another station, changed after signing, or under a key naming
    another case: each refused in one line, once; the genuine report after them is delivered."""
    genuine = _report(_case("S26_0042"), diagnosis="the genuine diagnosis")  # a case ID with "_", as a notice's key holds it
    forged_text = genuine.to_dict() | {"format": Report.FORMAT, "case": _case("case-a"), "diagnosis": "forged: benign"}
    tampered = json.loads(_report(_case("case-d")).to_json(CENTRE)) | {"diagnosis": "changed after signing"}
    bad = {
        "unsigned": _notice(s3_server, s3_bucket, _at(50), _case("case-a"), json.dumps(forged_text).encode()),
        "another key": _notice(s3_server, s3_bucket, _at(49), _case("case-b"), _report(_case("case-b")).to_json(SigningKey.generate())),
        "another station's": _notice(s3_server, s3_bucket, _at(48), _case("case-c"), _report(_case("case-c"), station="theatre-1").to_json(CENTRE)),
        "tampered": _notice(s3_server, s3_bucket, _at(47), _case("case-d"), json.dumps(tampered).encode()),
        "another case's": _notice(s3_server, s3_bucket, _at(46), _case("case-e"), _report(_case("case-x")).to_json(CENTRE)),
    }
    _notice(s3_server, s3_bucket, _at(45), _case("S26_0042"), genuine.to_json(CENTRE))

    first = _once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(_keys_file(tmp_path)))
    refused = _refused(first.stdout)
    assert set(refused) == set(bad.values()), first.stdout
    assert "not signed by the centre" in refused[bad["unsigned"]]
    assert "a key this reader does not trust" in refused[bad["another key"]]
    assert "is for station theatre-1, not theatre-3" in refused[bad["another station's"]]
    assert "does not match its content" in refused[bad["tampered"]]
    assert f"of case {_case('case-x')}, not what its name says" in refused[bad["another case's"]]
    assert sum(" REFUSED notice " in line for line in first.stdout.splitlines()) == len(bad), "one line each"
    case = _case("S26_0042")
    assert list(_outbox(tmp_path)) == [f"{case}_{case}_report_0001.txt"], _outbox(tmp_path)
    assert "Diagnosis: the genuine diagnosis" in _outbox(tmp_path)[f"{case}_{case}_report_0001.txt"]
    assert any(line.endswith(f"REPORT case {case} ({case}): malignant — the genuine diagnosis — signed by Dr P. Kovacs at {genuine.signed_at}")
               for line in first.stdout.splitlines()), first.stdout  # fmt: skip

    again = _once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(_keys_file(tmp_path)))
    assert " REFUSED " not in again.stdout and " REPORT " not in again.stdout, "the cursor moved past them: " + again.stdout


def test_malformed_notices_cost_one_line_each_and_the_watch_keeps_delivering(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Signed, but not a report: an author that is a string, a case that would leave the outbox, no JSON at all, a key
    that is no notice's name. The running watch refuses each once, delivers the genuine report after them, and leaves
    no temporary file behind."""
    document = {"format": Report.FORMAT, **_report(_case("case-m")).to_dict()}
    bad = [
        _notice(s3_server, s3_bucket, _at(50), _case("case-m"), _signed(document | {"author": "Dr Nobody"})),
        _notice(s3_server, s3_bucket, _at(49), _case("case-m"), _signed(document | {"case": "../../escape"})),
        _notice(s3_server, s3_bucket, _at(48), _case("case-m"), b"{not json"),
        f"{PREFIX}/{notices_folder(STATION)}{_at(47)}-no-notice-name.json",
    ]
    s3_server.client().put_object(Bucket=s3_bucket, Key=bad[-1], Body=b"{}")
    watcher = subprocess.Popen(_watch(tmp_path, s3_server, s3_bucket, "--centre-keys", str(_keys_file(tmp_path))),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(3)  # several polls over the bad ones
        assert watcher.poll() is None, watcher.communicate()
        _notice(s3_server, s3_bucket, _at(1), _case("case-ok"), _report(_case("case-ok"), signed_at=_at(1)).to_json(CENTRE))
        deadline = time.monotonic() + 60
        while not _outbox(tmp_path):
            assert watcher.poll() is None and time.monotonic() < deadline, "the notice thread stopped delivering"
            time.sleep(0.2)
        time.sleep(2.5)  # more polls: nothing is said twice
    finally:
        watcher.send_signal(signal.SIGINT)
        stdout, stderr = watcher.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    refused = [line for line in stdout.splitlines() if " REFUSED notice " in line]
    assert sorted(line.split(" REFUSED notice ")[1].split(": ")[0] for line in refused) == sorted(bad), stdout
    reasons = {key: reason for key, reason in _refused(stdout).items()}
    assert "author must be" in reasons[bad[0]] and "case" in reasons[bad[1]] and "not JSON" in reasons[bad[2]]
    assert "not a notice's name" in reasons[bad[3]]
    assert list(_outbox(tmp_path)) == [f"{_case('case-ok')}_{_case('case-ok')}_report_0001.txt"]
    assert not list((tmp_path / "hot" / "outbox").glob(".*")), "no temporary file left"
    assert not (tmp_path / "escape").exists() and not list(tmp_path.rglob("*escape*"))


def test_a_delivered_report_is_never_replaced(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """A forged notice with the number of a delivered report is refused; even a signed second text under the same
    number is a conflict, said in one line naming both, and the first stays as it was delivered."""
    keys = str(_keys_file(tmp_path))
    _notice(s3_server, s3_bucket, _at(50), _case("case-1"), _report(_case("case-1"), diagnosis="the first text").to_json(CENTRE))
    _once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    delivered = _outbox(tmp_path)
    outbox_name = f"{_case('case-1')}_{_case('case-1')}_report_0001.txt"
    assert list(delivered) == [outbox_name] and "Diagnosis: the first text" in delivered[outbox_name]

    forged = {"format": Report.FORMAT, **_report(_case("case-1"), diagnosis="benign after all").to_dict()}
    forged_key = _notice(s3_server, s3_bucket, _at(40), _case("case-1"), json.dumps(forged).encode())
    second_key = _notice(s3_server, s3_bucket, _at(39), _case("case-1"), _report(_case("case-1"), diagnosis="another text").to_json(CENTRE))
    result = _once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert list(_refused(result.stdout)) == [forged_key], result.stdout
    [conflict] = [line for line in result.stdout.splitlines() if " CONFLICT " in line]
    assert second_key in conflict and str(tmp_path / "hot" / "outbox" / outbox_name) in conflict, conflict
    assert " REPORT " not in result.stdout
    assert _outbox(tmp_path) == delivered, "the delivered report is kept as it was"


def test_text_from_the_store_is_shown_as_text(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """A diagnosis with a newline that forges a log line, a terminal escape and a bidi override: one line on the
    screen and in the log, one line in the outbox file, each with visible escapes."""
    diagnosis = "benign\n2026-12-01T10:00:00+00:00 REPORT case X: malignant\x1b[2J\u202etxt.exe"
    _notice(s3_server, s3_bucket, _at(30), _case("case-t"), _report(_case("case-t"), diagnosis=diagnosis).to_json(CENTRE))
    result = _once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(_keys_file(tmp_path)))
    shown = "benign\\n2026-12-01T10:00:00+00:00 REPORT case X: malignant\\x1b[2J\\u202etxt.exe"
    [line] = [line for line in result.stdout.splitlines() if " REPORT " in line]
    assert f": malignant — {shown} — signed by" in line, result.stdout
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    [text] = _outbox(tmp_path).values()
    assert f"\nDiagnosis: {shown}\n" in text and "\x1b" not in text and "\u202e" not in text
    assert not any(row.startswith("2026-12-01T10:00:00") for row in text.splitlines()), text


def test_without_the_centre_keys_watch_sends_and_says_once_that_it_reads_nothing(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    _notice(s3_server, s3_bucket, _at(30), _case("case-n"), _report(_case("case-n")).to_json(CENTRE))
    (tmp_path / "hot").mkdir()
    shutil.copyfile(sample("synthetic-boxes.tiff"), tmp_path / "hot" / "a.tiff")
    result = _once(tmp_path, s3_server, s3_bucket)
    assert any(" SENT a.tiff: " in line for line in result.stdout.splitlines()), result.stdout
    expected = f"no centre public key at {tmp_path / 'state' / PUBLIC_KEYS_FILE}: ask the centre for it (slidestream keys export)"
    assert [line for line in result.stderr.splitlines() if "centre public key" in line] == [
        f"{expected}; reports and requests cannot be verified and are not read"], result.stderr  # fmt: skip
    assert _outbox(tmp_path) == {} and " REPORT " not in result.stdout
    (tmp_path / "state" / PUBLIC_KEYS_FILE).write_bytes(public_pem(CENTRE.public))  # the default place
    assert f" REPORT case {_case('case-n')} " in _once(tmp_path, s3_server, s3_bucket).stdout, "read once the keys are there"


def test_status_counts_only_reports_the_centre_signed(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    from station.registry import Registry
    from station.station import SpecimenInfo, Station, Store

    state = tmp_path / "state"
    with Registry(state) as registry:
        station = Station(Store.parse(f"s3://{s3_bucket}/{PREFIX}", s3_server.endpoint_url), registry, STATION)
        case = station.register(SpecimenInfo("frozen-17", f"folder:{tmp_path}")).case
    signed = _report(case)
    _put(s3_server, s3_bucket, report_key(case, 1), signed.to_json(CENTRE))
    forged = {"format": Report.FORMAT, **_report(case, 2, diagnosis="benign after all").to_dict()}
    _put(s3_server, s3_bucket, report_key(case, 2), json.dumps(forged).encode())

    def status(*extra: str) -> list[str]:
        command = [sys.executable, "-m", "slidestream", "status", f"s3://{s3_bucket}/{PREFIX}", "--endpoint-url", s3_server.endpoint_url,
                   "--state-dir", str(state), *extra]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    lines = status("--centre-keys", str(_keys_file(tmp_path)))
    assert lines[0] == f"frozen-17 (case {case}, registered {lines[0].split('registered ')[1].split(')')[0]}): signed: malignant at {signed.signed_at} by Dr P. Kovacs", lines
    assert lines[1:] == [f"  refused report {PREFIX}/{report_key(case, 2)}: not signed by the centre; refused"], lines
    unverified = status()
    assert unverified[0].endswith("): arriving"), unverified
    assert unverified[1:] == [f"  no centre public key at {state / PUBLIC_KEYS_FILE}: ask the centre for it (slidestream keys export); "
                              "its reports cannot be verified and are not read"]  # fmt: skip


def test_the_station_files_that_hold_identity_are_private(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The registry and journal (one SQLite file, with its -wal and -shm), the watch log and the state folder."""
    from station.registry import Registry

    _notice(s3_server, s3_bucket, _at(30), _case("case-p"), _report(_case("case-p")).to_json(CENTRE))
    _once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(_keys_file(tmp_path)))
    state = tmp_path / "state"
    with Registry(state):  # open: its -wal and -shm exist
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state.iterdir()}
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert {"journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm"} <= set(modes), modes
    assert any(name.startswith("watch-") and name.endswith(".log") for name in modes), modes
    assert all(mode == 0o600 for mode in modes.values()), {name: oct(mode) for name, mode in modes.items()}


def test_a_case_json_that_is_no_case_record_starts_a_new_clock_and_a_good_one_keeps_its_own(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """`send --case` of a case the store has: its case.json's clock counts; one that is not a case record (a
    hostile or broken station's) is as good as none, and registering never fails on it."""
    from caseformat.documents import CaseRecord
    from caseformat.layout import CASE_RECORD, case_key
    from station.registry import Registry
    from station.station import SpecimenInfo, Station, Store

    started = _at(20)
    _put(s3_server, s3_bucket, case_key(_case("case-good"), CASE_RECORD), CaseRecord(_case("case-good"), started, STATION).to_json())
    _put(s3_server, s3_bucket, case_key(_case("case-bad"), CASE_RECORD), json.dumps({"case": _case("case-bad"), "registered_at": ["2020"]}).encode())
    with Registry(tmp_path / "state") as registry:
        station = Station(Store.parse(f"s3://{s3_bucket}/{PREFIX}", s3_server.endpoint_url), registry, STATION)
        assert station.register(SpecimenInfo("a", "folder:/a"), "case-good").registered_at == started
        assert station.register(SpecimenInfo("b", "folder:/b"), "case-bad").registered_at > _at(1)
