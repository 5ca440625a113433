"""What several test files share that is not a fixture: waiting for something to happen, free ports, a TCP proxy
between a command and the S3 server that a test can corrupt, cut or stall, running `slidestream` and reading what a
send left (the store, the journal), and running the hub.

A test file never imports another test file: what two of them need lives here (the viewer's side in viewer_support.py)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests
import tifffile
from conftest import REPO, S3Server, sample

from caseformat.layout import HUB, TRIAGE, SlideRef
from objectstore.location import Location
from slides import open_slide
from station.pipeline import image_pieces
from station.request import SendRequest
from tiling import Piece

T = TypeVar("T")


# -- waiting ---------------------------------------------------------------------------------------------------
def wait_for(
    condition: Callable[[], T], what: str, timeout: float = 30, *, process: subprocess.Popen[Any] | None = None,
    output: Callable[[], str] | None = None, every: float = 0.2, sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Poll `condition` until it is truthy and return its value; the timeout only guards against a hang. The test fails
    naming `what` when the timeout passes, or at once when `process` (the command the test waits on) has ended: waiting
    on would only hide why. `output` says what the command wrote (by default, once it ended, its piped output);
    `every` is the pause between polls, in the unit of `sleep`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            said = output() if output else _piped_output(process)
            pytest.fail(f"the command ended (exit {process.returncode}) while waiting for {what}: {said}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f": {output()}" if output else ""))
        sleep(every)
    return value


def _piped_output(process: subprocess.Popen[Any]) -> str:
    """The last of what an ended command wrote to the pipes it was given."""
    stdout, stderr = process.communicate(timeout=30)
    tails = {name: text[-2000:] for name, text in (("stderr", stderr), ("stdout", stdout)) if text}
    return " ".join(f"{name}: {text!r}" for name, text in tails.items()) or "(no output piped)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, what: str, timeout: float = 30) -> None:
    """Wait until something listens on 127.0.0.1:`port`: `what` (a server the test started)."""

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, f"{what} to listen on port {port}", timeout, every=0.1)


# -- a TCP proxy between a command and the S3 server -----------------------------------------------------------
class Proxy:
    """Forwards to the real S3 server. Counts PUT request lines; flips one byte of the body of the first `times`
    PUTs whose path contains `corrupt`; while `down`, every connection is cut at once (a dead link). A subclass may
    hold the store's answers back (`hold_answer`)."""

    REQUEST = re.compile(rb"PUT (\S+) HTTP/1\.1\r\n")

    def __init__(self, target: str, corrupt: str | None = None, times: int = 1) -> None:
        split = urlsplit(target)
        self.target = (split.hostname or "127.0.0.1", split.port or 80)
        self.corrupt = corrupt.encode() if corrupt else None
        self.remaining = times
        self.puts: Counter[str] = Counter()
        self.corrupted: Counter[str] = Counter()
        self.down = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            with self._lock:
                for sock in self._sockets:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.set_down(True)

    def hold_answer(self) -> None:
        """Called before each piece of the store's answer is passed on: returning at once lets the answer flow."""

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets |= {client, upstream}
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        position, tail, handled, flip_next = 0, b"", set(), False
        try:
            while data := bytearray(src.recv(1 << 16)):
                if flip_next:
                    data[0] ^= 0xFF
                    flip_next = False
                if requests:
                    flip_next = self._inspect(data, position, tail, handled)
                else:
                    self.hold_answer()
                dst.sendall(data)
                position += len(data)
                tail = (tail + bytes(data))[-(1 << 16) :]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _inspect(self, data: bytearray, position: int, tail: bytes, handled: set[int]) -> bool:
        """Count complete PUT headers in this chunk; corrupt the body's first byte if wanted (True: it is in the next)."""
        window = tail + bytes(data)
        start = position - len(tail)
        flip_next = False
        for match in self.REQUEST.finditer(window):
            where = start + match.start()
            end = window.find(b"\r\n\r\n", match.end())
            if where in handled or end < 0:
                continue
            handled.add(where)
            path = match.group(1).decode()
            with self._lock:
                self.puts[path] += 1
                hit = self.corrupt is not None and self.corrupt in match.group(1) and self.remaining > 0
                if hit:
                    self.remaining -= 1
                    self.corrupted[path] += 1
            if hit:
                body = start + end + 4 - position
                if body < len(data):
                    data[body] ^= 0xFF
                else:
                    flip_next = True
        return flip_next


# -- commands and sends ----------------------------------------------------------------------------------------
STATION = "h1"  # the station the tests' sends name unless they say otherwise: its case IDs are h1.{local}


def slidestream(*args: object, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "slidestream", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def start_slidestream(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slidestream", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


@functools.cache
def local_pieces(slide: Path, case: str, version: str = "v1", **options: Any) -> tuple[Piece, ...]:
    """What a send of `slide` as slide s1 (that `version`) of `case` uploads, produced here without any network
    (once per test session)."""
    request = SendRequest.of(slide, "s3://unused/cases", **options)
    with open_slide(slide, keep_phi=request.keep_phi) as opened:
        return tuple(image_pieces(opened, request, SlideRef(case, "s1", version).label)[1])


def server_objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = server.client()
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def journal_objects(state_dir: Path) -> dict[str, tuple[str, int, str]]:
    """key -> (sha256, size, status), read the way `resume` and any sqlite client would: read-write. A read-only
    reader first after a kill -9 can miss the last commit (seen: 11 rows, then 12 on the next read, 12 for resume).
    No `objects` table yet (a send killed after the station's registry made its tables, before the journal's) is an
    empty journal, as `resume` reads it."""
    with contextlib.closing(sqlite3.connect(state_dir / "journal.sqlite3")) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'objects'").fetchone():
            return {}
        return {key: (sha, size, status) for key, sha, size, status in db.execute("SELECT key, sha256, size, status FROM objects")}


def journal_dump(state_dir: Path) -> list[str]:
    with sqlite3.connect(f"file:{state_dir / 'journal.sqlite3'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return list(db.iterdump())


def journal_sends(state_dir: Path) -> dict[SlideRef, tuple[str | None, str | None]]:
    """slide version -> (finished_at, error) of every send the journal knows."""
    with sqlite3.connect(f"file:{state_dir / 'journal.sqlite3'}?mode=ro", uri=True) as db:
        return {SlideRef.parse(root): (finished, error) for root, finished, error in db.execute("SELECT case_id, finished_at, error FROM sends")}


def corrupt_slide(folder: Path, name: str = "ACC-2024-0001_DOE_JANE.svs") -> Path:
    """CMU-1-Small-Region.svs with its last dozen level-0 tiles zeroed: it opens, its metadata goes out, and the
    send fails once the pyramid writer decodes those tiles. The name is the kind a scanner gives (PHI)."""
    path = folder / name
    shutil.copyfile(sample("CMU-1-Small-Region.svs"), path)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        tiles = list(zip(page.dataoffsets, page.databytecounts, strict=True))[-12:]
    with path.open("r+b") as handle:
        for offset, count in tiles:
            handle.seek(offset)
            handle.write(bytes(count))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send_args(server: S3Server, bucket: str, state_dir: Path, *extra: object) -> list[object]:
    return [f"s3://{bucket}/cases", "--endpoint-url", server.endpoint_url, "--state-dir", state_dir, "--station", STATION,
            "--no-edge", *extra]  # the image alone: edge triage (on by default) writes beside it


# -- the hub ---------------------------------------------------------------------------------------------------
ARRIVING = "TCGA-CR-7395-jp2k.svs"  # 231 tissue tiles in 10 shards; its tissue mask is published before level 0
# (CMU-1-Small-Region's six shards are all overview shards: its tissue mask, which scoring needs, comes last)


@functools.cache
def scorable(name: str = ARRIVING) -> Path:
    """`name` as a slide the default model may score: its pixels in a pyramidal tiled TIFF that records 0.5 um/px (the
    sample records no resolution, and the hub refuses a slide of unknown resolution: `inference.packages.covers`).
    Made once per test run."""
    import numpy as np
    from PIL import Image

    path = Path(tempfile.mkdtemp(prefix="slidestream-scorable-")) / f"{Path(name).stem}.tiff"
    with open_slide(sample(name)) as slide:
        levels = [np.ascontiguousarray(slide.read_region((0, 0), 0, slide.dimensions)[..., :3])]
    while min(levels[-1].shape[:2]) > 512:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(levels):
            per_cm = 1e4 / (0.5 * 2**index)
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", subfiletype=1 if index else 0)
    return path


@functools.cache
def colorectal_context() -> Path:
    """A send's --context-file registering a colorectal specimen: the site the default model is validated for."""
    path = Path(tempfile.mkdtemp(prefix="slidestream-context-")) / "specimen.json"
    path.write_text('{"specimen_site": "sigmoid colon", "clinical_question": "margin?"}')
    return path


def slide_version(store: str, endpoint: str, case: str) -> Location:
    """Slide s1/v1 of `case` on the store: the station's folder, and the centre's for its results."""
    return Location.slide_version(Location.parse(store, endpoint), SlideRef(case))


@contextmanager
def running_hub(store: str, endpoint: str, log: Path, lease: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """`slidestream hub` as a subprocess, once it is watching; stopped at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "slidestream", "hub", store, "--endpoint-url", endpoint,
                                    "--poll", "0.5", "--lease", str(lease)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "watching" in log.read_text() or process.poll() is not None, "the hub to start", 120)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def stored_json(location: Location, key: str) -> Any:
    """The JSON object at `key` as the store holds it (None: none there): what a test compares, untyped on purpose."""
    data = location.read_bytes(key)
    return None if data is None else json.loads(data)


def final_triage(location: Location) -> dict[str, Any] | None:
    triage = stored_json(location, TRIAGE)
    return triage if triage and triage["stage"] == HUB and triage["complete"] else None


# -- a real PACS -----------------------------------------------------------------------------------------------------
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PACS_USER, PACS_PASSWORD = "pathology", "s3cret-pacs"


class Orthanc:
    """Debian's Orthanc with its DICOMweb plugin, on loopback, with basic auth; stopped and started on the same storage."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.dicomweb = f"http://127.0.0.1:{self.port}/dicom-web"
        self.root = f"http://127.0.0.1:{self.port}"
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "slidestream-test", "HttpPort": self.port, "DicomServerEnabled": False,
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {PACS_USER: PACS_PASSWORD},
        }))
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if self.get("/system").ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        pytest.fail(f"Orthanc did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(self.root + path, auth=(PACS_USER, PACS_PASSWORD), headers=headers, timeout=30)

    def instances(self) -> int:
        """Every instance Orthanc holds, whatever its series."""
        return int(self.get("/statistics").json()["CountInstances"])

    def series_instances(self, study: str, series: str) -> list[dict[str, dict]]:  # type: ignore[type-arg]
        """QIDO-RS: the series' instances as the PACS lists them."""
        answer = self.get(f"/dicom-web/studies/{study}/series/{series}/instances?includefield=00480006")  # TotalPixelMatrixColumns
        assert answer.status_code == 200, answer.text
        return answer.json() if answer.content else []
