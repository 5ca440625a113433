"""bench/link.py: a 5g link to the S3 server carries uploads, adds its latency, and leaves nothing behind."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="emulated links need root (network namespaces, veth, tc)"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None, reason="iproute2 (ip, tc) not installed"),
]

# slots of their own, so a benchmark link (slot 0) running beside the tests is left alone
SLOT, CLEANUP_SLOT, CRASH_SLOT = 201, 202, 203


def load_link() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_link", REPO / "bench" / "link.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


link = load_link()


def target_of(endpoint_url: str) -> tuple[str, int]:
    split = urlsplit(endpoint_url)
    return split.hostname or "127.0.0.1", split.port or 80


def leftovers(slot: int) -> list[str]:
    """Namespaces and interfaces of `slot` that still exist."""
    names = link.Names(slot)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [n for n in (names.netns,) if n in netns] + [i for i in (names.client_if,) if f" {i}@" in links]


@pytest.fixture(scope="module")
def link5g(s3_server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    with link.EmulatedLink("5g", target_of(s3_server.endpoint_url), slot=SLOT) as emulated:
        yield emulated


def test_upload_through_link_arrives_intact(link5g, s3_server, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    assert link5g.endpoint_url.startswith(f"http://{link.Names(SLOT).server_ip}:")
    body = os.urandom(3_000_000)
    boto3.client("s3", endpoint_url=link5g.endpoint_url).put_object(Bucket=s3_bucket, Key="via-link", Body=body)
    direct = s3_server.client().get_object(Bucket=s3_bucket, Key="via-link")["Body"].read()
    assert direct == body


def test_round_trip_is_above_the_base_latency(link5g, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    s3 = boto3.client("s3", endpoint_url=link5g.endpoint_url)
    s3.put_object(Bucket=s3_bucket, Key="small", Body=b"x")
    times = []
    for _ in range(10):
        started = time.perf_counter()
        s3.head_object(Bucket=s3_bucket, Key="small")
        times.append(time.perf_counter() - started)
    floor_ms = link5g.profile.rtt_ms - link5g.profile.jitter_ms
    assert min(times) * 1000 >= floor_ms, f"a request took {min(times) * 1000:.1f} ms, below the {floor_ms} ms floor"


def test_close_removes_namespace_and_veth(s3_server) -> None:  # type: ignore[no-untyped-def]
    with link.EmulatedLink("4g", target_of(s3_server.endpoint_url), slot=CLEANUP_SLOT):
        assert leftovers(CLEANUP_SLOT)
    assert leftovers(CLEANUP_SLOT) == []
    assert link.cleanup(CLEANUP_SLOT) == []  # idempotent


def test_survives_a_crashed_run(s3_server) -> None:  # type: ignore[no-untyped-def]
    """Leftovers of a run that died (namespace and veth, no relay) do not block the next link."""
    link.create(link.Names(CRASH_SLOT), link.PROFILES["5g"], use_netem=False)
    assert leftovers(CRASH_SLOT)
    with link.EmulatedLink("5g", target_of(s3_server.endpoint_url), slot=CRASH_SLOT) as emulated:
        s3 = boto3.client("s3", endpoint_url=emulated.endpoint_url)
        assert "Buckets" in s3.list_buckets()
    assert leftovers(CRASH_SLOT) == []


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(link.LinkError, match="unknown profile 'wifi'"):
        link.EmulatedLink("wifi")


def load_frozen_section() -> ModuleType:
    """bench/frozen_section.py, which imports its neighbours (link, measure_link) from bench/."""
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("frozen_section")


def test_edge_agreement_holds_the_edge_map_against_the_final_map() -> None:
    """Issue 27: the edge's sampled tiles ranked as the final map ranks them agree fully, and the final map's hottest
    tile, beside the edge's hottest sample, is in the edge map's top 5%; an edge map ranking them the other way
    round is told apart."""
    import numpy as np

    agreement = load_frozen_section().edge_agreement
    final = np.ones((4, 20, 20), np.float32)  # score, focus, pen, measured: every tile is tissue, scored
    final[0] = np.linspace(0.0, 0.9, 400).reshape(20, 20)
    final[0, 4, 4], final[0, 5, 5] = 0.99, 1.0  # the hottest region: two tiles
    hot = final[0] > 0.95
    edge = np.zeros_like(final)
    edge[0], edge[3, ::4, ::4] = np.nan, 1  # the edge scored one tile in 16
    edge[0, ::4, ::4] = final[0, ::4, ::4] / 2

    foresaw = agreement(edge, final, hot)
    assert (foresaw["tiles"], foresaw["spearman"], foresaw["hottest_in_top"], foresaw["hot_in_top"]) == (25, 1.0, True, 1.0)
    assert not foresaw["hottest_sampled"]  # found through its nearest sample, as the send orders shards
    assert foresaw["hottest_edge_rank"] == 0.0 and foresaw["spearman_filled"] > 0.8

    edge[0, ::4, ::4] = 1 - final[0, ::4, ::4]
    missed = agreement(edge, final, hot)
    assert (missed["spearman"], missed["hottest_in_top"], missed["hot_in_top"]) == (-1.0, False, 0.0)
    assert missed["hottest_edge_rank"] > 0.9 and missed["spearman_filled"] < -0.8
