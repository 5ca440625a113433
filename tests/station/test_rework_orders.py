"""Rework orders (issue #30): the pathologist orders a deeper level, a stain, a rescan... of a slide on the case page;
the hospital's station acknowledges the order when it delivers it, and the next slide it sends of the specimen (for a
rescan: the next version of that slide) fulfils it; each state shows on the case page and in the station's folder.
Against the real S3 server; the browser test with Chromium and a running `watch`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import S3Server, sample
from support.viewer import CENTRE_KEY, TRUSTED, Bucket, added, hospital, line_of, serving, sign_in, wait_on

from caseformat.documents import Author, OrderStatus, Request, SlideRead
from caseformat.layout import SlideRef, notice_key, order_status_folder, qualified_case, request_key
from station.registry import Registry
from station.station import Station, Store

STATION = "theatre-3"
AUTHOR = Author("u0123abcd", "Dr P. Kovacs", "pathologist")


@pytest.mark.slow  # Chromium and a running watch
def test_a_rework_order_goes_from_the_case_page_to_the_station_and_the_new_slide_fulfils_it(browser, s3_server: S3Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server, prefix="centre")
    with hospital(bucket, tmp_path) as (log, outbox), serving(bucket.storage()) as served:
        case = line_of(log, r"REGISTERED frozen-17: case (\S+),").group(1)
        line_of(log, r"^\S+ SENT ")
        _, token = added(bucket, "Dr Ana Ruiz")
        page = browser.new_context(viewport={"width": 1300, "height": 850}).new_page()
        sign_in(page, served, token)
        page.goto(f"{served.url}/view/{case}")
        wait_on(page, lambda: page.locator("#ask").is_visible(), "the ask-the-hospital form")

        # a deeper level of the slide on screen, as an order
        page.locator("#ask-order").select_option("deeper-level")
        page.locator("#ask-send").click()
        asked = page.locator("#asked li").first
        # asked; the running station may acknowledge it before the page's next poll (CI saw "asked" skipped)
        wait_on(page, lambda: asked.count() == 1 and asked.text_content().endswith(("· asked", "· acknowledged")), "the order, asked")
        assert asked.text_content().startswith("deeper-level: deeper level of s1 (s1) · Dr Ana Ruiz")

        # the station prints it in words, writes its outbox, and acknowledges it
        printed = line_of(log, rf"REWORK ORDER 1 case frozen-17 \({case}\): deeper level of s1 .*$").group(0)
        assert "asked by Dr Ana Ruiz" in printed
        (written,) = outbox.glob(f"*_{case}_request_0001.txt")
        assert "Rework order 1: deeper level of s1" in written.read_text()
        wait_on(page, lambda: asked.text_content().endswith("· acknowledged"), "the order, acknowledged")

        # the deeper level is scanned into the specimen's folder: it joins the case as s2 and fulfils the order
        shutil.copyfile(sample("synthetic-boxes.tiff"), tmp_path / "hot" / "frozen-17" / "S26-00917_block-A-L2.tiff")
        line_of(log, r"^\S+ SENT .*block-A-L2")
        wait_on(page, lambda: asked.text_content().endswith("· fulfilled: s2 v1"), "the order, fulfilled by s2", timeout=60)
        wait_on(page, lambda: page.locator("#slides li").count() == 2, "the new slide in the case")
        page.context.close()


def _request(bucket: Bucket, case: str, number: int, order: str, slide: str = "s1") -> None:
    """A signed request with a rework order, where the centre writes it and its notice for the station."""
    data = Request(case, number, "as ordered", AUTHOR, f"2026-12-01T21:0{number}:00.000Z", STATION, slide, order).to_json(CENTRE_KEY)
    bucket.put(request_key(case, number), data)
    bucket.put(notice_key(STATION, f"2026-12-01T21:0{number}:00.000Z", case, "request", number), data)


def _states(bucket: Bucket, case: str) -> dict[int, tuple[str, SlideRead | None]]:
    """The station's orders/ folder of the case: number -> (state, the slide version that fulfilled it)."""
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/{order_status_folder(case)}")
    documents = [OrderStatus.read(bucket.client.get_object(Bucket=bucket.name, Key=item["Key"])["Body"].read()) for item in listed.get("Contents", [])]
    return {status.number: (status.state, status.fulfilled_by) for status in documents}


def test_orders_are_acknowledged_once_and_fulfilled_in_order_a_rescan_only_by_its_slides_next_version(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = Bucket(s3_server, prefix="centre")
    case = qualified_case(STATION, "frozen-18")
    _request(bucket, case, 1, "rescan")
    _request(bucket, case, 2, "deeper-level")
    _request(bucket, case, 3, "recut")
    said: list[str] = []
    store = Store.parse(f"s3://{bucket.name}/{bucket.prefix}", bucket.endpoint_url)

    def deliver_all(state: Path) -> None:
        with Registry(state) as registry:
            station = Station(store, registry, STATION)
            for key, data in station.new_notices():
                station.deliver(tmp_path / "outbox", station.notice(key, data, TRUSTED), key, said.append)

    deliver_all(tmp_path / "state")
    assert [line.split(" case ")[0] for line in said if line.startswith("REWORK")] == ["REWORK ORDER 1", "REWORK ORDER 2", "REWORK ORDER 3"]
    assert _states(bucket, case) == {n: ("acknowledged", None) for n in (1, 2, 3)}

    with Registry(tmp_path / "state") as registry:
        station = Station(store, registry, STATION)
        # a new slide fulfils the oldest order a new slide answers (not the rescan); a new version of s2 answers none
        assert station.fulfil(SlideRef(case, "s2", "v1"), rescan=False) is not None
        assert station.fulfil(SlideRef(case, "s2", "v2"), rescan=True) is None
        assert station.fulfil(SlideRef(case, "s1", "v2"), rescan=True) is not None
        assert _states(bucket, case) == {1: ("fulfilled", SlideRead("s1", "v2")), 2: ("fulfilled", SlideRead("s2", "v1")),
                                         3: ("acknowledged", None)}  # fmt: skip

    # delivered again by a station that lost its registry: each order keeps the state it has
    deliver_all(tmp_path / "fresh-state")
    assert _states(bucket, case) == {1: ("fulfilled", SlideRead("s1", "v2")), 2: ("fulfilled", SlideRead("s2", "v1")), 3: ("acknowledged", None)}
