"""The viewer as a remote pathologist feels it: a real Chromium over an emulated 5G downlink.

Set up as bench_viewer.py does: the slide converted to OME-Zarr (the same pieces `slidestream send --full-pyramid`
uploads), put into S3 with its manifest and a case.json (what a send leaves), `slidestream serve` over it, its tile cache
off (--tile-cache-mb: every tile read from the store, as when a pathologist first looks at a field). In front
of the server, bench/link.py's "5g" link: server -> browser is the 300 Mbit/s downlink, browser -> server 100 Mbit/s,
RTT 20 +- 5 ms. Debian's chromium (Playwright, launched as tests/viewer/test_viewer_browser.py does), a 1200x800 window,
device pixel ratio 1, HTTP/1.1 (at most 6 connections to the server, as a browser makes them). WebGL is off, so
OpenSeadragon draws with its canvas drawer: without a GPU, WebGL is SwiftShader's emulation, whose frames took ~0.4 s
each on 2 busy cores and made every figure ~20x worse, which says nothing of a workstation with a GPU (--webgl to
measure it anyway).

Timed in the page, on OpenSeadragon's frames (its "update-viewport" event, raised right after it drew the world):

  open -> first tile   each run in a fresh browser context (cold cache, new connections): from the navigation's
                       start (performance.now() counts from it) to the first frame that drew a tile of the slide
                       (its TiledImage's list of tiles drawn is no longer empty); also given from the page.goto()
                       call (wall clock), and to two more moments: OpenSeadragon's viewer created (page, scripts,
                       case and image API answered) and the first frame with the whole home view sharp
  FOV jump -> sharp    the case open and sharp (at first its home view): viewport.fitBounds(region, immediately) to
                       a level-0 region the size of the view at 1 image pixel per screen pixel, all tissue and not
                       shown before in that context; from the call to the first frame at which every tile the view
                       needs at full resolution is drawn (TiledImage.getFullyLoaded() with the view at rest);
                       given beside it, from the resource timings: when the first level-0 tile was asked for and
                       when the last one had arrived
  FOV glide -> sharp   the same, animated as the viewer's next-region key does (fitBoundsWithConstraints):
                       OpenSeadragon's 1.2 s animation is part of it; given beside it: how long the view stayed
                       blurred after it stopped moving

Results go to stdout and bench/out/bench_browser.json, with the machine's cores and load average before and after.
Needs root (the link's network namespace), chromium and an S3 server (without one: a local directory store).

    python bench/bench_browser.py [--slide bench/out/derived-small.svs] [--endpoint URL] [--runs 7] [--fov 5] [--webgl]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
from bench_viewer import (
    CASE,
    SECRET,
    convert,
    free_port,
    upload,
    wait_until_up,
    write_local,
)
from link import PROFILES, EmulatedLink, run
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PageTimeout

from caseformat.documents import CaseRecord
from caseformat.layout import CASE_RECORD, SlideRef, case_key

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
NO_WEBGL = "--disable-3d-apis"  # OpenSeadragon then draws with its canvas drawer
WINDOW = {"width": 1200, "height": 800}
GOALS_MS = {"open": 1000, "fov": 250}
WAIT_MS = 60_000  # for anything on the page: far beyond any goal, so only a broken page hits it

# Runs before the page's own scripts: finds the slide's OpenSeadragon viewer as soon as viewer.js creates it and
# notes, per drawn frame, the first one with a tile of the slide and the first one with the home view sharp.
WATCH = """
(() => {
    performance.setResourceTimingBufferSize(100000); // every tile request stays countable
    const bench = (window.__bench = { viewer: null, viewerAt: null, firstTile: null, sharp: null });
    const find = () => {
        const element = document.getElementById("slide");
        const viewer = window.OpenSeadragon && element && OpenSeadragon.getViewer(element);
        if (!viewer) return requestAnimationFrame(find);
        [bench.viewer, bench.viewerAt] = [viewer, performance.now()];
        viewer.addHandler("update-viewport", () => {
            const item = viewer.world.getItemAt(0); // the slide: viewer.js adds it at index 0
            if (!item) return;
            if (bench.firstTile === null && item._lastDrawn.length) bench.firstTile = performance.now();
            if (bench.sharp === null && item.getFullyLoaded()) bench.sharp = performance.now();
        });
    };
    find();
})();
"""

# Moves the view to a level-0 rectangle and resolves at the first drawn frame with the view at rest and the slide's
# tiles all loaded at the resolution the view needs (in OpenSeadragon the frame that finds them loaded draws them).
MOVE = """
({ x, y, width, height, immediate, waitMs }) => new Promise((resolve, reject) => {
    const viewer = window.__bench.viewer;
    const item = viewer.world.getItemAt(0);
    const { viewport } = viewer;
    const still = () => viewport.getZoom(true) === viewport.getZoom(false) && viewport.getCenter(true).equals(viewport.getCenter(false));
    let stopped = null;
    let frames = 0;
    const start = performance.now();
    const frame = () => {
        const now = performance.now();
        frames += 1;
        if (!still()) return;
        if (stopped === null) stopped = now;
        if (!item.getFullyLoaded()) return;
        viewer.removeHandler("update-viewport", frame);
        clearTimeout(timer);
        const tiles = performance.getEntriesByType("resource").filter((e) => e.startTime >= start && /[/]tiles[/]0[/]/.test(e.name));
        resolve({ sharp_ms: now - start, still_ms: stopped - start, frames, level0_tiles: tiles.length,
                  level0_kb: tiles.reduce((sum, e) => sum + e.transferSize, 0) / 1024,
                  level0_asked_ms: Math.min(...tiles.map((e) => e.startTime)) - start,
                  level0_fetched_ms: Math.max(...tiles.map((e) => e.responseEnd)) - start,
                  zoom: item.viewportToImageZoom(viewport.getZoom(true)) });
    };
    const timer = setTimeout(() => {
        viewer.removeHandler("update-viewport", frame);
        reject(new Error(`view not sharp ${waitMs} ms after the move`));
    }, waitMs);
    viewer.addHandler("update-viewport", frame);
    const rect = item.imageToViewportRectangle(x, y, width, height);
    if (immediate) viewport.fitBounds(rect, true);
    else viewport.fitBoundsWithConstraints(rect);
})
"""


# -- setting up ------------------------------------------------------------------------------------------------
def free_slot() -> int:
    """A link slot no other run holds: EmulatedLink clears its slot first, which would cut another run's link."""
    taken = {int(n) for n in re.findall(r"ssbench(\d+)", run("ip", "netns", "list").stdout)}
    return next(slot for slot in range(1, 256) if slot not in taken)


def case_record() -> bytes:
    return CaseRecord(CASE, datetime.now(UTC).isoformat(timespec="seconds"), "bench").to_json()


def regions(chunks: list[tuple[int, int]], chunk: int, view: tuple[int, int], seed: int) -> list[tuple[int, int, int, int]]:
    """Level-0 rectangles the size of the view, each all tissue with a chunk's margin, no two sharing a tile.

    Tissue only: a background chunk is a 404, not a tile to fetch and draw; disjoint: each move fetches all it shows."""
    tissue = set(chunks)
    rows, cols = math.ceil(view[1] / chunk), math.ceil(view[0] / chunk)
    used: set[tuple[int, int]] = set()
    found = []
    for row, col in random.Random(seed).sample(chunks, len(chunks)):
        block = {(r, c) for r in range(row - 1, row + rows + 1) for c in range(col - 1, col + cols + 1)}
        if block <= tissue and not block & used:
            used |= block
            found.append((col * chunk, row * chunk, view[0], view[1]))
    return found


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1),
            "n": len(values)}  # fmt: skip


# -- measuring -------------------------------------------------------------------------------------------------
def open_case(browser: Browser, url: str) -> tuple[Page, dict[str, Any]]:
    """One cold open: a fresh context (no cache, no connections), timed from navigation start and from goto()."""
    context = browser.new_context(viewport=WINDOW)
    context.add_init_script(WATCH)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    called = time.time()
    page.goto(url, wait_until="commit")
    try:
        page.wait_for_function("() => window.__bench.sharp !== null && window.__bench.firstTile !== null", polling=50, timeout=WAIT_MS)
    except PageTimeout as error:
        context.close()
        raise SystemExit(f"the case did not open: {error}; page errors: {errors or 'none'}") from None
    origin, viewer, first, sharp = page.evaluate("[performance.timeOrigin, window.__bench.viewerAt, window.__bench.firstTile, window.__bench.sharp]")
    # where the open went: every request until the first tile, as (path, asked at, answer ended) in ms
    requests = page.evaluate(f"""performance.getEntriesByType("resource").filter((e) => e.startTime <= {first})
        .map((e) => [new URL(e.name).pathname, Math.round(e.startTime), Math.round(e.responseEnd)])""")
    return page, {"first_tile_ms": first, "first_tile_from_goto_ms": origin + first - called * 1000, "sharp_ms": sharp, "viewer_ms": viewer,
                  "requests_before_first_tile": requests}


def move(page: Page, region: tuple[int, int, int, int], immediate: bool) -> dict[str, float]:
    x, y, width, height = region
    result = page.evaluate(MOVE, {"x": x, "y": y, "width": width, "height": height, "immediate": immediate, "waitMs": WAIT_MS})
    if result["level0_tiles"] == 0:
        raise SystemExit(f"no full-resolution tile fetched for the region at {x},{y}: it was not new to the page")
    return {**result, "x": x, "y": y}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, default=OUT / "derived-small.svs", help="made by bench/make_large_slide.py --small")
    parser.add_argument("--endpoint", default=os.environ.get("SLIDESTREAM_TEST_S3_ENDPOINT"),
                        help="S3 endpoint (default $SLIDESTREAM_TEST_S3_ENDPOINT; none: a local directory store)")
    parser.add_argument("--runs", type=int, default=7, help="cold opens, each in a fresh browser context (at least 5 for figures to keep)")
    parser.add_argument("--fov", type=int, default=5, help="field-of-view jumps, and as many glides, per run")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="5g")
    parser.add_argument("--webgl", action="store_true",
                        help="let OpenSeadragon draw with WebGL: without a GPU that is SwiftShader, ~20x slower frames")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="picks the regions")
    parser.add_argument("--tile-cache-mb", type=int, default=0,
                        help="the server's tile cache (default 0: every tile read from the store, as on a pathologist's first look)")
    args = parser.parse_args()
    if not args.slide.exists():
        raise SystemExit(f"{args.slide}: missing; make it with: python bench/make_large_slide.py --small")
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} missing: apt-get install chromium")
    if args.runs < 5:
        print(f"note: {args.runs} runs; report figures from at least 5", flush=True)

    from viewer import Tokens, case_scope

    work = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        chunk, pieces, chunks = convert(args.slide)
        (work / "secret").write_bytes(SECRET)
        serve = [sys.executable, "-m", "slidestream", "serve", "--secret-file", str(work / "secret"), "--tile-cache-mb", str(args.tile_cache_mb)]
        if args.endpoint:
            bucket = f"bench-{random.Random().randrange(16**8):08x}"
            upload(args.endpoint, bucket, pieces)
            s3 = boto3.resource("s3", endpoint_url=args.endpoint).Bucket(bucket)
            stack.callback(s3.delete)
            stack.callback(lambda: s3.objects.all().delete())
            s3.put_object(Key=f"cases/{case_key(CASE, CASE_RECORD)}", Body=case_record())
            serve += ["--store", f"s3://{bucket}/cases", "--endpoint-url", args.endpoint]
        else:
            write_local(work / "store", pieces)
            (work / "store" / case_key(CASE, CASE_RECORD)).write_bytes(case_record())
            serve += ["--store", str(work / "store")]
        port = free_port()
        log = stack.enter_context((work / "serve.log").open("wb"))
        server = subprocess.Popen([*serve, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log)
        stack.callback(server.wait, timeout=30)
        stack.callback(server.terminate)
        wait_until_up(f"http://127.0.0.1:{port}", server)
        token = Tokens(SECRET).issue(case_scope(CASE), timedelta(hours=2))
        image = httpx.get(f"http://127.0.0.1:{port}/api/cases/{CASE}/{SlideRef(CASE).path}/image",
                          headers={"Authorization": f"Bearer {token}"}, timeout=30).json()  # fmt: skip

        link = stack.enter_context(EmulatedLink(args.profile, ("127.0.0.1", port), slot=free_slot()))
        url = f"{link.endpoint_url}/view/{CASE}#token={token}"
        playwright = stack.enter_context(sync_playwright())
        flags = CHROMIUM_ARGS + ([] if args.webgl else [NO_WEBGL])
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        stack.callback(browser.close)
        chromium, delay_by = browser.version, "netem" if link.netem else "relay"

        load_before = os.getloadavg()
        opens: list[dict[str, Any]] = []
        moves: dict[str, list[dict[str, float]]] = {"jump": [], "glide": []}
        pool: list[tuple[int, int, int, int]] = []
        drawer = ""
        for number in range(args.runs):
            page, opened = open_case(browser, url)
            opens.append(opened)
            if not pool:  # the view's size is known once the page is laid out
                view = page.evaluate("(({ clientWidth, clientHeight }) => [clientWidth, clientHeight])(document.getElementById('slide'))")
                pool = regions(chunks, chunk, view, args.seed)
                drawer = page.evaluate("window.__bench.viewer.drawer.getType()")
                if len(pool) < 2 * args.fov:
                    raise SystemExit(f"only {len(pool)} disjoint tissue regions of {view[0]}x{view[1]} px; need {2 * args.fov}")
            page.wait_for_timeout(300)  # the page's other first requests (thumbnail, annotations) are done
            start = number * 2 * args.fov  # a fresh context per run: regions repeat across runs only if the pool is short
            picked = [pool[(start + k) % len(pool)] for k in range(2 * args.fov)]
            for kind, regions_of_kind in (("jump", picked[: args.fov]), ("glide", picked[args.fov :])):
                for region in regions_of_kind:
                    moves[kind].append(move(page, region, immediate=kind == "jump"))
            page.context.close()
            jumps = [m["sharp_ms"] for m in moves["jump"][-args.fov :]]
            print(f"run {number + 1}: open -> first tile {opened['first_tile_ms']:6.0f} ms, sharp {opened['sharp_ms']:6.0f} ms;"
                  f"  FOV jump -> sharp {min(jumps):.0f}-{max(jumps):.0f} ms", flush=True)
        load_after = os.getloadavg()

    figures = {
        "open_first_tile_ms": summary([o["first_tile_ms"] for o in opens]),
        "open_first_tile_from_goto_ms": summary([o["first_tile_from_goto_ms"] for o in opens]),
        "open_viewer_ms": summary([o["viewer_ms"] for o in opens]),
        "open_sharp_ms": summary([o["sharp_ms"] for o in opens]),
        "fov_jump_sharp_ms": summary([m["sharp_ms"] for m in moves["jump"]]),
        "fov_jump_level0_asked_ms": summary([m["level0_asked_ms"] for m in moves["jump"]]),
        "fov_jump_level0_fetched_ms": summary([m["level0_fetched_ms"] for m in moves["jump"]]),
        "fov_glide_sharp_ms": summary([m["sharp_ms"] for m in moves["glide"]]),
        "fov_glide_blurred_after_stop_ms": summary([m["sharp_ms"] - m["still_ms"] for m in moves["glide"]]),
        "fov_level0_tiles": summary([m["level0_tiles"] for m in moves["jump"] + moves["glide"]]),
        "fov_level0_kb": summary([m["level0_kb"] for m in moves["jump"] + moves["glide"]]),
    }
    profile = PROFILES[args.profile]
    rows = [
        ("open -> first tile (from navigation start)", "open_first_tile_ms", GOALS_MS["open"]),
        ("open -> first tile (from page.goto)", "open_first_tile_from_goto_ms", GOALS_MS["open"]),
        ("  of which: until the viewer was created", "open_viewer_ms", None),
        ("open -> home view sharp", "open_sharp_ms", None),
        ("FOV jump -> sharp", "fov_jump_sharp_ms", GOALS_MS["fov"]),
        ("  first level-0 tile asked for", "fov_jump_level0_asked_ms", None),
        ("  last level-0 tile arrived", "fov_jump_level0_fetched_ms", None),
        ("FOV glide -> sharp (1.2 s animation in it)", "fov_glide_sharp_ms", None),
        ("FOV glide: blurred after it stopped", "fov_glide_blurred_after_stop_ms", GOALS_MS["fov"]),
        ("level-0 tiles fetched per FOV change", "fov_level0_tiles", None),
        ("kB of them per FOV change", "fov_level0_kb", None),
    ]
    machine = (f"{os.cpu_count()} cores shared by chromium, the server, the S3 server and the link; load average "
               f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    print(f"\n{args.slide.name} ({image['width']}x{image['height']} px, {chunk} px tiles), {args.profile}: down "
          f"{profile.down_mbit:g} Mbit/s, up {profile.up_mbit:g}, RTT {profile.rtt_ms:g} +- {profile.jitter_ms:g} ms "
          f"({delay_by} delay); {args.runs} cold opens, {len(moves['jump'])} jumps, "
          f"{len(moves['glide'])} glides; OpenSeadragon drawer: {drawer}")  # fmt: skip
    print(f"{'':46s} {'median':>8s} {'min':>8s} {'max':>8s}   goal")
    for label, key, goal in rows:
        f = figures[key]
        unit = "" if key.endswith(("tiles", "kb")) else " ms"
        verdict = "" if goal is None else f"<= {goal} ms  {'met' if f['median'] <= goal else 'MISSED'}"
        print(f"{label:46s} {f['median']:8.0f} {f['min']:8.0f} {f['max']:8.0f}{unit:3s} {verdict}")
    print(machine)
    report = {
        "slide": args.slide.name,
        "image": {"width": image["width"], "height": image["height"], "tile_size": chunk, "levels": len(image["levels"])},
        "store": "s3" if args.endpoint else "local directory",
        "link": {"profile": args.profile, "down_mbit": profile.down_mbit, "up_mbit": profile.up_mbit, "rtt_ms": profile.rtt_ms,
                 "jitter_ms": profile.jitter_ms, "delay_by": delay_by},
        "browser": {"chromium": chromium, "flags": flags, "window": WINDOW, "drawer": drawer},
        "runs": args.runs,
        "fov_per_run": args.fov,
        "seed": args.seed,
        "goals_ms": GOALS_MS,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": machine,
        "figures": figures,
        "opens": opens,
        "moves": moves,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_browser.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {OUT / 'bench_browser.json'}")


if __name__ == "__main__":
    main()
