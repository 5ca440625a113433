"""`slidestream export-dicom`: a slide, or a case already converted or sent, as a DICOM WSI series for a PACS,
de-identified, the case ID its only identifier.

A slide file and `convert`'s output folder are named after the slide file, which may hold an accession number or the
patient's name: their identifier is --case, else a pseudonym of their content (`transfer.identity.content_id`), never
the name. A sent case's identifier is its case ID (random, given by the registry).

wsidicom is imported only when the command runs, so the other commands stay quick to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console()


def export_dicom(
    slide: Annotated[str, typer.Argument(
        metavar="CASE_OR_SLIDE",
        help="A slide (a file, or a DICOM series folder), or a case: convert's output folder, a local case folder, "
             "s3://BUCKET/PREFIX/CASE or .../CASE/image.zarr.",
    )],
    out: Annotated[Path, typer.Argument(help="Output directory: one DICOM file per pyramid level.")],
    case: Annotated[
        str | None, typer.Option("--case", help="Case ID, the files' PatientID and only identifier. Default: a sent case's own case ID; "
                                                 "for a slide file or convert's output folder a pseudonym of its content (16 hex digits), "
                                                 "never its file or folder name.")
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, ...) of an s3:// case; default AWS.")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", min=0.01, max=1000, help="Micrometres per pixel, for a slide that records none.")
    ] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded frames (non-JPEG levels, added levels).")] = 90,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Export a slide or a stored case as a DICOM VL Whole Slide Microscopy series (JPEG tiles copied, de-identified)."""
    from caseformat.layout import validate_name
    from slides import open_slide
    from slidestream.stored import is_stored_case, open_stored_case
    from tiling.dicom import export_dicom as export
    from transfer.identity import content_id

    if is_stored_case(slide):
        pseudonym = case is None and _convert_output(slide)
        stored = open_stored_case(slide, endpoint_url, content_id(Path(slide)) if pseudonym else case)
        case_id = stored.case_id
        result = export(stored, out, case_id, mpp=mpp, quality=quality, overwrite=overwrite)
    else:
        case_id = validate_name(case) if case is not None else content_id(Path(slide))
        with open_slide(slide) as opened:
            result = export(opened, out, case_id, mpp=mpp, quality=quality, overwrite=overwrite)
    stdout.print(
        f"{out}: {len(result.files)} DICOM instances ({result.passthrough_levels} with copied JPEG tiles), "
        f"{result.bytes / 1e6:.1f} MB, case {case_id}",
        soft_wrap=True,
    )


def _convert_output(target: str) -> bool:
    """`convert`'s output folder: the image itself, named after the slide file, not a case folder of the store's layout
    (whose name is the case ID)."""
    from caseformat.layout import IMAGE, IMAGE_METADATA, MANIFEST, SLIDES

    folder = Path(target)
    return (not target.startswith("s3://") and folder.name != IMAGE and (folder / "zarr.json").is_file()
            and not any((folder / name).exists() for name in (MANIFEST, IMAGE_METADATA, SLIDES)))
