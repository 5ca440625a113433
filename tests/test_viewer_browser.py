"""The viewer in a real browser (Debian's chromium through Playwright) against the real S3 server.

What a pathologist would check: the slide shows up (pixels, not a blank canvas), zooming loads sharper tiles, the
heatmap overlay toggles, the worklist is ordered by score with a running clock, links without a valid token show
nothing, and a slide still being sent sharpens on screen as its full-resolution shards arrive.
Screenshots land in test-output/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiling import PieceKind

from conftest import REPO, S3Server
from test_viewer import Bucket, Served, chunk_of, heatmap_objects, manifest, pyramid, serving, shards

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = REPO / "test-output"
TILE_URL = re.compile(r"/api/cases/([^/]+)/slides/s\d+/v\d+/(tiles|heatmap)/(\d+)/(\d+)/(\d+)")


def wait_for(page, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Wait for something to show on the page; Playwright delivers its events while we wait through it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        page.wait_for_timeout(200)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/apt-packages should have installed chromium")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    SHOTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    yield page
    context.close()


class Tiles:
    """Every tile response the page receives: (kind, level, row, col, response)."""

    def __init__(self, page) -> None:  # type: ignore[no-untyped-def]
        self.seen: list[tuple[str, int, int, int, object]] = []
        page.on("response", self._record)

    def _record(self, response) -> None:  # type: ignore[no-untyped-def]
        match = TILE_URL.search(response.url)
        if match:
            kind, level, row, col = match.group(2), *map(int, match.group(3, 4, 5))
            self.seen.append((kind, level, row, col, response))

    def loaded(self, kind: str = "tiles", level: int | None = None) -> list[tuple[int, int, int, object]]:
        return [(lv, r, c, resp) for k, lv, r, c, resp in self.seen if k == kind and (level is None or lv == level) and resp.status == 200]


def screenshot(page, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The slide area as the pathologist sees it, saved for a human too."""
    png = page.locator("#slide").screenshot()
    (SHOTS / name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def stained(pixels: np.ndarray) -> float:
    """Fraction of clearly stained pixels (H&E is pink/purple; glass and an empty canvas are white or black)."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > 40).mean())


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the Laplacian: rises when full-resolution tiles replace an upscaled coarser level.

    Measured on the middle of the view, away from the buttons, the navigator and the scale bar.
    """
    height, width = pixels.shape[:2]
    grey = pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4].mean(axis=2)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(laplacian.var())


def shows_tissue(page, name: str) -> bool:  # type: ignore[no-untyped-def]
    return stained(screenshot(page, name)) > 0.05


def zoom_in(page, clicks: int) -> None:  # type: ignore[no-untyped-def]
    """Click the middle of the slide: OpenSeadragon zooms 2x per click, like a pathologist would."""
    box = page.locator("#slide").bounding_box()
    for _ in range(clicks):
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(400)  # let each click register as its own click, not a double click


@pytest.fixture(scope="module")
def cases(s3_server: S3Server) -> Iterator[tuple[Bucket, Served]]:
    """Three fully sent cases with scores; case1 also has a heatmap (tumour in its top half)."""
    bucket = Bucket(s3_server)
    for case, score in [("case1", 0.62), ("case2", 0.91), ("case3", 0.05)]:
        bucket.send(case, triage=score)
    heat = np.zeros((30, 22), np.uint8)
    heat[:15] = 255
    for key, data in heatmap_objects(heat, 2220, 0.499).items():
        bucket.put(f"case1/slides/s1/v1/heatmap.zarr/{key}", data)
    with serving(bucket.storage()) as served:
        yield bucket, served


def test_the_viewer_shows_the_slide_zooms_and_overlays_the_heatmap(page, cases) -> None:  # type: ignore[no-untyped-def]
    _, served = cases
    plan, pieces = pyramid()
    tiles = Tiles(page)
    page.goto(f"{served.url}/view/case1#token={served.token('case1')}")
    wait_for(page, lambda: shows_tissue(page, "viewer-overview.png"), "the slide on screen")
    assert page.locator("#case").text_content() == "case1"
    assert "µm" in page.locator("#scalebar").text_content() and page.locator("#scalebar").is_visible()
    assert page.locator("#score").text_content() == "AI triage 0.62"

    # a tile the browser received is exactly the chunk stored in the shard on S3
    level, row, col, response = tiles.loaded()[0]
    n = plan.shard_chunks
    assert response.body() == chunk_of(shards(pieces)[f"{level}/c/0/{row // n}/{col // n}"], n, row % n, col % n)
    assert 0 not in {lv for lv, *_ in tiles.loaded()}  # the whole slide on screen needs no full-resolution tile

    before = {(lv, r, c) for lv, r, c, _ in tiles.loaded()}
    zoom_in(page, 3)
    wait_for(page, lambda: len(tiles.loaded(level=0)) >= 4, "full-resolution tiles after zooming in")
    wait_for(page, lambda: shows_tissue(page, "viewer-zoomed.png"), "the zoomed slide on screen")
    assert {(lv, r, c) for lv, r, c, _ in tiles.loaded()} - before  # new tiles, not the same ones again

    # heatmap overlay: off at first, on when ticked (tiles come and the picture turns red), off again
    assert page.locator("#overlay").is_visible()
    plain = screenshot(page, "viewer-heatmap-off.png")
    assert not tiles.loaded("heatmap")
    page.locator("#heat-on").check()
    wait_for(page, lambda: len(tiles.loaded("heatmap")) > 0, "heatmap tiles")
    wait_for(page, lambda: _redness(screenshot(page, "viewer-heatmap-on.png")) > _redness(plain) + 15, "the overlay on screen")
    page.locator("#heat-on").uncheck()
    wait_for(page, lambda: abs(_redness(screenshot(page, "viewer-heatmap-off-again.png")) - _redness(plain)) < 3, "the overlay gone")


def _redness(pixels: np.ndarray) -> float:
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


def test_the_worklist_orders_cases_by_score_with_a_frozen_section_clock(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    _, pieces = pyramid()
    now = datetime.now(UTC)
    for case, score, minutes in [("fresh", 0.3, 2), ("amber", 0.95, 24), ("late", 0.6, 35)]:
        bucket.send(case, triage=score)
        sent = json.loads(manifest(case, pieces, {p.key for p in pieces if p.kind == PieceKind.SHARD}))
        sent["started_at"] = (now - timedelta(minutes=minutes)).isoformat(timespec="seconds")
        bucket.put(f"{case}/slides/s1/v1/manifest.json", json.dumps(sent).encode())
    with serving(bucket.storage()) as served:
        page.goto(f"{served.url}/worklist#token={served.person(bucket.storage())}")
        rows = page.locator("#cases tbody tr")
        wait_for(page, lambda: rows.count() == 3, "the worklist rows")
        page.locator("#cases").screenshot(path=str(SHOTS / "worklist.png"))
        assert [rows.nth(i).get_attribute("data-case") for i in range(3)] == ["amber", "late", "fresh"]
        clocks = {rows.nth(i).get_attribute("data-case"): rows.nth(i).locator("td.clock") for i in range(3)}
        assert clocks["amber"].get_attribute("class") == "clock amber" and clocks["amber"].text_content().startswith("24:")
        assert clocks["late"].get_attribute("class") == "clock red"
        assert clocks["fresh"].get_attribute("class") == "clock ok"
        # the row links open the case, signed in as the same pathologist
        rows.first.locator("a").click()
        wait_for(page, lambda: page.locator("#case").text_content() == "amber", "the case page from the worklist")
        wait_for(page, lambda: page.locator("#who").text_content() == "Dr Test Pathologist (pathologist)", "the signed-in name")


def test_a_link_without_a_valid_token_shows_nothing(page, cases) -> None:  # type: ignore[no-untyped-def]
    _, served = cases
    tiles = Tiles(page)
    expired = served.tokens.issue("case:case1", timedelta(seconds=-1))
    message = page.locator("#message")
    for fragment in ["", f"#token={served.token('case2')}", f"#token={expired}", "#token=garbage"]:
        page.goto("about:blank")  # a new load each time: a changed #fragment alone would not reload the page
        page.goto(f"{served.url}/view/case1{fragment}")
        wait_for(page, message.is_visible, f"the refusal for {fragment[:20]!r}")
        assert message.text_content().startswith("Access refused")
    page.goto(f"{served.url}/worklist")
    wait_for(page, lambda: page.locator("#message").is_visible(), "the worklist refusal")
    page.screenshot(path=str(SHOTS / "refused.png"))
    assert tiles.seen == []


def test_the_page_sharpens_as_full_resolution_shards_arrive(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    _, pieces = pyramid()
    level0 = {key: data for key, data in shards(pieces).items() if key.startswith("0/")}
    bucket.send("live", arrived=lambda piece: piece.level != 0)  # metadata and overview levels only
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    with serving(bucket.storage()) as served:
        tiles = Tiles(page)
        page.goto(f"{served.url}/view/live#token={served.token('live')}")
        wait_for(page, lambda: shows_tissue(page, "live-overview.png"), "the overview on screen")
        assert page.locator("#progress .label").text_content() == "arriving · full resolution 0/4"
        zoom_in(page, 2)  # full-resolution pixels at about 1:1 on screen; the coarser level magnified 2x meanwhile
        page.wait_for_load_state("networkidle")
        blurry = screenshot(page, "live-before-level0.png")
        assert stained(blurry) > 0.05  # the coarser level stands in, magnified
        assert not tiles.loaded(level=0) and not [t for t in tiles.seen if t[1] == 0]  # nothing asked of level 0 yet

        for key, data in level0.items():  # level 0 arrives, shard by shard, then the manifest says so
            bucket.put(f"live/slides/s1/v1/image.zarr/{key}", data)
        bucket.put("live/slides/s1/v1/manifest.json", manifest("live", pieces, set(shards(pieces))))

        wait_for(page, lambda: len(tiles.loaded(level=0)) >= 4, "full-resolution tiles after they arrived")
        wait_for(page, lambda: sharpness(screenshot(page, "live-after-level0.png")) > 1.5 * sharpness(blurry), "a sharper picture")
        assert page.locator("#progress .label").text_content() == "all arrived"
    assert len(navigations) == 1  # no reload: the page sharpened by itself
