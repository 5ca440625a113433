"""An alliance on one machine: N stations, each a `slidestream watch` on its own hot folder, one or two
`slidestream hub` processes at the centre, and the worklist polled as a pathologist's page polls it, all against the
real S3 server through counting proxies (one per party), while specimens arrive at random stations.

Each specimen is a folder with its sidecar (a colorectal site, so the default model may score it) and one slide: a
distinct copy of a 0.5 um/px crop of the TCGA sample (trailing bytes differ, which TIFF readers ignore). The stations
run with `--no-edge`: on this 2-core machine N edge triages would only measure the CPU they share.

Reports (bench/out/alliance-{hubs}hub{-events}.json and a table): cases lost (a specimen never on the worklist),
duplicated (a specimen registered as more than one case, or case.json objects beyond the specimens), stuck (no final
map by the end); from each specimen's appearance, seconds to the worklist, to the first view (a level of its image
complete) and to the final map, median and worst; the hub's tiles/s and cases/hour; store requests per second of the
stations (each), the hubs and the viewer, and at that rate per day; the machine's load.

    eval "$(.ci/s3-server start)"
    python bench/alliance.py --endpoint "$SLIDESTREAM_TEST_S3_ENDPOINT" --stations 15 --specimens 30 --hubs 1
    python bench/alliance.py --endpoint ... --stations 15 --specimens 30 --hubs 2 --events
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import tifffile

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
SAMPLE = BENCH.parent.parent / "shared" / "slides" / "TCGA-CR-7395-jp2k.svs"
PREFIX = "alliance"
REQUEST = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) ", re.MULTILINE)
DONE = re.compile(r"^DONE (\S+): (\d+)/(\d+) tiles")


class CountingProxy:
    """Forwards TCP to the store and counts the HTTP requests that pass (by method): what one party costs."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port.rstrip("/")))
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if requests:  # a request line starts a chunk in practice (HTTP/1.1 requests are sent whole)
                    with self.lock:
                        self.counts.update(match.group(1).decode() for match in REQUEST.finditer(data[:8]))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def crop_slide(path: Path, side: int) -> bytes:
    """A `side`-pixel square of the sample's tissue as a pyramidal tiled TIFF recording 0.5 um/px."""
    from PIL import Image

    from slides import open_slide

    with open_slide(SAMPLE) as slide:
        width, height = slide.dimensions
        x, y = max(0, (width - side) // 2), max(0, (height - side) // 2)
        levels = [np.ascontiguousarray(slide.read_region((x, y), 0, (min(side, width), min(side, height)))[..., :3])]
    while min(levels[-1].shape[:2]) > 256:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(levels):
            per_cm = 1e4 / (0.5 * 2**index)
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", subfiletype=1 if index else 0)
    return path.read_bytes()


def slidestream(*args: str) -> list[str]:
    return [sys.executable, "-m", "slidestream", *args]


class Observer:
    """Reads the store directly (its requests are not counted) once a second: when each case's image first had a
    level complete and when its centre triage became final; and the worklist as a page polls it, through the viewer's
    own index (`viewer.worklist.OpenCases`, changes since the last poll)."""

    def __init__(self, endpoint: str, viewer_endpoint: str, bucket: str) -> None:
        from caseformat.signing import TrustedKeys
        from objectstore import S3Storage
        from viewer.cases import Cases
        from viewer.worklist import OpenCases

        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.bucket = bucket
        self.worklist = OpenCases(Cases(S3Storage(bucket, PREFIX, viewer_endpoint), TrustedKeys([])))
        self.listed: dict[str, float] = {}
        self.viewable: dict[str, float] = {}
        self.final: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        since = None
        while not self.stop.wait(1.0):
            now = time.monotonic()
            answer = loop.run_until_complete(self.worklist.poll(since, datetime.now(UTC)))
            since = answer["since"]
            for entry in answer.get("cases", []) + answer.get("changed", []):
                self.listed.setdefault(entry["case"], now)
            for key in self._keys("stations/"):
                case = key.split("/")[3] if key.count("/") >= 3 else None
                if case is None:
                    continue
                if key.endswith("/manifest.json") and case not in self.viewable and self._viewable(key):
                    self.viewable[case] = now
            for key in self._keys("centre/"):
                case = key.split("/")[3] if key.count("/") >= 3 else None
                if case and key.endswith("/triage.json") and case not in self.final and self._final(key):
                    self.final[case] = now

    def _keys(self, folder: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{folder}")
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def _json(self, key: str) -> Any:
        return json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def _viewable(self, key: str) -> bool:
        levels = self._json(key).get("levels") or []
        return any(level.get("planned") and level.get("arrived", 0) >= level["planned"] for level in levels)

    def _final(self, key: str) -> bool:
        triage = self._json(key)
        return bool(triage.get("complete")) and triage.get("stage") == "hub"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("SLIDESTREAM_TEST_S3_ENDPOINT"), help="S3 endpoint URL")
    parser.add_argument("--stations", type=int, default=15)
    parser.add_argument("--specimens", type=int, default=30)
    parser.add_argument("--per-minute", type=float, default=6.0, help="specimens arriving per minute across the alliance")
    parser.add_argument("--hubs", type=int, default=1)
    parser.add_argument("--events", action="store_true", help="the hubs listen for the store's events (Ceph RGW)")
    parser.add_argument("--side", type=int, default=1536, help="pixels a side of each slide (0.5 um/px)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds after the last specimen to wait for final maps")
    args = parser.parse_args()
    if not args.endpoint:
        raise SystemExit("--endpoint (or $SLIDESTREAM_TEST_S3_ENDPOINT) is needed")
    bucket = f"bench-alliance-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=args.endpoint).create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/{PREFIX}"
    work = Path(tempfile.mkdtemp(prefix="alliance-"))
    slide = crop_slide(work / "crop.tiff", args.side)
    from caseformat.signing import SigningKey, public_pem

    keys = work / "centre.pem"
    keys.write_bytes(public_pem(SigningKey.generate().public))
    proxies = {party: CountingProxy(args.endpoint) for party in ("stations", "hubs", "viewer")}
    processes: list[subprocess.Popen[str]] = []
    logs: dict[str, Path] = {}
    try:
        for index in range(args.hubs):
            log = work / f"hub-{index}.log"
            events = ["--events", f"127.0.0.1:{free_port()}"] if args.events else []
            with log.open("w") as err:
                processes.append(subprocess.Popen(slidestream("hub", store, "--endpoint-url", proxies["hubs"].url, "--poll", "1", *events),
                                                  stderr=err, stdout=subprocess.DEVNULL, text=True))  # fmt: skip
            logs[f"hub-{index}"] = log
        stations = [f"h{index:02d}" for index in range(args.stations)]
        for station in stations:
            (work / station).mkdir()
            log = work / f"{station}.log"
            with log.open("w") as out:
                processes.append(subprocess.Popen(
                    slidestream("watch", str(work / station), store, "--endpoint-url", proxies["stations"].url, "--station", station,
                                "--state-dir", str(work / f"{station}-state"), "--no-edge", "--settle", "1", "--centre-keys", str(keys)),
                    stdout=out, stderr=subprocess.STDOUT, text=True))  # fmt: skip
            logs[station] = log
        wait_until(lambda: all("hub " in logs[f"hub-{i}"].read_text() for i in range(args.hubs)), 180, "the hubs to start")
        observer = Observer(args.endpoint, proxies["viewer"].url, bucket)
        threading.Thread(target=observer.run, daemon=True).start()
        counted = {party: proxy.total() for party, proxy in proxies.items()}
        started = time.monotonic()
        appeared: dict[tuple[str, str], float] = {}
        rng = random.Random(7)
        for number in range(args.specimens):
            station = rng.choice(stations)
            folder = work / station / f"specimen-{number:03d}"
            folder.mkdir()
            (folder / "specimen.json").write_text(json.dumps({"specimen_site": "sigmoid colon", "clinical_question": "margin?"}))
            (folder / "block-A.tiff").write_bytes(slide + f"alliance-{number}-{uuid.uuid4().hex}".encode())
            appeared[(station, folder.name)] = time.monotonic()
            time.sleep(rng.expovariate(args.per_minute / 60))
        arrived = time.monotonic()
        registered = registrations(logs, stations)
        wait_until(lambda: len(observer.final) >= len(registrations(logs, stations)) >= args.specimens, args.timeout, "every final map",
                   fail=False)  # fmt: skip
        ended = time.monotonic()
        registered = registrations(logs, stations)
        observer.stop.set()
        seconds = ended - started
        rates = {party: (proxy.total() - counted[party]) / seconds for party, proxy in proxies.items()}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    cases_of: dict[tuple[str, str], list[str]] = {}
    for station, name, case in registered:
        cases_of.setdefault((station, name), []).append(case)
    stored = [key for page in boto3.client("s3", endpoint_url=args.endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{PREFIX}/stations/") for key in (item["Key"] for item in page.get("Contents", [])) if key.endswith("/case.json")]

    def delays(milestones: dict[str, float]) -> list[float]:
        return [milestones[cases[0]] - at for specimen, at in appeared.items() if (cases := cases_of.get(specimen)) and cases[0] in milestones]

    hub_lines = [line for i in range(args.hubs) for line in logs[f"hub-{i}"].read_text().splitlines()]
    tiles = sum(int(match.group(2)) for line in hub_lines if (match := DONE.match(line)))
    result = {
        "stations": args.stations, "specimens": args.specimens, "hubs": args.hubs, "events": args.events,
        "slide_px": args.side, "seconds": round(seconds, 1), "arrival_seconds": round(arrived - started, 1),
        "lost": sum(1 for specimen in appeared if not any(case in observer.listed for case in cases_of.get(specimen, []))),
        "duplicated": sum(len(cases) > 1 for cases in cases_of.values()) + max(0, len(stored) - len(appeared)),
        "stuck": sum(1 for specimen in appeared if not any(case in observer.final for case in cases_of.get(specimen, []))),
        "to_worklist": summary(delays(observer.listed)), "to_first_view": summary(delays(observer.viewable)),
        "to_final_map": summary(delays(observer.final)),
        "hub_tiles": tiles, "hub_tiles_per_s": round(tiles / seconds, 2),
        "cases_per_hour": round(len(observer.final) / seconds * 3600, 1),
        "requests_per_s": {"per_station": round(rates["stations"] / args.stations, 3), "hubs": round(rates["hubs"], 2),
                           "viewer": round(rates["viewer"], 2)},
        "requests_per_day": {"per_station": round(rates["stations"] / args.stations * 86400), "hubs": round(rates["hubs"] * 86400),
                             "viewer": round(rates["viewer"] * 86400)},
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }  # fmt: skip
    OUT.mkdir(exist_ok=True)
    name = f"alliance-{args.hubs}hub{'-events' if args.events else ''}.json"
    (OUT / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def registrations(logs: dict[str, Path], stations: list[str]) -> list[tuple[str, str, str]]:
    """(station, specimen folder, case) of every REGISTERED line the stations printed."""
    found = []
    for station in stations:
        for line in logs[station].read_text().splitlines():
            if match := re.search(r" REGISTERED (\S+): case (\S+),", line):
                found.append((station, match.group(1), match.group(2)))
    return found


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "worst": None}
    return {"n": len(values), "median": round(statistics.median(values), 1), "worst": round(max(values), 1)}


def wait_until(condition: Any, timeout: float, what: str, fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if fail:
                raise SystemExit(f"timed out waiting for {what}")
            print(f"timed out waiting for {what}", file=sys.stderr)
            return
        time.sleep(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
