"""The viewer in a real browser (Debian's chromium through Playwright) against the real S3 server.

What a pathologist would check: the slide shows up (pixels, not a blank canvas), zooming loads sharper tiles, the
heatmap overlay toggles, the worklist is ordered by time left with a running clock, links without a valid token show
nothing, and a slide still being sent sharpens on screen as its full-resolution shards arrive.
Screenshots land in test-output/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SHOTS, S3Server, sample
from PIL import Image
from support.viewer import (
    CELL,
    MODEL,
    ROUTED,
    SLIDE,
    Bucket,
    Served,
    Tiles,
    chunk_of,
    heatmap_objects,
    inference_heatmap,
    manifest,
    pyramid,
    screenshot,
    serving,
    shards,
    shows_tissue,
    sign_in,
    stained,
    triage_json,
    users,
    wait_on,
)

from caseformat.bounded import utc_now
from caseformat.documents import PATHOLOGIST, STATION, Author, CaseRecord, Report
from caseformat.layout import (
    CASE_RECORD,
    EDGE,
    HEATMAP,
    MANIFEST,
    TRIAGE,
    SlideRef,
    annotations_folder,
    case_key,
    image_key,
    report_key,
)
from caseformat.results import Triage
from slides import open_slide
from viewer.heatmap import LUT

pytestmark = pytest.mark.slow  # Chromium

def sharpness(pixels: np.ndarray) -> float:
    """Variance of the Laplacian: rises when full-resolution tiles replace an upscaled coarser level.

    Measured on the middle of the view, away from the buttons, the navigator and the scale bar.
    """
    height, width = pixels.shape[:2]
    grey = pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4].mean(axis=2)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(laplacian.var())


def zoom_in(page, clicks: int) -> None:  # type: ignore[no-untyped-def]
    """Click the middle of the slide: OpenSeadragon zooms 2x per click, like a pathologist would."""
    box = page.locator("#slide").bounding_box()
    for _ in range(clicks):
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(400)  # let each click register as its own click, not a double click


@pytest.fixture(scope="module")
def cases(s3_server: S3Server) -> Iterator[tuple[Bucket, Served]]:
    """Three fully sent cases with scores; h1.case1 also has a heatmap (tumour in its top half)."""
    bucket = Bucket(s3_server)
    for case, score in [("h1.case1", 0.62), ("h1.case2", 0.91), ("h1.case3", 0.05)]:
        bucket.send(case, triage=score)
    heat = np.zeros((30, 22), np.uint8)
    heat[:15] = 255
    for key, data in heatmap_objects(heat, 2220, 0.499).items():
        bucket.put(SlideRef("h1.case1").centre_key(f"{HEATMAP}/{key}"), data)
    with serving(bucket.storage()) as served:
        yield bucket, served


def test_the_viewer_shows_the_slide_zooms_and_overlays_the_heatmap(page, cases) -> None:  # type: ignore[no-untyped-def]
    _, served = cases
    plan, pieces = pyramid()
    tiles = Tiles(page)
    page.goto(f"{served.url}/view/h1.case1#token={served.token('h1.case1')}")
    wait_on(page, lambda: shows_tissue(page, "viewer-overview.png"), "the slide on screen")
    assert page.locator("#case").text_content() == "h1.case1"
    assert "µm" in page.locator("#scalebar").text_content() and page.locator("#scalebar").is_visible()
    assert page.locator("#score").text_content() == "AI triage 0.62"

    # a tile the browser received is exactly the chunk stored in the shard on S3
    level, row, col, response = tiles.loaded()[0]
    n = plan.shard_chunks
    assert response.body() == chunk_of(shards(pieces)[f"{level}/c/0/{row // n}/{col // n}"], n, row % n, col % n)
    assert 0 not in {lv for lv, *_ in tiles.loaded()}  # the whole slide on screen needs no full-resolution tile

    before = {(lv, r, c) for lv, r, c, _ in tiles.loaded()}
    zoom_in(page, 3)
    wait_on(page, lambda: len(tiles.loaded(level=0)) >= 4, "full-resolution tiles after zooming in")
    wait_on(page, lambda: shows_tissue(page, "viewer-zoomed.png"), "the zoomed slide on screen")
    assert {(lv, r, c) for lv, r, c, _ in tiles.loaded()} - before  # new tiles, not the same ones again

    # heatmap overlay: off at first, on when ticked (tiles come and the picture turns red), off again
    assert page.locator("#overlay").is_visible()
    plain = screenshot(page, "viewer-heatmap-off.png")
    assert not tiles.loaded("heatmap")
    page.locator("#heat-on").check()
    wait_on(page, lambda: len(tiles.loaded("heatmap")) > 0, "heatmap tiles")
    wait_on(page, lambda: _redness(screenshot(page, "viewer-heatmap-on.png")) > _redness(plain) + 15, "the overlay on screen")
    page.locator("#heat-on").uncheck()
    wait_on(page, lambda: abs(_redness(screenshot(page, "viewer-heatmap-off-again.png")) - _redness(plain)) < 3, "the overlay gone")


def _redness(pixels: np.ndarray) -> float:
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


def test_the_worklist_orders_cases_by_time_left_with_a_frozen_section_clock(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """Three cases registered 2, 24½ and 35 minutes ago (never on a minute's edge, where a clock skew of a few ms between
    this process and the browser would show 23:59), scored so that the score alone would order them otherwise;
    a fourth arrives while the page is open."""
    bucket = Bucket(s3_server)
    now = datetime.now(UTC)

    def register(name: str, minutes: float, score: float, stage: str, complete: bool, hospital: str) -> None:
        """Case theatre-1.{name}; an edge triage is the station's own, the hub's is in the centre's folder."""
        context = (("specimen_site", "sentinel node"), ("specimen_type", "frozen section"), ("hospital", hospital))
        ref = SlideRef(f"theatre-1.{name}")
        bucket.put(case_key(ref.case, CASE_RECORD), CaseRecord(ref.case, (now - timedelta(minutes=minutes)).isoformat(), "theatre-1", context).to_json())
        bucket.send(ref.case)
        bucket.put(ref.key(TRIAGE) if stage == EDGE else ref.centre_key(TRIAGE), triage_json(ref, score, stage, complete))

    register("fresh", 2, 0.95, "edge", False, "Hospital A")
    register("amber", 24.5, 0.3, "hub", False, "Hospital B")
    register("late", 35, 0.6, "hub", True, "Hospital C")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    with serving(bucket.storage()) as served:
        page.goto(f"{served.url}/worklist#token={served.person(bucket.storage())}")
        rows = page.locator("#cases tbody tr")
        wait_on(page, lambda: rows.count() == 3, "the worklist rows")
        page.locator("#cases").screenshot(path=str(SHOTS / "worklist.png"))
        assert [rows.nth(i).get_attribute("data-case") for i in range(3)] == ["theatre-1.late", "theatre-1.amber", "theatre-1.fresh"]  # least time left first
        row = {rows.nth(i).get_attribute("data-case").removeprefix("theatre-1."): rows.nth(i) for i in range(3)}
        texts = {case: [row[case].locator(f"td.{name}").text_content() for name in ("hospital", "specimen", "slide-count", "ai-stage", "arrived", "report")] for case in row}
        assert texts["late"] == ["Hospital C", "frozen section · sentinel node", "1", "final", "all arrived ✓", "not signed"]
        assert texts["amber"][3] == "hub (partial)" and texts["fresh"][3] == "edge (coarse)"
        clocks = {case: row[case].locator("td.clock") for case in row}
        assert clocks["amber"].get_attribute("class") == "clock amber" and clocks["amber"].text_content().startswith("24:")
        assert clocks["late"].get_attribute("class") == "clock red"
        assert clocks["fresh"].get_attribute("class") == "clock ok"
        # a case registered 10 minutes ago arrives: it appears between amber and fresh, without a reload
        register("new", 10, 0.1, "edge", False, "Hospital D")
        wait_on(page, lambda: rows.count() == 4, "the new case on the list")
        assert [rows.nth(i).get_attribute("data-case") for i in range(4)] == ["theatre-1.late", "theatre-1.amber", "theatre-1.new", "theatre-1.fresh"]
        assert navigations[1:] == [f"{served.url}/worklist"]  # the load, then its sign-in token dropped from the address: no reload
        # the row links open the case, signed in as the same pathologist
        rows.first.locator("a").click()
        wait_on(page, lambda: page.locator("#case").text_content() == "theatre-1.late", "the case page from the worklist")
        wait_on(page, lambda: page.locator("#who").text_content() == "Dr Test Pathologist (pathologist)", "the signed-in name")


def test_a_link_without_a_valid_token_shows_nothing(page, cases) -> None:  # type: ignore[no-untyped-def]
    _, served = cases
    tiles = Tiles(page)
    expired = served.tokens.issue("case:h1.case1", timedelta(seconds=-1))
    message = page.locator("#message")
    for fragment in ["", f"#token={served.token('h1.case2')}", f"#token={expired}", "#token=garbage"]:
        page.goto("about:blank")  # a new load each time: a changed #fragment alone would not reload the page
        page.goto(f"{served.url}/view/h1.case1{fragment}")
        wait_on(page, message.is_visible, f"the refusal for {fragment[:20]!r}")
        assert message.text_content().startswith("Access refused")
    page.goto(f"{served.url}/worklist")
    wait_on(page, lambda: page.locator("#message").is_visible(), "the worklist refusal")
    page.screenshot(path=str(SHOTS / "refused.png"))
    assert tiles.seen == []


SCRIPT = "<img src=x onerror=\"window.pwned = true\">"  # store text that would run if a page used it as markup


def test_what_the_centre_refused_or_cannot_read_is_shown_as_text(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """A station forged a report (its diagnosis markup) on one case and wrote a malformed case.json and manifest on
    another: the worklist keeps both rows, the bad one saying "unreadable: ..."; the case pages list the refused
    report and the unreadable record in a warning, the slide says why it shows no image, and nothing the store
    holds runs as script."""
    bucket, forged, broken = Bucket(s3_server), "theatre-1.forged", "theatre-1.broken"
    bucket.put(case_key(forged, CASE_RECORD), CaseRecord(forged, datetime.now(UTC).isoformat(), "theatre-1", (("hospital", "Hospital A"),)).to_json())
    bucket.send(forged)
    report = Report(forged, 1, "benign", SCRIPT, Author("u00c0ffee", "Dr Real Pathologist"), utc_now(), "theatre-1")
    bucket.put(report_key(forged, 1), json.dumps({"format": Report.FORMAT, **report.to_dict()}).encode())  # unsigned
    record = {"format": "slidestream-case/2", "case": broken, "registered_at": utc_now(), "station": SCRIPT}
    bucket.put(case_key(broken, CASE_RECORD), json.dumps(record).encode())
    bucket.send(broken)
    bucket.put(SlideRef(broken).key(MANIFEST), b"[" * 100)
    with serving(bucket.storage()) as served:
        page.goto(f"{served.url}/worklist#token={served.person(bucket.storage())}")
        rows = page.locator("#cases tbody tr")
        wait_on(page, lambda: rows.count() == 2, "both rows of the worklist")
        row = page.locator(f'#cases tbody tr[data-case="{broken}"]')
        assert row.locator("td.case a").text_content() == broken
        reason = row.locator("td.case .unreadable").text_content()
        assert reason.startswith(f"unreadable: {case_key(broken, CASE_RECORD)}: station: ") and SCRIPT in reason
        assert page.locator(f'#cases tbody tr[data-case="{forged}"] td.case .unreadable').count() == 0
        assert page.locator("#cases img").count() == 0
        page.locator("#cases").screenshot(path=str(SHOTS / "worklist-unreadable.png"))

        page.goto(f"{served.url}/view/{forged}#token={served.token(forged)}")
        warning = page.locator("#refused")
        wait_on(page, warning.is_visible, "the refused report's warning")
        assert page.locator("#refused li").all_text_contents() == [f"refused: {report_key(forged, 1)}: not signed by the centre; refused"]
        wait_on(page, lambda: shows_tissue(page, "forged.png"), "the slide of the case with a forged report")
        assert page.locator("#signed").is_hidden() and SCRIPT not in page.content()  # the forgery is not the report

        page.goto(f"{served.url}/view/{broken}#token={served.token(broken)}")
        wait_on(page, warning.is_visible, "the unreadable record's warning")
        (line,) = page.locator("#refused li").all_text_contents()
        assert line == reason and page.locator("#refused img").count() == 0
        message = page.locator("#message")
        wait_on(page, message.is_visible, "why the slide shows no image")
        assert message.text_content().startswith(f"s1 (v1): unreadable: {SlideRef(broken).key(MANIFEST)}: ")
        assert page.locator("#slides li").first.text_content().startswith("s1 (v1) unreadable: ")
        page.screenshot(path=str(SHOTS / "case-unreadable.png"))
        assert page.evaluate("window.pwned") is None


def test_the_page_sharpens_as_full_resolution_shards_arrive(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    _, pieces = pyramid()
    level0 = {key: data for key, data in shards(pieces).items() if key.startswith("0/")}
    bucket.send("h1.live", arrived=lambda piece: piece.level != 0)  # metadata and overview levels only
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    with serving(bucket.storage()) as served:
        tiles = Tiles(page)
        page.goto(f"{served.url}/view/h1.live#token={served.token('h1.live')}")
        wait_on(page, lambda: shows_tissue(page, "live-overview.png"), "the overview on screen")
        assert page.locator("#progress .label").text_content() == "arriving · full resolution 0/4"
        zoom_in(page, 2)  # full-resolution pixels at about 1:1 on screen; the coarser level magnified 2x meanwhile
        page.wait_for_load_state("networkidle")
        blurry = screenshot(page, "live-before-level0.png")
        assert stained(blurry) > 0.05  # the coarser level stands in, magnified
        assert not tiles.loaded(level=0) and not [t for t in tiles.seen if t[1] == 0]  # nothing asked of level 0 yet

        ref = SlideRef("h1.live")
        for key, data in level0.items():  # level 0 arrives, shard by shard, then the manifest says so
            bucket.put(ref.key(image_key(key)), data)
        bucket.put(ref.key(MANIFEST), manifest(ref.case, pieces, set(shards(pieces))))

        wait_on(page, lambda: len(tiles.loaded(level=0)) >= 4, "full-resolution tiles after they arrived")
        wait_on(page, lambda: sharpness(screenshot(page, "live-after-level0.png")) > 1.5 * sharpness(blurry), "a sharper picture")
        assert page.locator("#progress .label").text_content() == "all arrived"
    assert len(navigations) == 1  # no reload: the page sharpened by itself


# -- the AI overlay, top regions, measuring, keys -----------------------------------------------------------------
# A partial hub map written by inference's own writer on a 22 x 30 grid (cells of 101 level-0 pixels): a block
# scored 0.1 beside a block scored 0.9 (the one top region), tissue above them not scored yet, glass on the left.
LOW, HIGH = (slice(19, 27), slice(8, 12)), (slice(19, 27), slice(12, 16))
PENDING, GLASS = (slice(3, 9), slice(10, 15)), (slice(14, 23), slice(0, 5))


@pytest.fixture(scope="module")
def scored_bucket(s3_server: S3Server) -> Bucket:
    return Bucket(s3_server)


@pytest.fixture(scope="module")
def scored(scored_bucket: Bucket) -> Iterator[tuple[Served, dict]]:
    bucket = scored_bucket
    bucket.send("h1.scored")
    bucket.send("h1.nompp", slide="kidney-ihc-strip.tif")  # no resolution recorded
    scores = np.full((30, 22), np.nan, np.float32)
    scores[LOW], scores[HIGH] = 0.1, 0.9
    objects, triage = inference_heatmap(scores, complete=False)
    ref = SlideRef("h1.scored")  # the hub's partial map: in the centre's folder
    for key, data in objects.items():
        bucket.put(ref.centre_key(f"{HEATMAP}/{key}"), data)
    bucket.put(ref.centre_key(TRIAGE), json.dumps(triage).encode())
    with serving(bucket.storage()) as served:
        yield served, triage


def open_case(page, served: Served, case: str, token: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Open the case (with its case link, or signed in by `token`, a person's sign-in link) and wait for the slide in
    its place."""
    if token:
        sign_in(page, served, token)
    page.goto(f"{served.url}/view/{case}" if token else f"{served.url}/view/{case}#token={served.token(case)}")
    wait_on(page, lambda: page.evaluate("Boolean(window.slideView && window.slideView.settled())"), "the slide in its place")


def settle(page) -> dict:  # type: ignore[no-untyped-def]
    """The view's bounds in level-0 image pixels once it has stopped moving."""
    page.wait_for_timeout(100)
    wait_on(page, lambda: page.evaluate("window.slideView.settled()"), "the view to settle")
    return page.evaluate("window.slideView.imageBounds()")


def on_screen(page, x: float, y: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Where level-0 image pixel (x, y) is on the page, by the viewer's own conversion."""
    point = page.evaluate(f"window.slideView.imageToPage({x}, {y})")
    return point["x"], point["y"]


def patch(page, pixels: np.ndarray, cells: tuple[slice, slice]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The screenshot pixels over a block of heatmap cells, a few pixels clear of its edges."""
    box = page.locator("#slide").bounding_box()
    x0, y0 = on_screen(page, cells[1].start * CELL, cells[0].start * CELL)
    x1, y1 = on_screen(page, cells[1].stop * CELL, cells[0].stop * CELL)
    return pixels[int(y0 - box["y"]) + 3 : int(y1 - box["y"]) - 3, int(x0 - box["x"]) + 3 : int(x1 - box["x"]) - 3]


def test_the_overlay_shows_scores_apart_keeps_glass_clear_and_hatches_tissue_still_being_scored(page, scored) -> None:  # type: ignore[no-untyped-def]
    served, _ = scored
    tiles = Tiles(page)
    open_case(page, served, "h1.scored")
    wait_on(page, page.locator("#overlay").is_visible, "the overlay controls")
    assert page.locator("#ai-stage").text_content() == "Hub · still scoring · 64 of 660 tissue tiles scored"
    page.wait_for_load_state("networkidle")
    plain = screenshot(page, "overlay-off.png")
    page.locator("#heat-opacity").fill("100")
    page.locator("#heat-on").check()
    wait_on(page, lambda: len(tiles.loaded("heatmap")) > 0, "heatmap tiles")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # OpenSeadragon blends new tiles in
    shown = screenshot(page, "overlay-on.png")

    low, high = (patch(page, shown, cells).reshape(-1, 3).mean(axis=0) for cells in (LOW, HIGH))
    assert np.abs(low - LUT[round(0.1 * 255), :3]).max() < 10 and np.abs(high - LUT[round(0.9 * 255), :3]).max() < 10
    assert np.linalg.norm(high - low) > 150  # 0.9 (yellow-green) and 0.1 (dark violet) cannot be confused
    glass = np.abs(patch(page, shown, GLASS) - patch(page, plain, GLASS))
    assert glass.size and glass.max() <= 2  # no score there: the slide exactly as without the overlay
    changed = (np.abs(patch(page, shown, PENDING) - patch(page, plain, PENDING)).max(axis=2) > 40).mean()
    assert 0.2 < changed < 0.8  # hatched: stripes over the tissue, neither clear nor a colour of the scale


def test_next_top_region_and_the_keys_move_the_view(page, scored) -> None:  # type: ignore[no-untyped-def]
    served, triage = scored
    (region,) = triage["summary"]["top_regions"]
    assert region == {"x": 12 * CELL, "y": 19 * CELL, "width": 4 * CELL, "height": 8 * CELL, "score": pytest.approx(0.9)}
    open_case(page, served, "h1.scored")
    wait_on(page, lambda: page.locator("#regions button").count() == 1, "the top regions list")
    assert page.locator("#regions button").text_content().startswith("0.90 · ")
    home = settle(page)

    def shows_region(bounds: dict) -> bool:
        inside = bounds["x"] <= region["x"] and bounds["y"] <= region["y"] and region["x"] + region["width"] <= bounds["x"] + bounds["width"] \
            and region["y"] + region["height"] <= bounds["y"] + bounds["height"]  # fmt: skip
        centre = (bounds["x"] + bounds["width"] / 2 - region["x"] - region["width"] / 2, bounds["y"] + bounds["height"] / 2 - region["y"] - region["height"] / 2)
        return inside and max(map(abs, centre)) < 0.02 * bounds["width"] and bounds["height"] < 2 * region["height"]

    assert not shows_region(home)
    page.keyboard.press("n")
    at_region = settle(page)
    assert shows_region(at_region) and page.locator("#regions button").get_attribute("aria-current") == "true"

    page.keyboard.press("-")
    zoomed_out = settle(page)
    assert zoomed_out["width"] == pytest.approx(1.5 * at_region["width"], rel=0.01)
    page.keyboard.press("ArrowRight")
    panned = settle(page)
    assert panned["x"] == pytest.approx(zoomed_out["x"] + 0.2 * zoomed_out["width"], rel=0.01)
    page.keyboard.press("+")
    assert settle(page)["width"] == pytest.approx(panned["width"] / 1.5, rel=0.01)
    page.keyboard.press("]")  # one slide in the case: nothing happens
    assert not shows_region(settle(page))
    page.locator("#regions button").click()  # the list jumps there too
    assert shows_region(settle(page))


def test_the_view_buttons_zoom_and_go_home_and_opening_fetches_no_button_images(page, scored) -> None:  # type: ignore[no-untyped-def]
    """The page draws its own view buttons: OpenSeadragon's 16 button PNGs took the browser's six connections for
    the first half second of a case over 5G, ahead of the tiles."""
    served, _ = scored
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    open_case(page, served, "h1.scored")
    home = settle(page)
    page.get_by_role("button", name="zoom in").click()
    page.get_by_role("button", name="zoom in").click()
    zoomed = settle(page)
    assert zoomed["width"] == pytest.approx(home["width"] / 1.5 / 1.5, rel=0.01)
    page.get_by_role("button", name="zoom out").click()
    assert settle(page)["width"] == pytest.approx(zoomed["width"] * 1.5, rel=0.01)
    page.get_by_role("button", name="the whole slide").click()
    assert settle(page) == pytest.approx(home, rel=0.01, abs=1.0)  # level-0 pixels: home's y is 0
    page.get_by_role("button", name="full page").click()
    wait_on(page, lambda: page.get_by_role("button", name="full page").get_attribute("aria-pressed") == "true", "full page")
    assert page.get_by_role("button", name="zoom in").is_visible(), "the buttons stay over the slide in full page"
    page.get_by_role("button", name="full page").click()
    wait_on(page, lambda: page.locator("aside").is_visible(), "the panel back")
    static = [address for address in asked if "/static/" in address and not address.endswith((".js", ".mjs", ".css"))]
    assert static == [], "no images ahead of the tiles"


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    """Press, move and release the mouse between two level-0 image points, as a hand would."""
    page.mouse.move(*on_screen(page, *start))
    page.mouse.down()
    page.mouse.move(*on_screen(page, *end), steps=8)
    page.mouse.up()


def test_a_ruler_and_an_area_measure_in_micrometres_and_stay_on_the_tissue(page, scored) -> None:  # type: ignore[no-untyped-def]
    served, _ = scored
    with open_slide(sample(SLIDE)) as slide:
        mpp = slide.mpp[0]  # what the scanner recorded: 0.499 µm per pixel
    open_case(page, served, "h1.scored")
    page.locator("#heat-on").check()
    result = page.locator("#measure-result")

    page.locator("#tool-ruler").click()
    assert page.locator("#tool-ruler").get_attribute("aria-pressed") == "true"
    start, end = (400, 1500), (1600, 2400)  # 1500 px apart
    drag(page, start, end)
    length = re.fullmatch(r"Length ([\d.]+) µm", result.text_content())
    assert length and float(length.group(1)) == pytest.approx(1500 * mpp, rel=0.01)

    # the ruler is drawn in image coordinates: after panning and zooming its ends are still on the same tissue
    for key in ["ArrowLeft", "+"]:
        page.keyboard.press(key)
    settle(page)
    line = page.locator("#marks line")
    box = page.locator("#slide").bounding_box()
    for (x, y), ends in [(start, ("x1", "y1")), (end, ("x2", "y2"))]:
        on_page = on_screen(page, x, y)
        drawn = [float(line.get_attribute(name)) + offset for name, offset in zip(ends, (box["x"], box["y"]))]
        assert drawn == pytest.approx(on_page, abs=1)
    page.keyboard.press("-")
    page.keyboard.press("ArrowRight")
    settle(page)

    page.locator("#tool-area").click()
    drag(page, (300, 300), (1300, 800))  # 1000 x 500 px
    area = re.fullmatch(r"Area ([\d.]+) mm² \(([\d.]+) µm × ([\d.]+) µm\)", result.text_content())
    assert area and float(area.group(1)) == pytest.approx(1000 * 500 * mpp**2 / 1e6, rel=0.01)
    assert (float(area.group(2)), float(area.group(3))) == pytest.approx((1000 * mpp, 500 * mpp), rel=0.01)

    # at the top region, a ruler across it reads its width (the picture in the README is this view)
    page.keyboard.press("n")
    page.locator("#tool-ruler").click()
    settle(page)
    (region,) = scored[1]["summary"]["top_regions"]
    middle = region["y"] + region["height"] * 0.6
    drag(page, (region["x"], middle), (region["x"] + region["width"], middle))
    length = re.fullmatch(r"Length ([\d.]+) µm", result.text_content())
    assert length and float(length.group(1)) == pytest.approx(region["width"] * mpp, rel=0.01)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / "viewer-tools.png"))


def test_a_slide_without_a_resolution_is_measured_in_pixels_only(page, scored) -> None:  # type: ignore[no-untyped-def]
    served, _ = scored
    open_case(page, served, "h1.nompp")
    result = page.locator("#measure-result")
    assert result.text_content() == "This slide records no resolution: lengths in pixels only."
    assert page.locator("#scalebar").is_hidden()
    page.keyboard.press("m")  # the ruler, from the keyboard
    drag(page, (50, 100), (250, 100))
    assert re.fullmatch(r"Length (\d+) px \(µm unavailable: the slide records no resolution\)", result.text_content())
    assert int(result.text_content().split()[1]) == pytest.approx(200, abs=2)
    assert "µm" not in page.locator("#marks text").text_content()


def test_annotations_are_drawn_where_the_pathologist_clicked_with_their_text(page, scored, scored_bucket) -> None:  # type: ignore[no-untyped-def]
    served, _ = scored
    open_case(page, served, "h1.scored", served.person(scored_bucket.storage(), "Dr Draws"))
    page.locator("#note").fill("another section from here")
    page.locator("#tool-polygon").click()
    corners = [(800, 2050), (1150, 2000), (1100, 2450)]
    for corner in corners:
        page.mouse.click(*on_screen(page, *corner))
        page.wait_for_timeout(300)  # separate clicks, not a double click
    page.keyboard.press("Enter")
    wait_on(page, lambda: page.locator("#annotations li").count() == 1, "the polygon in the list")
    listed = re.fullmatch(r"polygon \(3 points, ([\d.]+) mm²\): another section from here · Dr Draws", page.locator("#annotations li").text_content())
    with open_slide(sample(SLIDE)) as slide:
        mpp = slide.mpp[0]
    (x1, y1), (x2, y2), (x3, y3) = corners
    enclosed = abs(x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2)) / 2  # 77,500 px²: the triangle clicked
    assert listed and float(listed.group(1)) == pytest.approx(enclosed * mpp**2 / 1e6, rel=0.01)
    page.locator("#note").fill("")
    page.locator("#tool-point").click()
    page.mouse.click(*on_screen(page, 1000, 1000))
    wait_on(page, lambda: page.locator("#annotations li").count() == 2, "the point in the list")
    saved = page.evaluate("window.slideView.annotations()")
    assert [a["kind"] for a in saved] == ["polygon", "point"] and saved[0]["text"] == "another section from here"
    assert np.abs(np.array(saved[0]["points"]) - corners).max() < 4  # level-0 pixels: 1 screen pixel is ~4 here
    assert np.abs(np.array(saved[1]["points"]) - [(1000, 1000)]).max() < 4
    # drawn in image coordinates: after zooming in the polygon's corners are still where they were clicked
    page.keyboard.press("Escape")
    page.keyboard.press("+")
    settle(page)
    box = page.locator("#slide").bounding_box()
    drawn = [tuple(map(float, xy.split(","))) for xy in page.locator("#marks polygon").get_attribute("points").split()]
    expected = [on_screen(page, *corner) for corner in corners]
    assert np.abs(np.array(drawn) + [box["x"], box["y"]] - expected).max() < 1.5
    assert page.locator("#marks text").first.text_content() == "another section from here"

    # the picture in the README: overlay, the top region, a ruler across it, the annotation
    page.locator("#heat-on").check()
    page.keyboard.press("n")
    settle(page)
    (region,) = scored[1]["summary"]["top_regions"]
    page.locator("#tool-ruler").click()
    middle = region["y"] + region["height"] * 0.3
    drag(page, (region["x"], middle), (region["x"] + region["width"], middle))
    page.keyboard.press("Escape")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "viewer-case.png"))


def test_an_annotation_a_pathologist_saves_is_seen_by_the_hospital_station_and_survives_a_reload(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    case = "theatre-9.marked"
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, datetime.now(UTC).isoformat(), "theatre-9").to_json())
    bucket.send(case)
    with serving(bucket.storage()) as served:
        open_case(page, served, case, served.person(bucket.storage(), "Dr Marks"))
        page.locator("#note").fill("deeper level here")
        page.locator("#tool-point").click()
        page.mouse.click(*on_screen(page, 1200, 900))
        wait_on(page, lambda: page.locator("#annotate-result").text_content() == "point saved: “deeper level here”", "the point saved")
        listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/{annotations_folder(case)}")
        (key,) = [item["Key"].removeprefix(f"{bucket.prefix}/") for item in listed["Contents"]]
        saved = json.loads(bucket.get(key))
        assert (saved["kind"], saved["text"], saved["slide"], saved["version"], saved["author"]["name"]) == ("point", "deeper level here", "s1", "v1", "Dr Marks")
        assert np.abs(np.array(saved["points"]) - [(1200, 900)]).max() < 4

        # the hospital's station opens the case: the point is listed and drawn where it was put, also after a reload
        open_case(page, served, case, served.person(bucket.storage(), "theatre-9", role=STATION, station="theatre-9"))
        assert page.locator("#who").text_content() == "theatre-9 (station)"
        for opened in ("opened", "reloaded"):
            wait_on(page, lambda: page.locator("#annotations li").count() == 1, f"the annotation listed ({opened})")
            assert page.locator("#annotations li").text_content() == "point: deeper level here · Dr Marks"
            settle(page)
            circle = page.locator("#marks circle.note")
            box = page.locator("#slide").bounding_box()
            drawn = (float(circle.get_attribute("cx")) + box["x"], float(circle.get_attribute("cy")) + box["y"])
            assert np.abs(np.array(drawn) - on_screen(page, *saved["points"][0])).max() < 1.5
            assert page.locator("#tool-point").is_disabled() and "View only" in page.locator("#annotate-note").text_content()
            if opened == "opened":
                page.reload()
                wait_on(page, lambda: page.evaluate("Boolean(window.slideView && window.slideView.settled())"), "the slide after the reload")

        # while the station looks, the pathologist marks a second place: it appears there without a reload
        page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
        line = {"slide": "s1", "version": "v1", "kind": "line", "points": [[1000, 800], [1400, 1100]], "text": "margin"}
        saved = httpx.post(f"{served.url}/api/cases/{case}/annotations", json=line,
                           headers=served.credentials(served.person(bucket.storage(), "Dr Marks")), timeout=30)
        assert saved.status_code == 200, saved.text
        wait_on(page, lambda: page.locator("#annotations li").count() == 2, "the pathologist's new line at the station", timeout=15)
        with open_slide(sample(SLIDE)) as slide:
            length = 500 * slide.mpp[0]  # (1000, 800) to (1400, 1100): 500 px
        assert page.locator("#annotations li").nth(1).text_content() == f"line ({length:.1f} µm): margin · Dr Marks"
        assert page.evaluate("window.sameDocument") is True and page.locator("#marks line.note").count() == 1


def test_slides_of_a_case_switch_with_thumbnails_and_keys_keeping_the_place(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """Three slides: two of the same shape (the view keeps its place on the slide between them) and one that failed."""
    bucket = Bucket(s3_server)
    bucket.send("h1.two")
    bucket.send("h1.two", at=("s2", "v1"))
    failed = {"format": "slidestream-manifest/2", "case": "h1.two", "state": "failed", "failed": "unreadable slide: truncated TIFF", "complete": False}
    bucket.put(SlideRef("h1.two", "s3").key(MANIFEST), json.dumps(failed).encode())
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    with serving(bucket.storage()) as served:
        open_case(page, served, "h1.two")
        strip = page.locator("#slides li")
        assert strip.count() == 3
        assert strip.nth(2).text_content() == "s3 (v1) failed: unreadable slide: truncated TIFF"
        pictures = page.locator("#slides img")
        wait_on(page, lambda: all(pictures.nth(i).evaluate("(img) => img.naturalHeight") == 192 for i in (0, 1)), "both thumbnails")
        assert strip.nth(0).locator("button").get_attribute("aria-current") == "true"

        for key in ("+", "+", "+", "+", "ArrowRight", "ArrowDown"):
            page.keyboard.press(key)
        before = settle(page)
        assert before["width"] < 2220 / 2  # zoomed in: there is a place to keep
        page.keyboard.press("]")
        wait_on(page, lambda: page.evaluate("window.slideView.shown()") == "s2", "the second slide")
        wait_on(page, lambda: any("/slides/s2/v1/tiles/" in address for address in asked), "tiles of the second slide")
        after = settle(page)
        for key in ("x", "y", "width", "height"):  # the same slide size: the same place, within a pixel or two
            assert after[key] == pytest.approx(before[key], abs=2), key
        assert strip.nth(1).locator("button").get_attribute("aria-current") == "true" and "slide=s2" in page.url

        page.keyboard.press("]")  # the failed slide says so, and the keys still work
        wait_on(page, lambda: page.locator("#message").text_content() == "case h1.two: send failed: unreadable slide: truncated TIFF", "the failure")
        page.keyboard.press("]")
        wait_on(page, lambda: page.evaluate("window.slideView.shown()") == "s1" and page.locator("#message").is_hidden(), "back to the first")
        strip.nth(1).locator("button").click()
        wait_on(page, lambda: page.evaluate("window.slideView.shown()") == "s2", "the second slide, clicked")
        page.reload()
        wait_on(page, lambda: page.evaluate("Boolean(window.slideView && window.slideView.settled())"), "the slide after a reload")
        assert page.evaluate("window.slideView.shown()") == "s2"  # the address kept it


def test_a_slide_sent_later_joins_the_strip_without_a_reload(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    bucket.send("h1.later")
    with serving(bucket.storage()) as served:
        open_case(page, served, "h1.later")
        assert page.locator("#slides li").count() == 1
        page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
        bucket.send("h1.later", at=("s2", "v1"))  # the hospital sends a second block
        wait_on(page, lambda: page.locator("#slides li").count() == 2, "the second slide in the strip")
        assert page.locator("#slides li").nth(1).text_content() == "s2 (v1) complete"
        page.keyboard.press("]")
        wait_on(page, lambda: page.evaluate("window.slideView.shown()") == "s2", "the second slide on screen")
        assert page.evaluate("window.sameDocument") is True


def test_two_slides_side_by_side_pan_and_zoom_together(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    bucket.send("h1.pair")
    bucket.send("h1.pair", at=("s2", "v1"))
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    with serving(bucket.storage()) as served:
        open_case(page, served, "h1.pair")
        page.locator("#compare-with").select_option("s2/v1")
        wait_on(page, lambda: page.evaluate("Boolean(window.slideView.compareBounds())"), "the second slide beside the first")
        wait_on(page, lambda: any("/slides/s2/v1/tiles/" in address for address in asked), "tiles of the second slide")
        # the first leads (keys): the second shows the same part of its slide (here the same size: the same pixels)
        page.evaluate("document.activeElement.blur()")  # the keys are the select's while it has the focus
        for key in ("+", "+", "+", "+", "ArrowLeft", "ArrowUp"):
            page.keyboard.press(key)
        ours = settle(page)
        theirs = page.evaluate("window.slideView.compareBounds()")
        assert ours["width"] < 2220 / 2
        for key in ("x", "y", "width", "height"):
            assert theirs[key] == pytest.approx(ours[key], abs=2), key
        # the second leads (a drag on it): the first follows
        box = page.locator("#compare").bounding_box()
        middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.move(*middle)
        page.mouse.down()
        page.mouse.move(middle[0] - 150, middle[1] - 100, steps=10)
        page.mouse.up()
        page.wait_for_timeout(100)
        wait_on(page, lambda: page.evaluate("window.slideView.settled()"), "the first view to settle")
        moved = page.evaluate("window.slideView.compareBounds()")
        assert moved["x"] > theirs["x"] + 100  # dragged: the second moved right and down on its slide
        ours = page.evaluate("window.slideView.imageBounds()")
        for key in ("x", "y", "width", "height"):
            assert ours[key] == pytest.approx(moved[key], abs=2), key
        page.screenshot(path=str(SHOTS / "viewer-side-by-side.png"))
        page.locator("#compare-with").select_option("")
        assert page.locator("#compare").is_hidden()


def test_every_control_of_the_panel_has_a_name(page, scored) -> None:  # type: ignore[no-untyped-def]
    served, _ = scored
    open_case(page, served, "h1.scored")
    wait_on(page, page.locator("#regions-box").is_visible, "the top regions")
    unnamed = page.evaluate("""[...document.querySelectorAll("aside button, aside input, aside textarea, #view-controls button")]
        .filter((el) => !(el.getAttribute("aria-label") || (el.labels && el.labels.length) || el.textContent.trim()))
        .map((el) => el.outerHTML)""")
    assert unnamed == []


# -- the case page for the frozen-section reader, on a laptop's 1366 x 768 screen --------------------------------
LAPTOP = {"width": 1366, "height": 768}
DETECTS = "colorectal adenocarcinoma epithelium"


def register_case(bucket: Bucket, case: str, context: tuple[tuple[str, str], ...]) -> None:
    """case.json as its station writes it, registered five minutes ago (no late reason asked yet)."""
    registered = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(timespec="seconds")
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, registered, case.split(".")[0], context).to_json())


def fits_the_screen(page, selector: str) -> bool:  # type: ignore[no-untyped-def]
    """The element is shown whole in the 1366 x 768 window as the page opens: no scroll of the page or the panel."""
    box = page.locator(selector).bounding_box()
    unscrolled = page.evaluate("window.scrollY === 0 && document.querySelector('aside').scrollTop === 0")
    return bool(box) and unscrolled and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= LAPTOP["width"] \
        and box["y"] + box["height"] <= LAPTOP["height"]  # fmt: skip


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """The whole window as the page opens (the panel at its top), in test-output/ and, with SLIDESTREAM_SCREENSHOTS=DIR
    (docs/ for the README), there too."""
    page.evaluate("document.querySelector('aside').scrollTop = 0")
    page.screenshot(path=str(SHOTS / name))
    if folder := os.environ.get("SLIDESTREAM_SCREENSHOTS"):  # 256 colours: a quarter of the bytes, the same to the eye
        shot = Image.open(SHOTS / name).convert("RGB").quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        shot.save(Path(folder) / name, optimize=True)


def test_the_case_page_names_the_case_asks_its_question_first_and_keeps_the_report_form_on_a_laptop_screen(browser, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """A colorectal case of two slides, the one shown scored 0.43 with its map, the other 0.55: the header names the
    hospital, specimen and site, and shows the case's score (the worklist's) with its meaning; the question and the
    Sign button are on screen; a jump to a top region hides the map over its cells."""
    bucket = Bucket(s3_server)
    case = "theatre-2.9f2c41d07a5e3b18"
    register_case(bucket, case, (("hospital", "St Mary's Hospital"), ("specimen_type", "frozen section"),
                                 ("specimen_site", "sigmoid colon, distal margin"),
                                 ("clinical_question", "Carcinoma at the distal margin?"), ("surgeon", "Dr M. Keller"),
                                 ("callback", "theatre 2, ext 4321")))  # fmt: skip
    scores = np.full((30, 22), 0.04, np.float32)
    scores[19:27, 12:16] = 0.43
    objects, triage = inference_heatmap(scores, complete=True, threshold=0.3)
    triage["summary"]["detects"] = DETECTS
    bucket.send(case)
    first, second = SlideRef(case, "s1"), SlideRef(case, "s2")
    for key, data in objects.items():
        bucket.put(first.centre_key(f"{HEATMAP}/{key}"), data)
    bucket.put(first.centre_key(TRIAGE), json.dumps(triage).encode())
    bucket.send(case, at=("s2", "v1"))
    summary = {"tiles_scored": 73, "tissue_tiles": 73, "detects": DETECTS}
    bucket.put(second.centre_key(TRIAGE), Triage(second.label, 0.55, MODEL, "hub", True, summary, routed=ROUTED).to_json())
    (region,) = triage["summary"]["top_regions"]
    with serving(bucket.storage()) as served:
        (row,) = served.get("/api/worklist", served.person(bucket.storage(), "Dr Ben Okafor")).json()["cases"]
        token = served.person(bucket.storage(), "Dr Ana Ruiz", role=PATHOLOGIST)
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        sign_in(page, served, token)
        page.goto(f"{served.url}/view/{case}?slide=s1")
        wait_on(page, lambda: page.evaluate("Boolean(window.slideView && window.slideView.settled())"), "the slide in its place")
        wait_on(page, lambda: page.locator("#report-form").is_visible(), "the report form")
        wait_on(page, lambda: "this slide" in page.locator("#score-meaning").text_content(), "the case's score")

        assert page.locator("#case-title").text_content() == "St Mary's Hospital · frozen section · sigmoid colon, distal margin"
        assert page.locator("#case").text_content() == case  # small, beside it, to copy
        assert page.title().startswith("St Mary's Hospital · frozen section")
        # one score: the case's, the number the worklist shows, saying what it is and which slide; the slide shown its own
        assert page.locator("#score").text_content() == f"AI triage {row['triage']['score']:.2f}" == "AI triage 0.55"
        assert page.locator("#score-meaning").text_content() == f"probability of {DETECTS}, highest of 2 slides (s2); this slide: 0.43"
        # the question first, and the report form's Sign button, on the laptop's screen as the page opens
        assert page.locator("#context dd").first.text_content() == "Carcinoma at the distal margin?"
        assert fits_the_screen(page, "#context dd.question") and fits_the_screen(page, "#sign") and fits_the_screen(page, "#category")
        page.locator("#heat-on").check()
        wait_on(page, lambda: page.evaluate("window.slideView.overlayOpacity()") == pytest.approx(0.6), "the map on the slide")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)  # OpenSeadragon blends the map's tiles in
        shoot(page, "case-page.png")

        # a jump to a top region: the map leaves its cells, the region's outline stays, until asked for there
        page.keyboard.press("n")
        bounds = settle(page)
        assert bounds["x"] <= region["x"] and region["x"] + region["width"] <= bounds["x"] + bounds["width"]
        assert page.evaluate("window.slideView.overlayOpacity()") == 0 and page.locator("#heat-on").is_checked()
        assert page.locator("#region-note").is_visible() and page.locator("#marks rect.region").count() == 1
        page.locator("#region-map").click()
        assert page.evaluate("window.slideView.overlayOpacity()") == pytest.approx(0.6) and page.locator("#region-note").is_hidden()
        page.keyboard.press("p")  # the next jump hides it again; the whole slide shows it as set
        assert page.evaluate("window.slideView.overlayOpacity()") == 0
        page.locator("#view-home").click()
        assert page.evaluate("window.slideView.overlayOpacity()") == pytest.approx(0.6) and page.locator("#region-note").is_hidden()

        # the other slide: the same case score, now "the slide shown"
        page.keyboard.press("]")
        wait_on(page, lambda: page.locator("#score-meaning").text_content().endswith("(s2); the slide shown"), "the second slide's line")
        assert page.locator("#score").text_content() == "AI triage 0.55"
        context.close()


def test_a_case_no_validated_model_covers_shows_no_number_on_a_laptop_screen(browser, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    case = "theatre-2.4be0c7d9a1f23e56"
    register_case(bucket, case, (("hospital", "St Mary's Hospital"), ("specimen_type", "frozen section"),
                                 ("specimen_site", "skin, left forearm, deep margin"),
                                 ("clinical_question", "Melanoma in situ at the deep margin?")))  # fmt: skip
    bucket.send(case)
    ref = SlideRef(case)
    summary = {"tissue_tiles": 73, "qc": {"focus_tiles": 73, "blur_fraction": 0.04, "pen_fraction": 0.0}}
    bucket.put(ref.centre_key(TRIAGE), Triage(ref.label, None, MODEL, "hub", True, summary, "", "no validated AI for skin").to_json())
    with serving(bucket.storage()) as served:
        token = served.person(bucket.storage(), "Dr Ana Ruiz", role=PATHOLOGIST)
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        sign_in(page, served, token)
        page.goto(f"{served.url}/view/{case}")
        wait_on(page, lambda: shows_tissue(page, "case-page-no-ai-slide.png"), "the slide on screen")
        wait_on(page, lambda: page.locator("#ai-refused").is_visible() and page.locator("#report-form").is_visible(), "the refusal and the form")
        assert page.locator("#case-title").text_content() == "St Mary's Hospital · frozen section · skin, left forearm, deep margin"
        assert page.locator("#score").text_content() == "no validated AI for skin · QC only"
        assert not re.search(r"[0-9]", page.locator("#score-box").text_content())  # no number that reads as a diagnosis
        assert fits_the_screen(page, "#context dd.question") and fits_the_screen(page, "#sign")
        shoot(page, "case-page-no-ai.png")
        context.close()


def test_a_station_users_printed_link_signs_in_and_opens_its_own_cases(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """`users add --role station --station ID` prints a link: it signs the station's user in, and the page (the worklist
    being the centre's) opens the station's own cases by ID; another station's stay closed."""
    bucket = Bucket(s3_server)
    ours, theirs = "theatre-9.6d1e0f3a2b4c5d7e", "theatre-8.0a1b2c3d4e5f6a7b"
    for case in (ours, theirs):
        register_case(bucket, case, (("specimen_type", "frozen section"), ("specimen_site", "sentinel node")))
        bucket.send(case)
    with serving(bucket.storage()) as served:
        made = users(bucket, "add", "STORE", "Theatre 9 desk", "--role", "station", "--station", "theatre-9", "--viewer-url", served.url)
        assert made.returncode == 0, made.stderr
        link = made.stdout.splitlines()[1].removeprefix("link: ")
        assert link.startswith(f"{served.url}/worklist#token=")
        page.goto(link)
        wait_on(page, page.locator("#station-open").is_visible, "the station's way to its cases")
        assert page.locator("#message").is_hidden() and page.locator("#cases").is_hidden()
        assert page.locator("#station-line").text_content().startswith("Signed in as Theatre 9 desk (station).")
        page.locator("#station-case").fill(ours)
        page.locator("#station-go").click()
        wait_on(page, lambda: page.locator("#case").text_content() == ours, "its case")
        wait_on(page, lambda: page.locator("#who").text_content() == "Theatre 9 desk (station)", "signed in as the station")
        assert page.locator("#case-title").text_content() == "theatre-9 · frozen section · sentinel node"
        assert page.locator("#report-form").is_hidden()
        page.goto(f"{served.url}/view/{theirs}")
        wait_on(page, page.locator("#message").is_visible, "the refusal")
        assert f"did not register case {theirs}" in page.locator("#message").text_content()
