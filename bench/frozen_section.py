"""The headline benchmark: how much earlier can the remote pathologist start than with a plain upload?

Over an emulated link (bench/link.py: `5g`, `4g`; needs root) and one slide (default: the 1.6 GB derived slide from
bench/make_large_slide.py), in one run per link:
  baseline     boto3 `upload_file` of the slide file (boto3's defaults). Nothing is viewable, no heatmap exists and
               no tissue is readable before the last byte (the receiving side must still open or convert the file,
               which this baseline does not even count).
  slidestream  `slidestream send --edge --json`: edge triage, conversion and upload at once.
  send         (with --plain-send) `slidestream send --json` without edge triage: the transfer alone.
  first views  (--first-views N, default 5) N more cold starts of `send --edge`, each stopped once its overview is
               readable: one run measures a ~1 s first view to +-0.3 s on a 2-core machine shared with the server.
  watch        (with --watch) a `slidestream watch` already running, as on a technician's station: timed from the
               moment the slide is complete in its hot folder (renamed from a temporary name, as scanners finish).
  hub          (with --hub) `send --edge` while a `slidestream hub` runs on the same prefix (here on the same two
               cores as the send and the server; a centre runs it on its own machine): when the hub's first
               full-magnification map is readable, when it covers the hottest region (the top region of its last
               map, final once complete: its tiles at or above the threshold), and when it covers all tissue
               (waited for up to --hub-wait seconds: the 1.6 GB slide is ~48,000 model calls, hours on 2 cores), and
               when the image is complete: the hub has built the in-between levels the send leaves out (pyramid.json).
               At its end, how well the edge map foretold the hub's final one (issue #27, `edge_agreement`).
Every send registers a colorectal specimen (CONTEXT) and the derived slides record 0.499 um/px, so the default model
is validated for them and both the station and the hub score them (otherwise: "no validated AI", QC only). The edge
map is the station's (stations/{station}/.../triage.json and heatmap.zarr), the hub's map the centre's (centre/...).
A poller reads the server directly (not through the link; every 20 ms until the overview, then every 0.25 s) and
notes when the overview, the triage heatmap (triage.json, once a tile is scored) and all level-0 tissue became
readable there, and how many bytes had arrived. Each link's capacity is measured in the same run: one bulk TCP
stream through the same emulated link (the best any protocol on top can do), so link use is reported against the
nominal rate and that capacity.

    python bench/frozen_section.py                       # derived-large.svs over 5g and 4g, moto server
    eval "$(.ci/s3-server start)"                        # or Ceph RGW (keep-alive, like AWS): the README's figures
                                                         # (SLIDESTREAM_S3_CEPH_MEMSTORE_GB=10 for the large slide with
                                                         # --hub: its runs keep ~5.5 GB until the link's last one)
    python bench/frozen_section.py --profiles 5g --endpoint http://127.0.0.1:PORT   # e.g. the Ceph RGW of .ci/s3-server
    python bench/frozen_section.py --slide bench/out/derived-small.svs --profiles 4g
    python bench/frozen_section.py --plain-send --endpoint "$SLIDESTREAM_TEST_S3_ENDPOINT"   # issue 4's figures too
    python bench/frozen_section.py --slide bench/out/derived-small.svs --profiles 5g --first-views 0 --hub \
        --endpoint "$SLIDESTREAM_TEST_S3_ENDPOINT"                                       # issue 27's figures

Writes bench/out/frozen_section.json (every link of the run), frozen_section-<link>.json and frozen_section-<link>.png
(bytes on the server over time, with the milestones of both), and prints the table with the targets: overview <= 1% of the baseline's upload time,
heatmap <= 25%, all tissue at full resolution no later than the baseline; with --hub, issue 27's table too (the hottest
region scored at the hub in under 10% of the baseline's time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

from caseformat.results import Triage

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from link import PROFILES, EmulatedLink  # noqa: E402
from measure_link import OUT, echo_sink, empty_bucket, measure_tcp, s3_endpoint  # noqa: E402
from measure_link import client as s3  # noqa: E402

LINK_SLOT = 9
STATION = "bench"  # the station every send and watch of the benchmark is: its cases are bench.{local}
SETTLE = 30  # seconds for the server to free deleted objects before the next link's runs
# what every send registers (as tests/support/__init__.py:colorectal_context): the site the default model is validated for
CONTEXT = {"specimen_site": "sigmoid colon", "clinical_question": "margin?"}
TOP_SHARE = 0.05  # issue 27: is the final map's hottest region among the edge map's top 5% of tissue tiles?


def baseline(slide: Path, via: str, bucket: str) -> dict[str, Any]:
    """upload_file with a byte-count timeline (client side: what has been handed over and acknowledged)."""
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    lock = threading.Lock()
    started = time.monotonic()

    def sent(count: int) -> None:
        with lock:
            timeline.append((time.monotonic() - started, timeline[-1][1] + count))

    boto3.client("s3", endpoint_url=via).upload_file(str(slide), bucket, f"baseline/{slide.name}", Callback=sent)  # all defaults
    seconds = time.monotonic() - started
    return {"load": os.getloadavg(), "overview": seconds, "heatmap": seconds, "full_resolution": seconds, "complete": seconds,
            "bytes_sent": slide.stat().st_size, "mbit_s": slide.stat().st_size * 8 / seconds / 1e6, "timeline": timeline[:: max(1, len(timeline) // 400)] + [(seconds, slide.stat().st_size)]}  # fmt: skip


def slide_root(bucket: str, case: str, prefix: str = "cases") -> str:
    """The key prefix of the case's first slide, first version: what one send of it writes."""
    from transfer.target import Destination

    return Destination(None, bucket, prefix, case).root


def centre_root(bucket: str, case: str, prefix: str = "cases") -> str:
    """The key prefix of the centre's results of the case's first slide, first version: what the hub writes."""
    from transfer.target import Destination

    destination = Destination(None, bucket, prefix, case)
    return destination.key(destination.ref.centre_root) + "/"


def read_triage(client: Any, bucket: str, key: str) -> tuple[str | None, Triage | None]:
    """The triage.json at `key` and its ETag, (None, None) while there is none, read as every reader does: a map is
    readable once it shows a scored tile (`Triage.tiles_scored`), never while it says "0 of N tiles"."""
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None, None
    return answer["ETag"], Triage.read(answer["Body"].read())


def poll(endpoint: str, bucket: str, case: str | None, started: float, found: dict[str, Any], stop: threading.Event, edge: bool,
         prefix: str = "cases") -> None:
    """Milestones as the server shows them; `case` None: the first case the station's `_arrivals/` index names (a
    watch)."""
    client = s3(endpoint)
    found["timeline"] = [(0.0, 0)]
    while case is None and not stop.is_set():
        from caseformat.layout import SlideRef, arrivals_folder

        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{arrivals_folder(STATION)}").get("Contents", [])
        ref = SlideRef.from_arrival(listed[0]["Key"]) if listed else None
        case = ref.case if ref else None
        time.sleep(0.02)
    root = slide_root(bucket, case or "", prefix)
    while not stop.is_set():
        now = time.monotonic() - started
        try:
            manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{root}manifest.json")["Body"].read())
        except client.exceptions.NoSuchKey:
            manifest = None
        if manifest:
            found["timeline"].append((now, manifest["bytes_sent"]))
            if manifest["complete"] and "complete" not in found:
                found["complete"], found["bytes_sent"] = now, manifest["bytes_sent"]
            for name, key in (("overview", "overview"), ("full_resolution", "tissue_full_resolution")):
                if name not in found and manifest["milestones"].get(key) is not None:
                    found[name], found[f"{name}_bytes"] = now, manifest["bytes_sent"]
        if "heatmap" not in found and "edge_refused" not in found and edge and "overview" in found:  # edge triage starts after the overview
            _, triage = read_triage(client, bucket, f"{root}triage.json")  # the station's own: the edge map
            if triage is not None and triage.refused is not None:
                found["edge_refused"] = triage.refused  # no map will come: the model is not validated for the slide
            elif triage is not None and triage.tiles_scored > 0:
                found["heatmap"] = now
                found["heatmap_bytes"] = manifest["bytes_sent"] if manifest else 0
        time.sleep(0.25 if "overview" in found else 0.02)  # each look costs ~3 ms of CPU, which the send shares


def hub_watch(endpoint: str, bucket: str, root: str, edge_root: str, started: float, found: dict[str, Any], stop: threading.Event) -> None:
    """Note when the hub's map is first readable, when it covers the hottest region, and when all tissue (`root`: the
    centre's folder of the slide version, where the hub writes its map and its pyramid record; `edge_root`: the
    station's, where the edge map lies).

    The hottest region is the top region of the hub's last map (the final one once complete): its tiles at or above
    the threshold, not its box's corners. Each map the hub publishes (one per pass of ~10 s) is kept as the set of
    tiles it measured, so the time the region (and the map's hottest tile) was first covered is known once the
    region is. A slide the model may not score gets the hub's refusal (QC only) instead of a map: noted as
    `hub_refused`, and the watch ends there. At the end the last map is held against the edge map
    (`edge_agreement`)."""
    import numpy as np

    client = s3(endpoint)
    measured: list[tuple[float, Any]] = []  # (seconds, tiles measured) of each hub map published
    last_triage: Triage | None = None
    last_state: Any = None
    last = None
    while not stop.is_set() and not hub_finished(found):
        if "pyramid_complete" not in found:  # the in-between levels, built at the hub: the image is complete
            try:
                if json.loads(client.get_object(Bucket=bucket, Key=f"{root}pyramid.json")["Body"].read()).get("complete"):
                    found["pyramid_complete"] = time.monotonic() - started
            except client.exceptions.NoSuchKey:
                pass
        tag, triage = read_triage(client, bucket, f"{root}triage.json")
        if tag != last and triage is not None and triage.stage == "hub":
            last = tag
            now = time.monotonic() - started
            state = tile_state(endpoint, bucket, root)
            if triage.tiles_scored > 0:  # a map of "0 of N tiles" shows nothing yet
                found.setdefault("hub_first", now)
            if state is not None:
                measured.append((now, state[3] == 1))
                last_triage, last_state = triage, state
            if triage.refused is not None and triage.complete:
                found["hub_refused"] = triage.refused
            elif triage.complete:
                found["hub_complete"] = now
            found["hub_tiles"], found["hub_tissue_tiles"] = triage.tiles_scored, triage.tissue_tiles
        time.sleep(0.5)
    summary = last_triage.summary if last_triage is not None else {}
    regions = summary.get("top_regions") or []
    if regions and last_triage is not None and last_state is not None:
        tile, box = summary["tile_level0_px"], regions[0]
        rows = slice(int(box["y"] // tile), int(-(-(box["y"] + box["height"]) // tile)))
        cols = slice(int(box["x"] // tile), int(-(-(box["x"] + box["width"]) // tile)))
        hot = np.zeros(last_state.shape[1:], bool)
        hot[rows, cols] = np.nan_to_num(last_state[0][rows, cols], nan=-1.0) >= summary["threshold"]
        found["hub_hot_tiles"], found["hub_hot_final"] = int(hot.sum()), last_triage.complete
        found["hub_hot"] = next((when for when, done in measured if bool(done[hot].all())), None)
        hottest = np.unravel_index(np.argmax(np.where(last_state[3] == 1, np.nan_to_num(last_state[0], nan=-1.0), -1.0)), hot.shape)
        found["hub_hottest_tile"] = next((when for when, done in measured if bool(done[hottest])), None)
        edge = tile_state(endpoint, bucket, edge_root)
        if edge is not None:
            found["agreement"] = edge_agreement(edge, last_state, hot)


def tile_state(endpoint: str, bucket: str, root: str) -> Any:
    """The exact per-tile results of the map under `root` (caseformat.layout.TILE_STATE: score, focus, pen, measured),
    None while there is none."""
    import numpy as np
    import zarr

    from caseformat.layout import HEATMAP, TILE_STATE
    from objectstore.location import Location

    try:
        state = zarr.open_group(Location(f"s3://{bucket}/{root}{HEATMAP}", endpoint).zarr_store(), mode="r")[TILE_STATE]
    except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    assert isinstance(state, zarr.Array)
    return np.asarray(state[:])


def edge_agreement(edge: Any, final: Any, hot: Any) -> dict[str, Any]:
    """How well the edge map (its ~80 sampled tiles) foretold the hub's final map, both tile states (4, rows, cols);
    `hot`: the final map's hottest region (a mask on its grid). The edge map is put on the final map's grid (nearest
    tile; the two are planned alike, so normally it is the same grid).
      spearman        rank correlation over the tiles both scored (scipy.stats.spearmanr), with their count `tiles`:
                      the same tiles at the same resolution, so it shows the two score alike, not that the edge foresaw
      spearman_filled the same over all tissue tiles, each taking its nearest sampled tile's edge score: how well
                      the edge's ~80 tiles foretell the rest
      hottest_in_top  the final map's hottest tile is among the top TOP_SHARE of tissue tiles of that filled map;
                      `hottest_edge_rank`: the share of tissue tiles that map puts above it
      hot_in_top      the share of the hottest region's tiles that are, and `hottest_sampled`: the edge scored it"""
    import numpy as np
    from scipy import ndimage, stats

    rows = np.arange(final.shape[1]) * edge.shape[1] // final.shape[1]
    cols = np.arange(final.shape[2]) * edge.shape[2] // final.shape[2]
    edge = edge[:, rows[:, None], cols[None, :]]
    sampled = (edge[3] == 1) & np.isfinite(edge[0])
    tissue = (final[3] == 1) & np.isfinite(final[0])
    both = sampled & tissue
    if not both.any():
        return {"spearman": None, "tiles": 0, "sampled_tiles": int(sampled.sum()), "tissue_tiles": int(tissue.sum())}
    spearman = float(stats.spearmanr(edge[0][both], final[0][both]).statistic) if both.sum() >= 3 else None
    _, (near_rows, near_cols) = ndimage.distance_transform_edt(~sampled, return_indices=True)
    filled = edge[0][near_rows, near_cols]
    top = tissue & (filled >= np.quantile(filled[tissue], 1 - TOP_SHARE))
    hottest = np.unravel_index(np.argmax(np.where(tissue, final[0], -np.inf)), tissue.shape)
    region = hot & tissue
    return {"spearman": spearman, "tiles": int(both.sum()), "sampled_tiles": int(sampled.sum()), "tissue_tiles": int(tissue.sum()),
            "spearman_filled": float(stats.spearmanr(filled[tissue], final[0][tissue]).statistic),
            "top_tiles": int(top.sum()), "hottest_in_top": bool(top[hottest]), "hottest_sampled": bool(sampled[hottest]),
            "hottest_edge_rank": float((filled[tissue] > filled[hottest]).mean()),
            "hot_in_top": float(top[region].mean()) if region.any() else None}  # fmt: skip


def hub_finished(found: dict[str, Any]) -> bool:
    """The hub has said its last on the slide: the image is complete and so is its map of all tissue, or its refusal."""
    return "pyramid_complete" in found and bool({"hub_complete", "hub_refused"} & found.keys())


def slidestream(slide: Path, endpoint: str, via: str, bucket: str, edge: bool = True, overview_only: bool = False,
                hub_wait: float | None = None) -> dict[str, Any]:
    """One `slidestream send` from the launch of the command; `overview_only` stops it (Ctrl-C) at the first view.
    With `hub_wait`, a `slidestream hub` runs on the prefix from before the send until its map covers all tissue or
    `hub_wait` seconds have passed since the send ended."""
    from caseformat.layout import qualified_case

    local = f"frozen-{uuid.uuid4().hex[:8]}"
    case = qualified_case(STATION, local)
    found: dict[str, Any] = {}
    stop = threading.Event()
    hub = None
    # the hub's run has a prefix of its own: on the other runs' prefix it would first score their cases, which
    # were registered earlier and so have less time left
    prefix = "cases" if hub_wait is None else f"hub-{local}"
    if hub_wait is not None:
        hub = subprocess.Popen([sys.executable, "-m", "slidestream", "hub", f"s3://{bucket}/{prefix}", "--endpoint-url", endpoint,
                                "--poll", "0.5"], stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert hub.stderr is not None
        hub_lines = [hub.stderr.readline()]  # "hub ... watching": torch and the model are loaded
        # the rest of its lines (FOUND, PARTIAL, DONE, ERROR) are kept, so that its pipe never fills and blocks it
        threading.Thread(target=lambda: hub_lines.extend(hub.stderr), daemon=True).start()  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as state, tempfile.TemporaryDirectory() as specimen:
        context = Path(specimen) / "specimen.json"
        context.write_text(json.dumps(CONTEXT))
        command = [sys.executable, "-m", "slidestream", "send", str(slide), f"s3://{bucket}/{prefix}", "--endpoint-url", via,
                   "--case", local, "--station", STATION, "--state-dir", state, "--context-file", str(context),
                   "--edge" if edge else "--no-edge", "--json"]  # fmt: skip
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        poller = threading.Thread(target=poll, args=(endpoint, bucket, case, started, found, stop, edge, prefix), daemon=True)
        poller.start()
        hub_stop = threading.Event()
        if hub is not None:
            watcher = threading.Thread(target=hub_watch, args=(endpoint, bucket, centre_root(bucket, case, prefix), slide_root(bucket, case, prefix),
                                                               started, found, hub_stop), daemon=True)  # fmt: skip
            watcher.start()
        if overview_only:
            while "overview" not in found and process.poll() is None and time.monotonic() - started < 60:
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate()
        found["complete"] = time.monotonic() - started
        found["load"] = os.getloadavg()  # 1, 5 and 15 minutes: the machine is shared
        time.sleep(0.5)
        stop.set()
        poller.join()
        if hub is not None:
            until = time.monotonic() + (hub_wait or 0.0)
            while not hub_finished(found) and time.monotonic() < until and hub.poll() is None:
                time.sleep(1)
            hub_stop.set()
            watcher.join()
            hub.terminate()
            hub.wait(30)
            found["hub_load"] = os.getloadavg()
            found["hub_log"] = [line.rstrip() for line in hub_lines[-200:]]
    if overview_only:
        if "overview" not in found:
            raise SystemExit(f"slidestream send showed no overview in 60 s: {stderr.strip()[-2000:]}")
        return found
    if process.returncode != 0:
        raise SystemExit(f"slidestream send failed ({process.returncode}): {stderr.strip()}")
    summary = json.loads(stdout)
    found["bytes_sent"] = summary["bytes_sent"]
    found["mbit_s"] = summary["bytes_sent"] * 8 / found["complete"] / 1e6
    found["summary"] = summary
    return found


def first_views(slide: Path, endpoint: str, via: str, bucket: str, runs: int) -> dict[str, Any]:
    """Cold `send --edge` starts, each stopped once its overview is readable. The first view takes about a second,
    which a single run measures to +-0.3 s here: the send, the S3 server and the link relay share two cores."""
    seconds = []
    for _ in range(runs):
        seconds.append(slidestream(slide, endpoint, via, bucket, overview_only=True)["overview"])
        time.sleep(2)  # the stopped send's processes are gone
    return {"seconds": seconds, "median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def watched(slide: Path, endpoint: str, via: str, bucket: str, timeout: float) -> dict[str, Any]:
    """A technician's station: `slidestream watch` (edge triage on, its default) already runs when the scanner
    finishes. The slide is staged in the hot folder under a temporary name, which watch ignores, and the clock starts
    when it is renamed to its own name: the moment a scanner that writes `.part` files completes one."""
    found: dict[str, Any] = {}
    stop = threading.Event()
    with tempfile.TemporaryDirectory(dir=slide.parent) as folder, tempfile.TemporaryDirectory() as state:
        hot = Path(folder)
        staged = hot / f"{slide.name}.part"
        try:
            os.link(slide, staged)  # same file system: no copy of 1.6 GB
        except OSError:
            shutil.copyfile(slide, staged)
        command = [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/cases", "--endpoint-url", via, "--station", STATION,
                   "--state-dir", state]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        process.stderr.readline()  # "watching ...": its imports are done
        time.sleep(2)  # and it has looked at the folder a few times
        started = time.monotonic()
        staged.rename(hot / slide.name)
        poller = threading.Thread(target=poll, args=(endpoint, bucket, None, started, found, stop, True), daemon=True)  # watch names the case
        poller.start()
        while "complete" not in found and time.monotonic() - started < timeout and process.poll() is None:
            time.sleep(0.25)
        stop.set()
        poller.join()
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    if "complete" not in found:
        raise SystemExit(f"slidestream watch did not complete the slide in {timeout:.0f} s: {stderr.strip()[-2000:]}")
    found["mbit_s"] = found["bytes_sent"] * 8 / found["complete"] / 1e6
    return found


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name, colour in (("baseline", "tab:grey"), ("slidestream", "tab:blue"), ("watch", "tab:green")):
        if name not in result:
            continue
        run = result[name]
        xs, ys = zip(*run["timeline"])
        axes.plot(xs, [y / 1e6 for y in ys], color=colour, label=f"{name} (MB on the server)")
        for milestone, marker in (("overview", "o"), ("heatmap", "s"), ("full_resolution", "^")):
            if run.get(milestone) is not None:
                axes.axvline(run[milestone], color=colour, linestyle=":", linewidth=0.8)
                axes.plot([run[milestone]], [0], marker=marker, color=colour, markersize=9, clip_on=False,
                          label=f"{name}: {milestone.replace('_', ' ')} {run[milestone]:.1f} s")  # fmt: skip
    axes.set_xlabel("seconds since the start")
    axes.set_ylabel("MB readable on the server")
    axes.set_title(f"{result['slide']} over the emulated {result['link']} link ({result['link_up_mbit']:g} Mbit/s up)")
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=OUT / "derived-large.svs")
    parser.add_argument("--profiles", nargs="+", default=["5g", "4g"], choices=sorted(PROFILES))
    parser.add_argument("--endpoint", help="S3 endpoint on this machine (default: start moto)")
    parser.add_argument("--plain-send", action="store_true", help="also time `slidestream send` without edge triage (the transfer alone)")
    parser.add_argument("--first-views", type=int, default=5, metavar="N", help="cold `send --edge` starts stopped at the overview, for its median (default 5; 0: none)")
    parser.add_argument("--watch", action="store_true", help="also time a running `slidestream watch`, from the moment the slide is complete in its hot folder")
    parser.add_argument("--hub", action="store_true", help="also time `send --edge` with a `slidestream hub` running: its first map, the hottest region, all tissue")
    parser.add_argument("--hub-wait", type=float, default=600.0, metavar="S", help="seconds after the send to wait for the hub's map of all tissue (default 600)")
    args = parser.parse_args()
    if not args.slide.exists():
        raise SystemExit(f"{args.slide}: missing (python bench/make_large_slide.py)")
    OUT.mkdir(parents=True, exist_ok=True)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)  # moto accepts any; a given --endpoint uses the caller's credentials
    results = []
    with s3_endpoint(args.endpoint) as endpoint, echo_sink() as sink:
        bucket = f"frozen-{uuid.uuid4().hex[:8]}"
        s3(endpoint).create_bucket(Bucket=bucket)
        split = urlsplit(endpoint)
        for profile in args.profiles:
            print(f"{profile}: link capacity (one bulk TCP stream) ...", file=sys.stderr, flush=True)
            with EmulatedLink(profile, sink, slot=LINK_SLOT) as link:
                capacity = measure_tcp((link.names.server_ip, link.port), megabytes=int(PROFILES[profile].up_mbit // 2))["tcp_mbit_s"]
            runs: dict[str, dict[str, Any]] = {}
            with EmulatedLink(profile, (split.hostname or "127.0.0.1", split.port or 80), slot=LINK_SLOT) as link:
                # objects are deleted only after the last run: a server freeing gigabytes (Ceph's garbage collection)
                # would take the CPU from the next run on this machine, which a remote server never does
                print(f"{profile}: baseline upload_file ...", file=sys.stderr, flush=True)
                runs["baseline"] = baseline(args.slide, link.endpoint_url, bucket)
                if args.plain_send:
                    print(f"{profile}: slidestream send ...", file=sys.stderr, flush=True)
                    runs["send"] = slidestream(args.slide, endpoint, link.endpoint_url, bucket, edge=False)
                print(f"{profile}: slidestream send --edge ...", file=sys.stderr, flush=True)
                runs["slidestream"] = slidestream(args.slide, endpoint, link.endpoint_url, bucket)
                if args.first_views:
                    print(f"{profile}: {args.first_views} cold starts of slidestream send --edge, to the overview ...", file=sys.stderr, flush=True)
                    first = first_views(args.slide, endpoint, link.endpoint_url, bucket, args.first_views)
                if args.watch:
                    print(f"{profile}: slidestream watch (running before the slide is complete) ...", file=sys.stderr, flush=True)
                    runs["watch"] = watched(args.slide, endpoint, link.endpoint_url, bucket, timeout=3 * runs["baseline"]["complete"])
                if args.hub:
                    print(f"{profile}: slidestream send --edge with a hub running ...", file=sys.stderr, flush=True)
                    runs["hub"] = slidestream(args.slide, endpoint, link.endpoint_url, bucket, hub_wait=args.hub_wait)
            empty_bucket(endpoint, bucket)
            time.sleep(SETTLE)
            result = {"link": profile, "link_up_mbit": PROFILES[profile].up_mbit, "link_tcp_mbit": capacity, "slide": args.slide.name,
                      "source_bytes": args.slide.stat().st_size, **runs}  # fmt: skip
            full = runs["baseline"]["complete"]
            ours = runs["slidestream"]
            result["targets"] = {
                "overview_share_of_baseline": ours.get("overview", float("nan")) / full,
                "heatmap_share_of_baseline": ours.get("heatmap", float("nan")) / full,
                "full_resolution_share_of_baseline": ours.get("full_resolution", float("nan")) / full,
            }
            if args.first_views:
                result["first_views"] = first
                result["targets"]["median_first_view_share_of_baseline"] = first["median"] / full
            if "watch" in runs:
                result["targets"]["watch_overview_share_of_baseline"] = runs["watch"].get("overview", float("nan")) / full
            for run in runs.values():
                run["link_use"] = run["mbit_s"] / PROFILES[profile].up_mbit
                run["link_use_of_tcp_capacity"] = run["mbit_s"] / capacity
            results.append(result)
            (OUT / f"frozen_section-{profile}.json").write_text(json.dumps(result, indent=2))
            plot(result, OUT / f"frozen_section-{profile}.png")
            print_row(result)
        s3(endpoint).delete_bucket(Bucket=bucket)
    (OUT / "frozen_section.json").write_text(json.dumps(results, indent=2))


def print_row(result: dict[str, Any]) -> None:
    targets = result["targets"]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:7.1f} s"

    print(f"{result['link']} ({result['slide']}, {result['source_bytes'] / 1e9:.2f} GB; link {result['link_up_mbit']} Mbit/s nominal, "
          f"{result['link_tcp_mbit']:.1f} Mbit/s for one bulk TCP stream):")  # fmt: skip
    print(f"  {'':12s} {'overview':>10s} {'heatmap':>10s} {'full-res tissue':>16s} {'complete':>10s} {'bytes sent':>12s} {'/source':>7s} "
          f"{'Mbit/s':>8s} {'of nominal':>10s} {'of TCP':>7s}")  # fmt: skip
    for name in ("baseline", "send", "slidestream", "watch", "hub"):
        if name not in result:
            continue
        run = result[name]
        print(f"  {name:12s} {fmt(run.get('overview')):>10s} {fmt(run.get('heatmap')):>10s} {fmt(run.get('full_resolution')):>16s} "
              f"{fmt(run.get('complete')):>10s} {run['bytes_sent'] / 1e6:10.1f} MB {run['bytes_sent'] / result['source_bytes']:7.2f} "
              f"{run['mbit_s']:8.1f} {run['link_use']:10.1%} "
              f"{run['link_use_of_tcp_capacity']:7.1%}")  # fmt: skip
    print(f"  overview at {targets['overview_share_of_baseline']:.2%} of the baseline (target <= 1%), heatmap at "
          f"{targets['heatmap_share_of_baseline']:.1%} (<= 25%), full-resolution tissue at {targets['full_resolution_share_of_baseline']:.1%} (<= 100%)")  # fmt: skip
    if "hub" in result:
        hub, full = result["hub"], result["baseline"]["complete"]

        def share(name: str) -> str:
            return "-" if hub.get(name) is None else f"{hub[name]:.1f} s ({hub[name] / full:.1%} of the baseline)"

        scored = (f"first full-magnification map {share('hub_first')}; the hottest region ({hub.get('hub_hot_tiles')} tiles, "
                  f"{'final' if hub.get('hub_hot_final') else 'partial'} map) {share('hub_hot')}; "
                  f"all tissue {share('hub_complete')} ({hub.get('hub_tiles')}/{hub.get('hub_tissue_tiles')} tiles at the end)")  # fmt: skip
        refused = f"QC only ({hub['hub_refused']})" if hub.get("hub_refused") else None
        print(f"  hub: {refused or scored}; "
              f"the image complete (in-between levels built at the hub) {share('pyramid_complete')}, "
              f"all tissue at full resolution {share('full_resolution')}, {hub['bytes_sent'] / result['source_bytes']:.2f} of the source bytes sent")  # fmt: skip
    if "hub" in result:
        print_edge_and_hub(result)
    if "first_views" in result:
        first = result["first_views"]
        print(f"  {len(first['seconds'])} cold starts of send --edge: overview after {first['median']:.2f} s median ({first['min']:.2f}-{first['max']:.2f} s), "
              f"{targets['median_first_view_share_of_baseline']:.2%} of the baseline")  # fmt: skip



def print_edge_and_hub(result: dict[str, Any]) -> None:
    """Issue 27's figures of one link, against the plain upload of the same run, with the load average (1, 5, 15 min)
    at the end of each run: the baseline, the send alone, the send beside the hub, and the hub (its last row)."""
    baseline, alone, hub = result["baseline"], result["slidestream"], result["hub"]
    full = baseline["complete"]
    agreement = hub.get("agreement") or {}

    def load(run: dict[str, Any], key: str = "load") -> str:
        return "load " + " ".join(f"{value:.2f}" for value in run[key]) if run.get(key) else ""

    def timed(run: dict[str, Any], name: str, goal: str = "") -> str:
        value = run.get(name)
        return "-" if value is None else f"{value:7.1f} s  {value / full:6.1%} of the plain upload{goal}"

    rows = [("plain upload (boto3 upload_file)", f"{full:7.1f} s", load(baseline)),
            ("edge map readable (send --edge)", hub.get("edge_refused") or timed(alone, "heatmap"), load(alone)),
            ("edge map readable (hub run)", hub.get("edge_refused") or timed(hub, "heatmap"), load(hub)),
            ("hub's first map", hub.get("hub_refused") or timed(hub, "hub_first"), ""),
            (f"hub scored the hottest region ({hub.get('hub_hot_tiles')} tiles)", timed(hub, "hub_hot", " (goal < 10%)"), ""),
            ("hub scored the hottest tile", timed(hub, "hub_hottest_tile"), ""),
            (f"hub's map of all tissue ({hub.get('hub_tiles')}/{hub.get('hub_tissue_tiles')} tiles)", timed(hub, "hub_complete"), load(hub, "hub_load")),
            (f"Spearman, edge vs final map ({agreement.get('tiles', 0)} tiles both scored)",
             "-" if agreement.get("spearman") is None else f"{agreement['spearman']:7.2f}", ""),
            (f"Spearman, edge map filled (nearest sample) vs final ({agreement.get('tissue_tiles', 0)} tissue tiles)",
             "-" if agreement.get("spearman_filled") is None else f"{agreement['spearman_filled']:7.2f}", ""),
            (f"final hottest tile in the edge map's top {TOP_SHARE:.0%} ({agreement.get('top_tiles')} tiles)",
             "-" if "hottest_in_top" not in agreement else
             f"{'yes' if agreement['hottest_in_top'] else 'no':>7s}  (edge ranks {agreement['hottest_edge_rank']:.0%} of tissue above it; "
             f"sampled: {'yes' if agreement['hottest_sampled'] else 'no'}; "
             f"hottest region's tiles there: {'-' if agreement['hot_in_top'] is None else format(agreement['hot_in_top'], '.0%')})", "")]  # fmt: skip
    final = "final" if hub.get("hub_hot_final") else "partial: the hub's map was not complete by --hub-wait"
    print(f"  edge map and the hub's priority (issue 27; the hottest region of the hub's last map, {final}):")
    for name, value, when in rows:
        print(f"    {name:70s} {value:48s} {when}".rstrip())


if __name__ == "__main__":
    main()
