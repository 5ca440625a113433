"""The worklist's cost as the store grows: the full re-read (`viewer.worklist.read_worklist`, the baseline) against the index
(`viewer.worklist.OpenCases`), in one run, on one S3 server, with the same cases.

For each N (default 100, 1,000, 10,000) a new bucket gets N cases spread over `--stations` stations, each with the
documents a sent case has that the worklist reads (caseformat's writers): case.json, the slide's claim, a complete
manifest, its `_arrivals/` marker and the hub's final triage.json; all but the newest `--open` are signed (a signed
report, as a store after days of work holds). No image: the worklist reads none. Then, through a Storage wrapper
that counts requests:

  full re-read   `read_worklist` twice: seconds and requests per call
  index build    the index's first poll (one full read)
  index poll     a poll with nothing new, then a poll after one case got a new slide (marker + manifest), then 20
                 pages polling at the same moment (one refresh serves them all)

Results go to stdout and bench/out/worklist_scale.json, with the machine's load (`uptime`) before and after.

    . /tmp/s3env.sh  # SLIDESTREAM_TEST_S3_ENDPOINT and credentials of the S3 server (Ceph RGW in CI)
    python bench/worklist_scale.py [--cases 100 1000 10000] [--stations 10] [--open 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caseformat.bounded import utc_now  # noqa: E402
from caseformat.documents import Author, CaseRecord, Report, SlideClaim  # noqa: E402
from caseformat.layout import CASE_RECORD, HUB, MANIFEST, TRIAGE, SlideRef, case_key, report_key  # noqa: E402
from caseformat.results import COMPLETE, SENDING, Manifest, Routed, Triage  # noqa: E402
from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, TrustedKeys  # noqa: E402
from objectstore import ObjectInfo, S3Storage, Storage  # noqa: E402
from viewer import worklist  # noqa: E402
from viewer.cases import Cases  # noqa: E402

OUT = Path(__file__).with_name("out")
AUTHOR = Author("u00000001", "Dr Bench")
WRITES = 64  # objects written at once
PAGES = 20  # worklist pages polling at the same moment


class Counting(S3Storage):
    """The viewer's S3 storage with every request counted by kind (GET, LIST, PUT) and every GET's key kept."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None) -> None:
        super().__init__(bucket, prefix, endpoint)
        self.requests: Counter[str] = Counter()
        self.got: list[str] = []
        self._lock = threading.Lock()  # start-after LISTs are counted in threads

    def reset(self) -> None:
        self.requests.clear()
        self.got.clear()

    def count(self, kind: str, key: str | None = None) -> None:
        with self._lock:
            self.requests[kind] += 1
            if key is not None:
                self.got.append(key)

    async def get(self, key: str) -> bytes:
        self.count("GET", key)
        return await super().get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.count("GET", key)
        return await super().get_range(key, start, length)

    async def get_suffix(self, key: str, length: int) -> bytes:
        self.count("GET", key)
        return await super().get_suffix(key, length)

    async def put(self, key: str, data: bytes) -> None:
        self.count("PUT")
        await super().put(key, data)

    async def create(self, key: str, data: bytes) -> bool:
        self.count("PUT")
        return await super().create(key, data)

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        self.count("LIST")
        return await super().list(prefix)

    async def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        self.count("LIST")
        return await super().list_dirs(prefix)

    async def list_after(self, prefix: str, after: str) -> builtins.list[ObjectInfo]:
        self.count("LIST")
        return await super().list_after(prefix, after)


def sent_case(case: str, registered: datetime, key: SigningKey | None, slide: str = "s1") -> dict[str, bytes]:
    """The objects of a case whose slide `slide` (v1) was sent whole and scored by the hub; signed with `key`."""
    ref, at = SlideRef(case, slide), utc_now(registered)
    shards = tuple(f"image.zarr/0/c/0/0/{i}" for i in range(4))
    objects = {
        case_key(case, CASE_RECORD): CaseRecord(case, at, ref.station, (("hospital", "Bench Hospital"),)).to_json(),
        ref.claim_key: SlideClaim(case, slide, ref.station, at).to_json(),
        ref.key(MANIFEST): Manifest(case, slide, "v1", at, COMPLETE, planned=shards, arrived=shards, updated_at=at).to_json(),
        ref.arrival_key(at): b"",
        ref.centre_key(TRIAGE): Triage(ref.label, 0.5, "bench-model", HUB, True, {"tiles_scored": 1, "tissue_tiles": 1},
                                       routed=Routed("colon", "H&E", 0.5)).to_json(),
    }
    if key is not None:
        signed = utc_now(registered + timedelta(minutes=15))
        objects[report_key(case, 1)] = Report(case, 1, "benign", "No tumour.", AUTHOR, signed, ref.station).to_json(key)
    return objects


def new_slide(case: str, slide: str = "s2") -> dict[str, bytes]:
    """A second slide of `case` that started sending now: its claim, marker and a manifest with nothing arrived."""
    ref, at = SlideRef(case, slide), utc_now()
    shards = ("image.zarr/0/c/0/0/0",)
    return {ref.claim_key: SlideClaim(case, slide, ref.station, at).to_json(), ref.arrival_key(at): b"",
            ref.key(MANIFEST): Manifest(case, slide, "v1", at, SENDING, planned=shards, updated_at=at).to_json()}  # fmt: skip


async def write(storage: Storage, objects: dict[str, bytes]) -> None:
    limit = asyncio.Semaphore(WRITES)

    async def put(key: str, data: bytes) -> None:
        async with limit:
            await storage.put(key, data)

    await asyncio.gather(*(put(key, data) for key, data in objects.items()))


def generate(n: int, stations: int, unsigned: int, key: SigningKey) -> tuple[dict[str, bytes], list[str]]:
    """N cases, a minute apart, ending now; the newest `unsigned` are open (not signed)."""
    now = datetime.now(UTC)
    objects: dict[str, bytes] = {}
    cases = [f"station-{i % stations}.case-{i:06d}" for i in range(n)]
    for i, case in enumerate(cases):
        objects |= sent_case(case, now - timedelta(minutes=n - i), None if i >= n - unsigned else key)
    return objects, cases


async def measure(n: int, stations: int, unsigned: int, repeat: int, endpoint: str) -> dict[str, Any]:
    import boto3

    bucket = f"bench-worklist-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    keys = Path(tempfile.mkdtemp(prefix="worklist-bench-keys-"))
    key = SigningKey.load_or_create(keys)
    trusted = TrustedKeys.load(keys / PUBLIC_KEYS_FILE)
    store = S3Storage(bucket, "cases", endpoint)
    objects, cases = generate(n, stations, unsigned, key)
    started = time.monotonic()
    await write(store, objects)
    result: dict[str, Any] = {"cases": n, "stations": stations, "open": unsigned, "objects": len(objects),
                              "generate_s": round(time.monotonic() - started, 1)}  # fmt: skip

    async def timed(call: Any, counting: Counting) -> tuple[dict[str, Any], Any]:
        counting.reset()
        began = time.monotonic()
        answer = await call()
        return {"seconds": round(time.monotonic() - began, 3), **dict(counting.requests), "rows": _rows(answer)}, answer

    full = Counting(bucket, "cases", endpoint)
    result["full_reread"] = [(await timed(lambda: worklist.read_worklist(Cases(full, trusted)), full))[0] for _ in range(repeat)]
    indexed = Counting(bucket, "cases", endpoint)
    index = worklist.OpenCases(Cases(indexed, trusted))
    result["index_build"], answer = await timed(lambda: index.poll(None, datetime.now(UTC)), indexed)
    await asyncio.sleep(worklist.REFRESH_EVERY)
    result["index_poll_nothing_new"], answer = await timed(lambda: index.poll(answer["since"], datetime.now(UTC)), indexed)
    await write(store, new_slide(cases[n // 2]))
    await asyncio.sleep(worklist.REFRESH_EVERY)
    result["index_poll_one_new_slide"], answer = await timed(lambda: index.poll(answer["since"], datetime.now(UTC)), indexed)
    await asyncio.sleep(worklist.REFRESH_EVERY)
    pages = [index.poll(answer["since"], datetime.now(UTC)) for _ in range(PAGES)]
    result["index_20_pages_at_once"], _ = await timed(lambda: asyncio.gather(*pages), indexed)
    baseline = result["full_reread"][-1]
    for name in ("index_poll_nothing_new", "index_poll_one_new_slide"):
        poll = result[name]
        poll["time_vs_full"] = round(poll["seconds"] / baseline["seconds"], 4)
        poll["requests_vs_full"] = round(_requests(poll) / _requests(baseline), 4)
    return result


def _rows(answer: Any) -> int:
    if isinstance(answer, list):
        return sum(map(_rows, answer)) if answer and isinstance(answer[0], dict) and "since" in answer[0] else len(answer)
    return len(answer.get("cases", answer.get("changed", [])))


def _requests(measured: dict[str, Any]) -> int:
    return sum(measured.get(kind, 0) for kind in ("GET", "LIST", "PUT"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--stations", type=int, default=10)
    parser.add_argument("--open", type=int, default=20, help="the newest cases left unsigned")
    parser.add_argument("--repeat", type=int, default=2, help="calls of the full re-read measured")
    args = parser.parse_args()
    endpoint = os.environ["SLIDESTREAM_TEST_S3_ENDPOINT"]
    load = {"before": _uptime()}
    results = []
    for n in args.cases:
        measured = asyncio.run(measure(n, args.stations, min(args.open, n), args.repeat, endpoint))
        print(json.dumps(measured), flush=True)
        results.append(measured)
    load["after"] = _uptime()
    print(json.dumps({"uptime": load}))
    OUT.mkdir(exist_ok=True)
    (OUT / "worklist_scale.json").write_text(json.dumps({"server": os.environ.get("SLIDESTREAM_TEST_S3_SERVER"), "uptime": load,
                                                         "results": results}, indent=2))  # fmt: skip


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
