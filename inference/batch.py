"""Analyse many slides and cases in one run, with a CSV report: resumable, and one failure never stops the rest."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from caseformat.documents import CaseRecord
from caseformat.errors import DocumentError
from caseformat.layout import (
    CASE_PATTERN,
    CASE_RECORD,
    IMAGE,
    IMAGE_METADATA,
    MANIFEST,
    NAME_PATTERN,
    SLIDES,
    STATION_TREES,
    TRIAGE,
    VERSION_PATTERN,
    case_folder_of,
    centre_twin,
    version_number,
)
from caseformat.results import COMPLETE, Triage
from inference.errors import InferenceError
from inference.heatmap import read_triage
from inference.model import default_package
from inference.packages import ModelPackage
from inference.pipeline import (
    AnalyzeOptions,
    CaseNotReadyError,
    Progress,
    analyze_case,
    analyze_slide,
    arrival_state,
    follow_case,
    plan_heatmap,
    read_manifest,
    ready_tiles,
)
from inference.routing import Route, Routes, detect_stain
from inference.scoring import ModelRef, Runner
from inference.sources import SlideFileRef, SlideSource, Source, SourceRef, ZarrRef, ZarrSource, open_source, read_level
from objectstore.location import Location
from slides import SlidestreamError
from slides.errors import one_line, printable
from slides.slide import slide_path_kind
from tiling.tissue import overview
from transfer.identity import content_id

COLUMNS = ["slide", "case", "status", "score", "max", "tiles_scored", "area_above_threshold_mm2", "blur_fraction",
           "seconds", "error", "results", "refused"]
NO_AI = "no validated AI"  # the status of an item no package of the table may score: QC only, not a failure
QC_SAMPLE = 300  # tissue tiles a refused item's QC reads (as `inference.qc_slide`): a blur fraction within a few percent
OVERVIEW_PIXELS = 4096 * 4096  # the largest level read whole to tell a case's stain (a pyramid's coarsest is far smaller)
FOLLOW_POLL = 2.0  # seconds between looks at a case still arriving, with --follow


@dataclass(frozen=True)
class Item:
    """One thing to analyse: a slide file, or a slide version of a case (`{case}/slides/{slide}/{version}`, local
    or on S3)."""

    label: str  # as the user named it (or as found under a prefix): the report's `slide` column, never on a store
    case: str  # results go to OUT/{case}; a slide version's {case}/slides/{slide}/{version}; a slide file's content ID
    slide: str | None = None
    location: Location | None = None
    problem: str | None = None  # set when the input itself is unusable


def discover(inputs: Sequence[str | os.PathLike[str]], endpoint_url: str | None = None) -> list[Item]:
    """Items for slide files, slide versions, case folders and folders or s3:// prefixes holding cases, in order.

    A case folder gives each of its slides at its newest version (a rescan supersedes the scan before it). A local
    folder without cases is taken as a slide (a DICOM series); a slide file is named by a pseudonym of its content
    (`content_id`; never its name, as scanner file names hold accession numbers and patient names). A slide
    version is a folder with an image or a send manifest (a failed send leaves only its manifest: its row says why).
    Names are made unique with a suffix.
    """
    items: list[Item] = []
    for entry in inputs:
        text = str(entry)
        if text.startswith("s3://") or Path(text).is_dir():
            location = Location.parse(text, endpoint_url)
            if _is_slide_version(location):
                items.append(Item(text, _relative_name(location), location=_with_results(location)))
                continue
            found = newest_versions(location) or [  # a case folder, else a station's folder, else a whole store
                version for case in _case_folders(location) for version in newest_versions(case)
            ]
            if found:
                items += [Item(version.url, _relative_name(version), location=version) for version in found]
                continue
            if location.is_s3:
                items.append(Item(text, location.name, problem=f"{text}: no slidestream cases (slide versions with an image) here"))
                continue
        items.append(_slide_item(text))
    seen: dict[str, int] = {}
    unique = []
    for item in items:
        if item.problem and not item.case:
            unique.append(item)
            continue
        seen[item.case] = seen.get(item.case, 0) + 1
        name = item.case if seen[item.case] == 1 else f"{item.case}-{seen[item.case]}"
        unique.append(Item(item.label, name, item.slide, item.location, item.problem))
    return unique


def _slide_item(text: str) -> Item:
    """A slide file or folder under its case ID; one that cannot be read (missing, a FIFO, a link loop) is its
    problem, found before anything would be named after it."""
    path = Path(text)
    try:
        slide_path_kind(path)
        return Item(text, content_id(path), slide=text)
    except SlidestreamError as error:
        return Item(text, "", slide=text, problem=str(error))
    except OSError as error:  # gone or unreadable between the look and the read
        return Item(text, "", slide=text, problem=f"{text}: cannot read it: {error.strerror or error}")


def newest_versions(case: Location) -> list[Location]:
    """Each slide of a case folder at its newest version, in slide order."""
    newest = []
    for slide in case.child(SLIDES).subfolders():
        versions = [version for version in slide.subfolders() if VERSION_PATTERN.fullmatch(version.name)]
        if versions:
            newest.append(_with_results(max(versions, key=lambda version: version_number(version.name))))
    return newest


def _case_folders(location: Location) -> list[Location]:
    """The case folders below every station of a store, or below a folder of cases (a station's, an archive's)."""
    stations = location.child(STATION_TREES).subfolders()
    if stations:
        return [case for station in stations for case in station.subfolders() if CASE_PATTERN.fullmatch(case.name)]
    return [case for case in location.subfolders() if NAME_PATTERN.fullmatch(case.name)]


def _with_results(version: Location) -> Location:
    """A slide version of a shared store with the centre's folder for its results, where the hub and the viewer
    look; any other folder keeps its results beside its image."""
    twin = centre_twin(version.url)
    return version if twin is None else Location(version.url, version.endpoint_url, twin)


def _relative_name(version: Location) -> str:
    """{case}/slides/{slide}/{version} of a slide version's location (results mirror the layout under --out)."""
    parts = version.url.rstrip("/").split("/")
    return "/".join(parts[-4:]) if len(parts) >= 4 and parts[-3] == SLIDES else version.name


def _is_slide_version(location: Location) -> bool:
    return location.exists(IMAGE_METADATA) or location.exists(MANIFEST)



def analyze_batch(inputs: Sequence[str | os.PathLike[str]], report: str | os.PathLike[str], out: str | None = None,
                  options: AnalyzeOptions = AnalyzeOptions(), *, routes: Routes | None = None, site: str | None = None,
                  endpoint_url: str | None = None, follow: bool = False,
                  on_item: Callable[[Item, int, int], None] | None = None, on_progress: Progress | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Analyse every input and write one CSV row per item to `report` as each finishes; returns the rows.

    Every item is routed first (`inference.routing`): a case's specimen site is its case.json's, a slide file's is
    `site` (none: not known); the stain is told from its overview and the um/px is the image's. The first package
    of `routes` (default: the default model's) whose intended use covers the item scores it, with `options` made
    for that package (`package_options`); an item none covers gets a triage.json with the refusal and QC only, no
    score and no heatmap, and its row the status NO_AI with the reason: a number from a model outside its use is
    never made.

    Results go to `out/{case}/` (local or s3://); without `out`, cases keep theirs beside their image (where
    the viewer looks) and slide files get theirs beside the report. An item whose complete results already exist
    there is skipped, its row filled from them, so an interrupted batch resumes where it stopped. `follow` waits
    for cases still uploading.
    """
    routes = routes or Routes((default_package(),))
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    items = discover(inputs, endpoint_url)
    rows: list[dict[str, Any]] = []
    with Runner(options.scheduler, options.threads, options.torch_threads) as runner, report.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for index, item in enumerate(items):
            if on_item is not None:
                on_item(item, index, len(items))
            row = _analyze_item(item, _target(item, out, report, endpoint_url), routes, site, options, runner, follow, on_progress)
            rows.append(row)
            writer.writerow(row)
            fh.flush()
            if on_row is not None:
                on_row(row)
    return rows


def _target(item: Item, out: str | None, report: Path, endpoint_url: str | None) -> Location:
    if out is not None:
        return Location.parse(out, endpoint_url).child(item.case)
    if item.location is not None:
        return item.location
    return Location.parse(report.resolve().parent / item.case)


def _analyze_item(item: Item, target: Location, routes: Routes, site: str | None, options: AnalyzeOptions, runner: Runner,
                  follow: bool, on_progress: Progress | None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        if item.problem:
            raise SlidestreamError(item.problem)
        if item.location is not None:
            arrival_state(item.location, read_manifest(item.location))  # results from before do not count
        route = _route(item, routes, site, follow)
        done = read_triage(target)
        if route.package is None:
            if done is not None and done.final() and done.refused == route.refused:
                return _row(item, NO_AI, target, done, 0.0)
            return _row(item, NO_AI, target, _refuse(item, target, route, options, runner, follow), time.perf_counter() - start)
        options = package_options(options, route.package)
        # an edge's coarse map is never final, and a result from before routing is made again, routed
        if done is not None and done.routed is not None and done.final(options.model.spec.name):
            return _row(item, "skipped", target, done, 0.0)
        if item.slide is not None:
            heatmap = analyze_slide(item.slide, target, options, runner=runner, on_progress=on_progress, name=item.case,
                                    routed=route.routed, about=route.about())
        elif item.location is None:
            raise AssertionError("an item is a slide file or a slide version")
        elif follow:
            heatmap = follow_case(item.location, target, options, runner=runner, on_progress=on_progress, routed=route.routed,
                                  about=route.about())
        else:
            heatmap = analyze_case(item.location, target, options, runner=runner, on_progress=on_progress, routed=route.routed,
                                   about=route.about())
    except Exception as error:  # noqa: BLE001 - one slide's failure, whatever it is, must not stop the batch
        return _row(item, "error", target, None, time.perf_counter() - start, one_line(error))
    status = "no tissue" if not heatmap.tissue.any() else "ok" if heatmap.complete else "partial"
    return _row(item, status, target, heatmap.triage(options.threshold), time.perf_counter() - start)


def package_options(options: AnalyzeOptions, package: ModelPackage) -> AnalyzeOptions:
    """`options` for scoring with `package`: its model on the same device, at its threshold; `options` itself when
    they name it already (a table of one package scores as before routing)."""
    model = ModelRef.of_package(package, options.model.device)
    return options if options.model == model else replace(options, model=model, threshold=package.threshold)


def _route(item: Item, routes: Routes, site: str | None, follow: bool) -> Route:
    """The item held to the routing table: a slide file's site is `site`, a case's its case.json's (unreadable: not
    known); the stain is told from the overview, the um/px is the image's."""
    if item.slide is not None:
        source = cast(SlideSource, open_source(SlideFileRef.of(item.slide)))
        return routes.choose(site, detect_stain(overview(source.slide)[0]), source.mpp)
    assert item.location is not None
    pixels, mpp = _case_overview(item.location, follow)
    return routes.choose(_case_site(item.location), detect_stain(pixels), mpp)


def _case_site(version: Location) -> str | None:
    """The specimen site the case of a slide version was registered with; None without a readable case.json."""
    folder = case_folder_of(version.url)
    data = None if folder is None else Location(folder, version.endpoint_url).read_bytes(CASE_RECORD)
    try:
        return None if data is None else dict(CaseRecord.read(data, CASE_RECORD).context).get("specimen_site")
    except DocumentError:
        return None


def _case_overview(version: Location, follow: bool) -> tuple[np.ndarray, float | None]:
    """The coarsest level the station sent of a slide version's image, whole, and the image's um/px; with `follow`,
    waited for while the case arrives (`CaseNotReadyError` without)."""
    while True:
        manifest = read_manifest(version)
        arrival_state(version, manifest)
        if version.exists(IMAGE_METADATA) and (manifest is None or manifest.plan_final):
            source = ZarrRef(version.child(IMAGE)).open()
            level = max(index for index in range(len(source.arrays)) if index not in source.derived)
            counts = {count.level: count for count in manifest.levels} if manifest is not None else {}
            count = counts.get(level)
            if manifest is None or manifest.state == COMPLETE or (count is not None and count.arrived >= count.planned):
                height, width = cast(Any, source.arrays[level]).shape[1:]
                if height * width > OVERVIEW_PIXELS:
                    raise InferenceError(f"{version.url}: no level small enough to tell the stain by")
                return source.read(level, 0, 0, width, height), source.mpp
        if not follow:
            raise CaseNotReadyError(f"{version.url}: its overview has not arrived: the stain cannot be told yet")
        time.sleep(FOLLOW_POLL)


def _refuse(item: Item, target: Location, route: Route, options: AnalyzeOptions, runner: Runner, follow: bool) -> Triage:
    """Write the refusal in place of a score: QC only (focus and pen on a sample of the tissue tiles, as the hub
    measures a refused slide), no score and no heatmap. A case still arriving is measured on what arrived; with
    `follow`, once it is complete."""
    assert route.refused is not None
    ref: SourceRef
    manifest = None
    if item.slide is not None:
        ref = SlideFileRef.of(item.slide)
    else:
        assert item.location is not None
        ref = ZarrRef(item.location.child(IMAGE))
        manifest = read_manifest(item.location)
        while follow and manifest is not None and manifest.state != COMPLETE:
            time.sleep(FOLLOW_POLL)
            manifest = read_manifest(item.location)
            arrival_state(item.location, manifest)
    source: Source = open_source(ref)
    name = item.case if item.slide is not None else source.name
    summary: dict[str, Any] = {"mpp": source.mpp, "mpp_assumed": source.mpp is None}
    try:
        heatmap = plan_heatmap(source, options, name)
    except InferenceError:  # too coarse for the model's tiles: QC is the tissue alone
        heatmap = None
    if heatmap is not None:
        spec, grid = heatmap.spec, heatmap.grid
        level = read_level(source, grid.tile / spec.input_size)
        ready = ready_tiles(source, grid, level, manifest) if isinstance(source, ZarrSource) else True
        tiles = np.argwhere(heatmap.tissue & ready)
        tiles = tiles[np.random.default_rng(options.seed).permutation(len(tiles))[:QC_SAMPLE]]
        batch = options.batch
        runner.run([(ref, grid.tile, level, spec.input_size, tiles[k : k + batch], None) for k in range(0, len(tiles), batch)],
                   heatmap.add)  # no model: focus and pen only, the score stays NaN
        summary |= {"tissue_tiles": int(heatmap.tissue.sum()), "tiles_measured": int(heatmap.measured.sum()),
                    "tiles_scored": 0, "tile_level0_px": grid.tile, "qc": heatmap.qc()}
    complete = manifest is None or manifest.state == COMPLETE
    triage = Triage(name, None, options.model.spec.name, options.stage, complete, summary, "", route.refused)
    target.write_bytes(TRIAGE, triage.to_json())
    return triage


def _row(item: Item, status: str, target: Location, triage: Triage | None, seconds: float, error: str = "") -> dict[str, Any]:
    summary = triage.summary if triage else {}
    return {  # printable: a file name need not be UTF-8, and the report must still be written
        "slide": printable(item.label),
        "case": printable(item.case),
        "status": status,
        "score": _round(triage.score) if triage else None,
        "max": _round(summary.get("max")),
        "tiles_scored": summary.get("tiles_scored"),
        "area_above_threshold_mm2": summary.get("area_above_threshold_mm2"),
        "blur_fraction": summary.get("qc", {}).get("blur_fraction"),
        "seconds": round(seconds, 2),
        "error": printable(error),
        "results": printable(target.url) if triage else "",
        "refused": printable(triage.refused or "") if triage else "",
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
