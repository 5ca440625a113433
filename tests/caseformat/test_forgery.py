"""A hostile station against the centre's word, on the real S3 server: a station can write anything to the store, so
each attack here writes its forgery straight to the bucket with boto3, and the viewer and the centre's commands must
refuse it, say so in one line, and keep serving everything else.

(a) an unsigned "benign" report written before the pathologist signs; (b) a report signed by another key; (c) a
genuine report with one field changed; (d) people records that promote a station user or un-revoke a user; (e) a
forged audit record; (f) malformed case.json, manifest.json and triage.json, each costing only its own row.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from conftest import S3Server
from support import wait_for
from support.viewer import CENTRE_KEY, FORM, KEY_DIR, TRUSTED, Bucket, Served, added, register, serving, users

from caseformat.bounded import utc_now
from caseformat.documents import PATHOLOGIST, STATION, Author, Person, Report, read_notice
from caseformat.layout import (
    CASE_RECORD,
    MANIFEST,
    TRIAGE,
    SlideRef,
    audit_key,
    case_key,
    notices_folder,
    person_key,
    qualified_case,
    report_key,
    request_key,
)
from caseformat.signing import SigningKey
from viewer.people import revoke_person

STATION_ID = "theatre-3"
UNSIGNED, OTHERKEY, CHANGED, PEOPLE, AUDIT, GOOD = (qualified_case(STATION_ID, name) for name in
                                                   ("UNSIGNED-1", "OTHERKEY-1", "CHANGED-1", "PEOPLE-1", "AUDIT-1", "GOOD-1"))  # fmt: skip
BAD, BADSLIDE, BADTRIAGE, BADCLOCK = (qualified_case(STATION_ID, name) for name in ("BAD", "BADSLIDE", "BADTRIAGE", "BADCLOCK"))


@pytest.fixture(scope="module")
def centre(s3_server: S3Server):  # type: ignore[no-untyped-def]
    """A store with registered cases whose slide has begun to arrive (enough to sign on), and the viewer."""
    bucket = Bucket(s3_server)
    for case in (UNSIGNED, OTHERKEY, CHANGED, PEOPLE, AUDIT, GOOD):
        register(bucket, case)
        bucket.send(case, arrived=lambda piece: False)
    with serving(bucket.storage()) as served:
        yield bucket, served


def benign_report(case: str) -> Report:
    """What a forger would like the operating room to read: a benign report 1 under a pathologist's name."""
    return Report(case, 1, "benign", "Benign breast tissue.", Author("u00c0ffee", "Dr Real Pathologist"), utc_now(), STATION_ID)


def station_copies(bucket: Bucket, case: str) -> list[bytes]:
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/{notices_folder(STATION_ID)}")
    return [bucket.get(item["Key"].removeprefix(f"{bucket.prefix}/")) for item in listed.get("Contents", []) if f"_{case}_report_" in item["Key"]]


def assert_signs_over_the_forgery(bucket: Bucket, served: Served, case: str, token: str) -> None:
    """The pathologist signs report 1 over whatever holds its key, and what the station's copy holds is what they signed."""
    signed = served.post(f"/api/cases/{case}/reports", token, json=FORM)
    assert signed.status_code == 200, signed.text
    report = signed.json()
    assert (report["number"], report["category"], report["author"]["name"]) == (1, "malignant", "Dr Genuine")
    assert json.loads(bucket.get(report_key(case, 1))) == report
    (copy,) = station_copies(bucket, case)
    assert copy == bucket.get(report_key(case, 1))
    assert read_notice(copy, "the station's copy", TRUSTED, "report").category == "malignant"
    history = served.get(f"/api/cases/{case}/reports", token).json()
    assert history == {"reports": [report], "refused": []}


def test_a_unsigned_benign_report_before_signing_is_not_the_report_and_the_pathologist_still_signs(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    forged = {"format": Report.FORMAT, **benign_report(UNSIGNED).to_dict()}
    bucket.put(report_key(UNSIGNED, 1), json.dumps(forged).encode())
    _, token = added(bucket, "Dr Genuine")
    info = served.get(f"/api/cases/{UNSIGNED}", token).json()
    assert info["signed_at"] is None
    assert info["refused"] == [f"{report_key(UNSIGNED, 1)}: not signed by the centre; refused"]
    assert served.get(f"/api/cases/{UNSIGNED}/reports", token).json()["reports"] == []
    assert served.get(f"/api/cases/{UNSIGNED}/slides/s1/v1/status", token).json()["report"] is None
    assert_signs_over_the_forgery(bucket, served, UNSIGNED, token)


def test_b_a_report_signed_by_another_key_is_refused(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    bucket.put(report_key(OTHERKEY, 1), benign_report(OTHERKEY).to_json(SigningKey.generate()))
    _, token = added(bucket, "Dr Genuine")
    info = served.get(f"/api/cases/{OTHERKEY}", token).json()
    assert info["signed_at"] is None
    (refused,) = info["refused"]
    assert refused.startswith(f"{report_key(OTHERKEY, 1)}: signed by a key this reader does not trust")
    assert_signs_over_the_forgery(bucket, served, OTHERKEY, token)


def test_c_a_genuine_report_with_one_field_changed_is_refused(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    _, token = added(bucket, "Dr Genuine")
    signed = served.post(f"/api/cases/{CHANGED}/reports", token, json=FORM)
    assert signed.status_code == 200, signed.text
    changed = {**signed.json(), "category": "benign"}  # the signature kept, the diagnosis's category turned
    bucket.put(report_key(CHANGED, 1), json.dumps(changed).encode())
    wait_for(lambda: served.get(f"/api/cases/{CHANGED}/reports", token).json()["reports"] == [], "the viewer to see the change")
    reports = served.get(f"/api/cases/{CHANGED}/reports", token).json()
    assert reports["refused"] == [f"{report_key(CHANGED, 1)}: its signature does not match its content (changed after signing); refused"]
    assert served.get(f"/api/cases/{CHANGED}", token).json()["signed_at"] is None
    # a genuine report copied from another case is not this case's report either
    bucket.put(report_key(GOOD, 1), signed.content)
    (copied,) = served.get(f"/api/cases/{GOOD}/reports", token).json()["refused"]
    assert copied.startswith(f"{report_key(GOOD, 1)}: the centre signed it as number 1 of case {CHANGED}")


def test_an_object_larger_than_any_document_is_refused_unread(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    bucket.put(request_key(GOOD, 1), b'{"pad": "' + b"x" * 300_000 + b'"}')
    _, token = added(bucket, "Dr Genuine")
    requests = served.get(f"/api/cases/{GOOD}/requests", token).json()
    refused = f"{request_key(GOOD, 1)}: 300,011 bytes, more than the 262,144 a document may have; refused"
    assert requests == {"requests": [], "orders": {}, "refused": [refused]}
    asked = served.post(f"/api/cases/{GOOD}/requests", token, json={"what": "deeper level"})
    assert asked.status_code == 200 and asked.json()["number"] == 1  # the number the object took is the centre's again


def test_d_people_records_a_station_rewrites_give_no_access(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    station_user, station_token = added(bucket, "theatre-3 desk", "--role", "station", "--station", STATION_ID)
    assert served.get(f"/api/cases/{PEOPLE}", station_token).status_code == 200  # its own station's case
    assert served.get("/api/worklist", station_token).status_code == 403
    genuine = Person.read(bucket.get(person_key(station_user)), "record", TRUSTED)
    assert genuine.station == STATION_ID

    # promoted to pathologist: unsigned, and with the centre's signature kept
    promoted = {"format": Person.FORMAT, **genuine.to_dict(), "role": PATHOLOGIST}
    bucket.put(person_key(station_user), json.dumps(promoted).encode())
    wait_for(lambda: served.get("/api/me", station_token).status_code == 403, "the viewer to see the change")
    refused = served.get("/api/worklist", station_token)
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"user {station_user} is refused: {person_key(station_user)}: not signed by the centre; refused"
    signed = json.loads(genuine.to_json(CENTRE_KEY))
    bucket.put(person_key(station_user), json.dumps({**signed, "role": PATHOLOGIST}).encode())
    assert served.get("/api/worklist", station_token).status_code == 403
    assert "does not match its content" in served.get("/api/worklist", station_token).json()["detail"]
    assert served.post(f"/api/cases/{PEOPLE}/reports", station_token, json=FORM).status_code == 403

    # un-revoked: the record as it was before the centre revoked it (a genuine signature, an old serial)
    user, token = added(bucket, "Dr Leaving")
    before = bucket.get(person_key(user))
    asyncio.run(revoke_person(bucket.storage(), CENTRE_KEY, TRUSTED, user))
    wait_for(lambda: "was revoked" in served.get("/api/worklist", token).json()["detail"], "the viewer to see the change")
    unrevoked = {**json.loads(before), "signature": json.loads(bucket.get(person_key(user)))["signature"]}
    bucket.put(person_key(user), json.dumps(unrevoked).encode())
    wait_for(lambda: "does not match its content" in served.get("/api/worklist", token).json()["detail"], "the viewer to see the change")
    assert served.get("/api/worklist", token).status_code == 403
    bucket.put(person_key(user), before)  # the genuine record from before the revocation, written back
    wait_for(lambda: "rolled back" in served.get("/api/worklist", token).json()["detail"], "the viewer to see the change")
    assert served.get("/api/worklist", token).status_code == 403
    bucket.put(person_key(user), json.dumps(unrevoked).encode())

    # `users list` shows each forged record as one refused line and goes on
    added(bucket, "Dr Still Here")
    listed = users(bucket, "list", "STORE")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("refused: ")) == sorted(
        f"refused: {person_key(who)}: its signature does not match its content (changed after signing); refused" for who in (station_user, user))
    assert not any(line.split()[0] in (station_user, user) for line in lines[1:] if not line.startswith("refused: "))
    assert any(line.split()[2] == "active" for line in lines[1:] if not line.startswith("refused: "))  # the others listed


def test_e_a_forged_audit_record_shows_as_refused(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    user, token = added(bucket, "Dr Reader")
    assert served.get(f"/api/cases/{AUDIT}", token).status_code == 200
    at = utc_now()
    forged = {"format": "slidestream-audit/2", "at": at, "user": {"id": user, "name": "Dr Reader", "role": PATHOLOGIST},
              "action": "sign", "case": AUDIT, "slide": None, "version": None, "report": 1}  # fmt: skip
    bucket.put(audit_key(at, "f0f0f0f0"), json.dumps(forged).encode())
    store = f"s3://{bucket.name}/{bucket.prefix}"
    command = [sys.executable, "-m", "slidestream", "audit", store, "--case", AUDIT, "--date", datetime.now(UTC).strftime("%Y-%m-%d"),
               "--endpoint-url", bucket.endpoint_url, "--key-dir", str(KEY_DIR)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"refused: {audit_key(at, 'f0f0f0f0')}: not signed by the centre; refused" in lines
    rows = [line.split(None, 5) for line in lines[1:-1] if not line.startswith("refused: ")]
    assert [(row[1], row[2], row[5]) for row in rows] == [("open-case", AUDIT, f"Dr Reader ({user}, pathologist)")]  # no forged "sign"
    assert lines[-1] == "1 event(s), 1 refused"


@pytest.mark.parametrize(("name", "data"), [
    ("not JSON", b'{"case": "theatre-3.BAD", '),
    ("a list", b"[]"),
    ("year 9999", json.dumps({"format": "slidestream-case/1", "case": BAD, "registered_at": "9999-01-01T00:00:00Z"}).encode()),
    ("a lone surrogate", b'{"format": "slidestream-case/1", "case": "theatre-3.BAD", "registered_at": "2026-12-01T21:00:00Z", "station": "\\ud800"}'),
    ("a JSON bomb", b"[" * 100_000 + b"]" * 100_000),
    ("10 MB", b'{"pad": "' + b"x" * 10_000_000 + b'"}'),
])  # fmt: skip
def test_f_a_malformed_case_record_costs_only_its_own_worklist_row(s3_server: S3Server, name: str, data: bytes) -> None:
    bucket = Bucket(s3_server)
    register(bucket, GOOD)
    bucket.send(GOOD, arrived=lambda piece: False, triage=0.4)
    bucket.put(case_key(BAD, CASE_RECORD), data)
    bucket.send(BAD, arrived=lambda piece: False)
    bucket.send(BADSLIDE, arrived=lambda piece: False)
    bucket.put(SlideRef(BADSLIDE).key(MANIFEST), b"[" * 100)
    bucket.send(BADTRIAGE, arrived=lambda piece: False)
    bucket.send(BADCLOCK, arrived=lambda piece: False, started=datetime(9999, 12, 31, tzinfo=UTC))  # the clock's sum would overflow
    bucket.put(SlideRef(BADTRIAGE).key(TRIAGE), b'{"score": NaN}')
    with serving(bucket.storage()) as served:
        token = served.person(bucket.storage(), "Dr Worklist")
        worklist = served.get("/api/worklist", token)
        assert worklist.status_code == 200, worklist.text
        rows = {row["case"]: row for row in worklist.json()["cases"]}
        assert set(rows) == {GOOD, BAD, BADSLIDE, BADTRIAGE, BADCLOCK}
        assert rows[GOOD]["unreadable"] is None and rows[GOOD]["triage"]["score"] == 0.4
        assert rows[GOOD]["specimen"] == "left breast, lumpectomy margin"
        assert rows[BAD]["unreadable"].startswith(f"unreadable: {case_key(BAD, CASE_RECORD)}: ") and "\n" not in rows[BAD]["unreadable"]
        assert rows[BADSLIDE]["state"] == "unreadable"
        assert rows[BADSLIDE]["unreadable"].startswith(f"unreadable: {SlideRef(BADSLIDE).key(MANIFEST)}: ")
        assert rows[BADTRIAGE]["triage"] is None
        assert rows[BADTRIAGE]["unreadable"].startswith(f"unreadable: {SlideRef(BADTRIAGE).key(TRIAGE)}: ")
        # the case itself still opens, saying what is wrong, for its own station too (a station's access follows the
        # case ID, not case.json); another station is refused it; neither is served a 500
        info = served.get(f"/api/cases/{BAD}", token)
        assert info.status_code == 200 and info.json()["unreadable"] == rows[BAD]["unreadable"]
        station = served.person(bucket.storage(), "theatre-3 desk", role=STATION, station=STATION_ID)
        own = served.get(f"/api/cases/{BAD}", station)
        assert own.status_code == 200 and own.json()["unreadable"] == rows[BAD]["unreadable"]
        other = served.person(bucket.storage(), "theatre-4 desk", role=STATION, station="theatre-4")
        assert served.get(f"/api/cases/{BAD}", other).status_code == 403
        assert served.get(f"/api/cases/{GOOD}", station).status_code == 200
