"""Conversion benchmark: slidestream's OME-Zarr writer against libvips in one run, on the same slide.

    python bench/make_large_slide.py            # once: bench/out/derived-large.svs (real tissue, Aperio-like)
    python bench/bench_convert.py [SLIDE ...]   # needs `vips` (Debian: apt-get install libvips-tools)

For each slide it reports wall time, level-0 megapixels per second, bytes out / bytes in and peak RSS of:
slidestream convert (pass-through where possible), vips dzsave (DeepZoom JPEG tiles, the usual web pyramid) and
vips tiffsave --pyramid (a tiled JPEG pyramid). Results go to bench/out/bench_convert.json as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openslide

OUT = Path(__file__).parent / "out"


def run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, measured on that child alone."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss * 1024


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(slide: Path, quality: int, with_vips: bool) -> dict:  # type: ignore[type-arg]
    width, height = openslide.OpenSlide(slide).dimensions
    megapixels = width * height / 1e6
    work = OUT / "convert" / slide.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tools = {
        "slidestream": ([sys.executable, "-m", "slidestream", "convert", str(slide), str(work / "slide.ome.zarr"), f"--quality={quality}"], work / "slide.ome.zarr"),
    }
    if with_vips:
        tools["vips dzsave"] = (["vips", "dzsave", str(slide), str(work / "dz"), f"--suffix=.jpg[Q={quality}]", "--tile-size=254", "--overlap=1"], work / "dz_files")
        tools["vips tiffsave --pyramid"] = (
            ["vips", "tiffsave", str(slide), str(work / "pyramid.tif"), "--tile", "--pyramid", "--compression=jpeg", f"--Q={quality}", "--tile-width=256", "--tile-height=256", "--bigtiff"],
            work / "pyramid.tif",
        )
    source_bytes = slide.stat().st_size
    results: dict[str, dict] = {}  # type: ignore[type-arg]
    for name, (command, output) in tools.items():
        seconds, rss = run(command)
        results[name] = {
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(megapixels / seconds, 1),
            "bytes_out_over_in": round(size_of(output) / source_bytes, 3),
            "peak_rss_mb": round(rss / 1e6),
        }
        print(f"  {name:26s} {seconds:8.1f} s {megapixels / seconds:8.1f} MP/s  out/in {results[name]['bytes_out_over_in']:.3f}  peak RSS {rss / 1e6:7.0f} MB", flush=True)
    if with_vips:
        for name in ("vips dzsave", "vips tiffsave --pyramid"):
            results[f"slidestream / {name} time"] = round(results["slidestream"]["seconds"] / results[name]["seconds"], 3)
    shutil.rmtree(work, ignore_errors=True)
    return {"slide": slide.name, "width": width, "height": height, "bytes": source_bytes, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", nargs="*", type=Path, default=[OUT / "derived-large.svs"])
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--no-vips", action="store_true", help="only slidestream (e.g. to compare peak RSS across sizes)")
    args = parser.parse_args()
    if not args.no_vips and shutil.which("vips") is None:
        raise SystemExit("vips not found: apt-get install libvips-tools")
    reports = []
    for slide in args.slides:
        if not slide.exists():
            raise SystemExit(f"{slide}: missing (make it with: python bench/make_large_slide.py)")
        print(f"{slide.name} ({slide.stat().st_size / 1e9:.2f} GB):", flush=True)
        reports.append(bench(slide, args.quality, not args.no_vips))
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_convert.json").write_text(json.dumps(reports, indent=2))
    for report in reports:
        for key, value in report["results"].items():
            if key.startswith("slidestream /"):
                print(f"{report['slide']}: {key} = {value}")


if __name__ == "__main__":
    main()
