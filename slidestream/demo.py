"""`slidestream demo`: the whole chain on one machine with nothing configured, live.

A local S3-compatible server, the viewer and the hub start first and the viewer link is printed at once; then a
sample slide is de-identified, triaged at the edge (coarse heatmap first, steering the send order) and streamed to
the store while it converts, and the hub scores it at full magnification as it arrives. The pathologist can look
from the first second; the demo prints each milestone when the store shows it (what a reader sees, not what the
sender believes). The store is moto's S3 server started in-process on 127.0.0.1 (no setup, no root;
`pip install -e '.[demo]'`); the hub is `slidestream hub` in a child process; everything the demo writes lives in a
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
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slidestream.serve import DEFAULT_PORT

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "slides" / "CMU-1-Small-Region.svs"
BUCKET = "slidestream-demo"
STORE = f"s3://{BUCKET}/demo"
MILESTONES = (  # (name, line): in the order a pathologist meets them
    ("overview", "overview readable (the whole slide at low power)"),
    ("edge", "edge triage map readable (coarse, from the hospital)"),
    ("hub", "hub map readable (full magnification, still growing)"),
    ("full_resolution", "all tissue at full resolution"),
    ("complete", "send complete"),
    ("hub_complete", "hub map complete (every tissue tile at full magnification)"),
)

stdout = Console(highlight=False, soft_wrap=True)


def demo(
    slide: Annotated[Path | None, typer.Option(help="Slide to demonstrate with (default: the CMU-1-Small-Region sample beside the repo).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Viewer port (0: any free port).")] = DEFAULT_PORT,
    exit_when_ready: Annotated[bool, typer.Option("--exit-when-ready", help="Stop once the hub's map is complete (non-interactive).")] = False,
) -> None:
    """Run the whole chain locally, live: viewer and hub first, then the streaming send; Ctrl-C stops it."""
    from slidestream.errors import DemoError

    slide = slide or SAMPLE
    if not slide.exists():
        raise DemoError(f"{slide}: sample slide not found (pass --slide PATH to any slide)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slidestream-demo-") as work, _local_s3() as endpoint:
        case = secrets.token_hex(8)  # a new specimen: its ID is known before its first byte, so is its link
        server, origin, link = _start_viewer(STORE, endpoint, port, case)
        hub = _start_hub(endpoint, Path(work) / "hub.log")
        try:
            _check(origin)
            stdout.print(f"viewer: {origin}{link}  (open it now: the slide appears as it arrives)")
            stdout.print(f"store: moto S3 at {endpoint}; hub log: {Path(work) / 'hub.log'}")
            sending = threading.Thread(target=_send, args=(slide, endpoint, case, Path(work) / "state"), daemon=True, name="send")
            sending.start()
            seen = _follow(endpoint, case, started, sending, hub)
            if "hub_complete" not in seen:
                raise DemoError(f"the hub stopped before its map was complete (see {Path(work) / 'hub.log'})")
            if exit_when_ready:
                return
            stdout.print("Ctrl-C stops the demo.")
            while server.is_alive():
                server.join(1)
        except KeyboardInterrupt:
            stdout.print("stopping")
        finally:
            hub.terminate()
            hub.wait(10)
            _stop_viewer(server)


def _send(slide: Path, endpoint: str, case: str, state: Path) -> None:
    """The hospital's side: `slidestream send --edge` of the slide (its own progress lines go to stderr)."""
    from slidestream.send import run_send, send_arguments

    run_send(send_arguments(slide, STORE, endpoint, case=case, deadline=60.0, edge=True), state)


def _start_hub(endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    """The pathology centre's side: `slidestream hub` on the demo's prefix, started before the slide."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "slidestream", "hub", STORE, "--endpoint-url", endpoint, "--poll", "0.5"],
                                stdout=out, stderr=subprocess.STDOUT)


def _follow(endpoint: str, case: str, started: float, sending: threading.Thread, hub: subprocess.Popen[bytes]) -> set[str]:
    """Print each milestone when the store shows it, until the hub's map is complete or something stopped."""
    import boto3

    from transfer.target import MANIFEST, TRIAGE, Destination

    client = boto3.client("s3", endpoint_url=endpoint)
    root = Destination(endpoint, BUCKET, "demo", case).root
    seen: set[str] = set()

    def read(name: str) -> dict[str, Any]:
        try:
            return json.loads(client.get_object(Bucket=BUCKET, Key=root + name)["Body"].read())
        except client.exceptions.NoSuchKey:
            return {}

    while "hub_complete" not in seen:
        manifest, triage = read(MANIFEST), read(TRIAGE)
        reached = {
            "overview": (manifest.get("milestones") or {}).get("overview") is not None,
            "edge": triage.get("stage") == "edge" or "edge" in seen,
            "hub": triage.get("stage") == "hub",
            "full_resolution": (manifest.get("milestones") or {}).get("tissue_full_resolution") is not None,
            "complete": manifest.get("state") == "complete",
            "hub_complete": triage.get("stage") == "hub" and triage.get("complete") is True,
        }
        for name, line in MILESTONES:
            if reached[name] and name not in seen:
                seen.add(name)
                score = f" (score {triage['score']:.3f})" if name in ("edge", "hub_complete") and triage.get("score") is not None else ""
                stdout.print(f"  {time.monotonic() - started:6.1f} s  {line}{score}")
        if hub.poll() is not None or (not sending.is_alive() and manifest.get("state") == "failed"):
            break
        time.sleep(0.2)
    return seen


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


def _start_viewer(store: str, endpoint: str, port: int, case: str) -> tuple[threading.Thread, str, str]:
    import uvicorn

    from slidestream.errors import DemoError
    from viewer import Tokens, create_app, open_storage

    app = create_app(open_storage(store, endpoint), Tokens(os.urandom(32)))
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
