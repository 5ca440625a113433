"""A send's in-between levels are there for every reader, with a hub or without one.

A send leaves the in-between levels (2x, downsampled from the scanner's own level 0) to the hub, which builds them
from the store. With no hub, nobody would: a complete image would read white at 2x in ome-zarr-py and be refused by
`export-dicom`. So a send waits `--hub-wait` seconds at its end for a hub to claim the slide version, and without one
builds and sends those levels itself, byte for byte what the hub builds; where a hub claimed, it sends none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import REPO, S3Server
from support import STATION, journal_objects, send_args, slidestream, wait_for

from caseformat.layout import IMAGE, LEASE, MANIFEST, PYRAMID, SlideRef, qualified_case
from caseformat.results import Lease, Manifest, PyramidRecord
from hub.pyramid import complete_pyramid
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, plan_pyramid

pytestmark = pytest.mark.slow  # several sends of a derived slide, a DICOM export

CASE = qualified_case(STATION, "between")
REF = SlideRef(CASE)


@pytest.fixture(scope="module")
def in_between(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A derived Aperio-like slide (bench/make_large_slide.py: real tissue, 240 px JPEG tiles, the scanner's own levels
    at 1x and 4x) with level 0 over 8192 px, so its 2x level is an in-between level above the overview. No sample
    slide has one: their in-between levels are all small enough to be overview levels."""
    out = tmp_path_factory.mktemp("derived") / "in-between.svs"
    made = subprocess.run([sys.executable, str(REPO / "bench" / "make_large_slide.py"), "--gigabytes", "0.01",
                           "--tissue-fraction", "0.15", "--output", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert made.returncode == 0, made.stderr
    with open_slide(out) as slide:
        levels = plan_pyramid(slide, ConvertOptions(hub_levels=True)).levels
    assert [level.index for level in levels if level.at_hub] == [1], "the 2x level is left to the hub"
    return out


def send(slide: Path, server: S3Server, bucket: str, prefix: str, state: Path, *flags: object) -> tuple[dict[str, Any], float]:
    """`slidestream send` of `slide` as case CASE under `prefix`: its final manifest, and the seconds it took."""
    started = time.monotonic()
    run = slidestream("send", slide, *send_args(server, bucket, state, "--case", "between", *flags), timeout=600)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    stored = server.client().get_object(Bucket=bucket, Key=f"{prefix}/{REF.key(MANIFEST)}")["Body"].read()
    return json.loads(stored), seconds


def level_objects(server: S3Server, bucket: str, prefix: str, level: int) -> dict[str, bytes]:
    client, folder = server.client(), f"{prefix}/{REF.key(IMAGE)}/"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{folder}{level}/c/").get("Contents", [])
    return {item["Key"].removeprefix(folder): client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def test_without_a_hub_the_send_builds_every_level_and_the_hub_would_have_built_the_same(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, in_between: Path
) -> None:
    manifest, _ = send(in_between, s3_server, s3_bucket, "cases", tmp_path / "state", "--hub-wait", "1")
    assert manifest["state"] == "complete" and "hub_planned" not in manifest and "hub_levels" not in manifest
    # every level's tissue shards planned, arrived and on the store: nothing is left to anyone else
    with open_slide(in_between) as slide:
        plan = plan_pyramid(slide, ConvertOptions(hub_levels=True))
    level_counts = {entry["level"]: entry for entry in manifest["levels"]}
    assert sorted(level_counts) == [level.index for level in plan.levels]
    assert all(entry["planned"] == entry["arrived"] > 0 for entry in level_counts.values())
    assert set(manifest["planned"]) == set(manifest["arrived"])
    stored = {level.index: level_objects(s3_server, s3_bucket, "cases", level.index) for level in plan.levels}
    assert set(manifest["planned"]) == {key for objects in stored.values() for key in objects}
    assert sorted(stored[1]) == sorted(task.key for task in plan.hub_shards)

    # what a reader sees: the 2x level holds the tissue that the 4x level (the scanner's own) shows
    image = zarr.open_group(Location.parse(f"s3://{s3_bucket}/cases/{REF.key(IMAGE)}", s3_server.endpoint_url).zarr_store(), mode="r")
    two, four = np.asarray(image["1"][:]), np.asarray(image["2"][:])
    tissue_2x, tissue_4x = ((pixels.min(axis=0) < 200).mean() for pixels in (two, four))
    assert tissue_2x > 0.05 and abs(tissue_2x - tissue_4x) < 0.02, (tissue_2x, tissue_4x)

    # the hub, given the same image without the 2x level, builds it byte for byte
    client = s3_server.client()
    root = f"cases/{REF.root}/"
    for item in (entry for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=root)
                 for entry in page.get("Contents", [])):  # fmt: skip
        key = item["Key"].removeprefix(root)
        if not key.startswith(f"{IMAGE}/1/c/") and key != MANIFEST:
            client.copy_object(Bucket=s3_bucket, Key=f"copy/{REF.root}/{key}", CopySource={"Bucket": s3_bucket, "Key": item["Key"]})
    left = Manifest.from_document(manifest)
    hub_planned = tuple(task.key for task in plan.hub_shards)
    left = Manifest(left.case, left.slide, left.version, left.started_at, left.state, None, True,
                    tuple(key for key in left.planned if key not in hub_planned), tuple(key for key in left.arrived if key not in hub_planned),
                    {"1": 0}, hub_planned)  # fmt: skip
    copy = Location.slide_version(Location.parse(f"s3://{s3_bucket}/copy", s3_server.endpoint_url), REF)
    copy.write_bytes(MANIFEST, left.to_json())
    assert complete_pyramid(copy, left) == (len(hub_planned), True)
    assert level_objects(s3_server, s3_bucket, "copy", 1) == stored[1]

    # and `export-dicom` takes the case as it is: nothing is waiting for a hub
    out = tmp_path / "dicom"
    export = subprocess.run([sys.executable, "-m", "slidestream", "export-dicom", f"s3://{s3_bucket}/cases/stations/{STATION}/{CASE}",
                             str(out), "--endpoint-url", s3_server.endpoint_url],
                            capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert export.returncode == 0, export.stderr
    assert len(list(out.iterdir())) >= len(plan.levels)


@pytest.mark.parametrize("sign", [LEASE, PYRAMID])
def test_a_hub_that_claims_the_slide_builds_the_levels_and_the_send_sends_none(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, in_between: Path, sign: str
) -> None:
    location = Location.slide_version(Location.parse(f"s3://{s3_bucket}/cases", s3_server.endpoint_url), REF)

    def claim() -> None:
        """A hub's sign once the send's first manifest is there: its lease (`slidestream hub` claims a slide version
        it finds), or its record of this send's hub shards (one it has started building)."""
        wait_for(lambda: location.read_bytes(MANIFEST) is not None, "the first manifest", 120)
        if sign == LEASE:
            location.write_bytes(LEASE, Lease("hub-test", time.time() + 600).to_json())
        else:
            started_at = Manifest.read(location.read_bytes(MANIFEST) or b"").started_at
            location.write_bytes(PYRAMID, PyramidRecord(started_at).to_json())

    hub = threading.Thread(target=claim, daemon=True)
    hub.start()
    state = tmp_path / "state"
    manifest, seconds = send(in_between, s3_server, s3_bucket, "cases", state, "--hub-wait", "120")
    hub.join(timeout=10)
    assert seconds < 120, "the send saw the claim and did not wait out --hub-wait"
    assert manifest["state"] == "complete" and manifest["hub_levels"] == {"1": 0} and manifest["hub_planned"]
    put = journal_objects(state)
    assert put and not [key for key in put if key.startswith("1/c/")], "the station sent none of the hub's shards"
    assert level_objects(s3_server, s3_bucket, "cases", 1) == {}
