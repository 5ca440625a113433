"""`slidestream serve`: the viewer for one store, printing an access link per case and one for the worklist."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slides import SlidestreamError

stdout = Console(highlight=False, soft_wrap=True)


def serve(
    store: Annotated[
        str, typer.Option(envvar="SLIDESTREAM_STORE", help="s3://BUCKET/PREFIX, or a local directory with the same layout.")
    ],
    endpoint_url: Annotated[
        str | None,
        typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph); credentials: the standard AWS chain."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    secret_file: Annotated[
        Path | None, typer.Option(help="Token signing secret (else $SLIDESTREAM_SECRET, else one kept in the state dir).")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, help="How long the printed links stay valid.")] = 12.0,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve https.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """Serve the web viewer and worklist for the cases in STORE; prints one access link per case."""
    import uvicorn  # here: the viewer's imports (web server, zarr, S3) stay out of the other commands

    from viewer import Tokens, create_app, load_secret, open_storage
    from viewer.tokens import CASE_ID

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("give both --ssl-certfile and --ssl-keyfile, or neither")
    _check_store(store, endpoint_url)
    storage = open_storage(store, endpoint_url)
    lifetime = timedelta(hours=hours)
    app = create_app(storage, Tokens(load_secret(secret_file)), lifetime)
    import asyncio  # here: every other command would pay for it at start-up

    cases = [case for case in asyncio.run(storage.list_dirs()) if CASE_ID.fullmatch(case)]
    try:
        # bind and load the TLS files first: a taken port or a bad certificate is one line, and no links get printed
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        config = uvicorn.Config(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level="info")
        config.load()
    except OSError as error:
        raise ServeError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    scheme = "https" if ssl_certfile else "http"
    shown = socket.getfqdn() if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown}:{port}"
    until = (datetime.now(UTC) + lifetime).strftime("%Y-%m-%d %H:%M UTC")
    stdout.print(f"slidestream viewer for {storage.location}: {len(cases)} case(s); links valid until {until}")
    stdout.print(f"worklist: {origin}{app.state.viewer.worklist_link()}")
    for case in cases:
        stdout.print(f"{case}: {origin}{app.state.viewer.case_link(case)}")
    uvicorn.Server(config).run(sockets=[sock])


def _check_store(store: str, endpoint_url: str | None) -> None:
    """Malformed URLs are one line here: obstore would answer them with a Rust panic."""
    from transfer.target import parse_endpoint, parse_store_url

    if store.startswith("s3://"):
        parse_store_url(store)
        parse_endpoint(endpoint_url)


class ServeError(SlidestreamError, OSError):
    """The server cannot start (port taken, bad TLS files)."""
