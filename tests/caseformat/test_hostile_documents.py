"""A store ninety stations write to holds whatever a buggy or hostile one put there: no document stops the hub, and
no declared image size costs the viewer more than the time to read it.

Against the real S3 server: each malformed document lies beside a genuine case (CMU-1-Small-Region, converted and
uploaded as a sender leaves it); the hub runs as a subprocess, as a pathology centre runs it.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server, sample
from support import running_hub, slide_version, wait_for

from caseformat.bounded import utc_now
from caseformat.documents import CaseRecord
from caseformat.layout import (
    CASE_RECORD,
    HUB,
    IMAGE,
    LEASE,
    MANIFEST,
    PYRAMID,
    TRIAGE,
    SlideRef,
    arrivals_folder,
    case_key,
    station_of,
    version_key,
)
from caseformat.results import COMPLETE, Manifest, Triage
from inference import AnalyzeOptions
from objectstore import ZarrView
from slides import open_slide
from tiling import ConvertOptions, PieceKind, plan_pyramid, produce
from viewer import ImageError, S3Storage
from viewer.image import Arrival, open_image, parse_manifest

pytestmark = pytest.mark.slow  # a running hub

PREFIX = "hostile"
GOOD = "h1.GOOD-1"
HUGE_CASE = "h1.HUGE-1"
HUGE = 32768  # px a side, in 1 px chunks: a billion chunks


def put(client: Any, bucket: str, key: str, body: bytes | str | Any) -> None:
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=data)


def arrival(client: Any, bucket: str, case: str, started_at: str) -> None:
    put(client, bucket, SlideRef(case).arrival_key(started_at), b"")


def manifest(case: str, started_at: str, **changes: Any) -> dict[str, Any]:
    return {**Manifest(case, "s1", "v1", started_at, COMPLETE).to_dict(), **changes}


def upload_genuine(client: Any, bucket: str, case: str) -> str:
    """A converted slide uploaded as a complete send, announced under `_arrivals/`; its start time."""
    started_at = utc_now()
    ref = SlideRef(case)
    # registered as colorectal: a site the default model is validated for (elsewhere the hub refuses to score)
    put(client, bucket, case_key(case, CASE_RECORD), CaseRecord(case, started_at, station_of(case), (("specimen_site", "sigmoid colon"),)).to_json())
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        shards = []
        for piece in produce(slide, plan_pyramid(slide, ConvertOptions()), case, {"mpp": list(slide.mpp)}):
            put(client, bucket, version_key(ref, f"{IMAGE}/{piece.key}"), piece.data)
            shards += [piece.key] if piece.kind is PieceKind.SHARD else []
    put(client, bucket, version_key(ref, MANIFEST), manifest(case, started_at, planned=shards, arrived=shards))
    arrival(client, bucket, case, started_at)
    return started_at


def huge_image(client: Any, bucket: str, case: str) -> None:
    """A slide version whose image declares 32768 x 32768 px in 1 px chunks and shards, with a complete manifest."""
    ref = SlideRef(case)
    multiscales = [{"name": "huge", "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", "multiscales": multiscales}}}
    sharding = {"name": "sharding_indexed", "configuration": {
        "chunk_shape": [3, 1, 1], "codecs": [{"name": "bytes"}], "index_location": "end",
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}
    array = {"zarr_format": 3, "node_type": "array", "shape": [3, HUGE, HUGE], "data_type": "uint8",
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, 1, 1]}},
             "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
             "fill_value": 255, "codecs": [sharding], "dimension_names": ["c", "y", "x"]}
    started_at = utc_now()
    put(client, bucket, version_key(ref, f"{IMAGE}/zarr.json"), group)
    put(client, bucket, version_key(ref, f"{IMAGE}/0/zarr.json"), array)
    put(client, bucket, version_key(ref, MANIFEST), manifest(case, started_at, planned=["0/c/0/0/0"], arrived=["0/c/0/0/0"]))
    arrival(client, bucket, case, started_at)


def lines_about(log: Path, case: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"{case}/" in line or f"{case}:" in line]


def test_no_document_stops_the_hub_and_the_genuine_case_is_still_scored(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    client = s3_server.client()
    upload_genuine(client, s3_bucket, GOOD)
    now = utc_now()
    hostile = {  # case -> (the document it names in its one line, what lies there, in the station's or the centre's folder)
        "h1.LIST-1": (MANIFEST, [manifest("h1.LIST-1", now)]),
        "h2.ARRIVED-1": (MANIFEST, manifest("h2.ARRIVED-1", now, arrived=5)),
        "h1.TRIAGE-1": (TRIAGE, ["hub", 0.9]),
        "h2.LEASE-1": (LEASE, {"owner": "elsewhere:1:deadbeef", "expires": "tomorrow"}),
        "h1.PYRAMID-1": (PYRAMID, ["0/c/0/0/0"]),
        "h2.CONTEXT-1": (CASE_RECORD, ["not", "a", "registration"]),
    }
    for case, (name, document) in hostile.items():
        ref = SlideRef(case)
        if name != MANIFEST:
            pyramid = {"hub_levels": {"1": 0}, "hub_planned": ["1/c/0/0/0"]} if name == PYRAMID else {}
            put(client, s3_bucket, version_key(ref, MANIFEST), manifest(case, now, **pyramid))
        if name == PYRAMID:  # read only once a hub's final result is there: then the record says what is left
            final = Triage("x", 0.5, AnalyzeOptions().model.spec.name, HUB, True, {"tiles_scored": 1, "tissue_tiles": 1})
            put(client, s3_bucket, ref.centre_key(TRIAGE), final.to_json())
        centres = name in (TRIAGE, LEASE, PYRAMID)  # the hub's own results: the centre's folder
        key = case_key(case, name) if name == CASE_RECORD else ref.centre_key(name) if centres else version_key(ref, name)
        put(client, s3_bucket, key, document)
        arrival(client, s3_bucket, case, now)
    put(client, s3_bucket, version_key(SlideRef(GOOD), TRIAGE), ["edge", 0.9])  # the genuine case's edge triage: ignored
    huge_image(client, s3_bucket, HUGE_CASE)
    for name in ("/double-slash", "../dot-dot", "a/./b"):  # keys obstore refuses to list
        put(client, s3_bucket, arrivals_folder("h1") + name, b"")
    # a station announcing another station's case (with a broken manifest the hub would name if it looked)
    forged = SlideRef("h1.FORGED-1")
    put(client, s3_bucket, version_key(forged, MANIFEST), ["forged"])
    put(client, s3_bucket, arrivals_folder("h2") + forged.arrival_key(now).rsplit("/", 1)[1], b"")

    store = f"s3://{s3_bucket}/{PREFIX}"
    log = tmp_path / "hub.log"
    good = slide_version(store, s3_server.endpoint_url, GOOD)
    with running_hub(store, s3_server.endpoint_url, log) as hub:
        wait_for(lambda: f"DONE {SlideRef(GOOD).label}" in log.read_text() or hub.poll() is not None, "the genuine case's DONE line", 600)
        time.sleep(3)  # six more polls: a bad document is said once, not at every poll
        assert hub.poll() is None, log.read_text()
    text = log.read_text()
    assert f"DONE {SlideRef(GOOD).label}" in text, text
    final = Triage.read(good.read_bytes(TRIAGE) or b"")
    assert final.final() and final.tiles_scored == final.tissue_tiles > 0
    for case, (name, _) in hostile.items():
        said = [line for line in lines_about(log, case) if name in line]
        assert len(said) == 1, f"{case}: {name} said {len(said)} times:\n{text}"
    (huge,) = [line for line in lines_about(log, HUGE_CASE) if "0/zarr.json" in line]  # an ERROR, or a RETRY later
    assert "unreadable" in huge
    assert not lines_about(log, forged.case), text  # an arrival in another station's folder is not followed
    # the listing never failed for the keys it cannot parse: the hub's own RETRY lines name no case
    cases = [SlideRef(case).label for case in (*hostile, HUGE_CASE, GOOD)]
    store_retries = [line for line in text.splitlines() if line.startswith("RETRY ") and not any(line.startswith(f"RETRY {c} ") for c in cases)]
    assert not store_retries, text


def test_the_viewer_refuses_a_huge_declared_image_at_once(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    huge_image(client, s3_bucket, HUGE_CASE)
    ref = SlideRef(HUGE_CASE)
    storage = S3Storage(s3_bucket, PREFIX, s3_server.endpoint_url)

    async def slide() -> Arrival:  # what the viewer does for the image and its arrival state
        image = await open_image(ZarrView(storage), ref.root)
        return parse_manifest(Manifest.read(await storage.get(version_key(ref, MANIFEST))), image)

    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ImageError, match="unreadable"):
            asyncio.run(slide())
        seconds, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 5 and peak < 50 * 1024 * 1024, f"{seconds:.1f} s, {peak / 2**20:.0f} MiB"
