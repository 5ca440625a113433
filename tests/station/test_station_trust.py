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
from pathlib import Path
from typing import Any

import pytest
from conftest import sample
from support.station import (
    CENTRE,
    PREFIX,
    STATION,
    centre_keys_file,
    outbox_texts,
    put_notice,
    put_object,
    signed_report,
    station_case,
    time_ago,
    watch_command,
    watch_once,
)

from caseformat.documents import Report
from caseformat.layout import notices_folder, report_key
from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, public_pem

pytestmark = pytest.mark.slow  # a running watch















def _signed(document: dict[str, Any], key: SigningKey = CENTRE) -> bytes:
    return json.dumps(key.sign(document)).encode()






def _refused(stdout: str) -> dict[str, str]:
    """key -> reason, of each REFUSED notice line."""
    lines = [line.split(" REFUSED notice ", 1)[1] for line in stdout.splitlines() if " REFUSED notice " in line]
    return {key: reason for key, reason in (line.split(": ", 1) for line in lines)}




def test_only_a_report_the_centre_signed_for_this_station_reaches_the_outbox(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Unsigned, signed by another key, meant for another station, changed after signing, or under a key naming
    another case: each refused in one line, once; the genuine report after them is delivered."""
    genuine = signed_report(station_case("S26_0042"), diagnosis="the genuine diagnosis")  # a case ID with "_", as a notice's key holds it
    forged_text = genuine.to_dict() | {"format": Report.FORMAT, "case": station_case("case-a"), "diagnosis": "forged: benign"}
    tampered = json.loads(signed_report(station_case("case-d")).to_json(CENTRE)) | {"diagnosis": "changed after signing"}
    bad = {
        "unsigned": put_notice(s3_server, s3_bucket, time_ago(50), station_case("case-a"), json.dumps(forged_text).encode()),
        "another key": put_notice(s3_server, s3_bucket, time_ago(49), station_case("case-b"), signed_report(station_case("case-b")).to_json(SigningKey.generate())),
        "another station's": put_notice(s3_server, s3_bucket, time_ago(48), station_case("case-c"), signed_report(station_case("case-c"), station="theatre-1").to_json(CENTRE)),
        "tampered": put_notice(s3_server, s3_bucket, time_ago(47), station_case("case-d"), json.dumps(tampered).encode()),
        "another case's": put_notice(s3_server, s3_bucket, time_ago(46), station_case("case-e"), signed_report(station_case("case-x")).to_json(CENTRE)),
    }
    put_notice(s3_server, s3_bucket, time_ago(45), station_case("S26_0042"), genuine.to_json(CENTRE))

    first = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path)))
    refused = _refused(first.stdout)
    assert set(refused) == set(bad.values()), first.stdout
    assert "not signed by the centre" in refused[bad["unsigned"]]
    assert "a key this reader does not trust" in refused[bad["another key"]]
    assert "is for station theatre-1, not theatre-3" in refused[bad["another station's"]]
    assert "does not match its content" in refused[bad["tampered"]]
    assert f"of case {station_case('case-x')}, not what its name says" in refused[bad["another case's"]]
    assert sum(" REFUSED notice " in line for line in first.stdout.splitlines()) == len(bad), "one line each"
    case = station_case("S26_0042")
    assert list(outbox_texts(tmp_path)) == [f"{case}_{case}_report_0001.txt"], outbox_texts(tmp_path)
    assert "Diagnosis: the genuine diagnosis" in outbox_texts(tmp_path)[f"{case}_{case}_report_0001.txt"]
    assert any(line.endswith(f"REPORT case {case} ({case}): malignant — the genuine diagnosis — signed by Dr P. Kovacs at {genuine.signed_at}")
               for line in first.stdout.splitlines()), first.stdout  # fmt: skip

    again = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path)))
    assert " REFUSED " not in again.stdout and " REPORT " not in again.stdout, "the cursor moved past them: " + again.stdout


def test_malformed_notices_cost_one_line_each_and_the_watch_keeps_delivering(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """Signed, but not a report: an author that is a string, a case that would leave the outbox, no JSON at all, a key
    that is no notice's name. The running watch refuses each once, delivers the genuine report after them, and leaves
    no temporary file behind."""
    document = {"format": Report.FORMAT, **signed_report(station_case("case-m")).to_dict()}
    bad = [
        put_notice(s3_server, s3_bucket, time_ago(50), station_case("case-m"), _signed(document | {"author": "Dr Nobody"})),
        put_notice(s3_server, s3_bucket, time_ago(49), station_case("case-m"), _signed(document | {"case": "../../escape"})),
        put_notice(s3_server, s3_bucket, time_ago(48), station_case("case-m"), b"{not json"),
        f"{PREFIX}/{notices_folder(STATION)}{time_ago(47)}-no-notice-name.json",
    ]
    s3_server.client().put_object(Bucket=s3_bucket, Key=bad[-1], Body=b"{}")
    watcher = subprocess.Popen(watch_command(tmp_path, s3_server, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path))),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(3)  # several polls over the bad ones
        assert watcher.poll() is None, watcher.communicate()
        put_notice(s3_server, s3_bucket, time_ago(1), station_case("case-ok"), signed_report(station_case("case-ok"), signed_at=time_ago(1)).to_json(CENTRE))
        deadline = time.monotonic() + 60
        while not outbox_texts(tmp_path):
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
    assert list(outbox_texts(tmp_path)) == [f"{station_case('case-ok')}_{station_case('case-ok')}_report_0001.txt"]
    assert not list((tmp_path / "hot" / "outbox").glob(".*")), "no temporary file left"
    assert not (tmp_path / "escape").exists() and not list(tmp_path.rglob("*escape*"))


def test_a_delivered_report_is_never_replaced(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """A forged notice with the number of a delivered report is refused; even a signed second text under the same
    number is a conflict, said in one line naming both, and the first stays as it was delivered."""
    keys = str(centre_keys_file(tmp_path))
    put_notice(s3_server, s3_bucket, time_ago(50), station_case("case-1"), signed_report(station_case("case-1"), diagnosis="the first text").to_json(CENTRE))
    watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    delivered = outbox_texts(tmp_path)
    outbox_name = f"{station_case('case-1')}_{station_case('case-1')}_report_0001.txt"
    assert list(delivered) == [outbox_name] and "Diagnosis: the first text" in delivered[outbox_name]

    forged = {"format": Report.FORMAT, **signed_report(station_case("case-1"), diagnosis="benign after all").to_dict()}
    forged_key = put_notice(s3_server, s3_bucket, time_ago(40), station_case("case-1"), json.dumps(forged).encode())
    second_key = put_notice(s3_server, s3_bucket, time_ago(39), station_case("case-1"), signed_report(station_case("case-1"), diagnosis="another text").to_json(CENTRE))
    result = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", keys)
    assert list(_refused(result.stdout)) == [forged_key], result.stdout
    [conflict] = [line for line in result.stdout.splitlines() if " CONFLICT " in line]
    assert second_key in conflict and str(tmp_path / "hot" / "outbox" / outbox_name) in conflict, conflict
    assert " REPORT " not in result.stdout
    assert outbox_texts(tmp_path) == delivered, "the delivered report is kept as it was"


def test_text_from_the_store_is_shown_as_text(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """A diagnosis with a newline that forges a log line, a terminal escape and a bidi override: one line on the
    screen and in the log, one line in the outbox file, each with visible escapes."""
    diagnosis = "benign\n2026-12-01T10:00:00+00:00 REPORT case X: malignant\x1b[2J\u202etxt.exe"
    put_notice(s3_server, s3_bucket, time_ago(30), station_case("case-t"), signed_report(station_case("case-t"), diagnosis=diagnosis).to_json(CENTRE))
    result = watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path)))
    shown = "benign\\n2026-12-01T10:00:00+00:00 REPORT case X: malignant\\x1b[2J\\u202etxt.exe"
    [line] = [line for line in result.stdout.splitlines() if " REPORT " in line]
    assert f": malignant — {shown} — signed by" in line, result.stdout
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    [text] = outbox_texts(tmp_path).values()
    assert f"\nDiagnosis: {shown}\n" in text and "\x1b" not in text and "\u202e" not in text
    assert not any(row.startswith("2026-12-01T10:00:00") for row in text.splitlines()), text


def test_without_the_centre_keys_watch_sends_and_says_once_that_it_reads_nothing(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    put_notice(s3_server, s3_bucket, time_ago(30), station_case("case-n"), signed_report(station_case("case-n")).to_json(CENTRE))
    (tmp_path / "hot").mkdir()
    shutil.copyfile(sample("synthetic-boxes.tiff"), tmp_path / "hot" / "a.tiff")
    result = watch_once(tmp_path, s3_server, s3_bucket)
    assert any(" SENT a.tiff: " in line for line in result.stdout.splitlines()), result.stdout
    expected = f"no centre public key at {tmp_path / 'state' / PUBLIC_KEYS_FILE}: ask the centre for it (slidestream keys export)"
    assert [line for line in result.stderr.splitlines() if "centre public key" in line] == [
        f"{expected}; reports and requests cannot be verified and are not read"], result.stderr  # fmt: skip
    assert outbox_texts(tmp_path) == {} and " REPORT " not in result.stdout
    (tmp_path / "state" / PUBLIC_KEYS_FILE).write_bytes(public_pem(CENTRE.public))  # the default place
    assert f" REPORT case {station_case('case-n')} " in watch_once(tmp_path, s3_server, s3_bucket).stdout, "read once the keys are there"


def test_status_counts_only_reports_the_centre_signed(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    from station.registry import Registry
    from station.station import SpecimenInfo, Station, Store

    state = tmp_path / "state"
    with Registry(state) as registry:
        station = Station(Store.parse(f"s3://{s3_bucket}/{PREFIX}", s3_server.endpoint_url), registry, STATION)
        case = station.register(SpecimenInfo("frozen-17", f"folder:{tmp_path}")).case
    signed = signed_report(case)
    put_object(s3_server, s3_bucket, report_key(case, 1), signed.to_json(CENTRE))
    forged = {"format": Report.FORMAT, **signed_report(case, 2, diagnosis="benign after all").to_dict()}
    put_object(s3_server, s3_bucket, report_key(case, 2), json.dumps(forged).encode())

    def status(*extra: str) -> list[str]:
        command = [sys.executable, "-m", "slidestream", "status", f"s3://{s3_bucket}/{PREFIX}", "--endpoint-url", s3_server.endpoint_url,
                   "--state-dir", str(state), *extra]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    lines = status("--centre-keys", str(centre_keys_file(tmp_path)))
    assert lines[0] == f"frozen-17 (case {case}, registered {lines[0].split('registered ')[1].split(')')[0]}): signed: malignant at {signed.signed_at} by Dr P. Kovacs", lines
    assert lines[1:] == [f"  refused report {PREFIX}/{report_key(case, 2)}: not signed by the centre; refused"], lines
    unverified = status()
    assert unverified[0].endswith("): arriving"), unverified
    assert unverified[1:] == [f"  no centre public key at {state / PUBLIC_KEYS_FILE}: ask the centre for it (slidestream keys export); "
                              "its reports cannot be verified and are not read"]  # fmt: skip


def test_the_station_files_that_hold_identity_are_private(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The registry and journal (one SQLite file, with its -wal and -shm), the watch log and the state folder."""
    from station.registry import Registry

    put_notice(s3_server, s3_bucket, time_ago(30), station_case("case-p"), signed_report(station_case("case-p")).to_json(CENTRE))
    watch_once(tmp_path, s3_server, s3_bucket, "--centre-keys", str(centre_keys_file(tmp_path)))
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

    started = time_ago(20)
    put_object(s3_server, s3_bucket, case_key(station_case("case-good"), CASE_RECORD), CaseRecord(station_case("case-good"), started, STATION).to_json())
    put_object(s3_server, s3_bucket, case_key(station_case("case-bad"), CASE_RECORD), json.dumps({"case": station_case("case-bad"), "registered_at": ["2020"]}).encode())
    with Registry(tmp_path / "state") as registry:
        station = Station(Store.parse(f"s3://{s3_bucket}/{PREFIX}", s3_server.endpoint_url), registry, STATION)
        assert station.register(SpecimenInfo("a", "folder:/a"), "case-good").registered_at == started
        assert station.register(SpecimenInfo("b", "folder:/b"), "case-bad").registered_at > time_ago(1)
