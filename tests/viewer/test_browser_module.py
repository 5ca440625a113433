"""The browser module (viewer/static/omezarr.js) in Chromium reads a sent case straight from the real S3 server.

No Python in the read path: the page fetches zarr.json files, shard indexes and chunk bytes from the S3 endpoint
itself (range requests, CORS set on the bucket, presigned GET URLs as a private bucket needs), and the browser's
own JPEG decoder turns the chunks into pixels. What a viewer author would check: the pixels equal openslide's
(pass-through Aperio tiles, whose APP14 "RGB" marker a decoder must honour) and Python's zarr reading of the
same store, absent shards and chunks read as the fill value, a page from an origin the bucket does not allow
reads nothing, and how many requests opening an image and reading a chunk take.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import google_crc32c
import numpy as np
import openslide
import pytest
import zarr
from conftest import REPO, S3Server, sample

from caseformat.layout import IMAGE, SlideRef
from objectstore.location import Location
from tiling.shard_format import EMPTY

pytestmark = pytest.mark.slow  # Chromium

STATIC = REPO / "viewer" / "static"
SLIDE = "CMU-1-Small-Region.svs"
CHUNK = 240  # Aperio's tile size, kept as the chunk size by pass-through
PAGE = b"<!doctype html><title>omezarr.js test</title>"

# Reads on the page; `signed` maps each object's plain URL to its presigned one (a private bucket).
OPEN = """async ({url, signed}) => {
    const {openImage} = await import("/omezarr.js");
    window.signedFetch = (request) => signed[request.url]
        ? fetch(new Request(signed[request.url], request))
        : Promise.reject(new Error(`not signed: ${request.url}`));
    window.image = await openImage(url, {fetch: window.signedFetch});
    return window.image.levels;
}"""
READ = """async ([level, y, x]) => {
    const pixels = await window.image.readChunk(level, y, x);
    return {width: pixels.width, height: pixels.height, rgba: Array.from(pixels.data)};
}"""
READ_LABEL = """async ([name, level, y, x]) => {
    const label = await window.image.openLabel(name);
    const pixels = await label.readChunk(level, y, x);
    return {levels: label.levels, width: pixels.width, height: pixels.height, rgba: Array.from(pixels.data)};
}"""


@dataclass(frozen=True)
class SentCase:
    server: S3Server
    bucket: str
    prefix: str  # cases/stations/STATION/CASE/slides/s1/v1/image.zarr/

    @property
    def url(self) -> str:
        return f"{self.server.endpoint_url}/{self.bucket}/{self.prefix}"

    def signed_urls(self) -> dict[str, str]:
        """Presigned GET URLs for every image object, as the viewer server would hand a page for a private bucket.

        The two level-0 shards the test removes or alters are signed too: a signed URL of a key that is gone gets
        S3's 404 (the signer may list the bucket), which zarr reads as "absent".
        """
        client = self.server.client()
        keys = [item["Key"] for item in client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)["Contents"]]
        keys.append(self.prefix + MISSING_SHARD)
        return {
            f"{self.url}{key.removeprefix(self.prefix)}": client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=900
            )
            for key in set(keys)
        }

    def zarr_group(self) -> zarr.Group:
        location = Location.parse(f"s3://{self.bucket}/{self.prefix}", self.server.endpoint_url)
        return zarr.open_group(location.zarr_store(), mode="r")


MISSING_SHARD = "0/c/0/1/0"  # level-0 chunks (8..12, 0..7): deleted after the send (a shard that never arrived)
HOLED_SHARD = "0/c/0/0/1"  # level-0 chunks (0..7, 8..9): chunk (0, 9) cut out of its index (an omitted chunk)


def _drop_chunk_from_index(client, bucket: str, key: str, local_y: int, local_x: int) -> None:  # type: ignore[no-untyped-def]
    """Mark one inner chunk absent in a shard's index (8 x 8 entries of (offset, length) uint64 + crc32c at the end)."""
    shard = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    entries = 8 * 8
    index = bytearray(shard[-(entries * 16 + 4) : -4])
    struct.pack_into("<QQ", index, (local_y * 8 + local_x) * 16, EMPTY, EMPTY)
    rewritten = shard[: -(entries * 16 + 4)] + bytes(index) + struct.pack("<I", google_crc32c.value(bytes(index)))
    client.put_object(Bucket=bucket, Key=key, Body=rewritten)


@pytest.fixture(scope="module")
def sent(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> SentCase:
    bucket = s3_server.new_bucket()
    run = subprocess.run(
        [sys.executable, "-m", "slidestream", "send", str(sample(SLIDE)), f"s3://{bucket}/cases", "--endpoint-url",
         s3_server.endpoint_url, "--station", "h1", "--state-dir", str(tmp_path_factory.mktemp("state")), "--no-edge", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    case = SentCase(s3_server, bucket, f"cases/{SlideRef(json.loads(run.stdout)['case']).root}/{IMAGE}/")
    client = s3_server.client()
    client.delete_object(Bucket=bucket, Key=case.prefix + MISSING_SHARD)
    _drop_chunk_from_index(client, bucket, case.prefix + HOLED_SHARD, 0, 1)
    return case


class _Static(SimpleHTTPRequestHandler):
    """viewer/static as the viewer serves it, plus an empty page at / to run the module from."""

    def do_GET(self) -> None:
        if self.path == "/":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin(sent: SentCase) -> Iterator[str]:
    """The page's origin, served here; the bucket's CORS rules allow exactly this origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Static, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    sent.server.client().put_bucket_cors(
        Bucket=sent.bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["GET", "HEAD"],
                    "AllowedHeaders": ["Range"],
                    "ExposeHeaders": ["Content-Range", "Content-Length", "ETag"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )
    yield origin
    server.shutdown()
    thread.join()


@pytest.fixture
def page(browser, origin: str):  # type: ignore[no-untyped-def]  # noqa: F811  (browser: the fixture)
    context = browser.new_context()
    page = context.new_page()
    page.goto(origin + "/")
    yield page
    context.close()


class Requests:
    """The requests the page sends to the S3 endpoint, counted per step.

    From Chromium's own network log (CDP), because Playwright's request events leave out CORS preflights.
    """

    def __init__(self, page, endpoint: str, origin: str) -> None:  # type: ignore[no-untyped-def]
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.elsewhere: list[str] = []  # neither the page's server nor S3 (a CDN, say): there must be none
        self._endpoint, self._origin = endpoint, origin
        self._cdp = page.context.new_cdp_session(page)
        self._cdp.on("Network.requestWillBeSent", self._record)
        self._cdp.send("Network.enable")

    def _record(self, event: dict) -> None:  # type: ignore[type-arg]
        request = event["request"]
        url = request["url"]
        if url.startswith(self._endpoint):
            byte_range = next(
                (value for name, value in request["headers"].items() if name.lower() == "range"),
                None,
            )
            self.seen.append(
                (
                    request["method"],
                    url.split("?")[0].removeprefix(self._endpoint),
                    byte_range,
                )
            )
        elif not url.startswith(self._origin):
            self.elsewhere.append(url)

    def take(self) -> list[str]:
        """The methods of the requests since the last take, sorted (Chromium logs a preflight after its request)."""
        taken, self.seen = self.seen, []
        return sorted(method for method, _, _ in taken)


def _rgba(result: dict) -> np.ndarray:  # type: ignore[type-arg]
    return np.array(result["rgba"], dtype=np.uint8).reshape(result["height"], result["width"], 4)


def _openslide_region(y: int, x: int, height: int, width: int) -> np.ndarray:
    return np.asarray(openslide.OpenSlide(sample(SLIDE)).read_region((x, y), 0, (width, height)))[..., :3].astype(np.int16)


def test_page_reads_level0_chunks_from_s3_as_openslide_pixels(page, origin: str, sent: SentCase) -> None:  # type: ignore[no-untyped-def]
    requests = Requests(page, sent.server.endpoint_url, origin)
    levels = page.evaluate(OPEN, {"url": sent.url, "signed": sent.signed_urls()})
    opened = list(requests.seen)
    assert requests.take() == ["GET"] * 4
    assert [level["shape"] for level in levels] == [
        [3, 2967, 2220],
        [3, 1484, 1110],
        [3, 742, 555],
    ]
    assert levels[0]["chunks"] == [3, CHUNK, CHUNK] and levels[0]["grid"] == [13, 10] and levels[0]["fillValue"] == 255
    assert levels[0]["scale"] == [1.0, 0.499, 0.499]
    # the group's zarr.json, then one per level: nothing else (no listing, no HEAD)
    assert sorted(path for _, path, _ in opened) == sorted(f"/{sent.bucket}/{sent.prefix}{p}zarr.json" for p in ("", "0/", "1/", "2/"))

    stained = []
    for y, x, first_in_shard in [
        (0, 0, True),
        (5, 4, False),
        (12, 9, True),
        (0, 8, True),
    ]:
        chunk = _rgba(page.evaluate(READ, [0, y, x]))
        ranges = [byte_range for method, _, byte_range in requests.seen if method == "GET"]
        # a shard's first chunk: its index (one suffix range request, bytes=-1028, which needs a CORS preflight)
        # and the chunk's byte range; later chunks of that shard: their byte range only
        assert requests.take() == (["GET", "GET", "OPTIONS"] if first_in_shard else ["GET"])
        assert ranges[0] == "bytes=-1028" or not first_in_shard, ranges  # 8 x 8 (offset, length) + crc32c
        assert all(byte_range.startswith("bytes=") for byte_range in ranges), ranges
        height, width = min(CHUNK, 2967 - y * CHUNK), min(CHUNK, 2220 - x * CHUNK)
        assert chunk.shape == (
            height,
            width,
            4,
        )  # an edge chunk cut to the slide's edge
        assert (chunk[..., 3] == 255).all()
        difference = np.abs(chunk[..., :3].astype(np.int16) - _openslide_region(y * CHUNK, x * CHUNK, height, width))
        # pass-through Aperio tiles: RGB by their APP14 marker; read as YCbCr the mean difference is ~49
        assert difference.max() <= 2 and difference.mean() < 1, (
            y,
            x,
            difference.max(),
            difference.mean(),
        )
        stained.append(chunk[..., :3].std() > 10)
    assert stained[1]  # the interior chunk is tissue: the comparison is not one of blank glass
    assert requests.elsewhere == []  # the module and zarrita come from viewer/static, nothing from the internet


def test_absent_shard_and_absent_chunk_read_as_fill_value(page, origin: str, sent: SentCase) -> None:  # type: ignore[no-untyped-def]
    requests = Requests(page, sent.server.endpoint_url, origin)
    page.evaluate(OPEN, {"url": sent.url, "signed": sent.signed_urls()})
    requests.take()
    missing = _rgba(page.evaluate(READ, [0, 10, 3]))  # in the deleted shard
    assert requests.take() == ["GET", "OPTIONS"]  # its index: 404
    holed = _rgba(page.evaluate(READ, [0, 0, 9]))  # cut out of its shard's index
    assert requests.take() == [
        "GET",
        "OPTIONS",
    ]  # the index only: nothing to fetch for an absent chunk
    for chunk in (missing, holed):
        assert chunk.shape == (CHUNK, 60 if chunk is holed else CHUNK, 4)
        assert (chunk == 255).all()  # the array's fill_value (bright-field: white), opaque
    neighbour = _rgba(page.evaluate(READ, [0, 0, 8]))  # the same shard's other chunk is still there
    assert np.abs(neighbour[..., :3].astype(np.int16) - _openslide_region(0, 8 * CHUNK, CHUNK, CHUNK)).max() <= 2


def test_page_reads_a_computed_level_and_the_tissue_label_as_python_zarr_does(page, sent: SentCase) -> None:  # type: ignore[no-untyped-def]
    page.evaluate(OPEN, {"url": sent.url, "signed": sent.signed_urls()})
    store = sent.zarr_group()
    # level 2 is encoded by slidestream (standard YCbCr JPEG), not copied from the scanner
    chunk = _rgba(page.evaluate(READ, [2, 1, 2]))
    expected = np.moveaxis(store["2"][:, 240:480, 480:555], 0, -1).astype(np.int16)
    assert chunk.shape == (240, 75, 4)
    assert np.abs(chunk[..., :3].astype(np.int16) - expected).max() <= 2

    label = page.evaluate(READ_LABEL, ["tissue", 2, 0, 0])
    assert [level["shape"] for level in label["levels"]] == [
        [2967, 2220],
        [1484, 1110],
        [742, 555],
    ]
    tissue = store["labels/tissue/2"][:, :] == 1
    assert 0.05 < tissue.mean() < 0.95
    rgba = _rgba(label)  # tissue in its label colour, the rest transparent
    assert (rgba[tissue] == [0, 160, 0, 255]).all() and (rgba[~tissue] == 0).all()


def test_a_page_from_an_origin_the_bucket_does_not_allow_reads_nothing(browser, origin: str, sent: SentCase) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    page.goto(origin.replace("127.0.0.1", "localhost") + "/")  # the same server, another origin
    with pytest.raises(Exception, match="Failed to fetch"):
        page.evaluate(OPEN, {"url": sent.url, "signed": sent.signed_urls()})
    context.close()
