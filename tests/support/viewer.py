"""What the viewer's tests share: a case store on the real S3 server (`Bucket`) and the objects a send, the hub and
inference write into it, the viewer's server running in this process (`serving`), the centre's signing key, people made
by `slidestream users`, and the browser end (a tile recorder, sign-in; the `browser` and `page` fixtures are conftest's)."""

from __future__ import annotations

import asyncio
import atexit
import functools
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvicorn
import zarr
from conftest import REPO, SHOTS, S3Server, sample
from PIL import Image

from caseformat.documents import PATHOLOGIST, STATION, CaseRecord
from caseformat.layout import CASE_RECORD, HUB, MANIFEST, TRIAGE, SlideRef, case_key, image_key, station_of
from caseformat.results import Routed, Triage
from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, TrustedKeys
from inference.heatmap import Heatmap, write_results
from inference.model import ModelSpec
from inference.tiles import TileGrid
from objectstore.location import Location
from slides import open_slide
from support import wait_for
from tiling import ConvertOptions, Piece, PieceKind, PyramidPlan, plan_pyramid, produce
from tiling.shard_format import EMPTY
from viewer import S3Storage, Storage, TokenError, Tokens, case_scope, create_app
from viewer.people import add_person
from viewer.tokens import PERSON, SESSION_COOKIE

SLIDE = "CMU-1-Small-Region.svs"  # 2220 x 2967, 240 px JPEG tiles (passed through), 3 levels, mpp 0.499
SECRET = b"a-test-secret-that-is-long-enough-0123456789"
# the centre's signing key, in a folder the commands the tests run are given too (--key-dir)
KEY_DIR = Path(tempfile.mkdtemp(prefix="slidestream-test-keys-"))
atexit.register(shutil.rmtree, KEY_DIR, True)
CENTRE_KEY = SigningKey.load_or_create(KEY_DIR)
TRUSTED = TrustedKeys.load(KEY_DIR / PUBLIC_KEYS_FILE)
MODEL = "test-model"  # what the triage documents the tests write name as their model
ROUTED = Routed("sigmoid colon", "H&E", 0.499)  # what their scores were held to: inside the model's use (readers show them)


# -- making cases ----------------------------------------------------------------------------------------------
@functools.cache
def pyramid(name: str = SLIDE, lossless: bool = False) -> tuple[PyramidPlan, tuple[Piece, ...]]:
    """Every object of the slide's OME-Zarr, in send order (built once per test run)."""
    with open_slide(sample(name)) as slide:
        plan = plan_pyramid(slide, ConvertOptions(lossless=lossless, workers=2))
        return plan, tuple(produce(slide, plan, "sample", {}))


def shards(pieces: tuple[Piece, ...]) -> dict[str, bytes]:
    return {piece.key: piece.data for piece in pieces if piece.kind == PieceKind.SHARD}


def chunk_of(shard: bytes, n: int, i: int, j: int) -> bytes | None:
    """Chunk (i, j) of a shard, read straight from its index: what the viewer must serve byte for byte."""
    index = np.frombuffer(shard[-(16 * n * n + 4) : -4], "<u8").reshape(n, n, 2)
    offset, nbytes = (int(v) for v in index[i, j])
    return None if offset == EMPTY else shard[offset : offset + nbytes]


def manifest(
    case: str, pieces: tuple[Piece, ...], arrived: set[str], planned: list[str] | None = None, started: datetime | None = None,
    plan_final: bool = True,
) -> bytes:
    """A `slidestream-manifest/1` as transfer/ writes it during a send."""
    planned = [key for key in shards(pieces)] if planned is None else planned
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps(
        {
            "format": "slidestream-manifest/1",
            "case": case,
            "image": "image.zarr",
            "started_at": (started or datetime.now(UTC)).isoformat(timespec="seconds"),
            "updated_at": now,
            "complete": plan_final and arrived >= set(planned),
            "plan_final": plan_final,
            "planned": planned,
            "arrived": [key for key in planned if key in arrived],
            "milestones": {},
        }
    ).encode()


class Bucket:
    """A case store on the real S3 server: `put` writes a key (made by caseformat.layout) under the prefix the viewer
    is pointed at."""

    def __init__(self, server: S3Server, prefix: str = "cases") -> None:
        self.client = server.client()
        self.name = server.new_bucket()
        self.prefix = prefix
        self.endpoint_url = server.endpoint_url

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=f"{self.prefix}/{key}", Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=f"{self.prefix}/{key}")["Body"].read()

    def storage(self) -> S3Storage:
        return S3Storage(self.name, self.prefix, self.endpoint_url)

    def send(
        self, case: str, arrived: Callable[[Piece], bool] = lambda piece: True, triage: float | None = None, slide: str = SLIDE,
        started: datetime | None = None, at: tuple[str, str] = ("s1", "v1"),
    ) -> tuple[Piece, ...]:
        """Upload the metadata and the shards `arrived` selects, with a manifest saying so, as the slide version `at`
        (slide, version) of `case` (a case ID: {station}.{local}), in the station's folder; `triage` is the hub's
        final score, in the centre's folder."""
        ref = SlideRef(case, *at)
        _, pieces = pyramid(slide)
        for piece in pieces:
            if piece.kind != PieceKind.SHARD or arrived(piece):
                self.put(ref.key(image_key(piece.key)), piece.data)
        received = {p.key for p in pieces if p.kind == PieceKind.SHARD and arrived(p)}
        self.put(ref.key(MANIFEST), manifest(case, pieces, received, started=started))
        if triage is not None:
            self.put(ref.centre_key(TRIAGE), triage_json(ref, triage))
        return pieces


def triage_json(ref: SlideRef, score: float, stage: str = HUB, complete: bool = True) -> bytes:
    """A triage.json of `stage` (the hub's, `analyze`'s, or the edge's coarse map) as inference/ writes it for a routed
    slide."""
    return Triage(ref.label, score, MODEL, stage, complete, {"tiles_scored": 1, "tissue_tiles": 1}, routed=ROUTED).to_json()


def heatmap_objects(values: np.ndarray, slide_width: int, mpp: float) -> dict[str, bytes]:
    """A heatmap in the layout inference/ writes: single-level (h, w) OME-Zarr, scale = mpp x width / w."""
    store = zarr.storage.MemoryStore()
    cell = mpp * slide_width / values.shape[1]
    axes = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [cell, cell]}]}]
    zarr.create_group(store, zarr_format=3, attributes={"ome": {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}})
    fill = np.nan if values.dtype.kind == "f" else 0
    array = zarr.create_array(store, name="0", shape=values.shape, dtype=values.dtype, chunks=values.shape, fill_value=fill)
    array[:] = values
    return {key: buffer.to_bytes() for key, buffer in store._store_dict.items()}


def write_local(store: Path, key: str, data: bytes) -> None:
    """Write one object of a local store (a directory) at `key`, as LocalStorage reads it."""
    (store / key).parent.mkdir(parents=True, exist_ok=True)
    (store / key).write_bytes(data)


# -- running the server ----------------------------------------------------------------------------------------
@dataclass
class Served:
    """A viewer server running in this process, and a way to make tokens for it. A request with a person's sign-in
    token goes as the page sends it: the link spent once on a session (`session`), then the session's cookie."""

    url: str
    tokens: Tokens
    sessions: dict[str, str] = field(default_factory=dict)  # sign-in token -> the ID of the session it opened

    def token(self, case: str, lifetime: timedelta = timedelta(hours=1)) -> str:
        return self.tokens.issue(case_scope(case), lifetime)

    def person(self, storage: Storage, name: str = "Dr Test Pathologist", role: str = PATHOLOGIST, station: str | None = None) -> str:
        """A new user of the store (as `slidestream users add` makes one; a station user names its `station`) and their
        sign-in token. (In a thread of its own: Playwright's sync API keeps an event loop running in the test's.)"""
        assert (role == STATION) == (station is not None)
        with ThreadPoolExecutor(1) as pool:
            person = pool.submit(asyncio.run, add_person(storage, CENTRE_KEY, name, role, station=station)).result()
        return self.tokens.issue_person(person.id, person.serial, timedelta(hours=1))

    def session(self, token: str) -> str | httpx.Response:
        """The session the sign-in `token` opened (spending it the first time), or the server's refusal to open one."""
        if token not in self.sessions:
            opened = httpx.post(f"{self.url}/api/session", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if opened.status_code != 200:
                return opened
            self.sessions[token] = opened.cookies[SESSION_COOKIE]
        return self.sessions[token]

    def credentials(self, token: str | None) -> dict[str, str] | httpx.Response:
        """The headers that carry `token`: a case link's as a Bearer header, a person's as their session's cookie."""
        try:
            signing_in = bool(token) and self.tokens.claims(token)["scope"] == PERSON
        except TokenError:
            signing_in = False  # garbage, forged or expired: sent as it is, to be refused
        if not signing_in:
            return {"Authorization": f"Bearer {token}"} if token else {}
        session = self.session(token)  # type: ignore[arg-type]
        return session if isinstance(session, httpx.Response) else {"Cookie": f"{SESSION_COOKIE}={session}"}

    def get(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        credentials = self.credentials(token)
        if isinstance(credentials, httpx.Response):
            return credentials
        return httpx.get(self.url + path, headers={**kwargs.pop("headers", {}), **credentials}, timeout=30, **kwargs)

    def post(self, path: str, token: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        credentials = self.credentials(token)
        if isinstance(credentials, httpx.Response):
            return credentials
        return httpx.post(self.url + path, headers=credentials, timeout=30, **kwargs)

    def raw(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        """A request with the path exactly as written (httpx would normalise '..' away)."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        credentials = self.credentials(token)
        assert isinstance(credentials, dict), credentials.text
        connection.request("GET", path, headers=credentials)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body


@contextmanager
def serving(storage: Storage, **options: int) -> Iterator[Served]:
    """The viewer over `storage` in a thread; `options` go to create_app."""
    tokens = Tokens(SECRET)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(storage, tokens, CENTRE_KEY, TRUSTED, **options), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("viewer server did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# -- people and reports: `slidestream users` against a Bucket -----------------------------------------------
CONTEXT = (("specimen_site", "left breast, lumpectomy margin"), ("clinical_question", "margin clear?"),
           ("surgeon", "Dr Surgeon"), ("callback", "ext 4321"))  # fmt: skip
FORM = {"category": "malignant", "diagnosis": "Invasive ductal carcinoma.", "margins": "superior margin involved", "comment": None,
        "late_reason": "registered days before the test signs it"}  # past 20 minutes: CAP asks why


def users(bucket: Bucket, *args: str) -> subprocess.CompletedProcess[str]:
    """`slidestream users ...` against the bucket's store, signing with the test viewer's secret and centre key."""
    command = [sys.executable, "-m", "slidestream", "users", *args]
    store = f"s3://{bucket.name}/{bucket.prefix}"
    command = [part if part != "STORE" else store for part in command] + ["--endpoint-url", bucket.endpoint_url, "--key-dir", str(KEY_DIR)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SLIDESTREAM_SECRET": SECRET.decode()})  # fmt: skip


def added(bucket: Bucket, name: str, *options: str) -> tuple[str, str]:
    """(user ID, sign-in token) of a user added with the command, read from what it prints (`Served` spends it on a
    session at its first request, as the page does)."""
    result = users(bucket, "add", "STORE", name, *options)
    assert result.returncode == 0, result.stderr
    first, link = result.stdout.splitlines()[:2]
    assert first.startswith("added u") and link.startswith("link: http://127.0.0.1:8737/worklist#token=")
    return first.split()[1], link.partition("#token=")[2]


def register(bucket: Bucket, case: str) -> None:
    """case.json as the station the case ID names writes it."""
    bucket.put(case_key(case, CASE_RECORD), CaseRecord(case, "2026-12-01T21:00:00.000Z", station_of(case), CONTEXT).to_json())


# -- the AI overlay as inference writes it ---------------------------------------------------------------------
SLIDE_SIZE = (2220, 2967)  # CMU-1-Small-Region, level 0 (width, height)
MPP = 0.499
CELL = 101  # level-0 pixels per heatmap cell: a 22 x 30 grid over the slide
SPEC = ModelSpec(name="test-model", input_size=224, mpp=0.5, class_names=("normal", "tumour"), score_classes=(1,))


def inference_heatmap(scores: np.ndarray, complete: bool, stage: str = HUB, threshold: float = 0.5) -> tuple[dict[str, bytes], dict]:
    """heatmap.zarr's objects and triage.json as inference writes them for per-cell `scores` (NaN = not scored) of a
    routed slide."""
    grid = TileGrid(CELL, *SLIDE_SIZE)
    assert grid.shape == scores.shape
    heatmap = Heatmap(grid, np.ones(grid.shape, bool), SPEC, MPP, False, "test")
    heatmap.score[:] = scores
    heatmap.measured[:] = np.isfinite(scores)
    heatmap.stage, heatmap.complete = stage, complete
    with tempfile.TemporaryDirectory() as folder:
        triage = write_results(heatmap, Location.parse(folder), threshold, MPP)
        root = Path(folder) / "heatmap.zarr"
        objects = {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}
    assert triage is not None
    return objects, {**triage, "routed": ROUTED.to_dict()}


# -- the browser -----------------------------------------------------------------------------------------------
TILE_URL = re.compile(r"/api/cases/([^/]+)/slides/s\d+/v\d+/(tiles|heatmap)/(\d+)/(\d+)/(\d+)")


class Tiles:
    """Every tile response the page receives: (kind, level, row, col, response)."""

    def __init__(self, page) -> None:  # type: ignore[no-untyped-def]
        self.seen: list[tuple[str, int, int, int, object]] = []
        page.on("response", self._record)

    def _record(self, response) -> None:  # type: ignore[no-untyped-def]
        match = TILE_URL.search(response.url)
        if match:
            kind, level, row, col = match.group(2), *map(int, match.group(3, 4, 5))
            self.seen.append((kind, level, row, col, response))

    def loaded(self, kind: str = "tiles", level: int | None = None) -> list[tuple[int, int, int, object]]:
        return [(lv, r, c, resp) for k, lv, r, c, resp in self.seen if k == kind and (level is None or lv == level) and resp.status == 200]


def screenshot(page, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The slide area as the pathologist sees it, saved for a human too."""
    png = page.locator("#slide").screenshot()
    (SHOTS / name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def stained(pixels: np.ndarray) -> float:
    """Fraction of clearly stained pixels (H&E is pink/purple; glass and an empty canvas are white or black)."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > 40).mean())


def shows_tissue(page, name: str) -> bool:  # type: ignore[no-untyped-def]
    return stained(screenshot(page, name)) > 0.05


def wait_on(page, condition: Callable[[], object], what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Wait for something to show on the page; Playwright delivers its events while we wait through it."""
    wait_for(condition, what, timeout, sleep=page.wait_for_timeout, every=200)


def sign_in(page, served: Served, token: str) -> None:  # type: ignore[no-untyped-def]
    """Open the person's sign-in link (the worklist, which spends it on the session cookie) and wait for the cookie."""
    before = {cookie["value"] for cookie in page.context.cookies()}
    page.goto("about:blank")  # a new load: a changed #fragment alone would not reload the page
    page.goto(f"{served.url}/worklist#token={token}")
    wait_on(page, lambda: any(c["name"] == SESSION_COOKIE and c["value"] not in before for c in page.context.cookies()), "the session")


# -- a hospital's watch, for the browser tests ----------------------------------------------------------------------
ACCESSION, PATIENT, PATIENT_ID = "S26-00917", "OKONKWO^ADAEZE", "MRN-7734219"
SIDECAR = {
    "accession": ACCESSION, "patient_name": PATIENT, "patient_id": PATIENT_ID, "birth_date": "1961-04-09",
    "specimen_site": "left breast, lumpectomy margin", "specimen_type": "frozen section",
    "clinical_question": "superior margin clear?", "surgeon": "Dr M. Keller", "callback": "theatre 3, ext 4321",
}  # fmt: skip
WATCH_STATION = "theatre-3"  # the station of `hospital`'s watch


@contextmanager
def hospital(bucket: Bucket, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A running `watch` of a hot folder holding one specimen folder (sidecar and a slide named as scanners name
    them, after the accession); yields (its log, its outbox)."""
    specimen = tmp_path / "hot" / "frozen-17"
    specimen.mkdir(parents=True)
    (specimen / "specimen.json").write_text(json.dumps(SIDECAR))
    shutil.copy(sample(SLIDE), specimen / f"{ACCESSION}_block-A.svs")
    log, outbox = tmp_path / "watch.log", tmp_path / "outbox"
    command = [sys.executable, "-m", "slidestream", "watch", str(tmp_path / "hot"), f"s3://{bucket.name}/{bucket.prefix}",
               "--endpoint-url", bucket.endpoint_url, "--state-dir", str(tmp_path / "state"), "--station", WATCH_STATION,
               "--outbox", str(outbox), "--no-edge", "--settle", "0", "--centre-keys", str(KEY_DIR / PUBLIC_KEYS_FILE)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield log, outbox
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def line_of(log: Path, pattern: str, timeout: float = 300) -> re.Match[str]:
    """The watch's first line matching `pattern`, once it has printed it (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, log.read_text(errors="replace"), re.MULTILINE)
        if match:
            return match
        assert time.monotonic() < deadline, f"watch never printed {pattern!r}:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)
