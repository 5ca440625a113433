"""Time to first view and to full upload: `slidestream send` vs a plain `boto3 upload_file` of the slide.

For each emulated link (bench/link.py: 5g, 4g) and one slide (default: bench/out/derived-large.svs, made by
bench/make_large_slide.py), it runs
  baseline     boto3 `upload_file` of the original file with boto3's defaults: what a user does without slidestream.
               Nothing can be viewed before the last byte (and the viewer side must still convert the file).
  slidestream  `slidestream send SLIDE s3://... --json` through the same link, converting while it sends.
While the send runs, the bench polls manifest.json directly on the server (not through the link) and notes when the
lowest level was readable and when the whole overview (all levels written whole) was. Times are wall-clock from the
start of each command, start-up included.

    python bench/bench_send.py                  # derived-large.svs over 5g and 4g (needs root), moto server
    python bench/bench_send.py --small          # derived-small.svs, quick
    python bench/bench_send.py --profiles 5g --endpoint http://127.0.0.1:9000
    python bench/bench_send.py --no-link --max-rate 50   # no root: plain server, rate capped by --max-rate only

Writes bench/out/bench_send.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))
from link import PROFILES, EmulatedLink
from measure_link import s3_endpoint  # noqa: E402 - one moto launcher for the bench scripts

LINK_SLOT = 7  # apart from measure_link's and the tests' slots


def s3(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint)


def empty_bucket(endpoint: str, bucket: str) -> None:
    """Free the server's memory between runs (moto keeps objects in RAM)."""
    client = s3(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


def baseline(slide: Path, link_endpoint: str, bucket: str) -> dict[str, Any]:
    """boto3's upload_file with its defaults (8 MiB parts, 10 threads)."""
    started = time.monotonic()
    s3(link_endpoint).upload_file(str(slide), bucket, f"baseline/{slide.name}")
    seconds = time.monotonic() - started
    size = slide.stat().st_size
    return {"seconds_to_first_view": seconds, "seconds_to_full_upload": seconds, "bytes_sent": size, "mbit_s": size * 8 / seconds / 1e6}


def watch_manifest(endpoint: str, bucket: str, key: str, started: float, times: dict[str, float], stop: threading.Event) -> None:
    """Note when the lowest level became readable and when the overview milestone was published."""
    client = s3(endpoint)
    while not stop.is_set() and "overview" not in times:
        try:
            manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except client.exceptions.NoSuchKey:
            time.sleep(0.1)
            continue
        now = time.monotonic() - started
        if manifest["arrived"] and manifest["planned"][0] in manifest["arrived"] and "lowest_level" not in times:
            times["lowest_level"], times["lowest_level_bytes"] = now, manifest["bytes_sent"]
        if manifest["milestones"]["overview"] is not None:
            times["overview"], times["overview_bytes"] = now, manifest["bytes_sent"]
        time.sleep(0.1)


def slidestream_send(slide: Path, endpoint: str, link_endpoint: str, bucket: str, extra: list[str]) -> dict[str, Any]:
    case = f"bench-{uuid.uuid4().hex[:8]}"
    times: dict[str, float] = {}  # seconds, and bytes verified on the server at that moment
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as state:
        command = [sys.executable, "-m", "slidestream", "send", str(slide), f"s3://{bucket}/cases", "--endpoint-url", link_endpoint,
                   "--case", case, "--state-dir", state, "--json", *extra]  # fmt: skip
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watcher = threading.Thread(
            target=watch_manifest, args=(endpoint, bucket, f"cases/{case}/manifest.json", started, times, stop), daemon=True
        )
        watcher.start()
        stdout, stderr = process.communicate()
        seconds = time.monotonic() - started
        stop.set()
        watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"error: slidestream send failed ({process.returncode}): {stderr.strip()}")
    summary = json.loads(stdout)
    total = summary["bytes_total"]
    return {
        "seconds_to_lowest_level": times.get("lowest_level"),
        "seconds_to_first_view": times.get("overview"),
        "share_of_bytes_at_lowest_level": times["lowest_level_bytes"] / total if "lowest_level_bytes" in times else None,
        "share_of_bytes_at_first_view": times["overview_bytes"] / total if "overview_bytes" in times else None,
        "seconds_to_full_upload": seconds,
        "bytes_sent": summary["bytes_sent"],
        "mbit_s": summary["bytes_sent"] * 8 / seconds / 1e6,
        "summary": summary,
    }


def run(slide: Path, profiles: list[str | None], endpoint: str, extra: list[str]) -> list[dict[str, Any]]:
    bucket = f"bench-send-{uuid.uuid4().hex[:8]}"
    s3(endpoint).create_bucket(Bucket=bucket)
    split = urlsplit(endpoint)
    results = []
    for profile in profiles:
        link = EmulatedLink(profile, (split.hostname or "127.0.0.1", split.port or 80), slot=LINK_SLOT) if profile else nullcontext()
        with link as emulated:
            via = emulated.endpoint_url if profile else endpoint
            print(f"{profile or 'direct'}: baseline upload_file ...", file=sys.stderr, flush=True)
            base = baseline(slide, via, bucket)
            empty_bucket(endpoint, bucket)
            print(f"{profile or 'direct'}: slidestream send ...", file=sys.stderr, flush=True)
            ours = slidestream_send(slide, endpoint, via, bucket, extra)
            empty_bucket(endpoint, bucket)
        rate = PROFILES[profile].up_mbit if profile else None
        for result in (base, ours):
            result["link_utilisation"] = result["mbit_s"] / rate if rate else None
            result["bytes_over_source"] = result["bytes_sent"] / slide.stat().st_size
        results.append({"link": profile or "direct", "link_up_mbit": rate, "slide": slide.name, "source_bytes": slide.stat().st_size,
                        "extra_args": extra, "baseline": base, "slidestream": ours})  # fmt: skip
    s3(endpoint).delete_bucket(Bucket=bucket)
    return results


def table(results: list[dict[str, Any]]) -> str:
    def s(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    lines = ["| link | method | lowest level (s) | first view: overview (s) | full upload (s) | Mbit/s (of link) | bytes sent / source |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        for name in ("baseline", "slidestream"):
            m = r[name]
            share = f" ({m['link_utilisation']:.0%})" if m["link_utilisation"] is not None else ""
            lines.append(f"| {r['link']} | {name} | {s(m.get('seconds_to_lowest_level', m['seconds_to_first_view']))} | {s(m['seconds_to_first_view'])} | "
                         f"{s(m['seconds_to_full_upload'])} | {m['mbit_s']:.1f}{share} | {m['bytes_over_source']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, help="default: bench/out/derived-large.svs (derived-small.svs with --small)")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--profiles", nargs="+", default=["5g", "4g"], choices=sorted(PROFILES))
    parser.add_argument("--no-link", action="store_true", help="straight to the server (no root needed)")
    parser.add_argument("--endpoint", help="S3 endpoint (default: start a moto server)")
    parser.add_argument("--max-rate", type=float, help="pass --max-rate to slidestream (Mbit/s)")
    parser.add_argument("--concurrency", default="auto")
    args = parser.parse_args(argv)
    slide = args.slide or OUT / ("derived-small.svs" if args.small else "derived-large.svs")
    if not slide.exists():
        raise SystemExit(f"error: {slide} is missing: make it with `python bench/make_large_slide.py{' --small' if args.small else ''}`")
    if not args.no_link and os.geteuid() != 0:
        raise SystemExit("error: emulated links need root (or pass --no-link)")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    extra = ["--concurrency", args.concurrency, *(["--max-rate", str(args.max_rate)] if args.max_rate else [])]
    with s3_endpoint(args.endpoint) as endpoint:
        results = run(slide, [None] if args.no_link else args.profiles, endpoint, extra)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_send.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
