"""People, the structured report, requests to the hospital and the audit log, through the viewer's API against the
real S3 server, with users made by `slidestream users` and the log read by `slidestream audit`.

The same story in a browser, with a running `watch` at the hospital, is test_report_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import S3Server
from support import wait_for
from support.viewer import CENTRE_KEY, FORM, KEY_DIR, SECRET, TRUSTED, Bucket, Served, added, register, serving, users

from caseformat.documents import Author, Person, Report, SlideRead
from caseformat.layout import (
    MANIFEST,
    REPORTS,
    SlideRef,
    audit_folder,
    notice_key,
    notices_folder,
    numbered_folder,
    person_key,
    report_key,
    request_key,
)
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import LocalStorage, StorageError
from viewer import reports

STATION_ID = "theatre-3"
CASE = f"{STATION_ID}.FS-2026-0042"
FAILED = f"{STATION_ID}.FAILED-1"


@pytest.fixture(scope="module")
def centre(s3_server: S3Server):  # type: ignore[no-untyped-def]
    """A registered case with one slide sent (from a station), another whose only slide failed, and the viewer."""
    bucket = Bucket(s3_server)
    register(bucket, CASE)
    bucket.send(CASE, triage=0.7)
    register(bucket, FAILED)
    failed = {"format": "slidestream-manifest/2", "case": FAILED, "state": "failed", "failed": "unreadable slide: truncated TIFF", "complete": False}
    bucket.put(SlideRef(FAILED).key(MANIFEST), json.dumps(failed).encode())
    with serving(bucket.storage()) as served:
        yield bucket, served


def post(served: Served, path: str, token: str, body: dict) -> httpx.Response:  # type: ignore[type-arg]
    return served.post(path, token, json=body)


@pytest.mark.slow  # seven runs of the command line
def test_users_are_added_listed_and_revoked_with_the_command(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    user, token = added(bucket, "Dr Ana Ruiz")
    station, _ = added(bucket, "theatre-3", "--role", "station", "--station", "theatre-3", "--expires", "7d")
    record = Person.read(bucket.get(person_key(user)), "record", TRUSTED)
    assert record is not None and (record.name, record.role, record.revoked_at) == ("Dr Ana Ruiz", "pathologist", None)
    assert SECRET.decode() not in bucket.get(person_key(user)).decode() and token not in bucket.get(person_key(user)).decode()
    listed = users(bucket, "list", "STORE").stdout
    assert any(line.split()[:3] == [user, "pathologist", "active"] and line.endswith("Dr Ana Ruiz") for line in listed.splitlines())
    assert any(line.split()[:3] == [station, "station", "active"] and line.split()[5] == "theatre-3" for line in listed.splitlines())
    assert served.get("/api/me", token).json()["user"] == {"id": user, "name": "Dr Ana Ruiz", "role": "pathologist"}

    # a new link ends the old one; revocation ends every link, within the viewer's second of caching
    relinked = users(bucket, "link", "STORE", user)
    assert relinked.returncode == 0, relinked.stderr
    new = relinked.stdout.strip().partition("#token=")[2]
    wait_for(lambda: served.get("/api/me", token).status_code == 401, "the viewer to see the change")
    assert "replaced by a newer one" in served.get("/api/me", token).json()["detail"]
    assert served.get("/api/worklist", new).status_code == 200
    assert users(bucket, "revoke", "STORE", user).returncode == 0
    wait_for(lambda: served.get("/api/worklist", new).status_code == 403, "the viewer to see the change")
    assert "was revoked" in served.get("/api/worklist", new).json()["detail"]
    assert "revoked" in users(bucket, "list", "STORE").stdout
    refused = users(bucket, "link", "STORE", user)
    assert refused.returncode == 2 and "was revoked" in refused.stderr and refused.stderr.count("\n") == 1
    unknown = users(bucket, "revoke", "STORE", "u00000000")
    assert unknown.returncode == 2 and "no user u00000000" in unknown.stderr
    bad = users(bucket, "add", "STORE", "Dr X", "--expires", "soon")
    assert bad.returncode == 2 and "--expires 'soon'" in bad.stderr
    stationless = users(bucket, "add", "STORE", "theatre-4", "--role", "station")  # a station user sees its station's cases
    assert stationless.returncode == 2 and "--station STATION_ID is required for --role station" in stationless.stderr


def test_an_expired_user_is_refused_saying_so(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    user, token = added(bucket, "Dr Short Stay")
    record = Person.read(bucket.get(person_key(user)), "record", TRUSTED)
    bucket.put(person_key(user), Person(**{**record.__dict__, "expires_at": "2026-01-01T00:00:00Z"}).to_json(CENTRE_KEY))  # the centre's change
    wait_for(lambda: served.get("/api/me", token).status_code == 403, "the viewer to see the change")
    assert "expired at 2026-01-01" in served.get("/api/me", token).json()["detail"]


def test_a_pathologist_signs_amends_and_the_history_stays(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    user, token = added(bucket, "Dr Ben Okafor")
    info = served.get(f"/api/cases/{CASE}", token).json()
    assert info["registered_at"] == "2026-12-01T21:00:00.000Z" and info["context"]["clinical_question"] == "margin clear?"
    assert info["signed_at"] is None

    signed = post(served, f"/api/cases/{CASE}/reports", token, FORM)
    assert signed.status_code == 200, signed.text
    first = signed.json()
    assert json.loads(bucket.get(report_key(CASE, 1))) == first
    assert {k: first[k] for k in ("format", "case", "number", "kind", "amends", "category", "margins", "comment")} == {
        "format": "slidestream-report/3", "case": CASE, "number": 1, "kind": "signed", "amends": None,
        "category": "malignant", "margins": "superior margin involved", "comment": None}  # fmt: skip
    assert first["author"] == {"id": user, "name": "Dr Ben Okafor"} and first["slides"] == [{"slide": "s1", "version": "v1"}]
    assert json.loads(bucket.get(notice_key(STATION_ID, first["signed_at"], CASE, "report", 1))) == first

    # signing is final: a second "first" report is refused, and so is an amendment of a version not read
    again = post(served, f"/api/cases/{CASE}/reports", token, FORM)
    assert again.status_code == 409 and "was signed by Dr Ben Okafor" in again.json()["detail"]
    amended = post(served, f"/api/cases/{CASE}/reports", token, {**FORM, "margins": "all margins clear", "amends": 1})
    assert amended.status_code == 200, amended.text
    second = amended.json()
    assert (second["number"], second["kind"], second["amends"]) == (2, "amendment", 1)
    assert json.loads(bucket.get(report_key(CASE, 1))) == first  # the signed version is never replaced
    history = served.get(f"/api/cases/{CASE}/reports", served.token(CASE)).json()["reports"]
    assert [version["margins"] for version in history] == ["superior margin involved", "all margins clear"]
    stale = post(served, f"/api/cases/{CASE}/reports", token, {**FORM, "amends": 1})
    assert stale.status_code == 409 and "report 2 was signed" in stale.json()["detail"]

    # the clock stopped at the signature: an amendment does not move it
    wait_for(lambda: served.get(f"/api/cases/{CASE}", token).json()["signed_at"] == first["signed_at"], "the viewer to see the change")
    status = served.get(f"/api/cases/{CASE}/slides/s1/v1/status", token).json()
    assert status["report"] == {"signed_at": first["signed_at"]}

    assert post(served, f"/api/cases/{CASE}/reports", token, {**FORM, "category": "suspicious"}).status_code == 422
    assert post(served, f"/api/cases/{CASE}/reports", token, {**FORM, "diagnosis": ""}).status_code == 422


def test_two_pathologists_signing_at_once_get_one_report_and_one_refusal(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    register(bucket, CASE)
    bucket.send(CASE)
    with serving(bucket.storage()) as served:
        tokens = [added(bucket, name)[1] for name in ("Dr One", "Dr Two")]

        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
                return await asyncio.gather(*(client.post(f"/api/cases/{CASE}/reports", json=FORM, headers=served.credentials(t))
                                              for t in tokens))

        answers = sorted(asyncio.run(both()), key=lambda response: response.status_code)
    assert [answer.status_code for answer in answers] == [200, 409], [a.text for a in answers]
    stored = json.loads(bucket.get(report_key(CASE, 1)))
    assert stored == answers[0].json()


def test_a_case_link_views_but_never_signs_and_a_station_sees_only_its_cases(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    link = served.token(CASE)
    assert served.get(f"/api/cases/{CASE}", link).status_code == 200
    refused = post(served, f"/api/cases/{CASE}/reports", link, FORM)
    assert refused.status_code == 403 and refused.json()["detail"] == "a case link cannot sign; sign in as a pathologist"
    assert post(served, f"/api/cases/{CASE}/requests", link, {"what": "deeper level"}).status_code == 403
    _, station = added(bucket, "theatre-3 desk", "--role", "station", "--station", "theatre-3")
    assert served.get(f"/api/cases/{CASE}/reports", station).status_code == 200
    assert post(served, f"/api/cases/{CASE}/reports", station, FORM).status_code == 403
    register(bucket, "theatre-9.OTHER-1")
    assert served.get("/api/cases/theatre-9.OTHER-1", station).status_code == 403
    assert served.get("/api/worklist", station).status_code == 403


def test_a_case_whose_slides_failed_cannot_be_reported(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    _, token = added(bucket, "Dr Careful")
    info = served.get(f"/api/cases/{FAILED}", token).json()
    assert info["slides"] == [{"slide": "s1", "version": "v1", "state": "failed", "failed": "unreadable slide: truncated TIFF"}]
    refused = post(served, f"/api/cases/{FAILED}/reports", token, FORM)
    assert refused.status_code == 409
    assert refused.json()["detail"] == f"case {FAILED} has no slide that arrived to report on (s1: failed: unreadable slide: truncated TIFF)"
    reports_folder = f"{bucket.prefix}/{numbered_folder(FAILED, REPORTS)}"
    assert bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=reports_folder).get("KeyCount") == 0
    # asking the hospital for another section is what such a case needs
    asked = post(served, f"/api/cases/{FAILED}/requests", token, {"what": "another section from block A", "slide": "s1"})
    assert asked.status_code == 200, asked.text
    request = asked.json()
    assert json.loads(bucket.get(request_key(FAILED, 1))) == request
    assert (request["format"], request["number"], request["what"], request["slide"]) == ("slidestream-request/3", 1, "another section from block A", "s1")
    assert json.loads(bucket.get(notice_key(STATION_ID, request["asked_at"], FAILED, "request", 1))) == request
    assert post(served, f"/api/cases/{FAILED}/requests", token, {"what": "deeper level"}).json()["number"] == 2


def test_the_audit_log_names_who_opened_and_signed_what(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    register(bucket, CASE)
    bucket.send(CASE)
    with serving(bucket.storage()) as served:
        user, token = added(bucket, "Dr Audit Reader")
        link = served.token(CASE)
        assert served.get(f"/api/cases/{CASE}", link).status_code == 200
        assert served.get(f"/api/cases/{CASE}", token).status_code == 200
        assert served.get(f"/api/cases/{CASE}/slides/s1/v1/image", token).status_code == 200
        for _ in range(3):
            assert served.get(f"/api/cases/{CASE}/slides/s1/v1/tiles/0/0/0", token).status_code == 200  # tiles: not logged
        assert post(served, f"/api/cases/{CASE}/reports", token, FORM).status_code == 200
        assert post(served, f"/api/cases/{CASE}/reports", token, {**FORM, "amends": 1}).status_code == 200
        assert post(served, f"/api/cases/{CASE}/requests", token, {"what": "deeper level"}).status_code == 200
    store = f"s3://{bucket.name}/{bucket.prefix}"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    command = [sys.executable, "-m", "slidestream", "audit", store, "--case", CASE, "--date", today, "--endpoint-url", bucket.endpoint_url,
               "--key-dir", str(KEY_DIR)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 5) for line in result.stdout.splitlines()[1:-1]]
    assert [(row[1], row[3], row[4]) for row in rows] == [
        ("open-case", "-", "-"), ("open-case", "-", "-"), ("open-slide", "s1/v1", "-"),
        ("sign", "-", "1"), ("amend", "-", "2"), ("request", "-", "1")]  # fmt: skip
    assert rows[0][5] == f"case link ({CASE})"
    assert all(row[5] == f"Dr Audit Reader ({user}, pathologist)" for row in rows[1:])
    assert result.stdout.splitlines()[-1] == "6 event(s)"
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/{audit_folder(today)}")["Contents"]
    event = json.loads(bucket.get(listed[0]["Key"].removeprefix(bucket.prefix + "/")))
    assert set(event) == {"format", "at", "user", "action", "case", "slide", "version", "report", "signature"}
    wrong = subprocess.run([*command[:5], "--date", "yesterday"], capture_output=True, text=True, timeout=120, check=False)
    assert wrong.returncode == 2 and "YYYY-MM-DD" in wrong.stderr


def test_a_signed_report_whose_station_copy_the_store_refuses_is_signed_not_an_error(tmp_path: Path) -> None:
    """The report is the truth and is saved; the station's copy is a fast path (the station reads its open cases'
    reports itself): a store that refuses the copy must not tell the pathologist the signature failed, which made
    them sign again and get 409 "already signed"."""

    class RefusesStationCopies(LocalStorage):
        async def put(self, key: str, data: bytes) -> None:
            if key.startswith(notices_folder(STATION_ID)):
                raise StorageError(f"{key}: the store refused the request (test)")
            await super().put(key, data)

    storage, key = RefusesStationCopies(tmp_path), SigningKey.generate()
    trusted = TrustedKeys([key.public])
    form = reports.ReportIn(category="benign", diagnosis="no tumour at the margin")
    signed = asyncio.run(reports.sign(storage, key, trusted, CASE, form, Author("u0123abcd", "Dr A"), [SlideRead("s1", "v1")], STATION_ID))
    assert signed["number"] == 1 and signed["station"] == STATION_ID
    stored = Report.read(asyncio.run(storage.get(report_key(CASE, 1))), "report 1", trusted)
    assert stored.diagnosis == "no tumour at the margin" and not (tmp_path / notices_folder(STATION_ID)).exists()
