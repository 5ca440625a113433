"""`slidestream demo`: the whole chain on one machine with nothing configured.

A sample slide is de-identified, triaged at the edge (coarse heatmap first, steering the send order), streamed to a
local S3-compatible server while it converts, and opened in the viewer. The store is moto's S3 server started
in-process on 127.0.0.1 (no setup, no root; `pip install -e '.[demo]'`); everything the demo writes lives in a
temporary folder and disappears when it stops.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slidestream.serve import DEFAULT_PORT

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "slides" / "CMU-1-Small-Region.svs"
BUCKET = "slidestream-demo"

stdout = Console(highlight=False, soft_wrap=True)


def demo(
    slide: Annotated[Path | None, typer.Option(help="Slide to demonstrate with (default: the CMU-1-Small-Region sample beside the repo).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Viewer port (0: any free port).")] = DEFAULT_PORT,
    exit_when_ready: Annotated[bool, typer.Option("--exit-when-ready", help="Check the viewer answers, then stop (non-interactive).")] = False,
) -> None:
    """Run the whole chain locally: edge triage, streaming send to S3, and the viewer; Ctrl-C stops it."""
    from slidestream.errors import DemoError

    slide = slide or SAMPLE
    if not slide.exists():
        raise DemoError(f"{slide}: sample slide not found (pass --slide PATH to any slide)")
    with tempfile.TemporaryDirectory(prefix="slidestream-demo-") as work, _local_s3() as endpoint:
        from slidestream.send import run_send, send_arguments

        started = time.monotonic()
        args = send_arguments(slide, f"s3://{BUCKET}/demo", endpoint, deadline=60.0, edge=True)
        result = run_send(args, Path(work) / "state")
        store = f"s3://{BUCKET}/demo"
        server, origin, link = _start_viewer(store, endpoint, port, result.case)
        try:
            milestones = result.milestones
            stdout.print(f"case {result.case}: {result.bytes_sent / 1e6:.1f} MB in {result.objects} objects to {result.url} (moto S3 at {endpoint})")
            for name, label in (("overview", "overview readable"), ("heatmap", "triage heatmap readable"), ("tissue_full_resolution", "all tissue at full resolution")):
                value = milestones.get(name)
                stdout.print(f"  {label:32s} {'-' if value is None else f'{value:6.1f} s'}")
            stdout.print(f"  {'whole demo until viewer ready':32s} {time.monotonic() - started:6.1f} s")
            stdout.print(f"viewer: {origin}{link}")
            _check(origin)
            if exit_when_ready:
                return
            stdout.print("Ctrl-C stops the demo.")
            while server.is_alive():
                server.join(1)
        except KeyboardInterrupt:
            stdout.print("stopping")
        finally:
            _stop_viewer(server)


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
