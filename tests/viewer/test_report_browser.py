"""The report's whole way, in a real browser (Chromium through Playwright) against the real S3 server.

The hospital registers a specimen with `watch` (a specimen folder with its specimen.json sidecar: identity and
clinical context) and the slide is sent; a named pathologist, added with `slidestream users add`, opens the case
from the worklist, reads the clinical context beside the image and signs a structured report; the running
`watch` prints it and writes it to its outbox; an amendment comes the same way and the first version stays
readable; a case link cannot sign; a revoked user is refused; `slidestream audit` names who opened and signed;
and no object on the store holds the patient's identity.

The seconds from the click on Sign to the watch's line are printed and written to test-output/ (not asserted: the
machine's load decides them; README, "What reaches the hospital").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, SHOTS, S3Server
from support.viewer import (
    ACCESSION,
    KEY_DIR,
    PATIENT,
    PATIENT_ID,
    SECRET,
    Bucket,
    Tiles,
    hospital,
    line_of,
    serving,
    shows_tissue,
    sign_in,
    wait_on,
)
from support.viewer import WATCH_STATION as STATION

from caseformat.documents import CaseRecord
from caseformat.layout import CASE_RECORD, MANIFEST, SlideRef, case_key

pytestmark = pytest.mark.slow  # Chromium and a running watch



def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidestream", *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
                          env={**os.environ, "SLIDESTREAM_SECRET": SECRET.decode()})  # fmt: skip


def every_object(bucket: Bucket) -> Iterator[tuple[str, bytes]]:
    paginator = bucket.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket.name):
        for item in page.get("Contents", []):
            yield item["Key"], bucket.client.get_object(Bucket=bucket.name, Key=item["Key"])["Body"].read()


def sign(page, what: str) -> float:  # type: ignore[no-untyped-def]
    """Click Sign, confirm the dialog, and return the moment of the click."""
    page.once("dialog", lambda dialog: dialog.accept())
    clicked = time.monotonic()
    page.locator("#sign").click()
    wait_on(page, lambda: page.locator("#signed").is_visible() and page.locator("#report-form").is_hidden(), what)
    return clicked


def test_a_signed_report_reaches_the_operating_room_and_the_audit_log_names_everyone(browser, s3_server: S3Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bucket = Bucket(s3_server, prefix="centre")
    with hospital(bucket, tmp_path) as (log, outbox):
        case = line_of(log, r"REGISTERED frozen-17: case (\S+),").group(1)
        line_of(log, r"^\S+ SENT ")
        store = f"s3://{bucket.name}/{bucket.prefix}"
        with serving(bucket.storage()) as served:
            added = cli("users", "add", store, "Dr Ana Ruiz", "--viewer-url", served.url, "--endpoint-url", bucket.endpoint_url, "--key-dir", str(KEY_DIR))
            assert added.returncode == 0, added.stderr
            user = added.stdout.split()[1]
            link = added.stdout.splitlines()[1].removeprefix("link: ")
            context = browser.new_context(viewport={"width": 1300, "height": 850})
            page = context.new_page()

            # the worklist, then the case, signed in by name, the clinical context beside the image
            page.goto(link)
            row = page.locator(f'#cases tbody tr[data-case="{case}"]')
            wait_on(page, lambda: row.count() == 1, "the case in the worklist")
            row.locator("a").click()
            wait_on(page, lambda: page.locator("#case").text_content() == case, "the case page")
            wait_on(page, lambda: "superior margin clear?" in page.locator("#context").text_content(), "the clinical context")
            wait_on(page, lambda: page.locator("#who").text_content() == "Dr Ana Ruiz (pathologist)", "the signed-in name")
            for value in ("left breast, lumpectomy margin", "Dr M. Keller", "theatre 3, ext 4321"):
                assert value in page.locator("#context").text_content()
            wait_on(page, lambda: shows_tissue(page, "report-case.png"), "the slide on screen")

            # sign; the watch at the hospital prints it and writes the outbox
            page.locator("#category").select_option("malignant")
            page.locator("#diagnosis").fill("Invasive ductal carcinoma, grade 2.")
            page.locator("#margins").fill("superior margin involved")
            clicked = sign(page, "the signed report")
            printed = line_of(log, rf"REPORT case \S+ \({case}\): malignant.*$")
            seconds = time.monotonic() - clicked
            page.screenshot(path=str(SHOTS / "report-signed.png"))
            assert "signed by Dr Ana Ruiz" in printed.group(0) and "Invasive ductal carcinoma, grade 2." in printed.group(0)
            (first,) = outbox.glob(f"*_{case}_report_0001.txt")
            text = first.read_text()
            assert "Diagnosis: Invasive ductal carcinoma, grade 2." in text and "Margins: superior margin involved" in text
            assert page.locator("#signed-by").text_content().startswith("Signed by Dr Ana Ruiz")

            # an amendment comes the same way; the first version stays readable, on the page and in the outbox
            page.locator("#amend").click()
            page.locator("#margins").fill("all margins clear on deeper levels")
            amended = sign(page, "the amendment")
            line_of(log, rf"REPORT AMENDMENT 2 \(amends report 1\) case \S+ \({case}\)")
            amendment_seconds = time.monotonic() - amended
            (second,) = outbox.glob(f"*_{case}_report_0002.txt")
            assert "Margins: all margins clear on deeper levels" in second.read_text() and first.read_text() == text
            versions = page.locator("#versions li")
            assert versions.count() == 2 and "superior margin involved" in versions.nth(0).text_content()
            assert page.locator("#history").is_visible()

            # a case link views, never signs
            viewer = context.new_page()
            viewer.goto(f"{served.url}/view/{case}#token={served.token(case)}")
            wait_on(viewer, lambda: viewer.locator("#who").text_content() == "case link · view only", "the view-only page")
            assert viewer.locator("#report-form").is_hidden() and viewer.locator("#amend").is_hidden()
            # numbered as the outbox, the PDF and the HL7 message number it: the same "Amendment 2" at both sites
            assert viewer.locator("#signed-by").text_content().startswith("Amendment 2 (amends report 1) by Dr Ana Ruiz")
            refused = served.post(f"/api/cases/{case}/reports", served.token(case), json={"category": "benign", "diagnosis": "x", "amends": 2})
            assert refused.status_code == 403 and refused.json()["detail"] == "a case link cannot sign; sign in as a pathologist"

            # a revoked user is refused, saying so
            assert cli("users", "revoke", store, user, "--endpoint-url", bucket.endpoint_url, "--key-dir", str(KEY_DIR)).returncode == 0
            page.goto("about:blank")
            page.goto(link)
            wait_on(page, lambda: page.locator("#message").is_visible(), "the refusal")
            assert page.locator("#message").text_content().startswith("Access refused") and "revoked" in page.locator("#message").text_content()
            context.close()

    # the audit log: each view and signature with the user
    audit = cli("audit", store, "--case", case, "--endpoint-url", bucket.endpoint_url, "--key-dir", str(KEY_DIR))
    assert audit.returncode == 0, audit.stderr
    rows = [line.split(None, 5) for line in audit.stdout.splitlines()[1:-1]]
    by_user = f"Dr Ana Ruiz ({user}, pathologist)"
    assert ["open-case", case, "-", "-", by_user] in [row[1:] for row in rows]
    assert ["open-slide", case, "s1/v1", "-", by_user] in [row[1:] for row in rows]
    assert [row[1:] for row in rows if row[1] in ("sign", "amend")] == [["sign", case, "-", "1", by_user], ["amend", case, "-", "2", by_user]]
    assert ["open-case", case, "-", "-", f"case link ({case})"] in [row[1:] for row in rows]

    # no patient identity anywhere on the store: keys or bytes
    identifying = [ACCESSION, PATIENT, PATIENT_ID, "OKONKWO", "ADAEZE", "1961-04-09"]
    objects = list(every_object(bucket))
    assert any(key.endswith("/reports/0002.json") for key, _ in objects) and any("/_audit/" in key for key, _ in objects)
    for key, body in objects:
        for needle in identifying:
            assert needle not in key and needle.encode() not in body, (needle, key)

    SHOTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    measured = {"sign_to_watch_s": round(seconds, 2), "amend_to_watch_s": round(amendment_seconds, 2), "load_1_5_15": load}
    (SHOTS / "report_roundtrip.json").write_text(json.dumps(measured, indent=1))
    print(f"\nsigned -> printed by watch: {seconds:.2f} s; amendment: {amendment_seconds:.2f} s (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")




def test_a_case_whose_slide_failed_shows_failed_and_offers_no_report(browser, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bucket, case = Bucket(s3_server), f"{STATION}.FAILED-2"
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, "2026-12-01T21:00:00Z", STATION, (("clinical_question", "margin?"),)).to_json())
    failed = {"format": "slidestream-manifest/2", "case": case, "state": "failed", "complete": False,
              "failed": "unreadable slide: truncated TIFF"}  # fmt: skip
    bucket.put(SlideRef(case).key(MANIFEST), json.dumps(failed).encode())
    with serving(bucket.storage()) as served:
        page = browser.new_page()
        tiles = Tiles(page)
        sign_in(page, served, served.person(bucket.storage(), "Dr Failed Case"))
        page.goto(f"{served.url}/view/{case}")
        wait_on(page, lambda: page.locator("#message").is_visible(), "the failure on the page")
        assert page.locator("#message").text_content() == f"case {case}: send failed: unreadable slide: truncated TIFF"
        wait_on(page, lambda: "nothing to report on" in page.locator("#report-note").text_content(), "the note instead of the form")
        assert page.locator("#report-form").is_hidden()
        assert "s1 (v1) failed: unreadable slide: truncated TIFF" in page.locator("#slides").text_content()
        assert "margin?" in page.locator("#context").text_content()
        page.screenshot(path=str(SHOTS / "report-failed-case.png"))
        page.close()
    assert tiles.seen == []
