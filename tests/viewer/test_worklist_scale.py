"""The worklist of a store that keeps every case: after the first poll, a poll reads the store for what changed, not
for every case (`viewer.worklist.OpenCases`), and the page gets only the rows that changed (`since`).

Cases are written as bench/worklist_scale.py writes them (sent, scored by the hub, no image: the worklist reads
none); requests are counted by its `Counting` storage around the viewer's."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from conftest import S3Server
from support import wait_for
from support.viewer import CENTRE_KEY, TRUSTED, Bucket, serving

from caseformat.documents import STATION, CaseRecord, UnsentSlide
from caseformat.layout import CASE_RECORD, case_key, station_of, unsent_key
from viewer import worklist
from viewer.cases import Cases
from viewer.worklist import OpenCases

REPO = Path(__file__).resolve().parents[2]
CASES = 50
SIGN = {"category": "benign", "diagnosis": "No tumour.", "amends": None, "late_reason": "a test case registered long ago"}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worklist_scale", REPO / "bench" / "worklist_scale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = _bench()


@pytest.fixture
def store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> tuple[Bucket, list[str]]:
    """50 open cases of two stations, sent and scored; the index refreshes at every poll (no 2-second wait)."""
    monkeypatch.setattr(worklist, "REFRESH_EVERY", 0.0)
    monkeypatch.setattr(worklist, "SWEEP_AFTER", 3600.0)  # no sweep unless a test asks for it: a slow machine's poll is no news
    bucket = Bucket(s3_server)
    objects, cases = scale.generate(CASES, 2, CASES, CENTRE_KEY)
    asyncio.run(scale.write(bucket.storage(), objects))
    return bucket, cases


def _counting(bucket: Bucket) -> scale.Counting:
    """The bucket's storage with its requests counted, the index's start-after LISTs included."""
    return scale.Counting(bucket.name, bucket.prefix, bucket.endpoint_url)


def _cases_read(counting: scale.Counting) -> set[str]:
    """The cases whose documents the GETs since the last reset read."""
    return {key.split("/")[2] for key in counting.got if key.startswith("stations/") or key.startswith("centre/")}


def test_a_poll_after_the_first_reads_the_store_for_what_changed_not_for_every_case(
    store: tuple[Bucket, list[str]],
) -> None:
    bucket, cases = store
    counting = _counting(bucket)
    index = OpenCases(Cases(counting, TRUSTED))
    changed, gone = cases[7], cases[8]

    async def scenario() -> None:
        whole = await index.poll(None, datetime.now(UTC))
        assert len(whole["cases"]) == CASES and _cases_read(counting) == set(cases)  # the first poll reads every case
        full = await worklist.read_worklist(Cases(bucket.storage(), TRUSTED))
        assert whole["cases"] == full  # the same rows in the same order as the full re-read
        counting.reset()
        quiet = await index.poll(whole["since"], datetime.now(UTC))
        assert (quiet["changed"], quiet["removed"], counting.requests["GET"]) == ([], [], 0)
        # one case gets a second slide, one is registered (case.json alone, no slide yet), one is gone
        await scale.write(bucket.storage(), scale.new_slide(changed))
        registered = f"{station_of(changed)}.registered"
        bucket.put(case_key(registered, CASE_RECORD), CaseRecord(registered, scale.utc_now(), station_of(changed)).to_json())
        for key in [key for key in scale.sent_case(gone, datetime.now(UTC), None) if not key.startswith("centre/")]:
            bucket.client.delete_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{key}")
        counting.reset()
        news = await index.poll(quiet["since"], datetime.now(UTC))
        rows = {row["case"]: row for row in news["changed"]}
        assert set(rows) == {changed, registered} and news["removed"] == [gone]
        assert (len(rows[changed]["slides"]), rows[changed]["state"]) == (2, "sending")
        assert rows[registered]["slides"] == [] and rows[registered]["started_at"]
        # the store was read for the two cases that changed, a few requests each, whatever the other 48
        assert _cases_read(counting) == {changed, registered} and counting.requests["GET"] <= 12, counting.requests
        assert counting.requests["LIST"] <= 1 + 3 * 2 + 2 * 8, counting.requests  # stations; per station 3; per case read

    asyncio.run(scenario())


def test_what_changes_without_news_is_swept_up_a_few_cases_a_poll(store: tuple[Bucket, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A slide the hospital could not send (an unsent record: no marker) on an open case that had settled: the sweep
    re-reads a few unsigned cases per poll, the least recently read first, until the row shows it."""
    bucket, cases = store
    counting = _counting(bucket)
    index = OpenCases(Cases(counting, TRUSTED))
    failed = cases[-1]

    async def scenario() -> None:
        answer = await index.poll(None, datetime.now(UTC))
        monkeypatch.setattr(worklist, "SWEEP_AFTER", 0.0)
        bucket.put(unsent_key(failed, "0" * 16), UnsentSlide(failed, "0" * 16, "unreadable", scale.utc_now()).to_json())
        for _ in range(CASES // worklist.SWEEP_CASES + 1):
            counting.reset()
            answer = await index.poll(answer["since"], datetime.now(UTC))
            assert len(_cases_read(counting)) <= worklist.SWEEP_CASES
            if answer["changed"]:
                break
        assert [row["case"] for row in answer["changed"]] == [failed]
        assert answer["changed"][0]["missing"].startswith("1 of 2 slides failed at the hospital")

    asyncio.run(scenario())


def test_the_page_gets_a_new_slide_and_a_signature_and_a_signed_case_is_no_longer_read(
    store: tuple[Bucket, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worklist, "NEWS_WATCH", 0.5)
    bucket, cases = store
    counting = _counting(bucket)
    sending, signed = cases[-1], cases[-2]
    with serving(counting) as served:
        token = served.person(counting)
        whole = served.get("/api/worklist", token).json()
        assert [row["case"] for row in whole["cases"]] == cases  # registered a minute apart: least time left first
        assert whole["cases"][0]["link"] == f"/view/{cases[0]}"

        def since(token_of: str) -> dict:  # type: ignore[type-arg]
            return served.get("/api/worklist", token, params={"since": token_of}).json()

        asyncio.run(scale.write(bucket.storage(), scale.new_slide(sending)))
        news = wait_for(lambda: (answer := since(whole["since"]))["changed"] and answer, "the new slide on the list")
        assert [(row["case"], len(row["slides"]), row["state"]) for row in news["changed"]] == [(sending, 2, "sending")]
        assert news["changed"][0]["link"] == f"/view/{sending}"

        assert served.post(f"/api/cases/{signed}/reports", token, json=SIGN).status_code == 200
        after = wait_for(lambda: (answer := since(news["since"]))["changed"] and answer, "the signature on the list")
        assert [row["case"] for row in after["changed"]] == [signed] and after["changed"][0]["reported_at"]
        assert served.get("/api/worklist", token).json()["cases"][-1]["case"] == signed  # signed: last
        time.sleep(worklist.NEWS_WATCH)  # its notice is old news: the case is signed, so settled
        since(after["since"])
        counting.reset()
        for _ in range(3):
            assert since(after["since"])["changed"] == []
        assert signed not in _cases_read(counting)  # closed: not read again

        # a token this process did not give (a restart) gets the whole list
        assert len(since("another-process.3")["cases"]) == CASES


def test_a_station_user_still_opens_no_worklist(store: tuple[Bucket, list[str]]) -> None:
    bucket, cases = store
    with serving(bucket.storage()) as served:
        pathologist = served.person(bucket.storage())
        token = served.get("/api/worklist", pathologist).json()["since"]
        station = served.person(bucket.storage(), "Theatre desk", role=STATION, station=station_of(cases[0]))
        for params in ({}, {"since": token}):
            refused = served.get("/api/worklist", station, params=params)
            assert refused.status_code == 403 and "only a pathologist may open the worklist" in refused.json()["detail"]
