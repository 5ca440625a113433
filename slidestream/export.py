"""`slidestream export-dicom`: a slide as a DICOM WSI series for a PACS, de-identified, the case ID its only identifier.

wsidicom is imported only when the command runs, so the other commands stay quick to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console()


def export_dicom(
    slide: Annotated[Path, typer.Argument(help="The slide to export (a file, or a DICOM series folder).")],
    out: Annotated[Path, typer.Argument(help="Output directory: one DICOM file per pyramid level.")],
    case: Annotated[
        str | None, typer.Option("--case", help="Case ID, the files' PatientID (default: pseudonymous, from the slide's content, as send).")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", min=0.01, max=1000, help="Micrometres per pixel, for a slide that records none.")
    ] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded frames (non-JPEG levels, added levels).")] = 90,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Export a slide as a DICOM VL Whole Slide Microscopy series (JPEG tiles copied, de-identified)."""
    from slides import open_slide
    from tiling.dicom import export_dicom as export
    from transfer.target import case_id_for, validate_case

    case_id = validate_case(case) if case is not None else case_id_for(slide)
    with open_slide(slide) as opened:
        result = export(opened, out, case_id, mpp=mpp, quality=quality, overwrite=overwrite)
    stdout.print(
        f"{out}: {len(result.files)} DICOM instances ({result.passthrough_levels} with copied JPEG tiles), "
        f"{result.bytes / 1e6:.1f} MB, case {case_id}",
        soft_wrap=True,
    )
