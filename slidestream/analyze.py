"""`slidestream analyze`: AI triage of many slides and cases, with a CSV report; resumable, and a failed slide
only costs its own row. torch and Dask are imported inside the command so other commands stay quick.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slidestream import options as o

if TYPE_CHECKING:
    from rich.table import Table

    from inference.batch import Item
    from inference.packages import ModelPackage

stderr = Console(stderr=True)
stdout = Console()


def analyze(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, case folders (CASE/image.zarr), or folders and s3://BUCKET/PREFIX/ holding cases.")],
    report: Annotated[Path, typer.Option("--report", help="CSV report, written row by row: one row per slide or case.")],
    out: Annotated[str | None, typer.Option("--out", help="Results go to OUT/CASE/{heatmap.zarr,triage.json} (a folder or s3://); a slide file's CASE is the case ID send gives it, never its name. Default: beside each case; beside the report for slide files.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="A dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (default: threads on this machine).")] = None,
    coarse: Annotated[bool, typer.Option("--coarse", help="Coarse-to-fine: map the whole slide with wider tiles first, then look closer only where it is hot.")] = False,
    coarse_factor: Annotated[int, typer.Option("--coarse-factor", min=2, max=16, help="With --coarse: coarse tiles are this many model tiles wide (2: 4x the area each).")] = 2,
    device: Annotated[str, typer.Option("--device", help="Where the model runs: cpu, cuda, cuda:1, ...")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Local Dask threads (default: one per core).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=1024, help="Tiles per Dask task and model batch.")] = 32,
    threshold: Annotated[float | None, typer.Option("--threshold", min=0, max=1, help="Tile score that counts as hot (area and regions); default: the model package's.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Wait for cases that are still uploading, and finish them.")] = False,
    endpoint_url: o.EndpointUrl = None,
    models: Annotated[list[str] | None, typer.Option("--model", metavar="PACKAGE", help="Model package: a folder, or a name in the centre's models folder (default: the Capricorn colorectal package). Repeat it for a routing table: the first package validated for a slide's site, stain and resolution scores it.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="The specimen site of the slide files given (e.g. \"sigmoid colon\"); a case's is its case.json's. Without it a slide file gets QC only: no validated AI for an unknown site.")] = None,
) -> None:
    """Heatmap, triage score and QC for each slide or case the centre's models are validated for (elsewhere QC and
    "no validated AI"); skips those whose results already exist."""
    from objectstore.clients import parse_endpoint
    from slides.errors import printable
    from transfer.target import parse_store_url

    parse_endpoint(endpoint_url)  # before torch loads and before obstore sees it (a malformed one panics there)
    for url in [*inputs, out or ""]:
        if url.startswith("s3:"):
            parse_store_url(url)
    import torch

    from inference import AnalyzeOptions, ModelRef, analyze_batch
    from inference.routing import Routes

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device is available to this torch build", param_hint="--device")
    packages = [package if threshold is None else replace(package, threshold=threshold) for package in routing_table(models)]
    options = AnalyzeOptions(model=ModelRef.of_package(packages[0], device), batch=batch, threads=threads, scheduler=scheduler,
                             coarse=coarse, coarse_factor=coarse_factor, threshold=packages[0].threshold)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, disable=not stderr.is_terminal) as progress:
        slides = progress.add_task("slides", total=None)
        tiles = progress.add_task("tiles", total=None)

        def on_item(item: Item, index: int, total: int) -> None:
            progress.update(slides, completed=index, total=total, description=f"slides ({item.case})")
            progress.reset(tiles, total=None)

        def on_progress(done: int, planned: int) -> None:
            progress.update(tiles, completed=done, total=planned)

        rows = analyze_batch(inputs, report, out, options, routes=Routes(tuple(packages)), site=site, endpoint_url=endpoint_url, follow=follow,
                             on_item=on_item, on_progress=on_progress, on_row=lambda _: progress.advance(slides))
    stdout.print(_table(rows))
    for row in rows:
        said = row["error"] or row["refused"]
        if said:
            # named as the user named it (a slide file's case ID would not tell them which file); stderr stays here
            line = said if said.startswith(row["slide"]) else f"{row['slide']}: {said}"
            stderr.print(line, markup=False, highlight=False, soft_wrap=True)
    failed = sum(row["status"] == "error" for row in rows)
    stderr.print(printable(f"{len(rows)} items, {failed} failed; report: {report}"), markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def routing_table(models: list[str] | None) -> list[ModelPackage]:
    """The packages `--model` names, in the order they are tried (`inference.routing`); none: the default model's."""
    return [model_package(model) for model in models] if models else [model_package(None)]


def model_package(model: str | None) -> ModelPackage:
    """The package `--model` names (a folder, or a name in the centre's models folder: SLIDESTREAM_MODELS, else
    `slidestream models`' default), else the default model's."""
    from inference.model import default_package
    from inference.packages import find_package
    from slidestream.models import models_dir

    if model is None:
        return default_package()
    folder = os.environ.get("SLIDESTREAM_MODELS")
    return find_package(model, models_dir(Path(folder) if folder else None))


def _table(rows: list[dict[str, Any]]) -> Table:
    """The triage ranking: most urgent first."""
    from rich.table import Table

    table = Table()
    table.add_column("case", overflow="fold")
    table.add_column("status")
    for column in ("score", "max", "tiles", "blurry", "seconds"):
        table.add_column(column, justify="right")
    for row in sorted(rows, key=lambda r: -(r["score"] if r["score"] is not None else -1)):
        numbers = [f"{row[k]:.3f}" if row[k] is not None else "-" for k in ("score", "max")]
        blur = f"{row['blur_fraction']:.0%}" if row["blur_fraction"] is not None else "-"
        tiles = str(row["tiles_scored"]) if row["tiles_scored"] is not None else "-"
        table.add_row(row["case"] or row["slide"], row["status"], *numbers, tiles, blur, f"{row['seconds']:.1f}")
    return table
