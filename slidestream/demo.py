"""`slidestream demo`: the whole chain on one machine with nothing configured.

The viewer and the hub start first, so the viewer link is there within seconds; then a sample slide is
de-identified, triaged at the edge (coarse heatmap first, steering the send order) and streamed to a local
S3-compatible server while it converts, and the hub scores it at full magnification and completes its pyramid as it
arrives. Each milestone is printed when the store shows it. The store is moto's S3 server started
in-process on 127.0.0.1 (no setup, no root; `pip install -e '.[demo]'`); everything the demo writes lives in a
temporary folder and disappears when it stops.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slidestream.serve import DEFAULT_PORT

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "slides" / "CMU-1-Small-Region.svs"
BUCKET = "slidestream-demo"
STATION = "demo"  # the one hospital of the demo

stdout = Console(highlight=False, soft_wrap=True)


def demo(
    slide: Annotated[Path | None, typer.Option(help="Slide to demonstrate with (default: the CMU-1-Small-Region sample beside the repo).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Viewer port (0: any free port).")] = DEFAULT_PORT,
    exit_when_ready: Annotated[bool, typer.Option("--exit-when-ready", help="Stop once the case is complete and the hub's map final (non-interactive).")] = False,
) -> None:
    """Run the whole chain locally: viewer and hub first, then the slide streams in; Ctrl-C stops it."""
    from slidestream.errors import DemoError

    slide = slide or SAMPLE
    if not slide.exists():
        raise DemoError(f"{slide}: sample slide not found (pass --slide PATH to any slide)")
    started = time.monotonic()
    from caseformat.layout import qualified_case

    with tempfile.TemporaryDirectory(prefix="slidestream-demo-") as work, _local_s3() as endpoint:
        # a new specimen of the demo's station: its link exists before its first byte
        store, case = f"s3://{BUCKET}/demo", qualified_case(STATION, secrets.token_hex(8))
        # the viewer and the station share one state dir, as on a machine that is both: the station finds the
        # centre's public keys (centre-keys.pem) where the viewer's signing key put them
        server, origin, link = _start_viewer(store, endpoint, port, case, Path(work) / "state")
        hub = _start_hub(store, endpoint, Path(work) / "hub.log")
        sending = None
        try:
            _check(origin)
            stdout.print(f"viewer: {origin}{link}  (open it now: the slide streams in while you look)")
            stdout.print(f"hub and viewer ready after {time.monotonic() - started:.1f} s; sending {slide.name} to moto S3 at {endpoint}")
            watch = _milestones(store, endpoint, case)
            sending = _start_send(slide, store, endpoint, case, Path(work) / "state")
            _print_milestones(watch, sending, hub, started)
            if exit_when_ready:
                return
            stdout.print("Ctrl-C stops the demo.")
            while server.is_alive():
                server.join(1)
        except KeyboardInterrupt:
            stdout.print("stopping")
        finally:
            for process in (sending, hub):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(30)
            _stop_viewer(server)


MILESTONES = (
    ("overview", "overview readable"),
    ("edge", "edge triage map readable"),
    ("tissue_full_resolution", "all tissue at full resolution"),
    ("complete", "send complete"),
    ("pyramid", "pyramid complete (hub)"),
    ("hub", "hub map at full magnification"),
)
# what the edge's and the hub's milestones say when the model may not score the sample (CMU-1 is skin): QC, no map
REFUSED = {"edge": "edge triage: no validated AI (QC only)", "hub": "hub: no validated AI (QC only)"}


def _milestones(store: str, endpoint: str, case: str) -> Callable[[], dict[str, str]]:
    """The milestones the case has reached, each with what it says, read from the store as a remote viewer sees it.
    A map counts once it shows a scored tile; where the model may not score the slide, its refusal stands in (the
    hub's once its QC is complete)."""
    from caseformat.layout import HUB, MANIFEST, PYRAMID, SlideRef
    from caseformat.results import COMPLETE, FAILED, Manifest, PyramidRecord
    from inference.heatmap import read_triage
    from objectstore.location import Location
    from slidestream.errors import DemoError

    location = Location.slide_version(Location.parse(store, endpoint), SlideRef(case))  # its first slide, first scan

    def reached() -> dict[str, str]:
        data = location.read_bytes(MANIFEST)
        manifest = Manifest.read(data, MANIFEST) if data else None
        edge = read_triage(location.sent)  # the station's own: the edge's, whatever it says
        hub = read_triage(location)  # the centre's
        hub = hub if hub is not None and hub.stage == HUB else None
        if manifest is not None and manifest.state == FAILED:
            raise DemoError(f"the send failed: {manifest.failure}")
        milestones = manifest.milestones if manifest else {}
        pyramid = location.read_bytes(PYRAMID) if manifest is not None and manifest.state == COMPLETE else None
        done = {
            "overview": milestones.get("overview") is not None,
            "edge": (edge is not None and edge.refused is not None)
            or any(triage is not None and triage.tiles_scored > 0 for triage in (edge, hub)),  # the hub's map may land first
            "tissue_full_resolution": milestones.get("tissue_full_resolution") is not None,
            "complete": manifest is not None and manifest.state == COMPLETE,
            "pyramid": manifest is not None and manifest.state == COMPLETE and manifest.hub_pyramid_done(pyramid and PyramidRecord.read(pyramid, PYRAMID)),
            "hub": hub is not None and hub.complete and (hub.refused is not None or hub.tiles_scored > 0),
        }
        said = dict(MILESTONES) | {name: REFUSED[name] for name, triage in (("edge", edge), ("hub", hub))
                                   if triage is not None and triage.refused is not None}
        return {name: said[name] for name, reached in done.items() if reached}

    return reached


def _print_milestones(reached: Callable[[], dict[str, str]], sending: subprocess.Popen[str], hub: subprocess.Popen[bytes],
                      started: float) -> None:
    """A line per milestone as it happens, until every one is reached."""
    from slidestream.errors import DemoError

    seen: set[str] = set()
    while len(seen) < len(MILESTONES):
        now = reached()
        for name, _ in MILESTONES:
            if name in now and name not in seen:
                seen.add(name)
                stdout.print(f"  {now[name]:40s} {time.monotonic() - started:6.1f} s")
        if sending.poll() not in (None, 0):
            error = (sending.stderr.read() if sending.stderr else "").strip().splitlines()
            raise DemoError(f"the send failed: {error[-1] if error else f'exit code {sending.returncode}'}")
        if hub.poll() is not None:
            raise DemoError(f"the hub stopped (exit code {hub.returncode})")
        time.sleep(0.2)
    summary = json.loads(sending.communicate()[0])
    stdout.print(f"case {summary['case']}: {summary['bytes_sent'] / 1e6:.1f} MB sent in {summary['objects']} objects")


def _start_send(slide: Path, store: str, endpoint: str, case: str, state: Path) -> subprocess.Popen[str]:
    """`slidestream send` as the hospital runs it: its own process, which forks its shard builders free of this
    one's threads (the viewer's); its summary comes as JSON on stdout."""
    return subprocess.Popen([sys.executable, "-m", "slidestream", "send", str(slide), store, "--endpoint-url", endpoint,
                             "--case", case, "--station", STATION, "--deadline", "60", "--state-dir", str(state), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_hub(store: str, endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    """`slidestream hub` as the pathology centre runs it: its own process (its log goes to the demo's folder)."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "slidestream", "hub", store, "--endpoint-url", endpoint, "--poll", "0.5"],
                                stdout=out, stderr=subprocess.STDOUT)


class _local_s3:
    """moto's S3 server on a free loopback port with throw-away credentials, for the life of the demo."""

    def __enter__(self) -> str:
        from slidestream.errors import DemoError

        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise DemoError("slidestream demo needs moto's S3 server: pip install -e '.[demo]'") from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log would drown the summary
        port = _free_port()
        self._saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        return endpoint

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_viewer(store: str, endpoint: str, port: int, case: str, key_dir: Path) -> tuple[threading.Thread, str, str]:
    import uvicorn

    from slidestream.errors import DemoError
    from slidestream.serve import centre_keys
    from viewer import Tokens, create_app, open_storage

    app = create_app(open_storage(store, endpoint), Tokens(os.urandom(32)), *centre_keys(key_dir))
    try:
        sock = socket.create_server(("127.0.0.1", port))
    except OSError as error:
        raise DemoError(f"cannot serve the viewer on port {port}: {error.strerror} (try --port 0)") from None
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="viewer")
    thread.server = server  # type: ignore[attr-defined]
    thread.start()
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return thread, origin, app.state.viewer.case_link(case)


def _check(origin: str) -> None:
    """The viewer answers (the page itself; tiles need the token, which stays in the URL fragment)."""
    import urllib.request  # here: every other command would pay for it at start-up

    from slidestream.errors import DemoError

    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{origin}/worklist", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise DemoError(f"the viewer at {origin} does not answer") from None
            time.sleep(0.2)


def _stop_viewer(thread: threading.Thread) -> None:
    thread.server.should_exit = True  # type: ignore[attr-defined]
    thread.join(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
