"""Hub throughput on this machine: cases per hour for a stream of small slides, tiles per second, and what the hub
costs in CPU while a send runs beside it.

A `slidestream hub` runs on one prefix of the S3 server; N distinct copies of a small slide (the sample plus a few
trailing bytes each, which TIFF readers ignore, so each is a new specimen) are sent one after the other with
`slidestream send --no-edge` on the same machine. Baseline: the same send with no hub running, timed first.

    eval "$(.ci/s3-server start)"
    python bench/hub_throughput.py --endpoint "$SLIDESTREAM_TEST_S3_ENDPOINT" --slides 6

Reports (and writes bench/out/hub_throughput.json): cases/hour from the first send's start to the hub's last DONE;
the hub's tiles/s over the time it had work; the hub's CPU (cores) while sends ran and overall; each send's time
with the hub running against the baseline send; the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import psutil

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
DONE = re.compile(r"^DONE (\S+): (\d+)/(\d+) tiles")


def slidestream(*args: str) -> list[str]:
    return [sys.executable, "-m", "slidestream", *args]


def copies(slide: Path, count: int, folder: Path) -> list[Path]:
    """`count` distinct files with the slide's pixels: trailing bytes after the last TIFF structure differ."""
    made = []
    data = slide.read_bytes()
    for index in range(count):
        path = folder / f"copy-{index}{slide.suffix}"
        path.write_bytes(data + f"slidestream-bench-{index}-{uuid.uuid4().hex}".encode())
        made.append(path)
    return made


def send(path: Path, store: str, endpoint: str, state: Path) -> float:
    started = time.monotonic()
    result = subprocess.run(slidestream("send", str(path), store, "--endpoint-url", endpoint, "--no-edge", "--json",
                                        "--state-dir", str(state)), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"send failed: {result.stderr.strip().splitlines()[-1]}")
    return time.monotonic() - started


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + sum(child.cpu_times().user + child.cpu_times().system for child in process.children(recursive=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("SLIDESTREAM_TEST_S3_ENDPOINT"), help="S3 endpoint URL")
    parser.add_argument("--slide", type=Path, default=BENCH.parent.parent / "shared" / "slides" / "CMU-1-Small-Region.svs")
    parser.add_argument("--slides", type=int, default=6, help="how many slides the stream has")
    args = parser.parse_args()
    if not args.endpoint:
        raise SystemExit("--endpoint (or $SLIDESTREAM_TEST_S3_ENDPOINT) is needed")
    bucket = f"bench-hub-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=args.endpoint).create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/cases"
    work = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    try:
        paths = copies(args.slide, args.slides + 1, work)
        baseline = send(paths[0], f"s3://{bucket}/baseline", args.endpoint, work / "state")
        hub = subprocess.Popen(slidestream("hub", store, "--endpoint-url", args.endpoint, "--poll", "0.5"),
                               stderr=subprocess.PIPE, text=True)
        process = psutil.Process(hub.pid)
        lines: list[tuple[float, str]] = []
        watching = threading.Event()

        def read() -> None:
            assert hub.stderr is not None
            for line in hub.stderr:
                lines.append((time.monotonic(), line.rstrip()))
                if "watching" in line:
                    watching.set()

        threading.Thread(target=read, daemon=True).start()
        if not watching.wait(120):
            raise SystemExit("the hub did not start")
        time.sleep(2)  # its start-up (torch, the model) is not what is measured
        cpu0, started = cpu_seconds(process), time.monotonic()
        sends = [send(path, store, args.endpoint, work / "state") for path in paths[1:]]
        cpu_sends, sent = cpu_seconds(process), time.monotonic()
        deadline = time.monotonic() + 3600
        while sum(bool(DONE.match(line)) for _, line in lines) < args.slides and time.monotonic() < deadline:
            if hub.poll() is not None:
                raise SystemExit(f"the hub stopped: {lines[-1][1] if lines else ''}")
            time.sleep(0.5)
        cpu_end, ended = cpu_seconds(process), max(at for at, line in lines if DONE.match(line))
        hub.terminate()
        hub.wait(30)
        done = [DONE.match(line) for _, line in lines if DONE.match(line)]
        tiles = sum(int(match.group(2)) for match in done if match)
        first_found = min(at for at, line in lines if line.startswith("FOUND"))
        result: dict[str, Any] = {
            "slide": args.slide.name,
            "slides": args.slides,
            "cases_per_hour": round(args.slides / (ended - started) * 3600, 1),
            "stream_seconds": round(ended - started, 1),
            "tiles": tiles,
            "tiles_per_second": round(tiles / (ended - first_found), 2),
            "hub_cores_while_sending": round((cpu_sends - cpu0) / (sent - started), 2),
            "hub_cores_overall": round((cpu_end - cpu0) / (ended - started), 2),
            "send_seconds_alone": round(baseline, 2),
            "send_seconds_with_hub_median": round(sorted(sends)[len(sends) // 2], 2),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "cores": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "hub_throughput.json").write_text(json.dumps(result, indent=1))
    for name, value in result.items():
        print(f"{name:32} {value}")


if __name__ == "__main__":
    main()
