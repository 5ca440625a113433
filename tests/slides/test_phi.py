"""Patient data never leaves the hospital: a byte-level sweep of everything `send`, `watch` and `convert` write.

The slides are generated with identifying strings in every place vendors put them (file name, ImageDescription,
XMP, JPEG COM/APPn segments in the tiles and in JPEGTables, label and macro pages, DICOM attributes); then every
object on the real S3 server and every file `convert` wrote is searched for them. Everything the viewer serves for
those cases (worklist, image description, status, tiles, heatmap tiles, pages) and what `analyze` writes for a slide
file are searched too. A `--keep-phi` control proves the sweep finds them when they are there.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx
import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
import zarr
from conftest import REPO
from support import colorectal_context
from support.phi import (
    COMMENT,
    HEIGHT,
    IDENTIFYING,
    NAME,
    TILE,
    WIDTH,
    _aperio_jpeg,
    _rgb_jpeg_parts,
    _segment,
    make_dicom,
    make_svs,
)
from support.viewer import serving

import tiling  # noqa: F401  (registers the JPEG chunk codec with zarr)
from caseformat.layout import ARRIVALS, STATION_TREES
from slides import CorruptSlideError, open_slide
from slides.jpeg import strip_metadata
from transfer import content_id
from viewer import S3Storage

pytestmark = pytest.mark.slow  # sends and serves every sample

STATION = "theatre-2"  # the sending station's ID: its folder on the store, the first part of its case IDs




# what scanner software writes into JPEG streams: a comment, a vendor APP9 block, XMP in APP1














@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scanner")
    return {"svs": make_svs(folder / f"{NAME}.svs"), "dcm": make_dicom(folder / f"{NAME}.dcm")}


def slidestream(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real command line, with the S3 server's environment."""
    result = subprocess.run([sys.executable, "-m", "slidestream", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    return result


def leaks(blobs: Iterable[tuple[str, bytes]]) -> list[str]:
    """Every (object, identifying string) pair where the string occurs in the object's name (a key, a path, a URL)
    or its bytes."""
    return [f"{name}: {secret.decode()}" for name, data in blobs for secret in IDENTIFYING
            if secret in name.encode(errors="surrogateescape") or secret in data]


def bucket_objects(s3_server, bucket: str) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
    return [(key, client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]


def viewer_responses(s3_server, bucket: str, prefix: str, tiles_per_level: int = 200) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    """Everything the viewer serves for every case under s3://bucket/prefix, as the pages ask for it: the pages, the
    worklist, each case (its slides, reports, requests and annotations), each slide version's image description,
    status and thumbnail, its image tiles (every tile of a level with at most `tiles_per_level`, else an even
    spread) and, with a heatmap, its overlay tiles on the same grid."""
    served: list[tuple[str, bytes]] = []
    storage = S3Storage(bucket, prefix, s3_server.endpoint_url)
    with serving(storage) as viewer:

        def get(path: str, token: str | None, expect: tuple[int, ...] = (200,)) -> httpx.Response:
            response = viewer.get(path, token)
            assert response.status_code in expect, (path, response.status_code, response.text)
            served.append((path, b"".join(f"{k}: {v}\n".encode() for k, v in response.headers.items()) + response.content))
            return response

        worklist = viewer.person(storage)  # a pathologist: the worklist, and every case's reports and requests
        get("/worklist", None)
        cases = [entry["case"] for entry in get("/api/worklist", worklist).json()["cases"]]
        assert cases, "the viewer lists the cases"
        for case in cases:
            token = viewer.token(case)
            get(f"/view/{case}", None)
            info = get(f"/api/cases/{case}", token).json()
            get(f"/api/cases/{case}/reports", worklist)
            get(f"/api/cases/{case}/requests", worklist)
            get(f"/api/cases/{case}/annotations", token)
            assert info["slides"], f"{case}: the viewer lists its slides"
            for entry in info["slides"]:
                base = f"/api/cases/{case}/slides/{entry['slide']}/{entry['version']}"
                status = get(f"{base}/status", token).json()
                image = get(f"{base}/image", token).json()
                get(f"{base}/thumbnail", token, (200, 404))
                found = 0
                for level, size in enumerate(image["levels"]):
                    rows, cols = math.ceil(size["height"] / image["tile_size"]), math.ceil(size["width"] / image["tile_size"])
                    step = max(1, rows * cols // tiles_per_level)
                    for index in range(0, rows * cols, step):
                        row, col = divmod(index, cols)
                        found += get(f"{base}/tiles/{level}/{row}/{col}", token, (200, 404)).status_code == 200
                        if status["heatmap"]:
                            get(f"{base}/heatmap/{level}/{row}/{col}.png?v={status['heatmap']['version']}", token)
                assert found, f"{base}: the viewer served image tiles"
    return served


def written_files(root: Path) -> list[tuple[str, bytes]]:
    return [(str(path.relative_to(root)), path.read_bytes()) for path in sorted(root.rglob("*")) if path.is_file()]


# -- the generated slides really carry the data, where a reader finds it ---------------------------------------
def test_generated_slides_carry_identifying_data_where_vendors_put_it(slides: dict[str, Path]) -> None:
    svs = slides["svs"]
    with openslide.OpenSlide(svs) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert {"label", "macro"} <= set(osr.associated_images)
        assert osr.properties["aperio.Patient"] == "DOE^JANE"
    raw = svs.read_bytes()
    assert all(secret in raw for secret in IDENTIFYING)
    with open_slide(svs, keep_phi=True) as slide:
        assert slide.has_raw_tiles(0) and slide.raw_codec(0) == "jpeg" and slide.tile_size == TILE
        tile = slide.raw_tile(0, 2, 3)
        assert COMMENT in tile.data and b"ST-ELSEWHERE" in tile.jpeg_tables
    with openslide.OpenSlide(slides["dcm"]) as osr:
        assert any("DOE^JANE" in value for value in osr.properties.values())


def test_deidentified_slide_hands_out_tiles_without_segments_and_same_pixels(slides: dict[str, Path]) -> None:
    svs = slides["svs"]
    expected = tifffile.imread(svs, series=0, level=0)
    with open_slide(svs) as slide:
        assert slide.name == "image" and "file" not in slide.summary()
        assert not leaks([("summary", json.dumps(slide.summary()).encode())])
        for row in range(HEIGHT // TILE):
            for col in range(WIDTH // TILE):
                tile = slide.raw_tile(0, row, col)
                assert not leaks([("tile", tile.data), ("tables", tile.jpeg_tables)])
                pixels = imagecodecs.jpeg8_decode(tile.data, tables=tile.jpeg_tables, colorspace="RGB", outcolorspace="RGB")
                np.testing.assert_array_equal(pixels, expected[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE])


def test_malformed_jpeg_segments_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overruns"):
        strip_metadata(b"\xff\xd8\xff\xfe\x00\x40short")
    with pytest.raises(ValueError, match="no JPEG marker"):
        strip_metadata(b"\xff\xd8garbage")
    # a slide whose tile's comment claims more bytes than the tile has
    pixels = np.full((TILE, TILE, 3), 200, np.uint8)
    tables, tile = _rgb_jpeg_parts(pixels)
    broken = tile.replace(_segment(0xFE, COMMENT), b"\xff\xfe\xff\xf0" + COMMENT)
    path = tmp_path / "broken-comment.svs"
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter([broken]), shape=(TILE, TILE, 3), dtype=np.uint8, tile=(TILE, TILE), **_aperio_jpeg(tables))
    with open_slide(path) as slide, pytest.raises(CorruptSlideError) as error:
        slide.raw_tile(0, 0, 0)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "tile (0, 0) of level 0" in message


# -- the sweep: send, watch, convert with default options ------------------------------------------------------
def test_send_with_edge_triage_leaves_no_identifying_byte_on_the_store(slides: dict[str, Path], s3_server, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for slide in slides.values():
        slidestream("send", slide, f"s3://{s3_bucket}/frozen", "--endpoint-url", s3_server.endpoint_url, "--edge",
                    "--station", STATION, "--state-dir", tmp_path / "state", "--context-file", colorectal_context())
    objects = bucket_objects(s3_server, s3_bucket)
    keys = [key for key, _ in objects]
    assert sum(key.endswith("triage.json") for key in keys) == 2, keys  # the SVS's map, the DICOM's refusal (too coarse)
    assert sum(key.endswith("heatmap.zarr/zarr.json") for key in keys) == 1, keys
    assert sum(key.endswith("manifest.json") for key in keys) == 2, keys
    assert any("/image.zarr/0/c/" in key for key in keys), "level-0 shards (the pass-through tiles) were sent"
    assert leaks(objects) == []
    served = viewer_responses(s3_server, s3_bucket, "frozen")
    assert any("/heatmap/" in path for path, _ in served), "the triaged case's overlay was served"
    assert leaks(served) == []


def test_watch_with_edge_triage_leaves_no_identifying_byte_on_the_store(slides: dict[str, Path], s3_server, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hot = tmp_path / "hot"
    (hot / "colon").mkdir(parents=True)  # a colorectal specimen, so its SVS is triaged with a map
    (hot / "colon" / "specimen.json").write_text('{"specimen_site": "sigmoid colon"}')
    for slide in slides.values():
        shutil.copy(slide, hot / "colon" / slide.name)
    slidestream("watch", hot, f"s3://{s3_bucket}/site-a", "--endpoint-url", s3_server.endpoint_url, "--once",
                "--settle", "0.5", "--station", STATION, "--state-dir", tmp_path / "state")
    objects = bucket_objects(s3_server, s3_bucket)
    keys = [key for key, _ in objects]
    assert sum(key.endswith("manifest.json") for key in keys) == 2 and any(key.endswith("triage.json") for key in keys), keys
    assert leaks(objects) == []
    served = viewer_responses(s3_server, s3_bucket, "site-a")
    assert any("/heatmap/" in path for path, _ in served), "the triaged case's overlay was served"
    assert leaks(served) == []


def test_analyze_of_a_slide_file_names_its_results_by_its_content_id_and_leaks_nothing(slides: dict[str, Path], s3_server, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`analyze FILE --out s3://...` names the results of a slide file by a pseudonym of its content, never its name
    (the case ID `send` gave it is random and known only to the station's registry); the file name stays in the
    local report's `slide` column, the join between the two."""
    store = f"s3://{s3_bucket}/results"
    slidestream("send", slides["svs"], store, "--endpoint-url", s3_server.endpoint_url, "--no-edge", "--station", STATION,
                "--state-dir", tmp_path / "state")
    report = tmp_path / "report.csv"
    slidestream("analyze", slides["svs"], "--out", store, "--coarse", "--report", report, "--endpoint-url", s3_server.endpoint_url,
                "--site", "colon")
    with report.open(newline="") as handle:
        (row,) = csv.DictReader(handle)
    objects = bucket_objects(s3_server, s3_bucket)
    (manifest,) = [json.loads(data) for key, data in objects if key.endswith("/manifest.json")]
    assert row["case"] == content_id(slides["svs"]) != manifest["case"] and row["slide"] == str(slides["svs"])
    assert row["status"] == "ok" and row["results"] == f"{store}/{row['case']}"
    sent = {tuple(key.split("/")[1:4]) for key, _ in objects if not key.startswith(f"results/{row['case']}/")}
    assert sent == {(STATION_TREES, STATION, manifest["case"]), (STATION_TREES, STATION, ARRIVALS)}, "the sent case and the results"
    triage = next(json.loads(data) for key, data in objects if key == f"results/{row['case']}/triage.json")
    assert triage["source"] == row["case"] and triage["complete"] is True
    assert any(key.startswith(f"results/{row['case']}/heatmap.zarr/") for key, _ in objects)
    assert leaks(objects) == []


def test_convert_writes_no_identifying_byte_and_passes_tiles_through_pixel_exact(slides: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "svs.zarr"
    slidestream("convert", slides["svs"], out)
    slidestream("convert", slides["dcm"], tmp_path / "dcm.zarr")
    assert leaks(written_files(out)) == [] and leaks(written_files(tmp_path / "dcm.zarr")) == []
    metadata = json.loads((out / "zarr.json").read_bytes())["attributes"]
    assert metadata["slidestream"]["source"]["deidentified"] is True and 0 in metadata["slidestream"]["passthrough_levels"]
    # level 0 holds the scanner's own scans (stripped of their segments) and decodes to the source's pixels
    with open_slide(slides["svs"]) as slide:
        scan = slide.raw_tile(0, 3, 3).data
    scan = scan[scan.index(b"\xff\xda") :]
    assert any(scan in data for _, data in written_files(out / "0"))
    level0 = np.asarray(zarr.open_array(out / "0", mode="r")[:]).transpose(1, 2, 0)
    with openslide.OpenSlide(slides["svs"]) as osr:
        reference = np.asarray(osr.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))
    written = [(r, c) for r in range(HEIGHT // TILE) for c in range(WIDTH // TILE)
               if (level0[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] != 255).any()]
    assert len(written) >= 12, "the tissue tiles were written"
    for r, c in written:
        box = np.s_[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
        np.testing.assert_array_equal(level0[box], reference[box])


def test_keep_phi_control_the_sweep_finds_what_is_there(slides: dict[str, Path], s3_server, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With --keep-phi the same sweep finds the strings: the tests above would fail on a leak."""
    slidestream("send", slides["svs"], f"s3://{s3_bucket}/kept", "--endpoint-url", s3_server.endpoint_url, "--keep-phi",
                "--station", STATION, "--state-dir", tmp_path / "state")
    found = leaks(bucket_objects(s3_server, s3_bucket))
    assert any("/image.zarr/0/c/" in line and "DOE^JANE" in line for line in found), found  # the tiles' comments
    # the viewer serves stored tiles as they are, so it hands the comments out too; it never serves the label,
    # macro or properties, so the tiles are the only place its sweep can find them
    found = leaks(viewer_responses(s3_server, s3_bucket, "kept"))
    assert any("/tiles/0/" in line and "DOE^JANE" in line for line in found), found
    out = tmp_path / "kept.zarr"
    slidestream("convert", "--keep-phi", slides["svs"], out)
    found = leaks(written_files(out))
    assert any(line.startswith("zarr.json") and "DOE_JANE" in line for line in found), found  # the file name
    assert any(line.startswith("0/c/") and "MRN-7777123" in line for line in found), found  # the tiles' comments
