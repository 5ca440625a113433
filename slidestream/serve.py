"""`slidestream serve`: the viewer for one store, printing its address and how to give people access.

The store is a folder of cases (CASE/slides/SLIDE/VERSION/image.zarr, as a send writes them, on S3 or local), or one
converted image (the folder `slidestream convert` wrote), served as a single case (its view-only link printed). The
worklist, signing and requests need a person's own sign-in link (`slidestream users add` / `users link`), spent once
on a session of --session-hours (ended sooner after --idle-minutes without activity), or sign-in through the centre's
directory (OpenID Connect: the config file's [viewer.oidc] table, docs/operations.md); a view-only link to one case
comes from `slidestream users case-link`. What the
viewer writes for others is signed with the centre's key in --key-dir, and what it reads must verify against that
folder's public keys; the folder also keeps the viewer's sessions and the case links revoked.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from slidestream.config import OIDC_TABLE
from slidestream.keys import key_folder

if TYPE_CHECKING:
    from caseformat.signing import SigningKey, TrustedKeys
    from objectstore import Storage
    from viewer.oidc import OidcSettings

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# not 8000/8080/3000/5000/8888 and the like, where development servers already listen
DEFAULT_PORT = 8737
KEY_DIR_HELP = "Folder of the centre's signing key and the public keys its readers trust (default: the state dir)."


def serve(
    ctx: typer.Context,
    store: Annotated[
        str,
        typer.Option(envvar="SLIDESTREAM_STORE", help="s3://BUCKET/PREFIX, a local directory with the same layout, or one image `slidestream convert` wrote."),
    ],
    endpoint_url: Annotated[
        str | None,
        typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph); credentials: the standard AWS chain."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help=f"Port to listen on (default {DEFAULT_PORT}; taken: any free port, said on stderr).")
    ] = DEFAULT_PORT,
    secret_file: Annotated[
        Path | None, typer.Option(help="Token signing secret (else $SLIDESTREAM_SECRET, else one kept in the state dir).")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, help="How long the link printed for a single image stays valid.")] = 12.0,
    session_hours: Annotated[
        float, typer.Option(min=0.01, help="How long a session opened with a sign-in link lasts (then the person opens a new link).")
    ] = 12.0,
    idle_minutes: Annotated[
        float, typer.Option(min=0.1, help="A session with no request of its user's this long ends (the pages' own polls do not count).")
    ] = 30.0,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve https.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    tile_cache_mb: Annotated[
        int | None,
        typer.Option(min=0, help="MB of memory for the tiles last served (they never change), so a second look costs no S3 request (default 256; 0: none)."),
    ] = None,
    key_dir: Annotated[Path | None, typer.Option(help=KEY_DIR_HELP)] = None,
) -> None:
    """Serve the web viewer and worklist for the cases in STORE; prints its address and how to give people access."""
    from objectstore.clients import parse_endpoint
    from transfer.target import parse_store_url

    # malformed URLs are one line here: obstore would answer them with a Rust panic (one from $AWS_ENDPOINT_URL named so)
    from_environment = getattr(ctx.get_parameter_source("endpoint_url"), "name", None) == "ENVIRONMENT"
    parse_endpoint(None if from_environment else endpoint_url)
    if store.startswith("s3:"):
        parse_store_url(store)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("give both --ssl-certfile and --ssl-keyfile, or neither")
    import uvicorn  # here: the viewer's imports (web server, zarr, S3) stay out of the other commands

    from caseformat.layout import is_legacy
    from slidestream.errors import ServeError
    from viewer import Tokens, create_app, load_secret, open_storage
    from viewer.cases import case_ids, top_folders

    image = single_image(Path(store)) if not store.startswith("s3:") and (Path(store) / "zarr.json").is_file() else None
    storage = image or open_storage(store, endpoint_url)
    lifetime = timedelta(hours=hours)
    key, trusted = centre_keys(key_dir)
    directory = directory_settings((ctx.default_map or {}).get(OIDC_TABLE))
    app = create_app(storage, Tokens(load_secret(secret_file)), key, trusted, lifetime, session_lifetime=timedelta(hours=session_hours),
                     folder=key_folder(key_dir), idle=timedelta(minutes=idle_minutes), directory=directory,
                     **({} if tile_cache_mb is None else {"tile_cache_bytes": tile_cache_mb * 2**20}))  # fmt: skip
    import asyncio  # here: every other command would pay for it at start-up

    cases = asyncio.run(case_ids(storage))
    if is_legacy(asyncio.run(top_folders(storage))):
        stderr.print(f"{store}: written by slidestream-case/1 (cases at its root): not shown; see docs/format.md", markup=False)
    try:
        # bind and load the TLS files first: a taken port or a bad certificate is one line, and no links get printed
        sock = _bind(host, port, fall_back=getattr(ctx.get_parameter_source("port"), "name", None) == "DEFAULT")
        config = uvicorn.Config(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level="info")
        config.load()
    except OSError as error:
        raise ServeError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    logging.getLogger("uvicorn.access").addFilter(_not_a_tile)
    port = sock.getsockname()[1]
    scheme = "https" if ssl_certfile else "http"
    shown = socket.getfqdn() if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown}:{port}"
    if image is not None:  # one image: its one case's link is what its user needs
        until = (datetime.now(UTC) + lifetime).strftime("%Y-%m-%d %H:%M UTC")
        stdout.print(f"slidestream viewer for {storage.location}: {len(cases)} case(s); link valid until {until}", markup=False)
        stdout.print(f"worklist: {origin}/worklist (with a sign-in link: slidestream users add {store} NAME --viewer-url {origin})", markup=False)
        for case in cases:
            stdout.print(f"{case}: {origin}{app.state.viewer.case_link(case)}", markup=False)
    else:
        stdout.print(f"slidestream viewer for {storage.location}: {len(cases)} case(s) at {origin}", markup=False)
        stdout.print(f"worklist: {origin}/worklist (sessions of {session_hours:g} h)", markup=False)
        if directory is not None:
            stdout.print(f"sign-in through {directory.issuer}: redirect URI {origin}/auth/oidc/callback", markup=False)
        stdout.print(f"a person's access: slidestream users add {store} NAME --viewer-url {origin} (their sign-in link, used once)", markup=False)
        stdout.print(f"one case, view only: slidestream users case-link CASE --viewer-url {origin} (revoke it: users revoke-link ID)", markup=False)
    gc.freeze()  # what start-up made (zarr, FastAPI, the S3 client) is never garbage: collections skip it
    uvicorn.Server(config).run(sockets=[sock])


def directory_settings(table: dict[str, Any] | None) -> OidcSettings | None:
    """The `[viewer.oidc]` table (checked by slidestream.config) as the viewer's settings; the client secret from
    $SLIDESTREAM_OIDC_SECRET (kept out of config files), else the table's."""
    if table is None:
        return None
    from slidestream.errors import ServeError
    from viewer.oidc import OidcSettings

    secret = os.environ.get("SLIDESTREAM_OIDC_SECRET") or table.get("client_secret")
    if not secret:
        raise ServeError("[viewer.oidc]: no client secret: set SLIDESTREAM_OIDC_SECRET (or client_secret in the table)")
    optional = {key: table[key] for key in ("groups_claim", "scopes") if key in table}
    return OidcSettings(table["issuer"], table["client_id"], secret, dict(table["groups"]), **optional)


def centre_keys(key_dir: Path | None) -> tuple[SigningKey, TrustedKeys]:
    """The centre's signing key in `key_dir` (else the state dir; created on first use) and the keys it trusts."""
    from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, TrustedKeys
    from transfer.journal import default_state_dir

    folder = key_dir or default_state_dir()
    return SigningKey.load_or_create(folder), TrustedKeys.load(folder / PUBLIC_KEYS_FILE)


def trusted_keys(key_dir: Path | None) -> TrustedKeys:
    """The public keys in `key_dir` (else the state dir): what a command that only reads believes."""
    from caseformat.signing import PUBLIC_KEYS_FILE, TrustedKeys
    from transfer.journal import default_state_dir

    return TrustedKeys.load((key_dir or default_state_dir()) / PUBLIC_KEYS_FILE)


def _not_a_tile(record: logging.LogRecord) -> bool:
    """Keep tiles out of the access log: a page asks for hundreds a minute, which would bury the requests worth
    reading and cost a formatted line each. Their server errors are logged."""
    args = record.args if isinstance(record.args, tuple) else ()
    path, status = (args[2], args[4]) if len(args) == 5 else ("", 0)
    return not (isinstance(path, str) and ("/tiles/" in path or "/heatmap/" in path) and isinstance(status, int) and status < 500)


def _bind(host: str, port: int, fall_back: bool) -> socket.socket:
    """The listening socket; the default port, when taken, gives way to any free one (said on stderr)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError:
        if not fall_back:
            raise
        sock = socket.create_server((host, 0), family=family)
        stderr.print(f"port {port} is taken; serving on port {sock.getsockname()[1]} instead (--port to choose)", markup=False)
        sys.stderr.flush()
        return sock


LOCAL_STATION = "local"  # a converted image served alone: no hospital sent it, its case is named under this


def single_image(image: Path) -> Storage:
    """One converted image as a store of one case, named after its folder (`case.ome.zarr` -> `case`). Its other
    objects (the pathologist's report) go to a folder in the state dir: the image folder is `convert`'s output."""
    from caseformat.layout import is_name, qualified_case
    from transfer import default_state_dir
    from viewer.single_image import SingleImage

    name = re.sub(r"(\.ome)?\.zarr$", "", image.resolve().name)
    case = qualified_case(LOCAL_STATION, name if is_name(name) else "image")
    beside = default_state_dir() / "serve" / hashlib.sha256(str(image.resolve()).encode()).hexdigest()[:12]
    beside.mkdir(parents=True, exist_ok=True)
    return SingleImage(image, case, beside)
