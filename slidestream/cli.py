"""The `slidestream` command: one entry point for technicians, pathologists and analysts."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slidestream.analyze import analyze
from slidestream.audit import audit
from slidestream.config import ENV_PREFIX, options_of
from slidestream.demo import demo
from slidestream.export import export_dicom, export_results
from slidestream.hub import hub
from slidestream.keys import keys
from slidestream.models import models
from slidestream.pacs import pacs_send
from slidestream.send import resume, send
from slidestream.serve import serve
from slidestream.stations import stations
from slidestream.status import status
from slidestream.users import users
from slidestream.watch import watch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Stream whole-slide images to object storage while they convert, with AI triage.",
)
stdout = Console()


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version  # the one version: pyproject's, as installed

        stdout.print(f"slidestream {version('slidestream')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", envvar="SLIDESTREAM_CONFIG", help="TOML config (default ~/.config/slidestream/config.toml).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Loads the config file as every command's defaults (flags and SLIDESTREAM_<COMMAND>_<OPTION> win)."""
    from slidestream.config import load_config

    ctx.default_map = load_config(config, options_of(ctx.command))

stderr = Console(stderr=True)

INFO_WINDOW = 2048  # px a side that `info` decodes of the smallest level

KeepPhi = Annotated[
    bool, typer.Option("--keep-phi", help="Keep label/macro images and identifying metadata (off: de-identified).")
]


@app.command()
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file (or a DICOM series folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    keep_phi: KeepPhi = False,
    qc: Annotated[bool, typer.Option("--qc", help="Also measure focus (blur) and pen marks on tissue tiles at the triage model's resolution.")] = False,
) -> None:
    """Show a slide's format, pyramid, resolution, background and associated images (de-identified unless --keep-phi)."""
    from rich.table import Table

    from slides import open_slide
    from tiling.tissue import slide_is_darkfield

    with open_slide(slide, keep_phi=keep_phi) as opened:
        last = len(opened.levels) - 1
        # reading the smallest level proves the image data decodes, not just the header (at most a window of it: a
        # slide without a pyramid has only its full-size level)
        window = (min(opened.levels[last].width, INFO_WINDOW), min(opened.levels[last].height, INFO_WINDOW))
        opened.read_region((0, 0), last, window)
        summary = {**opened.summary(), "background": "dark-field" if slide_is_darkfield(opened) else "bright-field"}
    skipped = None
    if qc:
        from inference import InferenceError, qc_slide

        try:
            summary["qc"] = qc_slide(slide)
        except InferenceError as error:  # the model refuses the slide (too coarse, ...): the info part still holds
            skipped = summary["qc_skipped"] = str(error)
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    table = Table(title=f"{slide.name} ({summary['vendor']})")
    for column in ("level", "width", "height", "downsample", "raw tiles"):
        table.add_column(column, justify="right")
    for index, level in enumerate(summary["levels"]):
        table.add_row(str(index), str(level["width"]), str(level["height"]), f"{level['downsample']:.3f}", level["raw_tiles"] or "-")
    stdout.print(table)
    mpp = summary["mpp"]
    stdout.print(f"mpp: {f'{mpp[0]:.4f} x {mpp[1]:.4f} µm' if mpp else 'unknown'}")
    objective = f"{summary['objective_power']:g}x" if summary["objective_power"] else "unknown"
    stdout.print(f"objective: {objective}   tile size: {summary['tile_size'] or 'strips'}")
    stdout.print(f"background: {summary['background']}")
    stdout.print(f"associated images: {', '.join(summary['associated_images']) or 'none'}")
    if skipped is not None:
        stdout.print(f"qc: skipped: {skipped}", markup=False, highlight=False, soft_wrap=True)
    elif qc:
        q = summary["qc"]
        blur = f"{q['blur_fraction']:.0%}" if q["blur_fraction"] is not None else "-"
        pen = f"{q['pen_fraction']:.0%}" if q["pen_fraction"] is not None else "-"
        stdout.print(f"qc: blurry {blur} of {q['focus_tiles']} tissue tiles judged ({q['tiles_sampled']} sampled of "
                     f"{q['tissue_tiles']}; focus median {q['focus_median']}, blurry below {q['blur_threshold']:g}), pen marks {pen}")


@app.command()
def convert(
    slide: Annotated[Path, typer.Argument(help="The slide to convert.")],
    out: Annotated[Path, typer.Argument(help="Output directory, e.g. case.ome.zarr.")],
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded chunks.")] = 90,
    lossless: Annotated[bool, typer.Option("--lossless", help="zstd chunks instead of JPEG.")] = False,
    reencode: Annotated[bool, typer.Option("--reencode", help="Re-encode even where source tiles could be copied.")] = False,
    keep_background: Annotated[bool, typer.Option("--keep-background", help="Also write glass-only chunks.")] = False,
    keep_phi: KeepPhi = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert a slide into a sharded OME-Zarr pyramid (NGFF 0.5) on local disk (de-identified unless --keep-phi)."""
    from slides import open_slide
    from slidestream.progress import piece_progress
    from tiling import ConvertOptions, Piece, PieceKind, plan_pyramid, produce, write_pieces

    options = ConvertOptions(quality=quality, lossless=lossless, passthrough=not reencode, keep_background=keep_background)
    shards = 0

    def count(piece: Piece) -> None:
        nonlocal shards
        shards += piece.kind is PieceKind.SHARD
        advance(piece)

    with open_slide(slide, keep_phi=keep_phi) as opened:
        plan = plan_pyramid(opened, options)
        with piece_progress(stderr, f"converting {slide.name}", len(plan.shards)) as advance:
            written = write_pieces(produce(opened, plan, opened.name, opened.summary()), out, overwrite, on_piece=count)
    empty = f" ({len(plan.shards) - shards} planned shards held nothing)" if shards < len(plan.shards) else ""
    stdout.print(f"{out}: {written / 1e6:.1f} MB, {shards} shards in {len(plan.levels)} levels{empty}, tissue {plan.tissue.fraction:.0%} of the slide")


# commands kept in their own modules; each imports its heavy libraries (boto3, torch, dask) only when it runs
for command in (send, resume, watch, status, serve, analyze, demo, export_dicom, export_results, pacs_send, hub, audit):
    app.command()(command)
app.add_typer(users, name="users")
app.add_typer(keys, name="keys")
app.add_typer(stations, name="stations")
app.add_typer(models, name="models")


DEBUG_ENV = "SLIDESTREAM_DEBUG"


def main() -> None:
    """Console-script entry and the one error path of every command: a `SlidestreamError` becomes one line on stderr
    and exit code 2 (or its `exit_code`), anything unexpected one line and exit 1; `SLIDESTREAM_DEBUG=1` shows
    tracebacks and library warnings instead.

    Libraries' warnings and log messages (tifffile, zarr, dask) go to a debug channel, not the terminal: a damaged
    file makes them talk, and they would stand before the error line that says what is wrong.
    """
    try:
        _main()
    except SystemExit as done:
        if len(sys.argv) > 1 and sys.argv[1] in ONE_SHOT_ASYNC:
            _exit_now(done.code)
        raise


# One-shot commands that talk to the store through obstore's async client. pyo3-async-runtimes' tokio workers may
# still hand a finished request's result to Python while the interpreter finalizes, which aborts the process
# (SIGABRT, about 1 run in 12 here under load; pyo3-async-runtimes issue 40). These commands have nothing left to
# clean up once they return, so they end without finalizing.
ONE_SHOT_ASYNC = frozenset({"users", "audit"})


def _exit_now(code: object) -> None:
    status = code if isinstance(code, int) else 0 if code is None else 1
    if not isinstance(code, int) and code is not None:
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _main() -> None:
    debug = bool(os.environ.get(DEBUG_ENV))
    _route_library_messages(debug)
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr] - file names need not be UTF-8
    try:
        app(auto_envvar_prefix=ENV_PREFIX)  # standalone: typer reports usage errors itself (exit 2)
    except Exception as error:  # noqa: BLE001 - a bug must still be one line, not a page of traceback
        from slides import SlidestreamError  # here: `--help` need not load the slide readers (numpy, openslide)

        if isinstance(error, SlidestreamError):
            _error_line(str(error))
            sys.exit(getattr(error, "exit_code", 2))
        if debug:
            raise
        text = (str(error).strip().splitlines() or [""])[0]
        _error_line(f"internal error: {type(error).__name__}{': ' + text if text else ''} (run with {DEBUG_ENV}=1 for details)")
        sys.exit(1)


def _error_line(text: str) -> None:
    """The error line, and the last word: what background threads still say before the process ends (an edge triage
    finishing its heatmap, or failing while the interpreter shuts down) goes to the debug channel."""
    from slides.errors import printable

    stderr.print(f"slidestream: error: {printable(text)}", markup=False, highlight=False, soft_wrap=True)
    threading.excepthook = _thread_failure_after_the_error
    if not os.environ.get(DEBUG_ENV):
        sys.stderr.flush()
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process's life


def _thread_failure_after_the_error(args: threading.ExceptHookArgs) -> None:
    logging.getLogger("slidestream").debug("thread %s failed after the error", args.thread, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _route_library_messages(debug: bool) -> None:
    """Python warnings and library logging to stderr with `debug`, else nowhere (a root handler keeps logging's
    last-resort printer quiet; loggers with their own handlers, such as uvicorn's access log, still print)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    elif not root.handlers:
        root.addHandler(logging.NullHandler())
