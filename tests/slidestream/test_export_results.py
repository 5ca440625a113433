"""`slidestream export-results`: a case's annotations and AI result leave in the field's formats, checked by their
readers. CMU-1 is sent to the real S3 server, the centre signs annotations on it, and inference's own writer publishes
a routed hub triage with its heatmap; then

- GeoJSON: QuPath's conventions (objectType, classification, measurements), every geometry valid for shapely, the
  coordinates the annotations' points and the triage's regions, one tile feature per scored tile with its score;
- DICOM: the bulk annotations and the parametric map read back by highdicom (and the annotations by wsidicom), in the
  WSI series' study and frame of reference, no identity beyond the case ID; dciodvfy; Debian's Orthanc takes them by
  STOW-RS (`pacs-send`) and serves them back;
- a refused triage exports no score, a forged annotation is left out and named.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
import shapely.geometry
from conftest import REPO, S3Server, sample
from dicomweb_client import DICOMwebClient
from support import PACS_PASSWORD, PACS_USER, Orthanc, slide_version
from wsidicom import WsiDicom

from caseformat.bounded import utc_now
from caseformat.documents import Annotation, Author
from caseformat.layout import HUB, TRIAGE, SlideRef, annotation_key, qualified_case, stamp, station_case_folder
from caseformat.results import Routed, Triage
from caseformat.signing import SigningKey

pytestmark = pytest.mark.slow  # a send, a WSI export, highdicom, an Orthanc started and stopped

STATION = "h1"
CASE = qualified_case(STATION, "results")
REF = SlideRef(CASE)
WIDTH, HEIGHT = 2220, 2967  # CMU-1-Small-Region's level 0
MPP = 0.499
TILE = 224 * 0.5 / MPP  # level-0 pixels of a 224 px tile at the model's 0.5 um/px
DETECTS = "colorectal adenocarcinoma epithelium"
ANN_SOP_CLASS, PM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1", "1.2.840.10008.5.1.4.1.1.30"


@dataclass(frozen=True)
class Results:
    """The case on the store and what the tests compare the exports with."""

    server: S3Server
    bucket: str
    key_dir: Path
    annotations: list[Annotation]  # signed, on s1/v1
    triage: Triage
    scores: np.ndarray  # the heatmap's exact tile scores, NaN = not scored

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/cases"

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=f"cases/{key}", Body=data)  # type: ignore[no-untyped-call]

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.bucket, Key=f"cases/{key}")["Body"].read()  # type: ignore[no-untyped-call, no-any-return]


def slidestream(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidestream", *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env or os.environ.copy())  # fmt: skip


def export_results(results: Results, out: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """The real command line."""
    return slidestream("export-results", results.store, CASE, out, "--key-dir", results.key_dir,
                       "--endpoint-url", results.server.endpoint_url, *args)  # fmt: skip


def annotation(key: SigningKey, kind: str, points: list[tuple[float, float]], text: str, version: str = "v1") -> tuple[Annotation, bytes]:
    time.sleep(0.002)  # one per millisecond: their IDs (the time first) list in the order they were drawn
    created_at = utc_now()
    made = Annotation(f"{stamp(created_at)}-{secrets.token_hex(4)}", CASE, "s1", version, kind, tuple(points),
                      Author("u0000abcd", "Dr Ada Lovelace", "pathologist"), created_at, text)  # fmt: skip
    return made, made.to_json(key)


@pytest.fixture(scope="module")
def results(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """CMU-1 sent with its whole pyramid; three signed annotations on s1/v1, one on a later scan, one forged; the
    hub's triage and heatmap as inference writes them, routed, with a band of hot tiles."""
    from inference.heatmap import Heatmap, write_results
    from inference.model import ModelSpec
    from inference.tiles import TileGrid

    bucket = s3_server.new_bucket()
    run = slidestream("send", sample("CMU-1-Small-Region.svs"), f"s3://{bucket}/cases", "--case", "results", "--station", STATION,
                      "--full-pyramid", "--no-edge", "--endpoint-url", s3_server.endpoint_url,
                      "--state-dir", tmp_path_factory.mktemp("state"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    key_dir = tmp_path_factory.mktemp("keys")
    key = SigningKey.load_or_create(key_dir)
    drawn = [annotation(key, "point", [(812.5, 1304.0)], "mitosis?"),
             annotation(key, "line", [(100.0, 200.0), (640.25, 880.0)], "margin 2.1 mm"),
             annotation(key, "polygon", [(300.0, 300.0), (900.0, 320.0), (950.0, 1100.0), (280.0, 1000.0)], "tumour\\front")]
    later = annotation(key, "point", [(5.0, 5.0)], "on the rescan", version="v2")
    forged = annotation(SigningKey.generate(), "point", [(9.0, 9.0)], "a station's own mark")
    found = Results(s3_server, bucket, key_dir, [made for made, _ in drawn], None, np.empty(0))  # type: ignore[arg-type]
    for made, data in [*drawn, later, forged]:
        found.put(annotation_key(CASE, made.id), data)

    grid = TileGrid(TILE, WIDTH, HEIGHT)
    tissue = np.zeros(grid.shape, bool)
    tissue[2:12, 1:9] = True
    heatmap = Heatmap(grid, tissue, ModelSpec("capricorn-test", 224, 0.5, ("normal", "tumour"), (1,)), MPP, False, REF.label,
                      stage=HUB, complete=True)  # fmt: skip
    rows, cols = np.nonzero(tissue)
    heatmap.score[rows, cols] = np.where(rows < 5, 0.9 - cols * 0.01, 0.05 + cols * 0.02).astype(np.float32)
    heatmap.focus[rows, cols], heatmap.pen[rows, cols], heatmap.measured[rows, cols] = 100.0, 0.0, True
    location = slide_version(found.store, s3_server.endpoint_url, CASE)
    write_results(heatmap, location, 0.5, MPP)
    written = Triage.read(found.get(REF.centre_key(TRIAGE)))
    triage = replace(written, summary={**written.summary, "detects": DETECTS}, routed=Routed("sigmoid colon", "H&E", MPP))
    found.put(REF.centre_key(TRIAGE), triage.to_json())
    assert triage.valid_score is not None and len(triage.summary["top_regions"]) == 1
    return replace(found, triage=triage, scores=heatmap.score.copy())


@pytest.fixture(scope="module")
def series(results: Results, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """export-dicom's series of the case, which the DICOM results refer to."""
    out = tmp_path_factory.mktemp("pacs") / "wsi"
    url = f"{results.store}/{station_case_folder(CASE).rstrip('/')}"
    run = slidestream("export-dicom", url, out, "--endpoint-url", results.server.endpoint_url)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def geojson(results: Results, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("qupath") / "out"
    run = export_results(results, out)
    assert run.returncode == 0, run.stderr
    (file,) = out.iterdir()
    assert file.name == f"{CASE}_s1_v1.geojson"
    return json.loads(file.read_text()), run.stdout


@pytest.fixture(scope="module")
def dicom(results: Results, series: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pacs") / "results"
    run = export_results(results, out, "--format", "dicom", "--series", series)
    assert run.returncode == 0, run.stderr
    return {path.name: path for path in out.iterdir()}


def of_type(collection: dict[str, Any], object_type: str) -> list[dict[str, Any]]:
    return [feature for feature in collection["features"] if feature["properties"]["objectType"] == object_type]


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


# -- GeoJSON for QuPath ------------------------------------------------------------------------------------------
def test_geojson_is_a_feature_collection_of_valid_qupath_objects(geojson: tuple[dict[str, Any], str]) -> None:
    collection, _ = geojson
    assert collection["type"] == "FeatureCollection"
    ids = [feature["id"] for feature in collection["features"]]
    assert len(set(ids)) == len(ids)
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        properties = feature["properties"]
        assert properties["objectType"] in ("annotation", "detection", "tile")
        classification = properties["classification"]
        assert isinstance(classification["name"], str) and len(classification["color"]) == 3
        assert all(isinstance(value, int) and 0 <= value <= 255 for value in classification["color"])
        assert all(isinstance(value, float) for value in properties.get("measurements", {}).values())
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid and not geometry.is_empty
        x0, y0, x1, y1 = geometry.bounds
        assert 0 <= x0 <= x1 <= WIDTH and 0 <= y0 <= y1 <= HEIGHT  # level-0 pixels of the slide


def test_geojson_annotations_are_the_signed_ones_of_this_slide_version(results: Results, geojson: tuple[dict[str, Any], str]) -> None:
    collection, said = geojson
    features = of_type(collection, "annotation")
    assert [feature["properties"]["name"] for feature in features] == [made.text for made in results.annotations]
    point, line, polygon = (feature["geometry"] for feature in features)
    drawn = [[list(xy) for xy in made.points] for made in results.annotations]
    assert point == {"type": "Point", "coordinates": drawn[0][0]}
    assert line == {"type": "LineString", "coordinates": drawn[1]}
    assert polygon == {"type": "Polygon", "coordinates": [[*drawn[2], drawn[2][0]]]}
    for feature, made in zip(features, results.annotations):
        assert feature["properties"]["isLocked"] is True
        assert feature["properties"]["metadata"] == {"author": "Dr Ada Lovelace", "created_at": made.created_at, "slidestream_id": made.id}
    assert said.count("refused annotation:") == 1 and "signed by a key this reader does not trust" in said  # the forged one


def test_geojson_regions_and_tiles_are_the_triages(results: Results, geojson: tuple[dict[str, Any], str]) -> None:
    collection, said = geojson
    (region,) = results.triage.summary["top_regions"]
    (detection,) = of_type(collection, "detection")
    x, y, w, h = (region[name] for name in ("x", "y", "width", "height"))
    assert detection["geometry"] == {"type": "Polygon", "coordinates": [box(x, y, x + w, y + h)]}
    assert detection["properties"]["measurements"] == {"Peak score": pytest.approx(region["score"])}
    assert detection["properties"]["metadata"]["detects"] == DETECTS
    tiles = of_type(collection, "tile")
    assert len(tiles) == np.isfinite(results.scores).sum() == 80
    for tile in tiles:
        x0, y0, x1, y1 = shapely.geometry.shape(tile["geometry"]).bounds
        row, col = round(y0 / TILE), round(x0 / TILE)
        assert (x0, y0) == pytest.approx((col * TILE, row * TILE)) and (x1, y1) == pytest.approx((min((col + 1) * TILE, WIDTH), min((row + 1) * TILE, HEIGHT)))
        assert tile["properties"]["measurements"]["Score"] == pytest.approx(float(results.scores[row, col]))
    assert "3 annotations" in said and f"AI score {results.triage.valid_score:.2f}, 1 regions, 80 tiles" in said


@pytest.fixture
def refused(results: Results) -> Iterator[None]:
    """The centre's triage refused the slide (as the hub writes a refusal: no score), for one test."""
    published = results.get(REF.centre_key(TRIAGE))
    results.put(REF.centre_key(TRIAGE), replace(results.triage, score=None, refused="no validated AI for skin").to_json())
    yield
    results.put(REF.centre_key(TRIAGE), published)


def test_a_refused_triage_exports_no_score(results: Results, refused: None, series: Path, tmp_path: Path) -> None:
    run = export_results(results, tmp_path / "qupath")
    assert run.returncode == 0, run.stderr
    (file,) = (tmp_path / "qupath").iterdir()
    collection = json.loads(file.read_text())
    assert {feature["properties"]["objectType"] for feature in collection["features"]} == {"annotation"}
    assert "no AI result: no validated AI for skin" in run.stdout
    dicom = export_results(results, tmp_path / "pacs", "--format", "dicom", "--series", series)
    assert dicom.returncode == 0, dicom.stderr
    assert sorted(path.name for path in (tmp_path / "pacs").iterdir()) == ["annotations.dcm"]  # no heatmap
    groups = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(pydicom.dcmread(tmp_path / "pacs" / "annotations.dcm")).get_annotation_groups()
    assert [group.algorithm_type.value for group in groups] == ["MANUAL"] * 3


@pytest.mark.parametrize(("slide", "problem"), [
    ("s2", f"case {CASE} has no slide s2 on the store"),
    ("s1/v9", f"{CASE}/slides/s1/v9: no image yet"),
])  # fmt: skip
def test_a_slide_version_not_on_the_store_is_one_line(results: Results, tmp_path: Path, slide: str, problem: str) -> None:
    run = export_results(results, tmp_path / "out", "--slide", slide)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and problem in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


# -- DICOM: bulk annotations and a parametric map of the WSI series ------------------------------------------------
def level0(series: Path) -> pydicom.Dataset:
    return max((pydicom.dcmread(path, stop_before_pixels=True) for path in series.iterdir()), key=lambda d: d.TotalPixelMatrixColumns)


def test_the_objects_belong_to_the_wsi_series_study_and_carry_no_other_identity(dicom: dict[str, Path], series: Path) -> None:
    assert sorted(dicom) == ["annotations.dcm", "heatmap.dcm"]
    image = level0(series)
    for path in dicom.values():
        dataset = pydicom.dcmread(path)
        assert dataset.StudyInstanceUID == image.StudyInstanceUID
        assert dataset.SeriesInstanceUID != image.SeriesInstanceUID
        (referenced,) = dataset.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == image.SeriesInstanceUID
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
        assert dataset.PatientID == CASE and dataset.PatientName == "" and dataset.PatientIdentityRemoved == "YES"
        assert dataset.get("PatientBirthDate", "") == "" and dataset.get("AccessionNumber", "") == ""
        assert (b"Lovelace" in path.read_bytes()) == (path.name == "annotations.dcm")  # the author: in their marks only
    assert pydicom.dcmread(dicom["annotations.dcm"]).SOPClassUID == ANN_SOP_CLASS
    heatmap = pydicom.dcmread(dicom["heatmap.dcm"])
    assert heatmap.SOPClassUID == PM_SOP_CLASS and heatmap.FrameOfReferenceUID == image.FrameOfReferenceUID


def test_highdicom_reads_back_the_annotations_and_regions(results: Results, dicom: dict[str, Path]) -> None:
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(pydicom.dcmread(dicom["annotations.dcm"]))
    assert ann.AnnotationCoordinateType == "2D" and ann.PixelOriginInterpretation == "VOLUME"
    *marks, regions = ann.get_annotation_groups()
    assert [group.graphic_type.value for group in marks] == ["POINT", "POLYLINE", "POLYGON"]
    assert [group.label for group in marks] == ["mitosis?", "margin 2.1 mm", "tumour front"]  # LO has no backslash
    for group, made in zip(marks, results.annotations):
        assert group.algorithm_type.value == "MANUAL"
        (points,) = group.get_graphic_data("2D")
        np.testing.assert_array_equal(points, np.array(made.points))
    assert regions.algorithm_type.value == "AUTOMATIC"
    algorithm = regions.algorithm_identification
    assert algorithm is not None and algorithm[0].AlgorithmVersion == "capricorn-test"
    (region,) = results.triage.summary["top_regions"]
    (corners,) = regions.get_graphic_data("2D")
    x, y, w, h = (region[name] for name in ("x", "y", "width", "height"))
    np.testing.assert_array_equal(corners, [[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    names, values, units = regions.get_measurements()
    assert [name.meaning for name in names] == ["Probability"] and values[0, 0] == pytest.approx(region["score"])


def test_highdicom_reads_back_the_tile_scores_from_the_parametric_map(results: Results, dicom: dict[str, Path], series: Path) -> None:
    dataset = pydicom.dcmread(dicom["heatmap.dcm"])
    pm = hd.pm.ParametricMap.from_dataset(dataset)
    scores = pm.get_total_pixel_matrix()  # the real world value mapping applied: probabilities, NaN = not scored
    assert scores.shape == results.scores.shape == (14, 10)
    np.testing.assert_array_equal(scores, results.scores)
    image_spacing = level0(series).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    spacing = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(value) for value in spacing] == pytest.approx([float(value) * TILE for value in image_spacing])
    origin, image_origin = dataset.TotalPixelMatrixOriginSequence[0], level0(series).TotalPixelMatrixOriginSequence[0]
    assert (origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem) == (
        image_origin.XOffsetInSlideCoordinateSystem, image_origin.YOffsetInSlideCoordinateSystem)  # the same top-left corner


def test_wsidicom_opens_the_annotations_with_the_image(results: Results, dicom: dict[str, Path], series: Path, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    shutil.copytree(series, folder)
    shutil.copy(dicom["annotations.dcm"], folder)
    with WsiDicom.open(folder) as wsi:
        (instance,) = wsi.annotations
        groups = list(instance)
    assert [group.label for group in groups] == ["mitosis?", "margin 2.1 mm", "tumour front", "AI regions"]
    assert [len(group) for group in groups] == [1, 1, 1, 1]
    assert [tuple(point) for point in groups[0].annotations[0].geometry.to_coords()] == [results.annotations[0].points[0]]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)")
def test_dciodvfy_finds_no_error(dicom: dict[str, Path]) -> None:
    for name, iod in (("annotations.dcm", "MicroscopyBulkSimpleAnnotations"), ("heatmap.dcm", "ParametricMap")):
        report = subprocess.run(["dciodvfy", str(dicom[name])], capture_output=True, text=True, timeout=120)
        lines = (report.stdout + report.stderr).splitlines()
        assert iod in lines, lines
        # dicom3tools 2022's rule for Common Z Coordinate Value fires on its absence from every 2D group (it is
        # "only valid for 3D", and absent): not an error of the file
        errors = [line for line in lines if line.startswith("Error") and "<CommonZCoordinateValue> = <>" not in line]
        assert errors == [], name


def test_the_dicom_export_is_refused_for_another_images_series(results: Results, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert slidestream("export-dicom", sample("CMU-1-Small-Region.svs"), other, "--case", "h1.other").returncode == 0
    run = export_results(results, tmp_path / "out", "--format", "dicom", "--series", other)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "is case h1.other's image" in run.stderr and f"not {CASE}/s1/v1's" in run.stderr
    missing = export_results(results, tmp_path / "out", "--format", "dicom")
    assert missing.returncode == 2 and "--series" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_orthanc_takes_the_image_and_its_results_into_one_study_and_serves_them_back(
    orthanc: Orthanc, results: Results, dicom: dict[str, Path], series: Path, tmp_path: Path,
) -> None:
    environment = {**os.environ, "SLIDESTREAM_PACS_USER": PACS_USER, "SLIDESTREAM_PACS_PASSWORD": PACS_PASSWORD}
    for folder in (series, next(iter(dicom.values())).parent):
        run = slidestream("pacs-send", folder, "--stow", orthanc.dicomweb, "--state-dir", tmp_path, "--json", env=environment)
        assert run.returncode == 0, run.stderr
    sent = json.loads(run.stdout)
    assert (sent["instances"], sent["sent"], len(sent["series"])) == (2, 2, 2)
    session = requests.Session()
    session.auth = (PACS_USER, PACS_PASSWORD)
    client = DICOMwebClient(orthanc.dicomweb, session=session)
    study = level0(series).StudyInstanceUID
    assert len(client.search_for_series(study)) == 3  # the image, its annotations, its heatmap
    for path in dicom.values():
        local = pydicom.dcmread(path)
        served = client.retrieve_instance(study, local.SeriesInstanceUID, local.SOPInstanceUID)
        assert served.SOPClassUID == local.SOPClassUID
        if served.SOPClassUID == ANN_SOP_CLASS:
            groups = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(served).get_annotation_groups()
            assert [group.label for group in groups] == ["mitosis?", "margin 2.1 mm", "tumour front", "AI regions"]
        else:
            np.testing.assert_array_equal(hd.pm.ParametricMap.from_dataset(served).get_total_pixel_matrix(),
                                          hd.pm.ParametricMap.from_dataset(local).get_total_pixel_matrix())
