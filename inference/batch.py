"""Analyse many slides and cases in one run, with a CSV report: resumable, and one failure never stops the rest."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caseformat.layout import (
    CASE_PATTERN,
    IMAGE_METADATA,
    MANIFEST,
    NAME_PATTERN,
    SLIDES,
    STATION_TREES,
    VERSION_PATTERN,
    centre_twin,
    version_number,
)
from caseformat.results import Triage
from inference.heatmap import read_triage
from inference.pipeline import AnalyzeOptions, Progress, analyze_case, analyze_slide, check_not_failed, follow_case, read_manifest
from inference.scoring import Runner
from inference.store import Location
from slides import SlidestreamError
from slides.errors import one_line, printable
from slides.slide import slide_path_kind
from transfer.identity import content_id

COLUMNS = ["slide", "case", "status", "score", "max", "tiles_scored", "area_above_threshold_mm2", "blur_fraction",
           "seconds", "error", "results"]


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
                  options: AnalyzeOptions = AnalyzeOptions(), *, endpoint_url: str | None = None, follow: bool = False,
                  on_item: Callable[[Item, int, int], None] | None = None, on_progress: Progress | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Analyse every input and write one CSV row per item to `report` as each finishes; returns the rows.

    Results go to `out/{case}/` (local or s3://); without `out`, cases keep theirs beside their image (where
    the viewer looks) and slide files get theirs beside the report. An item whose complete results already exist
    there is skipped, its row filled from them, so an interrupted batch resumes where it stopped. `follow` waits
    for cases still uploading.
    """
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
            row = _analyze_item(item, _target(item, out, report, endpoint_url), options, runner, follow, on_progress)
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


def _analyze_item(item: Item, target: Location, options: AnalyzeOptions, runner: Runner, follow: bool,
                  on_progress: Progress | None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        if item.problem:
            raise SlidestreamError(item.problem)
        if item.location is not None:
            check_not_failed(item.location, read_manifest(item.location))  # results from before do not count
        done = read_triage(target)
        if done is not None and done.final(options.model.spec.name):  # an edge's coarse map never is: it is superseded
            return _row(item, "skipped", target, done, 0.0)
        if item.slide is not None:
            heatmap = analyze_slide(item.slide, target, options, runner=runner, on_progress=on_progress, name=item.case)
        elif follow:
            heatmap = follow_case(item.location, target, options, runner=runner, on_progress=on_progress)
        else:
            heatmap = analyze_case(item.location, target, options, runner=runner, on_progress=on_progress)
    except Exception as error:  # noqa: BLE001 - one slide's failure, whatever it is, must not stop the batch
        return _row(item, "error", target, None, time.perf_counter() - start, one_line(error))
    status = "no tissue" if not heatmap.tissue.any() else "ok" if heatmap.complete else "partial"
    return _row(item, status, target, heatmap.triage(options.threshold), time.perf_counter() - start)


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
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
