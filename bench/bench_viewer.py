"""Tile serving under load: 50 concurrent clients fetching random full-resolution tiles of a sent slide.

Compared in one run, on one machine, with the same random tile list:

  slidestream-s3      `slidestream serve` over S3 (the S3 server runs on this machine: Ceph RGW at
                      $SLIDESTREAM_TEST_S3_ENDPOINT, else moto: it is part of what is measured, its CPU per tile too)
                      with its tile cache (the default 256 MB: after the warm-up, the tiles asked for are in memory)
  s3-no-tile-cache    the same with `--tile-cache-mb 0`: every tile a range GET from the S3 server
  slidestream-local   `slidestream serve` over a local directory with the same layout
  deepzoom            the DeepZoom server pattern openslide-python documents (examples/deepzoom/deepzoom_server.py):
                      one DeepZoomGenerator over the local slide file, `get_tile()` decoded and JPEG-encoded at
                      quality 75 on every request; served here by the same uvicorn/FastAPI stack, in its thread pool
                      (as Flask runs it in threads), so only the tile path differs

Load comes from Debian's `wrk` (C, keep-alive connections): a short warm-up run (caches fill: shard indexes, the
OS page cache), then the measured run. Results go to stdout and bench/out/bench_viewer.json.

    python bench/bench_viewer.py [--slide bench/out/derived-small.svs] [--clients 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import httpx
import numpy as np

from caseformat.layout import MANIFEST, SlideRef, image_key
from tiling.shard_format import EMPTY

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CASE = "bench.viewer"  # station "bench"
REF = SlideRef(CASE)
SECRET = b"benchmark-secret-not-for-production-use-0123456789"
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local headers = {}
if os.getenv("BENCH_AUTH") ~= "" then headers["Authorization"] = os.getenv("BENCH_AUTH") end
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
request = function() return wrk.format("GET", paths[math.random(#paths)], headers) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "bytes": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, '
    .. '"errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration / 1e6, summary.bytes, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# -- the baseline server ---------------------------------------------------------------------------------------
def deepzoom_server(slide_path: Path, port: int, tile_size: int) -> None:
    """openslide-python's DeepZoom server pattern, with our URL scheme (level 0 = full resolution)."""
    import openslide
    import uvicorn
    from fastapi import FastAPI, Response
    from openslide.deepzoom import DeepZoomGenerator

    generator = DeepZoomGenerator(openslide.OpenSlide(slide_path), tile_size=tile_size, overlap=0, limit_bounds=False)
    top = generator.level_count - 1
    app = FastAPI()

    @app.get("/tiles/{level}/{row}/{col}")
    def tile(level: int, row: int, col: int) -> Response:  # a plain def: runs in the thread pool
        try:
            image = generator.get_tile(top - level, (col, row))
        except ValueError:
            return Response(status_code=404)
        buffer = io.BytesIO()
        image.save(buffer, "jpeg", quality=75)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")


# -- setting up ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}: {url}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"no answer from {url}")


def convert(slide_path: Path) -> tuple[int, list, list[tuple[int, int]]]:  # type: ignore[type-arg]
    """Pieces of the slide's OME-Zarr, and every level-0 chunk that holds tissue (what a pathologist looks at)."""
    from slides import open_slide
    from tiling import ConvertOptions, PieceKind, plan_pyramid, produce

    started = time.perf_counter()
    with open_slide(slide_path) as slide:
        plan = plan_pyramid(slide, ConvertOptions())
        pieces = list(produce(slide, plan, CASE, {}))
    n, chunks = plan.shard_chunks, []
    for piece in pieces:
        if piece.kind == PieceKind.SHARD and piece.level == 0:
            row, col = map(int, piece.key.split("/")[-2:])
            index = np.frombuffer(piece.data[-(16 * n * n + 4) : -4], "<u8").reshape(n, n, 2)
            chunks += [(row * n + i, col * n + j) for i in range(n) for j in range(n) if index[i, j, 0] != EMPTY]
    print(f"converted {slide_path.name}: {len(pieces)} objects, {len(chunks)} level-0 tissue chunks "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return plan.chunk, pieces, chunks


def manifest(pieces: list) -> bytes:  # type: ignore[type-arg]
    from tiling import PieceKind

    keys = [piece.key for piece in pieces if piece.kind == PieceKind.SHARD]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps({"format": "slidestream-manifest/1", "case": CASE, "image": "image.zarr", "started_at": now, "updated_at": now,
                       "complete": True, "planned": keys, "arrived": keys, "milestones": {}}).encode()


def write_local(root: Path, pieces: list) -> None:  # type: ignore[type-arg]
    for piece in pieces:
        path = root / REF.key(image_key(piece.key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(piece.data)
    (root / REF.key(MANIFEST)).write_bytes(manifest(pieces))


def upload(endpoint: str, bucket: str, pieces: list) -> None:  # type: ignore[type-arg]
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.put_object(Bucket=bucket, Key=f"cases/{REF.key(image_key(p.key))}", Body=p.data), pieces))
    client.put_object(Bucket=bucket, Key=f"cases/{REF.key(MANIFEST)}", Body=manifest(pieces))


# -- measuring -------------------------------------------------------------------------------------------------
def wrk(url: str, paths: Path, auth: str, clients: int, seconds: int, script: Path) -> dict[str, float]:
    env = {**os.environ, "BENCH_PATHS": str(paths), "BENCH_AUTH": auth}
    command = ["wrk", "-t2", f"-c{clients}", f"-d{round(seconds)}s", "--timeout", "10s", "-s", str(script), url]
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"wrk failed: {run.stderr.strip() or run.stdout.strip()}")
    output = run.stdout
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
    result["tiles_per_s"] = round(result["requests"] / result["seconds"], 1)
    result["mb_per_s"] = round(result["bytes"] / result["seconds"] / 1e6, 2)
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_key(who: str) -> str:
    return f"{who.replace(' ', '_').replace('-', '_')}_cpu_ms_per_tile"


def s3_server_pids(moto: subprocess.Popen[bytes] | None) -> dict[str, int]:
    """The processes of the S3 server on this machine (moto, or Ceph's radosgw and OSD), whose CPU per tile is
    part of what serving from S3 costs here."""
    if moto:
        return {"s3 server": moto.pid}
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            name = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if proc.name.isdigit() and name in ("radosgw", "ceph-osd", "ceph-mon"):
            found[name] = int(proc.name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, default=OUT / "derived-small.svs", help="made by bench/make_large_slide.py --small")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20, help="length of each measured run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of load before measuring (caches fill)")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per server, alternating servers")
    parser.add_argument("--deepzoom-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.deepzoom_server:
        deepzoom_server(args.deepzoom_server, args.port, args.tile_size)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk missing: apt-get install wrk (listed in .ci/apt-packages)")
    if not args.slide.exists():
        raise SystemExit(f"{args.slide}: missing; make it with: python bench/make_large_slide.py --small")

    from viewer import Tokens, case_scope

    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    processes: list[subprocess.Popen[bytes]] = []
    emptied: list[tuple[str, str]] = []  # (endpoint, bucket) to delete at the end: the S3 server keeps it in memory
    try:
        chunk, pieces, chunks = convert(args.slide)
        paths = work / "paths.txt"
        paths.write_text("".join(f"/tiles/0/{row}/{col}\n" for row, col in random.Random(1).sample(chunks, min(len(chunks), 5000))))
        script = work / "bench.lua"
        script.write_text(WRK_SCRIPT)
        (work / "secret").write_bytes(SECRET)
        write_local(work / "store", pieces)

        env = {**os.environ, "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
               "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
               "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        os.environ.update(env)
        endpoint, moto = os.environ.get("SLIDESTREAM_TEST_S3_ENDPOINT"), None
        if not endpoint:
            port = free_port()
            moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(moto)
            endpoint = f"http://127.0.0.1:{port}"
            wait_until_up(endpoint, moto)
        bucket = f"bench-{random.Random().randrange(16**8):08x}"
        upload(endpoint, bucket, pieces)
        emptied.append((endpoint, bucket))

        token = Tokens(SECRET).issue(case_scope(CASE), timedelta(hours=2))
        serve = [sys.executable, "-m", "slidestream", "serve", "--secret-file", str(work / "secret")]
        api, auth = f"/api/cases/{CASE}/{REF.path}", f"Bearer {token}"  # .../CASE/slides/s1/v1 + /tiles/...
        commands = {
            "slidestream-s3": (serve + ["--store", f"s3://{bucket}/cases", "--endpoint-url", endpoint], api, auth),
            "s3-no-tile-cache": (serve + ["--store", f"s3://{bucket}/cases", "--endpoint-url", endpoint, "--tile-cache-mb", "0"], api, auth),
            "slidestream-local": (serve + ["--store", str(work / "store")], api, auth),
            "deepzoom": ([sys.executable, __file__, "--deepzoom-server", str(args.slide), "--tile-size", str(chunk)], "", ""),
        }
        servers: dict[str, tuple[str, Path, str, int]] = {}
        for name, (command, prefix, auth) in commands.items():
            port = free_port()
            process = subprocess.Popen(command + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            processes.append(process)
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base, process)
            server_paths = work / f"paths-{name}.txt"
            server_paths.write_text("".join(prefix + line + "\n" for line in paths.read_text().splitlines()))
            first = prefix + paths.read_text().splitlines()[0]
            check = httpx.get(base + first, headers={"Authorization": auth} if auth else {}, timeout=30)
            if check.status_code != 200 or not check.content.startswith(b"\xff\xd8"):
                raise SystemExit(f"{name}: {first} answered {check.status_code}")
            servers[name] = (base, server_paths, auth, process.pid)

        # the machine may be shared: rounds alternate between servers, and CPU time per tile is reported beside
        # throughput because it hardly depends on what else runs
        load_before = os.getloadavg()
        results: dict[str, dict[str, object]] = {name: {"rounds": []} for name in servers}
        for name, (base, server_paths, auth, _) in servers.items():
            results[name]["first_seconds"] = wrk(base, server_paths, auth, args.clients, args.warmup, script)
        for round_ in range(args.rounds):
            for name, (base, server_paths, auth, pid) in servers.items():
                watched = {"server": pid, **(s3_server_pids(moto) if name.startswith(("slidestream-s3", "s3-")) else {})}
                cpu_before = {who: cpu_seconds(p) for who, p in watched.items()}
                result = wrk(base, server_paths, auth, args.clients, args.seconds, script)
                for who, p in watched.items():
                    used = cpu_seconds(p) - cpu_before[who]
                    result[cpu_key(who)] = round(1e3 * used / result["requests"], 3)
                results[name]["rounds"].append(result)  # type: ignore[union-attr]
                print(f"round {round_ + 1} {name:18s} {result['tiles_per_s']:8.1f} tiles/s  p50 {result['p50_ms']:7.1f} ms  "
                      f"p95 {result['p95_ms']:7.1f} ms  server CPU {result['server_cpu_ms_per_tile']:.2f} ms/tile"
                      + "".join(f" (+ {who} {result[cpu_key(who)]:.2f})" for who in watched if who != "server")
                      + f"  errors {result['errors'] + result['non_2xx']}", flush=True)
        for result in results.values():
            rounds = result["rounds"]
            result["median"] = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}  # type: ignore[index]
        report = {
            "slide": args.slide.name,
            "tile_size": chunk,
            "level0_tissue_chunks": len(chunks),
            "distinct_tiles_requested_from": min(len(chunks), 5000),
            "clients": args.clients,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "machine": f"{os.cpu_count()} cores shared by wrk, the servers and the S3 server; load average "
                       f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
            "results": results,
        }
        print("median over rounds:")
        for name, result in results.items():
            m = result["median"]
            print(f"  {name:18s} {m['tiles_per_s']:8.1f} tiles/s  p50 {m['p50_ms']:7.1f} ms  p95 {m['p95_ms']:7.1f} ms  "
                  f"server CPU {m['server_cpu_ms_per_tile']:.2f} ms/tile")
        print(report["machine"])
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "bench_viewer.json").write_text(json.dumps(report, indent=1))
        print(f"wrote {OUT / 'bench_viewer.json'}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        for endpoint, bucket in emptied:
            store = boto3.resource("s3", endpoint_url=endpoint).Bucket(bucket)
            store.objects.all().delete()
            store.delete()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
