"""The viewer's server against the real S3 server and a local directory: tiles, arrival, access, bad requests.

The browser end of the story is in test_viewer_browser.py; the helpers here (sending a case, running the server)
are shared with it.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import zarr
from conftest import S3Server, sample
from PIL import Image
from support import corrupt_slide, wait_for
from support.viewer import (
    CENTRE_KEY,
    KEY_DIR,
    SECRET,
    SLIDE,
    TRUSTED,
    Bucket,
    Served,
    chunk_of,
    heatmap_objects,
    manifest,
    pyramid,
    serving,
    shards,
    triage_json,
    write_local,
)

from caseformat.documents import PATHOLOGIST, CaseRecord
from caseformat.layout import (
    CASE_RECORD,
    HEATMAP,
    IMAGE,
    MANIFEST,
    TRIAGE,
    SlideRef,
    case_key,
    image_key,
    station_case_folder,
)
from tiling import PieceKind
from tiling.shard_format import assemble_shard
from viewer import (
    WORKLIST,
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    ScopeError,
    SecretError,
    TokenError,
    Tokens,
    audit,
    case_scope,
    load_secret,
)
from viewer.heatmap import LUT
from viewer.people import add_person
from viewer.tokens import SESSION_COOKIE


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> Bucket:
    return Bucket(s3_server)


@pytest.fixture(scope="module")
def sent(bucket: Bucket) -> Iterator[Served]:
    """Case 'h1.complete' fully sent to S3, with the hub's triage score; the viewer serving that bucket."""
    bucket.send("h1.complete", triage=0.8)
    with serving(bucket.storage()) as served:
        yield served


# -- tiles -----------------------------------------------------------------------------------------------------
def test_a_tile_is_exactly_the_stored_jpeg_chunk(sent: Served) -> None:
    plan, pieces = pyramid()
    token = sent.token("h1.complete")
    n = plan.shard_chunks
    for level, row, col in [(0, 0, 0), (0, 9, 5), (0, 12, 9), (1, 3, 2), (2, 0, 0), (2, 3, 2)]:
        shard = shards(pieces)[f"{level}/c/0/{row // n}/{col // n}"]
        response = sent.get(f"/api/cases/h1.complete/slides/s1/v1/tiles/{level}/{row}/{col}", token)
        assert response.status_code == 200, (level, row, col, response.text)
        assert response.content == chunk_of(shard, n, row % n, col % n)
        assert response.headers["content-type"] == "image/jpeg"
        assert "immutable" in response.headers["cache-control"]
        again = sent.get(f"/api/cases/h1.complete/slides/s1/v1/tiles/{level}/{row}/{col}", token, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    # the bottom-right edge chunk decodes as a full tile: the browser is told the real image size and clips it
    edge = sent.get("/api/cases/h1.complete/slides/s1/v1/tiles/0/12/9", token)
    assert Image.open(io.BytesIO(edge.content)).size == (plan.chunk, plan.chunk)


class CountedRanges(S3Storage):
    """The real S3 store, counting the chunk reads that reach it."""

    ranges = 0

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges += 1
        return await super().get_range(key, start, length)


@pytest.mark.parametrize("cache", [None, 0])
def test_a_tile_looked_at_again_is_not_read_from_the_store_again(bucket: Bucket, cache: int | None) -> None:
    """A second pathologist, or the same one back at a field, costs no S3 request: tiles never change under their
    ETag. Without the cache (`serve --tile-cache-mb 0`) every look is a GET."""
    plan, pieces = pyramid()
    bucket.send("h1.looked")
    storage = CountedRanges(bucket.name, bucket.prefix, bucket.endpoint_url)
    with serving(storage, **({} if cache is None else {"tile_cache_bytes": cache})) as served:
        token = served.token("h1.looked")
        n = plan.shard_chunks
        looks = [served.get(f"/api/cases/h1.looked/slides/s1/v1/tiles/0/{row}/{col}", token) for row, col in [(9, 5), (3, 2), (9, 5), (9, 5), (3, 2)]]
        for response, (row, col) in zip(looks, [(9, 5), (3, 2), (9, 5), (9, 5), (3, 2)]):
            assert response.status_code == 200 and response.content == chunk_of(shards(pieces)[f"0/c/0/{row // n}/{col // n}"], n, row % n, col % n)
        assert storage.ranges == (2 if cache is None else 5)


def test_a_slide_thumbnail_is_its_coarsest_level_made_small(sent: Served) -> None:
    token = sent.token("h1.complete")
    image = sent.get("/api/cases/h1.complete/slides/s1/v1/image", token).json()
    coarsest = len(image["levels"]) - 1
    width, height = image["levels"][coarsest]["width"], image["levels"][coarsest]["height"]
    tile = image["tile_size"]
    level = Image.new("RGB", (width, height))
    for row in range(-(-height // tile)):
        for col in range(-(-width // tile)):
            level.paste(Image.open(io.BytesIO(sent.get(f"/api/cases/h1.complete/slides/s1/v1/tiles/{coarsest}/{row}/{col}", token).content)), (col * tile, row * tile))
    response = sent.get("/api/cases/h1.complete/slides/s1/v1/thumbnail", token)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert max(thumbnail.size) == 192 and abs(thumbnail.size[0] / thumbnail.size[1] - width / height) < 0.01
    expected = np.asarray(level.resize(thumbnail.size, Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(thumbnail, np.int16) - expected).mean() < 6  # the same picture, up to JPEG and resampling
    again = sent.get("/api/cases/h1.complete/slides/s1/v1/thumbnail", token, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert sent.get("/api/cases/h1.complete/slides/s1/v1/thumbnail", sent.token("h1.other")).status_code == 403


def test_the_slide_list_a_page_polls_is_the_cases_and_not_an_opening(sent: Served, bucket: Bucket) -> None:
    token = sent.token("h1.complete")
    opened = sent.get("/api/cases/h1.complete", token).json()
    events = asyncio.run(audit.read(bucket.storage(), TRUSTED, "h1.complete"))
    polled = sent.get("/api/cases/h1.complete/slides", token)
    assert polled.status_code == 200 and polled.json()["slides"] == opened["slides"] == [
        {"slide": "s1", "version": "v1", "state": "complete", "failed": None}
    ]
    assert asyncio.run(audit.read(bucket.storage(), TRUSTED, "h1.complete")) == events  # the opening was recorded once
    assert sent.get("/api/cases/h1.complete/slides", sent.token("h1.other")).status_code == 403


def test_several_viewers_of_one_case_at_once_get_every_byte_right(sent: Served) -> None:
    """Consultation: two pathologists with their own links pull all full-resolution tiles at the same time."""
    plan, pieces = pyramid()
    n, stored = plan.shard_chunks, shards(pieces)
    addresses = [(row, col) for row in range(13) for col in range(10)]

    async def fetch_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=sent.url, timeout=60) as client:
            requests = [
                client.get(f"/api/cases/h1.complete/slides/s1/v1/tiles/0/{row}/{col}", headers={"Authorization": f"Bearer {token}"})
                for token in (sent.token("h1.complete"), sent.token("h1.complete", timedelta(minutes=30)))
                for row, col in addresses
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(fetch_all())
    for response, (row, col) in zip(responses, addresses * 2, strict=True):
        assert response.status_code == 200
        assert response.content == chunk_of(stored[f"0/c/0/{row // n}/{col // n}"], n, row % n, col % n)


def test_image_description_holds_geometry_and_nothing_identifying(sent: Served) -> None:
    info = sent.get("/api/cases/h1.complete/slides/s1/v1/image", sent.token("h1.complete")).json()
    assert (info["width"], info["height"], info["tile_size"], info["mpp"]) == (2220, 2967, 240, pytest.approx(0.499))
    assert [level["width"] for level in info["levels"]] == [2220, 1110, 555]
    assert "sample" not in json.dumps(info) and "svs" not in json.dumps(info).lower()


def test_bad_tile_requests_are_4xx(sent: Served) -> None:
    token = sent.token("h1.complete")
    for path in [
        "/api/cases/h1.complete/slides/s1/v1/tiles/0/13/0",  # one past the last row
        "/api/cases/h1.complete/slides/s1/v1/tiles/0/0/10",
        "/api/cases/h1.complete/slides/s1/v1/tiles/3/0/0",  # no such level
        "/api/cases/h1.complete/slides/s1/v1/tiles/64/0/0",
        "/api/cases/h1.complete/slides/s1/v1/tiles/-1/0/0",
        "/api/cases/h1.complete/slides/s1/v1/tiles/0/99999999999999999999/0",
        "/api/cases/h1.complete/slides/s1/v1/tiles/0/x/0",
        "/api/cases/h1.complete/slides/s1/v1/tiles/0/0",
        "/api/cases/h1.complete/slides/s1/v1/heatmap/0/0/0.png",  # no heatmap for this case
        "/api/cases/h1.nosuchcase/slides/s1/v1/image",
    ]:
        status = sent.get(path, token if "nosuchcase" not in path else sent.token("h1.nosuchcase")).status_code
        assert 400 <= status < 500, (path, status)


# -- access ----------------------------------------------------------------------------------------------------
def test_access_needs_a_valid_token_for_that_case(sent: Served) -> None:
    path = "/api/cases/h1.complete/slides/s1/v1/tiles/0/0/0"
    expired = sent.tokens.issue(case_scope("h1.complete"), timedelta(seconds=-1))
    forged = Tokens(b"another-secret-that-is-long-enough-0123456789").issue(case_scope("h1.complete"), timedelta(hours=1))
    assert sent.get(path).status_code == 401
    for token in ["garbage", "a.b.c", expired, forged, sent.token("h1.complete")[:-3] + "AAA", "é" * 40]:
        assert sent.get(path, headers={"Authorization": f"Bearer {token}".encode()}).status_code == 401, token
    assert sent.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    assert sent.get(path, sent.token("h1.other-case")).status_code == 403
    assert sent.get(path, sent.tokens.issue(WORKLIST, timedelta(hours=1))).status_code == 403
    assert sent.get("/api/worklist", sent.token("h1.complete")).status_code == 403
    assert sent.get("/api/worklist").status_code == 401
    assert sent.get(path, sent.token("h1.complete")).status_code == 200


def test_tokens_are_scoped_signed_and_expire() -> None:
    tokens = Tokens(SECRET)
    token = tokens.issue(case_scope("h1.A1"), timedelta(minutes=5))
    tokens.check(token, case_scope("h1.A1"))
    with pytest.raises(ScopeError):
        tokens.check(token, case_scope("h1.A2"))
    with pytest.raises(TokenError, match="expired"):
        tokens.check(tokens.issue(case_scope("h1.A1"), timedelta(seconds=-1)), case_scope("h1.A1"))
    with pytest.raises(TokenError):
        Tokens(SECRET + b"x").check(token, case_scope("h1.A1"))
    with pytest.raises(ValueError):
        case_scope("../etc")


def test_the_secret_is_created_once_privately_and_must_be_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESTREAM_SECRET", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first = load_secret()
    assert load_secret() == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "state" / "slidestream" / "viewer-secret").stat().st_mode) == 0o600
    monkeypatch.setenv("SLIDESTREAM_SECRET", "s" * 40)
    assert load_secret() == b"s" * 40
    (tmp_path / "short").write_text("too short")
    with pytest.raises(SecretError, match="at least 32"):
        load_secret(tmp_path / "short")
    with pytest.raises(SecretError, match="cannot read"):
        load_secret(tmp_path / "missing")


# -- a send in progress ----------------------------------------------------------------------------------------
def test_before_the_sender_knows_the_tissue_nothing_unplanned_is_called_background(s3_server: S3Server) -> None:
    """The overview travels before tissue detection: until `plan_final`, an unplanned shard may still come."""
    bucket = Bucket(s3_server)
    plan, pieces = pyramid()
    n = plan.shard_chunks
    overview = [key for key in shards(pieces) if not key.startswith("0/")]
    ref = SlideRef("h1.early")
    for piece in pieces:
        if piece.kind != PieceKind.SHARD or piece.level != 0:
            bucket.put(ref.key(image_key(piece.key)), piece.data)
    bucket.put(ref.key(MANIFEST), manifest("h1.early", pieces, set(overview), overview, plan_final=False))
    with serving(bucket.storage()) as served:
        token = served.token("h1.early")
        tile = served.get(f"/api/cases/h1.early/slides/s1/v1/tiles/0/{n}/{n}", token)
        assert (tile.status_code, tile.headers["x-tile"], tile.headers["cache-control"]) == (404, "pending", "no-store")
        assert served.get("/api/cases/h1.early/slides/s1/v1/tiles/1/0/0", token).status_code == 200
        assert [level["state"] for level in served.get("/api/cases/h1.early/slides/s1/v1/status", token).json()["levels"]] == ["1111", "2", "2"]


def test_tiles_follow_the_manifest_during_a_send(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    plan, pieces = pyramid()
    n = plan.shard_chunks
    all_shards = shards(pieces)
    # the overview levels have arrived; level 0 is still on its way, and shard 0/c/0/1/1 is not planned (glass)
    planned = [key for key in all_shards if key != "0/c/0/1/1"]
    ref = SlideRef("h1.live")
    for piece in pieces:
        if piece.kind != PieceKind.SHARD or piece.level != 0:
            bucket.put(ref.key(image_key(piece.key)), piece.data)
    bucket.put(ref.key(MANIFEST), manifest("h1.live", pieces, {k for k in planned if not k.startswith("0/")}, planned))
    with serving(bucket.storage()) as served:
        token = served.token("h1.live")
        pending = served.get("/api/cases/h1.live/slides/s1/v1/tiles/0/0/0", token)
        assert (pending.status_code, pending.headers["x-tile"], pending.headers["cache-control"]) == (404, "pending", "no-store")
        background = served.get(f"/api/cases/h1.live/slides/s1/v1/tiles/0/{n}/{n}", token)
        assert (background.status_code, background.headers["x-tile"]) == (404, "background")
        assert served.get("/api/cases/h1.live/slides/s1/v1/tiles/1/0/0", token).status_code == 200
        status = served.get("/api/cases/h1.live/slides/s1/v1/status", token).json()
        assert [level["state"] for level in status["levels"]] == ["1110", "2", "2"]  # 0: background, 1: pending, 2: arrived
        assert status["complete"] is False and status["levels"][0]["arrived"] == 0

        # level 0's first shard arrives; the manifest says so; the tile turns into the chunk
        bucket.put(ref.key(image_key("0/c/0/0/0")), all_shards["0/c/0/0/0"])
        arrived = {k for k in planned if not k.startswith("0/")} | {"0/c/0/0/0"}
        bucket.put(ref.key(MANIFEST), manifest("h1.live", pieces, arrived, planned))
        wait_for(lambda: served.get("/api/cases/h1.live/slides/s1/v1/tiles/0/0/0", token).status_code == 200, "level-0 tile after its arrival")
        assert served.get("/api/cases/h1.live/slides/s1/v1/tiles/0/0/0", token).content == chunk_of(all_shards["0/c/0/0/0"], n, 0, 0)
        assert served.get("/api/cases/h1.live/slides/s1/v1/status", token).json()["levels"][0]["state"] == "2110"


def test_a_chunk_missing_from_an_arrived_shard_is_background(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    plan, pieces = pyramid()
    n = plan.shard_chunks
    bucket.send("h1.holes")
    full = shards(pieces)["0/c/0/0/0"]
    chunks = {(i, j): chunk_of(full, n, i, j) for i in range(n) for j in range(n)}
    del chunks[(2, 3)]  # glass: the writer left it out
    bucket.put(SlideRef("h1.holes").key(image_key("0/c/0/0/0")), assemble_shard(chunks, n))  # type: ignore[arg-type]
    with serving(bucket.storage()) as served:
        token = served.token("h1.holes")
        response = served.get("/api/cases/h1.holes/slides/s1/v1/tiles/0/2/3", token)
        assert (response.status_code, response.headers["x-tile"]) == (404, "background")
        assert served.get("/api/cases/h1.holes/slides/s1/v1/tiles/0/2/4", token).content == chunks[(2, 4)]


def test_a_rescan_of_the_case_replaces_what_the_viewer_serves(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    bucket.send("h1.rescan", started=datetime.now(UTC) - timedelta(minutes=10))
    with serving(bucket.storage()) as served:
        token = served.token("h1.rescan")
        first = served.get("/api/cases/h1.rescan/slides/s1/v1/tiles/0/0/0", token)
        assert served.get("/api/cases/h1.rescan/slides/s1/v1/image", token).json()["width"] == 2220
        # the same case id, sent again from another scan (another slide, other geometry), with a new start time
        for key in [SlideRef("h1.rescan").key(image_key(f"{level}/c/0/{r}/{c}")) for level in range(3) for r in range(2) for c in range(2)]:
            bucket.client.delete_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{key}")
        plan, pieces = pyramid("camelyon-lymphnode.dcm")
        bucket.send("h1.rescan", slide="camelyon-lymphnode.dcm")
        wait_for(lambda: served.get("/api/cases/h1.rescan/slides/s1/v1/image", token).json()["width"] == 1152, "the new image")
        second = served.get("/api/cases/h1.rescan/slides/s1/v1/tiles/0/0/0", token)
        n = plan.shard_chunks
        assert second.content == chunk_of(shards(pieces)["0/c/0/0/0"], n, 0, 0) != first.content
        assert second.headers["etag"] != first.headers["etag"]


# -- worklist, heatmap (the report: test_reports.py) -----------------------------------------------------------
def test_the_worklist_puts_the_most_suspicious_of_equally_urgent_cases_first_and_signed_ones_last(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    registered = datetime.now(UTC).isoformat()  # registered together: the same time left, so the score decides
    context = (("specimen_site", "left breast"), ("specimen_type", "frozen section"), ("hospital", "St Elsewhere"))
    for case, score in [("theatre-1.low", 0.1), ("theatre-1.high", 0.93), ("theatre-1.mid", 0.5)]:
        bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, registered, "theatre-1", context).to_json())
        bucket.send(case, triage=score)
    bucket.put(case_key("theatre-2.unscored", CASE_RECORD), CaseRecord("theatre-2.unscored", registered, "theatre-2").to_json())
    bucket.send("theatre-2.unscored", arrived=lambda piece: piece.level != 0)
    with serving(bucket.storage()) as served:
        pathologist = served.person(bucket.storage())
        worklist = served.get("/api/worklist", pathologist).json()
        assert [entry["case"] for entry in worklist["cases"]] == ["theatre-1.high", "theatre-1.mid", "theatre-1.low", "theatre-2.unscored"]
        high = worklist["cases"][0]
        assert (high["hospital"], high["specimen"], len(high["slides"]), high["state"]) == ("St Elsewhere", "frozen section · left breast", 1, "complete")
        assert worklist["cases"][-1]["hospital"] == "theatre-2"  # no hospital in the context: the station that registered it
        unscored = worklist["cases"][-1]
        assert unscored["triage"] is None and unscored["arrived"] < unscored["planned"] and unscored["started_at"]
        # each row links to its case; the page carries the pathologist's own token along, which opens every case
        assert worklist["cases"][0]["link"] == "/view/theatre-1.high" and "token" not in json.dumps(worklist)
        assert served.get("/api/cases/theatre-1.mid/slides/s1/v1/image", pathologist).status_code == 200
        # a signed case is done: it goes last
        form = {"category": "benign", "diagnosis": "No tumour.", "amends": None}
        assert served.post("/api/cases/theatre-1.high/reports", pathologist, json=form).status_code == 200
        wait_for(lambda: served.get("/api/worklist", pathologist).json()["cases"][-1]["case"] == "theatre-1.high", "the signed case last")
        # a case link never opens the worklist
        refused = served.get("/api/worklist", served.token("theatre-1.high"))
        assert refused.status_code == 403 and "sign in as a pathologist" in refused.json()["detail"]


def test_heatmap_tiles_colour_the_probability_on_the_slide_grid(sent: Served, bucket: Bucket) -> None:
    token = sent.token("h1.complete")
    values = np.zeros((30, 22), np.uint8)  # one map pixel ~ 100 slide pixels
    values[:15] = 255  # top half: tumour
    for key, data in heatmap_objects(values, 2220, 0.499).items():
        bucket.put(SlideRef("h1.complete").centre_key(f"{HEATMAP}/{key}"), data)
    wait_for(lambda: sent.get("/api/cases/h1.complete/slides/s1/v1/status", token).json()["heatmap"] is not None, "the heatmap in the status")
    version = sent.get("/api/cases/h1.complete/slides/s1/v1/status", token).json()["heatmap"]["version"]
    top = sent.get(f"/api/cases/h1.complete/slides/s1/v1/heatmap/2/0/0.png?v={version}", token)
    assert top.status_code == 200 and top.headers["content-type"] == "image/png" and "immutable" in top.headers["cache-control"]
    pixels = np.asarray(Image.open(io.BytesIO(top.content)))
    assert pixels.shape == (240, 240, 4)
    assert tuple(pixels[10, 10]) == (253, 231, 37, 255)  # probability 1: viridis' yellow
    bottom = np.asarray(Image.open(io.BytesIO(sent.get("/api/cases/h1.complete/slides/s1/v1/heatmap/2/2/0.png", token).content)))
    assert bottom[100, 10, 3] == 0  # 0 in a uint8 map: background or not scored yet, transparent
    assert bottom[239, 239, 3] == 0  # beyond the slide's 742 rows at this level: transparent
    assert sent.get("/api/cases/h1.complete/slides/s1/v1/heatmap/2/0/0.png?v=stale", token).headers["cache-control"] == "no-store"


def test_a_float_heatmap_with_unanalysed_cells(tmp_path: Path) -> None:
    _, pieces = pyramid()
    ref = SlideRef("h1.f")
    for piece in pieces:
        write_local(tmp_path, ref.key(image_key(piece.key)), piece.data)
    values = np.full((10, 10), np.nan, np.float32)
    values[0, 0] = 0.75
    for key, data in heatmap_objects(values, 2220, 0.499).items():
        write_local(tmp_path, ref.centre_key(f"{HEATMAP}/{key}"), data)
    write_local(tmp_path, ref.centre_key(TRIAGE), triage_json(ref, 0.75))  # a map is drawn only beside its routed score
    with serving(LocalStorage(tmp_path)) as served:
        tile = np.asarray(Image.open(io.BytesIO(served.get("/api/cases/h1.f/slides/s1/v1/heatmap/2/0/0.png", served.token("h1.f")).content)))
    assert tuple(tile[5, 5]) == tuple(LUT[round(0.75 * 255)])  # 0.75: viridis' green
    assert tile[100, 100, 3] == 0  # NaN: not analysed, nothing drawn


# -- lossless images -------------------------------------------------------------------------------------------
def test_lossless_chunks_are_served_as_png_of_their_pixels(tmp_path: Path) -> None:
    plan, pieces = pyramid(lossless=True)
    root = tmp_path / SlideRef("h1.lossless").key(IMAGE)
    for piece in pieces:
        write_local(root, piece.key, piece.data)
    array = zarr.open_array(zarr.storage.LocalStore(root, read_only=True), path="0", mode="r")
    with serving(LocalStorage(tmp_path)) as served:
        token = served.token("h1.lossless")
        assert served.get("/api/cases/h1.lossless/slides/s1/v1/image", token).json()["format"] == "png"
        response = served.get("/api/cases/h1.lossless/slides/s1/v1/tiles/0/12/9", token)  # bottom-right edge chunk
    assert response.headers["content-type"] == "image/png"
    expected = np.moveaxis(array[:, 12 * 240 :, 9 * 240 :], 0, -1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), expected)


# -- storage ---------------------------------------------------------------------------------------------------
def test_s3_storage_reads_ranges_lists_and_writes(bucket: Bucket) -> None:
    storage = bucket.storage()
    bucket.put("s/a/object", bytes(range(100)))
    bucket.put("s/b/x", b"")

    async def check() -> None:
        assert await storage.get("s/a/object") == bytes(range(100))
        assert await storage.get_range("s/a/object", 10, 5) == bytes(range(10, 15))
        assert await storage.get_suffix("s/a/object", 4) == bytes(range(96, 100))
        await storage.put("s/a/new.json", b"{}")
        assert [info.key for info in await storage.list("s/a")] == ["s/a/new.json", "s/a/object"]
        assert await storage.list_dirs("s") == ["a", "b"]
        with pytest.raises(ObjectNotFoundError):
            await storage.get("s/missing")
        with pytest.raises(InvalidKeyError):
            await storage.get("s/../x")

    asyncio.run(check())
    assert bucket.get("s/a/new.json") == b"{}"


@pytest.fixture
def local_store(tmp_path: Path) -> Path:
    """A store with one case, a secret file beside it and symlinks that point out of it."""
    _, pieces = pyramid()
    store = tmp_path / "store"
    case1, escape = SlideRef("h1.case1"), SlideRef("h1.escape")
    for piece in pieces:
        write_local(store, case1.key(image_key(piece.key)), piece.data)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP-SECRET")
    shutil.copytree(store / case1.key(IMAGE), tmp_path / "outside" / escape.path / IMAGE)  # a whole readable image
    (store / station_case_folder(escape.case)).symlink_to(tmp_path / "outside")
    (store / station_case_folder(case1.case) / "secret.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    return store


def test_the_local_store_never_reads_outside_its_root(local_store: Path) -> None:
    storage = LocalStorage(local_store)

    async def refused(key: str) -> None:
        with pytest.raises((InvalidKeyError, ObjectNotFoundError)):
            await storage.get(key)

    case1, escape = station_case_folder("h1.case1"), station_case_folder("h1.escape")  # stations/h1/h1.case1/

    async def check() -> None:
        for key in ["../outside/secret.txt", f"{case1}../../../../outside/secret.txt", "/etc/passwd", f"{case1}secret.txt",
                    f"{escape}secret.txt", SlideRef("h1.escape").key(image_key("zarr.json")), f"{case1}..\\..\\..\\..\\outside",
                    f"{case1}\0", ".", "", f"{case1}/x"]:
            await refused(key)
        assert (await storage.get(SlideRef("h1.case1").key(image_key("zarr.json")))).startswith(b"{")

    asyncio.run(check())


def test_traversal_through_http_gets_4xx_and_nothing_from_outside(local_store: Path) -> None:
    with serving(LocalStorage(local_store)) as served:
        token = served.token("h1.case1")
        escape = served.token("h1.escape")
        assert served.get("/api/cases/h1.case1/slides/s1/v1/tiles/0/0/0", token).status_code == 200
        # a case whose folder is a symlink out of the store: refused like any other outside key, never a 500
        assert 400 <= served.get("/api/cases/h1.escape/slides/s1/v1/image", escape).status_code < 500
        for path, auth in [
            ("/api/cases/../../outside/secret.txt", token),
            ("/api/cases/..%2f..%2foutside%2fsecret.txt/slides/s1/v1/image", token),
            ("/api/cases/%2e%2e/slides/s1/v1/image", served.token("h1.x")),
            ("/api/cases/%2E%2E%2F%2E%2E/slides/s1/v1/image", token),
            ("/api/cases/h1.case1/../h1.escape/image", token),
            ("/api/cases/h1.case1/slides/s1/v1/tiles/0/0/..%2f..%2f..%2fsecret.txt", token),
            ("/api/cases/h1.case1/slides/s1/v1/tiles/0/%2e%2e/0", token),
            ("/api/cases/h1.case1%00/slides/s1/v1/image", token),
            ("/api/cases/" + "a" * 65 + "/image", token),
            ("/static/../../outside/secret.txt", None),
            ("/static/%2e%2e/%2e%2e/outside/secret.txt", None),
            ("/static/..%2f..%2f..%2foutside%2fsecret.txt", None),
            ("/static/%2e%2e%2fapp.py", None),
            ("/view/..%2f..%2foutside%2fsecret.txt", None),
            ("/view/%2e%2e", None),
            ("/view/h1.case1/../../../outside/secret.txt", None),
        ]:
            status, body = served.raw(path, auth)
            assert 400 <= status < 500, (path, status)
            assert b"TOP-SECRET" not in body and b"import" not in body


def test_a_store_that_does_not_answer_is_a_502_not_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with serving(S3Storage("bucket", "", f"http://127.0.0.1:{port}")) as served:
        response = served.get("/api/cases/h1.c/slides/s1/v1/tiles/0/0/0", served.token("h1.c"))
    assert response.status_code == 502 and "bucket" in response.json()["detail"]


# -- the command -----------------------------------------------------------------------------------------------
def serve_command(local_store: Path, tmp_path: Path) -> tuple[int, list[str]]:
    """`slidestream serve` of the local store (without its escaping link) on a free port, with the test's secret."""
    (local_store / station_case_folder("h1.escape")).unlink()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return port, [sys.executable, "-m", "slidestream", "serve", "--store", str(local_store), "--port", str(port), "--secret-file", str(secret),
                  "--key-dir", str(KEY_DIR)]


def test_serve_prints_how_to_give_access_and_a_case_link_works_until_revoked(local_store: Path, tmp_path: Path) -> None:
    """`serve` prints the address and the commands that give access, no live link; `users case-link` makes a working
    view-only link and `users revoke-link` ends that one alone."""
    port, command = serve_command(local_store, tmp_path)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [process.stdout.readline().strip() for _ in range(4)]  # type: ignore[union-attr]
        origin = f"http://127.0.0.1:{port}"
        assert lines[0].endswith(f"1 case(s) at {origin}") and lines[1] == f"worklist: {origin}/worklist (sessions of 12 h)"
        assert f"slidestream users add {local_store} NAME --viewer-url {origin}" in lines[2]
        assert f"slidestream users case-link CASE --viewer-url {origin}" in lines[3] and "revoke-link" in lines[3]
        assert "#token=" not in "".join(lines)

        def case_link() -> tuple[str, str]:
            made = subprocess.run([sys.executable, "-m", "slidestream", "users", "case-link", "h1.case1", "--viewer-url", origin, "--hours", "1"],
                                  capture_output=True, text=True, timeout=60, env={**os.environ, "SLIDESTREAM_SECRET": SECRET.decode()})  # fmt: skip
            assert made.returncode == 0, made.stderr
            first, link = made.stdout.splitlines()
            return first.split()[1], link.removeprefix("link: ")

        (link_id, link), (_, other) = case_link(), case_link()
        base, _, token = link.partition("#token=")
        assert base == f"{origin}/view/h1.case1"
        wait_for(lambda: _answers(base), "the server to listen")
        assert "case viewer" in httpx.get(base).text
        tile = f"{origin}/api/cases/h1.case1/slides/s1/v1/tiles/0/0/0"
        answer = httpx.get(tile, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.content.startswith(b"\xff\xd8")
        Tokens(SECRET).check(token, case_scope("h1.case1"))
        revoked = subprocess.run([sys.executable, "-m", "slidestream", "users", "revoke-link", link_id, "--key-dir", str(KEY_DIR)],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: httpx.get(tile, headers={"Authorization": f"Bearer {token}"}).status_code == 401, "the revoked link refused")
        assert httpx.get(tile, headers={"Authorization": f"Bearer {token}"}).json()["detail"] == "this case link was revoked"
        assert httpx.get(tile, headers={"Authorization": f"Bearer {other.partition('#token=')[2]}"}).status_code == 200  # the other still works
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_reports_a_taken_port_in_one_line(local_store: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "slidestream", "serve", "--store", str(local_store), "--port", str(port), "--key-dir", str(KEY_DIR)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "SLIDESTREAM_SECRET": SECRET.decode()},
        )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("slidestream: error: cannot serve on 127.0.0.1") and "\n" not in result.stderr.strip()
    assert result.stdout == ""


def test_big_bodies_are_refused_before_they_are_read(local_store: Path, tmp_path: Path) -> None:
    """300 MB POSTs to the real server (`slidestream serve`, its own process): refused while the upload is still
    going, and the server's peak RSS (VmHWM) stays within 50 MB of what it was before them. Buffering one such body
    would add 300 MB or more (it took an earlier server from 111 to 990 MB); 50 MB leaves room for allocator noise
    and a few MB of socket buffers, and is still far below one body."""
    port, command = serve_command(local_store, tmp_path)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = Tokens(SECRET).issue(case_scope("h1.case1"), timedelta(hours=1))
    person = asyncio.run(add_person(LocalStorage(local_store), CENTRE_KEY, "Dr Body Limit", PATHOLOGIST))
    link = Tokens(SECRET).issue_person(person.id, person.serial, timedelta(hours=1))
    report = "/api/cases/h1.case1/reports"
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/worklist"), "the server to listen")
        form = {"category": "benign", "diagnosis": "benign"}
        session = httpx.post(f"http://127.0.0.1:{port}/api/session", headers={"Authorization": f"Bearer {link}"}).cookies[SESSION_COOKIE]
        saved = httpx.post(f"http://127.0.0.1:{port}{report}", json=form, headers={"Cookie": f"{SESSION_COOKIE}={session}"})
        assert saved.status_code == 200, saved.text  # a real report still goes through
        baseline = _peak_rss(process.pid)

        big = 300 * 2**20
        no_token_declared = _upload(port, report, {"Content-Length": str(big)}, big, chunked=False)
        no_token_chunked = _upload(port, report, {"Transfer-Encoding": "chunked"}, big, chunked=True)
        wrong_case = Tokens(SECRET).issue(case_scope("h1.other"), timedelta(hours=1))
        other_case_chunked = _upload(port, report, {"Transfer-Encoding": "chunked", "Authorization": f"Bearer {wrong_case}"}, big, chunked=True)
        with_token_chunked = _upload(port, report, {"Transfer-Encoding": "chunked", "Authorization": f"Bearer {token}"}, big, chunked=True)

        assert [status for status, _ in (no_token_declared, no_token_chunked, other_case_chunked, with_token_chunked)] == [413, 401, 403, 413]
        assert all(sent < big for _, sent in (no_token_declared, no_token_chunked, other_case_chunked, with_token_chunked))
        assert _peak_rss(process.pid) < baseline + 50 * 2**20
        stored = httpx.get(f"http://127.0.0.1:{port}{report}", headers={"Authorization": f"Bearer {token}"}).json()["reports"]
        assert [version["diagnosis"] for version in stored] == ["benign"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def _upload(port: int, path: str, headers: dict[str, str], total: int, chunked: bool) -> tuple[int, int]:
    """POST `total` zero bytes in 1 MiB pieces, streamed (never held whole), until the server answers or stops
    reading; returns (HTTP status, bytes sent)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    piece = bytes(2**20)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.settimeout(5)  # a server that stopped reading fills the socket buffers: stop sending then
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        sock.settimeout(30)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, sent


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_the_viewer_reads_what_slidestream_send_wrote(s3_server: S3Server, tmp_path: Path) -> None:
    """The two ends together: transfer/'s manifest and shards, as the viewer sees them."""
    bucket = Bucket(s3_server)
    command = [sys.executable, "-m", "slidestream", "send", str(sample(SLIDE)), f"s3://{bucket.name}/{bucket.prefix}",
               "--endpoint-url", bucket.endpoint_url, "--case", "sent1", "--station", "h1", "--state-dir", str(tmp_path / "state"), "--no-edge"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    plan, pieces = pyramid()
    n = plan.shard_chunks
    with serving(bucket.storage()) as served:
        token = served.token("h1.sent1")
        status = served.get("/api/cases/h1.sent1/slides/s1/v1/status", token).json()
        assert status["manifest"] and status["complete"]
        assert all(set(level["state"]) <= {"0", "2"} for level in status["levels"])  # nothing pending after a send
        shard = bucket.get(SlideRef("h1.sent1").key(image_key("0/c/0/1/0")))
        tile = served.get("/api/cases/h1.sent1/slides/s1/v1/tiles/0/9/3", token)
        assert tile.status_code == 200 and tile.content == chunk_of(shard, n, 9 % n, 3 % n)
        assert tile.content == chunk_of(shards(pieces)["0/c/0/1/0"], n, 1, 3)  # the same bytes tiling made


def test_a_send_that_failed_shows_as_failed_never_as_a_white_slide(s3_server: S3Server, tmp_path: Path) -> None:
    """A corrupt slide's send is retracted: status and worklist say "failed" and why; no tile is served as glass."""

    bucket = Bucket(s3_server)
    bucket.send("h1.fine", triage=0.3)
    command = [sys.executable, "-m", "slidestream", "send", str(corrupt_slide(tmp_path)), f"s3://{bucket.name}/{bucket.prefix}",
               "--endpoint-url", bucket.endpoint_url, "--case", "broken1", "--station", "h1", "--state-dir", str(tmp_path / "state"), "--no-edge"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    with serving(bucket.storage()) as served:
        token = served.token("h1.broken1")
        status = served.get("/api/cases/h1.broken1/slides/s1/v1/status", token)
        assert status.status_code == 200
        body = status.json()
        assert body["state"] == "failed" and body["complete"] is False and body["levels"] == []
        assert body["failed"] and body["failed"] in result.stderr.replace(str(tmp_path / "ACC-2024-0001_DOE_JANE.svs"), "the slide")
        for path in ("/api/cases/h1.broken1/slides/s1/v1/image", "/api/cases/h1.broken1/slides/s1/v1/tiles/0/0/0"):
            answer = served.get(path, token)
            assert answer.status_code == 404 and "send failed" in answer.json()["detail"]
        worklist = served.get("/api/worklist", served.person(bucket.storage())).json()["cases"]
        entries = {entry["case"]: entry for entry in worklist}
        assert entries["h1.broken1"]["state"] == "failed" and entries["h1.broken1"]["failed"] == body["failed"]
        assert entries["h1.broken1"]["complete"] is False
        assert entries["h1.fine"]["state"] == "complete" and entries["h1.fine"]["failed"] is None


def test_a_version_1_manifest_still_reads(s3_server: S3Server) -> None:
    """Stores written before `state` existed: `complete` alone says whether the case is complete."""
    bucket = Bucket(s3_server)
    bucket.send("h1.old", arrived=lambda piece: piece.level != 0)  # a slidestream-manifest/1, level 0 still missing
    with serving(bucket.storage()) as served:
        status = served.get("/api/cases/h1.old/slides/s1/v1/status", served.token("h1.old")).json()
        assert status["state"] == "sending" and status["complete"] is False and status["levels"][0]["arrived"] == 0
