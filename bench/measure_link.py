"""Check the emulated links against their profiles: raw TCP, then boto3 against an S3 server.

For each case (direct, then through each emulated link) it measures
- on plain TCP to a local echo/sink server: the connect time, the round trip of a 1-byte
  ping-pong on an open connection (50 of them) and the rate of a 50 MB one-way send;
- on the S3 server: `head_object` of a small object (30 of them) and `upload_file` of a random
  payload (default 200 MB, boto3's default multipart settings).
moto answers every request with `Connection: close`, so each S3 request there also pays a TCP
handshake (one more round trip); a keep-alive server (Ceph RGW, AWS) does not. Needs root.

    python bench/measure_link.py                       # starts its own moto server
    python bench/measure_link.py --endpoint http://127.0.0.1:9000 --megabytes 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from link import PROFILES, EmulatedLink, LinkError  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


@contextmanager
def s3_endpoint(endpoint: str | None) -> Iterator[str]:
    """The given endpoint, or a moto server started for the run."""
    if endpoint:
        yield endpoint
        return
    moto = shutil.which("moto_server")
    if moto is None:
        raise SystemExit("error: no --endpoint and no moto_server: pip install 'moto[server]'")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: moto_server did not open port {port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def empty_bucket(endpoint: str, bucket: str) -> None:
    """Free the server's memory between runs (moto and Ceph's memstore keep objects in RAM)."""
    s3 = client(endpoint)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])


def client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


def payload(megabytes: int) -> Path:
    """Random (incompressible) bytes, made once and kept in bench/out/."""
    path = OUT / f"link-payload-{megabytes}MB.bin"
    if not path.exists() or path.stat().st_size != megabytes * 10**6:
        OUT.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            for _ in range(megabytes):
                f.write(os.urandom(10**6))
    return path


class EchoSink(socketserver.BaseRequestHandler):
    """First byte picks the mode: b"p" echoes every byte back, b"s" counts bytes until EOF."""

    def handle(self) -> None:
        sock = self.request
        mode = sock.recv(1)
        if mode == b"p":
            while byte := sock.recv(1):
                sock.sendall(byte)
        elif mode == b"s":
            total = 0
            while chunk := sock.recv(1 << 16):
                total += len(chunk)
            sock.sendall(total.to_bytes(8, "big"))


@contextmanager
def echo_sink() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoSink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()


def measure_tcp(address: tuple[str, int], megabytes: int = 50) -> dict[str, float]:
    """Connect time, ping-pong round trip on an open connection, one-way bulk rate."""
    started = time.perf_counter()
    with socket.create_connection(address) as sock:
        connect_ms = (time.perf_counter() - started) * 1000
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"p")
        rtts = []
        for _ in range(50):
            started = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise SystemExit("error: echo server answered wrongly")
            rtts.append((time.perf_counter() - started) * 1000)
    data = os.urandom(10**6)
    with socket.create_connection(address) as sock:
        sock.sendall(b"s")
        started = time.perf_counter()
        for _ in range(megabytes):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        count = int.from_bytes(sock.recv(8), "big")
        seconds = time.perf_counter() - started
    if count != megabytes * 10**6:
        raise SystemExit(f"error: sink received {count} bytes, sent {megabytes * 10**6}")
    q = statistics.quantiles(rtts, n=10)
    return {
        "tcp_connect_ms": connect_ms,
        "tcp_rtt_ms_median": statistics.median(rtts),
        "tcp_rtt_ms_p10": q[0],
        "tcp_rtt_ms_p90": q[-1],
        "tcp_mbit_s": megabytes * 8e6 / seconds / 1e6,
    }


def measure(endpoint: str, bucket: str, path: Path) -> dict[str, float]:
    """Round trip of head_object (ms) and upload_file throughput (Mbit/s) through `endpoint`."""
    s3 = client(endpoint)
    s3.put_object(Bucket=bucket, Key="small", Body=b"x")
    s3.head_object(Bucket=bucket, Key="small")  # warm up
    rtts = []
    for _ in range(30):
        started = time.perf_counter()
        s3.head_object(Bucket=bucket, Key="small")
        rtts.append((time.perf_counter() - started) * 1000)
    key = f"payload-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    s3.upload_file(str(path), bucket, key)
    seconds = time.perf_counter() - started
    s3.delete_object(Bucket=bucket, Key=key)
    q = statistics.quantiles(rtts, n=10)
    return {
        "rtt_ms_median": statistics.median(rtts),
        "rtt_ms_p10": q[0],
        "rtt_ms_p90": q[-1],
        "upload_s": seconds,
        "upload_mbit_s": path.stat().st_size * 8 / seconds / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="S3 server (default: start moto_server)")
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--profiles", nargs="+", default=["5g", "4g"], choices=sorted(PROFILES))
    parser.add_argument("--json", type=Path, default=OUT / "link-measure.json")
    args = parser.parse_args(argv)
    path = payload(args.megabytes)
    results = []
    try:
        with s3_endpoint(args.endpoint) as endpoint, echo_sink() as sink:
            bucket = f"linkbench-{uuid.uuid4().hex[:8]}"
            client(endpoint).create_bucket(Bucket=bucket)
            split = urlsplit(endpoint)
            target = (split.hostname or "127.0.0.1", split.port or 80)
            try:
                results.append({"case": "direct", **measure_tcp(sink), **measure(endpoint, bucket, path)})
                for name in args.profiles:
                    with EmulatedLink(name, sink, slot=1) as link:
                        tcp = measure_tcp((link.names.server_ip, link.port))
                    with EmulatedLink(name, target) as link:
                        p = link.profile
                        row = {"case": name, **tcp, **measure(link.endpoint_url, bucket, path)}
                        row.update(delay_by="netem" if link.netem else "relay", profile_up_mbit=p.up_mbit,
                                   profile_rtt_ms=p.rtt_ms, profile_jitter_ms=p.jitter_ms)  # fmt: skip
                        results.append(row)
            finally:
                s3 = client(endpoint)
                for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=item["Key"])
                s3.delete_bucket(Bucket=bucket)
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("profile: uplink Mbit/s, RTT ms. TCP: connect ms, ping RTT median (p10-p90) ms, 50 MB Mbit/s.")
    print(f"S3: head_object median (p10-p90) ms, upload_file of {args.megabytes} MB Mbit/s.")
    print(f"{'case':7} {'profile':>12} {'connect':>8} {'TCP RTT':>19} {'TCP':>7} {'S3 head':>19} {'upload':>7}")
    for r in results:
        want = f"{r['profile_up_mbit']:g}, {r['profile_rtt_ms']:g}+-{r['profile_jitter_ms']:g}" if "profile_up_mbit" in r else "-"
        tcp_rtt = f"{r['tcp_rtt_ms_median']:.1f} ({r['tcp_rtt_ms_p10']:.1f}-{r['tcp_rtt_ms_p90']:.1f})"
        head = f"{r['rtt_ms_median']:.1f} ({r['rtt_ms_p10']:.1f}-{r['rtt_ms_p90']:.1f})"
        print(f"{r['case']:7} {want:>12} {r['tcp_connect_ms']:8.1f} {tcp_rtt:>19} {r['tcp_mbit_s']:7.1f} {head:>19} {r['upload_mbit_s']:7.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
