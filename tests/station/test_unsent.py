"""Every slide accounted for at the centre: slides the hospital could not send are on the case, a specimen with none
that can arrive is failed (never "arriving" for ever), and a report signed past missing slides says so.

The station's records (`caseformat.documents.UnsentSlide`, in its own folder) are written here as `watch` writes them
(tests/station/test_watch.py drives `watch` itself); the viewer is the real one over the real S3 server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import S3Server
from support.viewer import Bucket, Served, serving, sign_in, wait_on

from caseformat.bounded import utc_now
from caseformat.documents import CaseRecord, UnsentSlide
from caseformat.layout import CASE_RECORD, case_key, unsent_key

pytestmark = pytest.mark.slow

PARTLY = "theatre-5.margins-six"  # six blocks: three sent, three the hospital could not send
NOTHING = "theatre-5.only-one"  # its one slide could not be read


def _register(bucket: Bucket, case: str) -> None:
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, utc_now(), "theatre-5", (("specimen_site", "breast"),)).to_json())


def _unsent(bucket: Bucket, case: str, token: str, kind: str) -> None:
    bucket.put(unsent_key(case, token), UnsentSlide(case, token, kind, utc_now()).to_json())


@pytest.fixture(scope="module")
def served(s3_server: S3Server) -> Iterator[tuple[Served, Bucket]]:
    bucket = Bucket(s3_server)
    _register(bucket, PARTLY)
    for slide in ("s1", "s2", "s3"):
        bucket.send(PARTLY, at=(slide, "v1"))
    for token, kind in (("0" * 15 + "1", "unreadable"), ("0" * 15 + "2", "unreadable"), ("0" * 15 + "3", "duplicate")):
        _unsent(bucket, PARTLY, token, kind)
    _register(bucket, NOTHING)
    _unsent(bucket, NOTHING, "a" * 16, "unsupported")
    bucket.put(unsent_key(NOTHING, "b" * 16), b'{"format": "slidestream-unsent/1", "case": "theatre-5.other"}')  # a bad record
    with serving(bucket.storage()) as served:
        yield served, bucket


def test_the_case_says_how_many_slides_failed_at_the_hospital_and_why(served: tuple[Served, Bucket]) -> None:
    server, bucket = served
    token = server.person(bucket.storage())
    info = server.get(f"/api/cases/{PARTLY}", token).json()
    assert info["missing"] == ("3 of 6 slides failed at the hospital: the slide file could not be read (damaged, truncated or "
                               "not a slide) (2); a copy of a slide sent before")  # fmt: skip
    assert [entry["kind"] for entry in info["unsent"]] == ["unreadable", "unreadable", "duplicate"]
    listed = {entry["case"]: entry for entry in server.get("/api/worklist", token).json()["cases"]}
    assert listed[PARTLY]["state"] == "complete" and listed[PARTLY]["missing"] == info["missing"]


def test_a_specimen_whose_only_slide_failed_is_failed_not_arriving(served: tuple[Served, Bucket]) -> None:
    server, bucket = served
    token = server.person(bucket.storage())
    entry = {entry["case"]: entry for entry in server.get("/api/worklist", token).json()["cases"]}[NOTHING]
    assert entry["state"] == "failed", entry
    assert entry["failed"].startswith("2 of 2 slides failed at the hospital"), entry  # the bad record counts, as unreadable
    info = server.get(f"/api/cases/{NOTHING}", token).json()
    assert any(record["reason"].startswith("unreadable: ") for record in info["unsent"])


def test_signing_past_missing_slides_needs_the_pathologist_to_have_seen_them_and_the_report_says_so(served: tuple[Served, Bucket]) -> None:
    server, bucket = served
    token = server.person(bucket.storage())
    form = {"category": "benign", "diagnosis": "Margins free in the blocks received."}
    refused = server.post(f"/api/cases/{PARTLY}/reports", token, json=form)
    assert refused.status_code == 409 and "3 of 6 slides failed at the hospital" in refused.json()["detail"]
    missing = server.get(f"/api/cases/{PARTLY}", token).json()["missing"]
    signed = server.post(f"/api/cases/{PARTLY}/reports", token, json={**form, "missing_seen": missing})
    assert signed.status_code == 200, signed.text
    assert signed.json()["missing"] == missing


def test_the_case_page_says_which_slides_failed_and_signing_warns_of_them(page, served: tuple[Served, Bucket]) -> None:  # type: ignore[no-untyped-def]
    server, bucket = served
    case = "theatre-5.margins-four"  # its own case: the module's others get signed by the tests before this one
    _register(bucket, case)
    bucket.send(case)
    for token, kind in (("c" * 16, "unreadable"), ("d" * 16, "unreadable"), ("e" * 16, "duplicate")):
        _unsent(bucket, case, token, kind)
    sign_in(page, server, server.person(bucket.storage(), "Dr Ana Ruiz"))
    page.goto(f"{server.url}/view/{case}")
    wait_on(page, lambda: page.locator("#missing").is_visible() and page.locator("#report-form").is_visible(), "the failed slides' line")
    line = page.locator("#missing-line").inner_text()
    assert line.startswith("3 of 4 slides failed at the hospital") and "could not be read" in line and "a copy of a slide sent before" in line, line
    page.select_option("#category", "benign")
    page.fill("#diagnosis", "no tumour at the margins of the three blocks that came")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator("#sign").click()
    wait_on(page, lambda: asked, "the question before signing")
    assert line in asked[0] and "signed knowing this" in asked[0], asked
