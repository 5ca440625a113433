"""A slide version's annotations and AI result as DICOM objects of the WSI series `export-dicom` wrote
(`tiling.dicom`), for a PACS and its viewers: a Microscopy Bulk Simple Annotations instance (Supplement 222) of the
pathologists' marks and the AI's top regions, and a Parametric Map of the per-tile scores. highdicom writes both.

Both refer to the series' level-0 instance (its source image) and take their patient, study, specimen and frame of
reference from it, so they land in the same study beside the image, with no identity beyond what `export-dicom`
wrote (the case ID; PatientIdentityRemoved YES). Each is a new series (an ANN series, a parametric map series).

- Annotations: one annotation group per pathologist's mark (POINT, POLYLINE or POLYGON, MANUAL), labelled with its
  text, its author and time in the group's description; the AI's regions in one group (POLYGON, AUTOMATIC, the
  model as its algorithm) with each region's peak score as a Probability measurement. Coordinates are 2D level-0
  pixels of the total pixel matrix (PixelOriginInterpretation VOLUME), the annotations' own.
- Heatmap: one pixel per model tile over the same slide area (pixel spacing the tile's, the origin level 0's), the
  exact float32 scores inference keeps (`tile_state`) as float pixel data, NaN where no tile was scored (glass), as
  in `tile_state`; the real world value mapping is the identity on [0, 1], unit-less (a probability). Not an
  integer map: 0 would have to mean both "score 0" and "not scored" (the NGFF map's compromise), or lie outside the
  mapped range, which readers refuse (highdicom does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from caseformat.documents import Annotation
from slides import SlidestreamError
from tiling.local import published
from tiling.results import AiResult, SlideResults, TileScores, region_corners

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
ANNOTATIONS_FILE, HEATMAP_FILE = "annotations.dcm", "heatmap.dcm"
ANNOTATIONS_SERIES, HEATMAP_SERIES = 2, 3  # after the image's series 1
GRAPHIC_TYPE = {"point": "POINT", "line": "POLYLINE", "polygon": "POLYGON"}
LONG_STRING = 64  # LO: labels, descriptions of the content, the real world value mapping's explanation
SHORT_TEXT = 1024  # ST: a group's description
ALGORITHM = "slidestream triage"


class SeriesMismatchError(SlidestreamError, ValueError):
    """The WSI series given is not the image of the slide version whose results are exported."""


@dataclass(frozen=True)
class ResultsExport:
    """The files written (annotations and heatmap, each where there was something to write)."""

    files: list[Path]


def export_results_dicom(results: SlideResults, series: Path, out: Path, overwrite: bool = False) -> ResultsExport:
    """Write `results` as DICOM objects of the WSI series in the folder `series` into the directory `out`, published
    only when complete; an object with nothing in it (no annotation and no region; no tile scores) is not written."""
    base = _level0(series, results)
    names = []
    with published(out, overwrite) as partial:
        groups = [_mark_group(number, annotation) for number, annotation in enumerate(results.annotations, 1)]
        if results.ai is not None and results.ai.regions:
            groups.append(_region_group(len(groups) + 1, results.ai))
        if groups:
            _annotations(base, groups).save_as(partial / ANNOTATIONS_FILE, enforce_file_format=True)
            names.append(ANNOTATIONS_FILE)
        if results.ai is not None and results.ai.tiles is not None:
            _heatmap(base, results.ai, results.ai.tiles).save_as(partial / HEATMAP_FILE, enforce_file_format=True)
            names.append(HEATMAP_FILE)
    return ResultsExport([out / name for name in names])


def _level0(series: Path, results: SlideResults) -> pydicom.Dataset:
    """The series' level-0 instance (header only), refused unless it is this case's image at this size."""
    datasets = []
    for path in sorted(series.iterdir()) if series.is_dir() else []:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if dataset.get("SOPClassUID") == WSI_SOP_CLASS and "VOLUME" in dataset.get("ImageType", []):
            datasets.append(dataset)
    if not datasets:
        raise SeriesMismatchError(f"{series}: no DICOM WSI series there; give export-dicom's output folder of {results.label}")
    base = max(datasets, key=lambda dataset: int(dataset.TotalPixelMatrixColumns))
    size = (int(base.TotalPixelMatrixColumns), int(base.TotalPixelMatrixRows))
    if base.get("PatientID") != results.case or size != (results.width, results.height):
        raise SeriesMismatchError(f"{series}: the series is case {base.get('PatientID')}'s image of {size[0]} x {size[1]} px, "
                                  f"not {results.label}'s of {results.width} x {results.height} px")
    return base


def _mark_group(number: int, annotation: Annotation) -> hd.ann.AnnotationGroup:
    points = list(annotation.points)
    if annotation.kind == "polygon" and len(points) > 3 and points[-1] == points[0]:
        points.pop()  # a DICOM polygon is closed implicitly: its first point is not repeated
    text = _plain(annotation.text)
    return hd.ann.AnnotationGroup(
        number=number, uid=generate_uid(), label=(text or annotation.kind)[:LONG_STRING],
        annotated_property_category=codes.SCT.Tissue, annotated_property_type=codes.SCT.Tissue,
        graphic_type=GRAPHIC_TYPE[annotation.kind], graphic_data=[np.array(points, dtype=np.float64)], algorithm_type="MANUAL",
        description=_plain(f"{text} (drawn by {annotation.author.name} at {annotation.created_at})".lstrip())[:SHORT_TEXT],
    )  # fmt: skip


def _region_group(number: int, ai: AiResult) -> hd.ann.AnnotationGroup:
    return hd.ann.AnnotationGroup(
        number=number, uid=generate_uid(), label="AI regions",
        annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure, annotated_property_type=codes.SCT.MorphologicallyAbnormalStructure,
        graphic_type="POLYGON", graphic_data=[np.array(region_corners(region), dtype=np.float64) for region in ai.regions],
        algorithm_type="AUTOMATIC", algorithm_identification=_algorithm(ai),
        measurements=[hd.ann.Measurements(name=codes.DCM.Probability, values=np.array([region.score for region in ai.regions]),
                                          unit=codes.UCUM.NoUnits)],
        description=_plain(f"the model's hottest regions of {ai.detects}, each with its peak tile score")[:SHORT_TEXT],
    )  # fmt: skip


def _annotations(base: pydicom.Dataset, groups: list[hd.ann.AnnotationGroup]) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[base], annotation_coordinate_type="2D", annotation_groups=groups,
        series_instance_uid=generate_uid(), series_number=ANNOTATIONS_SERIES, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="slidestream", manufacturer_model_name="slidestream", software_versions=version("slidestream"),
        device_serial_number="slidestream", content_label="ANNOTATIONS", content_description="annotations and AI regions",
    )  # fmt: skip


def _heatmap(base: pydicom.Dataset, ai: AiResult, tiles: TileScores) -> hd.pm.ParametricMap:
    pixels = tiles.scores.astype(np.float32)
    measures = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = [float(value) * tiles.tile for value in measures.PixelSpacing]
    thickness = float(measures.SliceThickness) if "SliceThickness" in measures else None
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="score", lut_explanation=_plain(f"probability of {ai.detects}")[:LONG_STRING], unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0), slope=1.0, intercept=0.0,
    )  # fmt: skip
    return hd.pm.ParametricMap(
        source_images=[base], pixel_array=pixels, series_instance_uid=generate_uid(), series_number=HEATMAP_SERIES,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="slidestream", manufacturer_model_name="slidestream",
        software_versions=version("slidestream"), device_serial_number="slidestream", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping], content_label="HEATMAP",
        content_description=_plain(f"AI tile scores, model {ai.model}")[:LONG_STRING],
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=thickness),
        tile_pixel_array=True, tile_size=pixels.shape,
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
    )  # fmt: skip


def _algorithm(ai: AiResult) -> hd.AlgorithmIdentificationSequence:
    """The triage model as the algorithm: its name as triage.json records it is the version of slidestream's triage."""
    return hd.AlgorithmIdentificationSequence(name=ALGORITHM, family=codes.cid7162.ArtificialIntelligence, version=_plain(ai.model)[:LONG_STRING])


def _plain(text: str) -> str:
    """Text as DICOM's LO and ST take it: no backslash (LO's value separator) and no control characters."""
    return re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f\\]", " ", text)).strip()
