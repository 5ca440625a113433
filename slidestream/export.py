"""`slidestream export-dicom`: a slide, or a case already converted or sent, as a DICOM WSI series for a PACS,
de-identified, the case ID its only identifier. `slidestream export-results`: a slide version's annotations and AI
result, as GeoJSON for QuPath or as DICOM objects of that series (`tiling.geojson`, `tiling.dicom_results`).

A slide file and `convert`'s output folder are named after the slide file, which may hold an accession number or the
patient's name: their identifier is --case, else a pseudonym of their content (`transfer.identity.content_id`), never
the name. A sent case's identifier is its case ID (random, given by the registry).

The results are read from the store as the viewer reads them: annotations only where the centre's signature
verifies (`viewer.annotations.listed`; one that does not is named and left out), the centre's triage.json through
`Triage.read`, and its AI part only where a pathologist may see it (`Triage.valid_score`, a final triage): a refused
or unrouted triage exports no score, region or tile.

wsidicom and highdicom are imported only when a command runs, so the other commands stay quick to start.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from slidestream import options as o

if TYPE_CHECKING:
    from caseformat.layout import SlideRef
    from caseformat.results import Triage
    from caseformat.signing import TrustedKeys
    from objectstore import Storage
    from tiling.results import AiResult, SlideResults, TileScores
    from viewer.cases import Cases

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
    endpoint_url: o.EndpointUrl = None,
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


class ResultsFormat(StrEnum):
    geojson = "geojson"
    dicom = "dicom"


def export_results(
    store: Annotated[str, typer.Argument(metavar="s3://BUCKET/PREFIX", help="The case store the viewer serves.")],
    case: Annotated[str, typer.Argument(help="The case ID.")],
    out: Annotated[Path, typer.Argument(help="Output directory: one GeoJSON file, or the DICOM objects.")],
    output_format: Annotated[ResultsFormat, typer.Option("--format", help="geojson (QuPath) or dicom (a PACS).")] = ResultsFormat.geojson,
    slide: Annotated[str | None, typer.Option("--slide", metavar="SLIDE[/VERSION]", help="Default: the case's one slide; its newest version.")] = None,
    series: Annotated[Path | None, typer.Option("--series", help="dicom: export-dicom's output folder of this slide version, "
                                                                 "whose series the objects refer to.")] = None,
    key_dir: Annotated[Path | None, typer.Option(help="Folder of the centre's public keys (centre-keys.pem; default: the state dir).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Export a slide version's annotations and AI result (top regions, tile scores) as GeoJSON for QuPath or as DICOM
    (bulk annotations, parametric map) for a PACS."""
    import asyncio
    import json

    from caseformat.layout import validate_case
    from slides.errors import printable
    from slidestream.serve import trusted_keys
    from slidestream.users import open_store
    from tiling.local import published

    if output_format is ResultsFormat.dicom and series is None:
        raise typer.BadParameter("the DICOM objects refer to the slide's WSI series: give export-dicom's output folder", param_hint="--series")
    results, notes = asyncio.run(_slide_results(open_store(store, endpoint_url), trusted_keys(key_dir), validate_case(case), slide))
    if output_format is ResultsFormat.geojson:
        from tiling.geojson import feature_collection

        with published(out, overwrite) as partial:
            name = f"{results.case}_{results.slide}_{results.version}.geojson"
            (partial / name).write_text(json.dumps(feature_collection(results)))
        written = [out / name]
    else:
        from tiling.dicom_results import export_results_dicom

        assert series is not None
        written = export_results_dicom(results, series, out, overwrite).files
    for note in notes:
        stdout.print(printable(note), markup=False, highlight=False, soft_wrap=True)
    ai = results.ai
    said = f"AI score {ai.score:.2f}, {len(ai.regions)} regions, {0 if ai.tiles is None else ai.tiles.scored} tiles" \
        if ai is not None else "no AI result"  # fmt: skip
    stdout.print(f"{out}: {', '.join(path.name for path in written) or 'nothing to write'}; {results.label}: "
                 f"{len(results.annotations)} annotations, {said}", markup=False, highlight=False, soft_wrap=True)


async def _slide_results(storage: Storage, trusted: TrustedKeys, case: str, slide: str | None) -> tuple[SlideResults, list[str]]:
    """The slide version's verified annotations and AI result, and a line for each thing left out and why."""
    from caseformat.bounded import Fields
    from caseformat.documents import Annotation
    from caseformat.errors import DocumentError
    from caseformat.layout import TRIAGE, annotation_key
    from caseformat.results import Triage
    from objectstore import ObjectNotFoundError
    from tiling.results import SlideResults
    from viewer.annotations import listed
    from viewer.cache import AsyncCache
    from viewer.cases import Cases

    cases = Cases(storage, trusted, tile_cache_bytes=0)
    ref = await _slide_version(cases, case, slide)
    level0 = (await cases.tiles.image(ref.root)).levels[0]
    documents, notes = await listed(storage, trusted, case, AsyncCache(1024))
    annotations = tuple(annotation for annotation in (Annotation.from_fields(Fields(document, annotation_key(case, document["id"])))
                                                      for document in documents)
                        if (annotation.slide, annotation.version) == (ref.slide, ref.version))  # fmt: skip
    notes = [f"refused annotation: {note}" for note in notes]
    try:
        triage: Triage | None = Triage.read(await storage.get(ref.centre_key(TRIAGE)), ref.centre_key(TRIAGE))
    except ObjectNotFoundError:
        triage = None
    except DocumentError as error:
        triage, notes = None, [*notes, f"no AI result: {error}"]
    ai, why = await _ai_result(storage, ref, triage, level0.width, level0.height)
    return SlideResults(ref.case, ref.slide, ref.version, level0.width, level0.height, annotations, ai), [*notes, *why]


async def _slide_version(cases: Cases, case: str, slide: str | None) -> SlideRef:
    """`slide` ("s1" at its newest version, or "s1/v2"), else the case's one slide at its newest version."""
    from caseformat.layout import SlideRef, validate_slide, validate_version
    from slidestream.stored import StoredCaseError

    newest = await cases.slides(case)
    name, _, version = (slide or "").partition("/")
    if not name and len(newest) != 1:
        found = ", ".join(ref.slide for ref in newest) or "none"
        raise StoredCaseError(f"case {case} has {len(newest)} slides ({found}); name one with --slide" if newest else f"case {case}: no slide on the store")
    chosen = [ref for ref in newest if not name or ref.slide == validate_slide(name)]
    if not chosen:
        raise StoredCaseError(f"case {case} has no slide {name} on the store")
    return SlideRef(case, chosen[0].slide, validate_version(version)) if version else chosen[0]


async def _ai_result(storage: Storage, ref: SlideRef, triage: Triage | None, width: int, height: int) -> tuple[AiResult | None, list[str]]:
    """The AI part where a pathologist may see it, else None and the line that says why."""
    from caseformat.bounded import Fields
    from caseformat.results import Region
    from tiling.results import AiResult

    if triage is None:
        return None, [f"no AI result: {ref.label} has no triage by the centre yet"]
    if triage.valid_score is None:
        why = triage.refused or ("no tile was scored" if triage.routed is not None else "the triage was not routed to a validated model")
        return None, [f"no AI result: {why}"]
    if not triage.final():
        return None, [f"no AI result: the triage of {ref.label} is not complete yet; export it once the hub has finished"]
    regions = tuple(Region.from_fields(Fields(item, "top_regions")) for item in triage.summary.get("top_regions") or [])
    tile = triage.summary.get("tile_level0_px")
    tiles = await _tile_scores(storage, ref, float(tile), width, height) if tile else None
    detects = str(triage.summary.get("detects") or f"what model {triage.model} detects")
    ai = AiResult(triage.model, detects, triage.valid_score, regions, tiles)
    return ai, [] if tiles is not None else [f"no tile scores: the heatmap of {ref.label} is missing or unreadable"]


async def _tile_scores(storage: Storage, ref: SlideRef, tile: float, width: int, height: int) -> TileScores | None:
    """The exact per-tile scores inference keeps beside its map (`tile_state`, NaN: not scored), on the grid the
    triage's tile size makes of this image; None when they are absent, malformed or of another grid."""
    import math

    import numpy as np
    import zarr.api.asynchronous

    from caseformat.errors import DocumentError
    from caseformat.layout import HEATMAP, TILE_STATE
    from caseformat.results import check_array
    from objectstore import ZarrView
    from tiling.results import TileScores

    grid = (4, math.ceil(height / tile), math.ceil(width / tile))
    try:
        group = await zarr.api.asynchronous.open_group(store=ZarrView(storage), path=ref.centre_key(HEATMAP), mode="r", zarr_format=3)
        state = await group.getitem(TILE_STATE)
        if not isinstance(state, zarr.AsyncArray):
            return None
        check_array(ref.centre_key(HEATMAP), state.shape, state.chunks, state.shards, str(state.dtype))
        if tuple(state.shape) != grid:
            return None
        scores = np.asarray(await state.getitem((0, slice(None), slice(None))), np.float32)
    except (FileNotFoundError, KeyError, TypeError, DocumentError, zarr.errors.NodeNotFoundError):
        return None
    return TileScores(tile, scores)
