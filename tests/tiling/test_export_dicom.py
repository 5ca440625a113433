"""`slidestream export-dicom`: what a PACS and its viewers get, checked with independent readers.

openslide (libdicom) and wsidicom open every export; pass-through JPEG levels must give exactly the source's pixels
and carry the de-identified slide's own tile bytes; Debian's `dciodvfy` validates every file against the VL Whole
Slide Microscopy IOD; a slide with identifying data everywhere leaves none of it in any output byte.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from conftest import REPO, sample
from pydicom.encaps import generate_frames
from support.phi import IDENTIFYING, NAME, make_dicom, make_svs
from wsidicom import WsiDicom

from caseformat.layout import SlideRef, qualified_case, station_case_folder
from slides import open_slide
from tiling.jpeg import ADOBE_RGB, self_contained_jpeg
from transfer.identity import content_id

pytestmark = pytest.mark.slow  # DICOM series and dciodvfy

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def export(slide: Path, out: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """The real command line."""
    return subprocess.run([sys.executable, "-m", "slidestream", "export-dicom", str(slide), str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=os.environ.copy())


def exported(slide: Path, out: Path, *args: object) -> Path:
    result = export(slide, out, *args)
    assert result.returncode == 0, result.stderr
    return out


def instances(out: Path) -> list[pydicom.Dataset]:
    """Every file of the export, finest level first."""
    datasets = [pydicom.dcmread(path) for path in sorted(out.iterdir())]
    return sorted(datasets, key=lambda d: -d.TotalPixelMatrixColumns)


def frames(dataset: pydicom.Dataset) -> list[bytes]:
    return list(generate_frames(dataset.PixelData, number_of_frames=dataset.NumberOfFrames))


def as_frame(jpeg: bytes) -> bytes:
    """A JPEG as DICOM stores it: an encapsulated frame is padded to an even length."""
    return jpeg + b"\x00" * (len(jpeg) % 2)


def source_pixels(slide: Path) -> np.ndarray:
    with openslide.OpenSlide(slide) as osr:
        return np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))


def exported_pixels(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Level 0 as openslide (from one file of the series) and wsidicom (the folder) decode it."""
    with openslide.OpenSlide(next(out.iterdir())) as osr:
        assert osr.properties["openslide.vendor"] == "dicom"
        by_openslide = np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))
    with WsiDicom.open(out) as wsi:
        by_wsidicom = np.asarray(wsi.read_region((0, 0), 0, (wsi.size.width, wsi.size.height)).convert("RGB"))
    return by_openslide, by_wsidicom


def ycbcr_tiff(path: Path) -> Path:
    """A generic pyramidal TIFF with ordinary YCbCr 4:2:0 JPEG tiles (CMU-1's tissue), 0.5 um/px."""
    pixels = source_pixels(sample("CMU-1-Small-Region.svs"))[:768, :1024].copy()
    jpeg = dict(tile=(256, 256), compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", subifds=0, **jpeg)
        tif.write(pixels[::2, ::2].copy(), subfiletype=1, **jpeg)
    return path


@pytest.fixture(scope="module")
def cmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(sample("CMU-1-Small-Region.svs"), tmp_path_factory.mktemp("pacs") / "cmu", "--case", "CASE-CMU-1")


@pytest.fixture(scope="module")
def phi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The PHI-laden SVS and DICOM slides of test_phi, under identifying file names, and their exports."""
    scanner, pacs = tmp_path_factory.mktemp("scanner"), tmp_path_factory.mktemp("pacs")
    svs = make_svs(scanner / f"{NAME}.svs")
    dcm_folder = scanner / "dicom"
    dcm_folder.mkdir()
    dcm = make_dicom(dcm_folder / f"{NAME}.dcm")
    return {"svs": svs, "dcm": dcm, "svs_out": exported(svs, pacs / "svs"), "dcm_out": exported(dcm, pacs / "dcm")}


@pytest.fixture(scope="module")
def jp2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(sample("TCGA-CR-7395-jp2k.svs"), tmp_path_factory.mktemp("pacs") / "jp2k", "--mpp", "0.25")


@pytest.fixture(scope="module")
def ycbcr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    slide = ycbcr_tiff(tmp_path_factory.mktemp("scanner") / "ycbcr.tif")
    return slide, exported(slide, tmp_path_factory.mktemp("pacs") / "ycbcr")


# -- pass-through JPEG: the same pixels, the same bytes ----------------------------------------------------------
def test_aperio_export_reads_back_equal_in_openslide_and_wsidicom(cmu: Path) -> None:
    expected = source_pixels(sample("CMU-1-Small-Region.svs"))
    by_openslide, by_wsidicom = exported_pixels(cmu)
    np.testing.assert_array_equal(by_openslide, expected)
    np.testing.assert_array_equal(by_wsidicom, expected)


def test_aperio_frames_are_the_deidentified_tiles_marked_rgb(cmu: Path) -> None:
    level0 = instances(cmu)[0]
    assert level0.PhotometricInterpretation == "RGB"  # Aperio's JPEG is untransformed RGB; YBR would shift colours
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        across = math.ceil(slide.dimensions[0] / slide.tile_size)
        written = frames(level0)
        assert len(written) == across * math.ceil(slide.dimensions[1] / slide.tile_size)
        for index, frame in enumerate(written):  # TILED_FULL: row by row
            raw = slide.raw_tile(0, index // across, index % across)
            assert frame == as_frame(self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=True))
    assert ADOBE_RGB in written[0]


def test_ycbcr_jpeg_passes_through_as_ybr_with_equal_pixels(ycbcr: tuple[Path, Path]) -> None:
    slide, out = ycbcr
    datasets = instances(out)
    assert [d.PhotometricInterpretation for d in datasets] == ["YBR_FULL_422"] * len(datasets)
    with open_slide(slide) as opened:
        raw = opened.raw_tile(0, 1, 2)
        assert frames(datasets[0])[1 * 4 + 2] == as_frame(self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=False))
        top = opened.raw_tile(1, 0, 0)
        assert frames(datasets[1])[0] == as_frame(self_contained_jpeg(top.data, top.jpeg_tables, rgb=False))
    for pixels in exported_pixels(out):
        np.testing.assert_array_equal(pixels, source_pixels(slide))


# -- one series, a pyramid, correct geometry --------------------------------------------------------------------
def test_levels_are_instances_of_one_tiled_full_series_with_the_slides_spacing(cmu: Path) -> None:
    datasets = instances(cmu)
    assert [(d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows) for d in datasets] == [
        (2220, 2967), (1110, 1484), (555, 742), (278, 371), (139, 186)]  # fmt: skip
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PyramidUID"):
        assert len({d.get(attribute) for d in datasets}) == 1 and datasets[0].get(attribute), attribute
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    for d in datasets:
        assert d.SOPClassUID == WSI_SOP_CLASS and d.Modality == "SM"
        assert d.DimensionOrganizationType == "TILED_FULL" and d.ImageType[2] == "VOLUME"
        spacing = [float(v) for v in d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
        assert spacing == pytest.approx([0.000499 * 2220 / d.TotalPixelMatrixColumns] * 2, rel=2e-3)
        assert d.PhotometricInterpretation == "RGB"  # added levels are encoded as their base level says
        assert ADOBE_RGB in frames(d)[0]


# -- what the frames are, what the slide was scanned with -------------------------------------------------------
def ratio(dataset: pydicom.Dataset) -> float:
    """Uncompressed over compressed size of the frames, as DICOM defines LossyImageCompressionRatio."""
    pixels = dataset.NumberOfFrames * dataset.Rows * dataset.Columns * dataset.SamplesPerPixel
    return pixels / sum(len(frame) for frame in frames(dataset))


def assert_lossy_jpeg(dataset: pydicom.Dataset) -> None:
    assert dataset.LossyImageCompression == "01" and dataset.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(dataset.LossyImageCompressionRatio) == pytest.approx(ratio(dataset), rel=0.01)


@pytest.mark.parametrize("export_name", ["cmu", "converted"])
def test_copied_tiles_say_lossy_jpeg_and_computed_levels_say_derived(export_name: str, request: pytest.FixtureRequest) -> None:
    value = request.getfixturevalue(export_name)
    level0, *added = instances(value if export_name == "cmu" else value["out"])  # CMU-1-Small-Region has one level
    assert list(level0.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]  # the scanner's own JPEG tiles
    assert_lossy_jpeg(level0)
    assert ratio(level0) > 5  # the scanner's JPEG, not a nominal value
    assert added
    for dataset in added:  # downsampled and re-encoded by the export
        assert list(dataset.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        assert_lossy_jpeg(dataset)


def test_reencoded_levels_say_derived_lossy_jpeg(jp2k: Path) -> None:
    level0, *others = instances(jp2k)
    assert list(level0.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]  # JPEG 2000 re-encoded as JPEG
    for dataset in [level0, *others]:
        assert_lossy_jpeg(dataset)
    assert {tuple(d.ImageType) for d in others} == {("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")}


def test_the_objective_power_is_kept(cmu: Path, jp2k: Path) -> None:
    for dataset in instances(cmu):
        assert float(dataset.OpticalPathSequence[0].ObjectiveLensPower) == 20  # CMU-1's AppMag
    for dataset in instances(jp2k):
        assert "ObjectiveLensPower" not in dataset.OpticalPathSequence[0]  # TCGA-CR-7395's file records none


def test_identity_is_the_case_id_only(cmu: Path) -> None:
    for d in instances(cmu):
        assert d.PatientID == "CASE-CMU-1" and d.ContainerIdentifier == "CASE-CMU-1"
        assert d.PatientName == "" and d.PatientBirthDate == "" and d.PatientSex == ""
        assert d.AccessionNumber == "" and d.StudyDate == "" and d.ReferringPhysicianName == ""
        assert d.PatientIdentityRemoved == "YES" and "slidestream" in d.DeidentificationMethod
        assert "InstitutionName" not in d and "OperatorsName" not in d and "StudyDescription" not in d


# -- not JPEG, no mpp: re-encoded, or refused ----------------------------------------------------------------
def test_slide_without_mpp_is_refused_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "jp2k"
    result = export(sample("TCGA-CR-7395-jp2k.svs"), out)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no pixel size (mpp)" in result.stderr and "--mpp" in result.stderr
    assert not out.exists() and not out.with_name("jp2k.partial").exists()


def test_jpeg2000_slide_is_reencoded_close_to_the_source(jp2k: Path) -> None:
    datasets = instances(jp2k)
    assert (datasets[0].TotalPixelMatrixColumns, datasets[1].TotalPixelMatrixColumns) == (4443, 2221)
    assert {d.PhotometricInterpretation for d in datasets} == {"YBR_FULL_422"}
    assert float(datasets[0].SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]) == pytest.approx(0.00025)
    expected = source_pixels(sample("TCGA-CR-7395-jp2k.svs")).astype(int)
    for pixels in exported_pixels(jp2k):
        assert np.abs(pixels - expected).mean() < 2.5  # JPEG quality 90 on top of the scanner's JPEG 2000


def test_existing_output_is_kept_without_overwrite(cmu: Path) -> None:
    before = sorted(cmu.iterdir())
    result = export(sample("CMU-1-Small-Region.svs"), cmu)
    assert result.returncode == 2 and "already exists" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(cmu.iterdir()) == before


# -- patient data never leaves ----------------------------------------------------------------------------------
def test_no_identifying_byte_in_any_file(phi: dict[str, Path]) -> None:
    assert all(secret in phi["svs"].read_bytes() for secret in IDENTIFYING)  # the sweep has something to find
    for out in (phi["svs_out"], phi["dcm_out"]):
        files = sorted(out.iterdir())
        assert files and all(NAME not in path.name for path in files)
        for path in files:
            data = path.read_bytes()
            assert [secret for secret in (*IDENTIFYING, NAME.encode()) if secret in data] == [], path
            dataset = pydicom.dcmread(path)
            assert dataset.PatientName == "" and dataset.PatientID and dataset.PatientIdentityRemoved == "YES"


def test_phi_svs_passes_both_jpeg_levels_through(phi: dict[str, Path]) -> None:
    datasets = instances(phi["svs_out"])
    with open_slide(phi["svs"]) as slide:
        sources = [(level, slide.levels[level].width) for level in range(len(slide.levels)) if slide.raw_codec(level) == "jpeg"]
        assert len(sources) == 2
        for level, width in sources:
            (dataset,) = [d for d in datasets if d.TotalPixelMatrixColumns == width]
            raw = slide.raw_tile(level, 0, 1)
            assert frames(dataset)[1] == as_frame(self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=True))


# -- an independent validator ----------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("export_name", ["cmu", "jp2k", "ycbcr", "phi"])
def test_dciodvfy_finds_no_error_in_any_file(export_name: str, request: pytest.FixtureRequest) -> None:
    value = request.getfixturevalue(export_name)
    outs = {"phi": lambda: [value["svs_out"], value["dcm_out"]], "ycbcr": lambda: [value[1]]}.get(export_name, lambda: [value])()
    for out in outs:
        for path in sorted(out.iterdir()):
            report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
            lines = (report.stdout + report.stderr).splitlines()
            assert "VLWholeSlideMicroscopyImage" in lines, lines  # it checked the file against the WSI IOD
            assert [line for line in lines if line.startswith("Error")] == [], path


# -- a case already converted or sent: its chunks are the frames ---------------------------------------------------
STATION = "theatre-1"
CASE = qualified_case(STATION, "CASE-CMU-7")  # as `send --case CASE-CMU-7 --station theatre-1` names it


def case_url(bucket: str, case: str) -> str:
    """The case on the store as `export-dicom` is given it: its station's folder of it."""
    return f"s3://{bucket}/cases/{station_case_folder(case).rstrip('/')}"


def convert_cmu(out: Path) -> Path:
    run = subprocess.run([sys.executable, "-m", "slidestream", "convert", str(sample("CMU-1-Small-Region.svs")), str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """convert's output folder, named as a hospital names its slide files (accession number and patient), and its
    export (no --case)."""
    image = convert_cmu(tmp_path_factory.mktemp("store") / f"{NAME}.ome.zarr")
    return {"image": image, "out": exported(image, tmp_path_factory.mktemp("pacs") / "converted")}


@pytest.fixture(scope="module")
def sent(s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """CMU-1 sent to the real S3 server, and the export of s3://BUCKET/cases/stations/STATION/CASE."""
    bucket = s3_server.new_bucket()
    run = subprocess.run(
        [sys.executable, "-m", "slidestream", "send", str(sample("CMU-1-Small-Region.svs")), f"s3://{bucket}/cases",
         "--case", "CASE-CMU-7", "--station", STATION, "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path_factory.mktemp("state")), "--no-edge"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = exported(case_url(bucket, CASE), tmp_path_factory.mktemp("pacs") / "sent", "--endpoint-url", s3_server.endpoint_url)
    return {"server": s3_server, "bucket": bucket, "out": out}


def level0_shards(case: str, request: pytest.FixtureRequest) -> list[bytes]:
    """The level-0 shard objects of the case as the store holds them (local files, or objects on the server)."""
    value = request.getfixturevalue(case)
    if case == "converted":
        return [path.read_bytes() for path in sorted((value["image"] / "0" / "c").rglob("*")) if path.is_file()]
    client = value["server"].client()
    listing = client.list_objects_v2(Bucket=value["bucket"], Prefix=f"cases/{SlideRef(CASE).root}/image.zarr/0/c/")["Contents"]
    return [client.get_object(Bucket=value["bucket"], Key=item["Key"])["Body"].read() for item in listing]


@pytest.mark.parametrize("case", ["converted", "sent"])
def test_case_export_reads_back_equal_to_the_source(case: str, request: pytest.FixtureRequest) -> None:
    out = request.getfixturevalue(case)["out"]
    expected = source_pixels(sample("CMU-1-Small-Region.svs"))
    by_openslide, by_wsidicom = exported_pixels(out)
    np.testing.assert_array_equal(by_openslide, expected)
    np.testing.assert_array_equal(by_wsidicom, expected)


@pytest.mark.parametrize("case", ["converted", "sent"])
def test_case_frames_are_the_stored_chunks(case: str, request: pytest.FixtureRequest) -> None:
    out = request.getfixturevalue(case)["out"]
    level0 = instances(out)[0]
    assert level0.PhotometricInterpretation == "RGB" and level0.Columns == 240
    shards = level0_shards(case, request)
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        across = math.ceil(slide.dimensions[0] / slide.tile_size)
        written = frames(level0)
        assert len(written) == across * math.ceil(slide.dimensions[1] / slide.tile_size)
        for index, frame in enumerate(written):
            raw = slide.raw_tile(0, index // across, index % across)
            chunk = self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=True)  # what convert and send stored
            assert frame == as_frame(chunk)
            assert sum(chunk in shard for shard in shards) == 1, f"frame {index} is a chunk of a level-0 shard"


@pytest.mark.parametrize("case", ["converted", "sent"])
def test_the_case_id_or_a_pseudonym_is_the_only_identifier(case: str, request: pytest.FixtureRequest) -> None:
    """A sent case: its case ID. convert's output: a pseudonym of its content, never its folder's (the file's) name."""
    value = request.getfixturevalue(case)
    identifier = CASE if case == "sent" else content_id(value["image"])
    datasets = instances(value["out"])
    assert [(d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows) for d in datasets] == [
        (2220, 2967), (1110, 1484), (555, 742), (278, 371), (139, 186)]  # fmt: skip
    for d in datasets:
        assert d.PatientID == identifier and d.ContainerIdentifier == identifier and d.PatientName == ""
        assert d.PatientIdentityRemoved == "YES"
        spacing = [float(v) for v in d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
        assert spacing == pytest.approx([0.000499 * 2220 / d.TotalPixelMatrixColumns] * 2, rel=2e-3)  # the NGFF scale


def test_a_converted_folders_name_is_in_no_file(converted: dict[str, Path], tmp_path: Path) -> None:
    assert converted["image"].name.startswith(NAME)
    files = sorted(converted["out"].iterdir())
    for path in files:
        data = path.read_bytes()
        assert [secret for secret in (NAME.encode(), b"DOE_JANE", b"ACC-2024-0001") if secret in data] == [], path
        assert re.fullmatch("[0-9a-f]{16}", pydicom.dcmread(path, stop_before_pixels=True).PatientID)
    named = exported(converted["image"], tmp_path / "named", "--case", "CASE-42")
    assert {d.PatientID for d in instances(named)} == {"CASE-42"}
    shown = subprocess.run([sys.executable, "-m", "slidestream", "export-dicom", "--help"], capture_output=True, text=True,
                           timeout=60, cwd=REPO, env=os.environ | {"COLUMNS": "250"})  # fmt: skip
    assert "never its file or folder name" in " ".join(shown.stdout.replace("│", " ").split())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("case", ["converted", "sent"])
def test_dciodvfy_finds_no_error_in_a_case_export(case: str, request: pytest.FixtureRequest) -> None:
    for path in sorted(request.getfixturevalue(case)["out"].iterdir()):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        lines = (report.stdout + report.stderr).splitlines()
        assert "VLWholeSlideMicroscopyImage" in lines, lines
        assert [line for line in lines if line.startswith("Error")] == [], path


def test_an_absent_shard_is_background_frames(converted: dict[str, Path], tmp_path: Path) -> None:
    """Omitted background: frames encoded from the fill value (white glass), every other frame still the chunk."""
    image = tmp_path / f"{CASE}.ome.zarr"
    shutil.copytree(converted["image"], image)
    shard = json.loads((image / "0" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][-1] // 240
    (image / "0" / "c" / "0" / "1" / "1").unlink()
    out = exported(image, tmp_path / "pacs")
    with WsiDicom.open(out) as wsi:
        pixels = np.asarray(wsi.read_region((0, 0), 0, (wsi.size.width, wsi.size.height)).convert("RGB"))
    expected = source_pixels(sample("CMU-1-Small-Region.svs"))
    corner = shard * 240
    assert pixels[corner:, corner:].min() >= 250
    np.testing.assert_array_equal(pixels[:corner], expected[:corner])
    np.testing.assert_array_equal(frames(instances(out)[0])[0], frames(instances(converted["out"])[0])[0])


@pytest.mark.parametrize("state", ["sending", "failed"])
def test_a_case_not_complete_is_refused_in_one_line(converted: dict[str, Path], tmp_path: Path, state: str) -> None:
    folder = tmp_path / CASE
    shutil.copytree(converted["image"], folder / "image.zarr")
    manifest = {"format": "slidestream-manifest/2", "case": CASE, "state": state, "complete": False}
    if state == "failed":
        manifest["failed"] = "corrupt slide"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for target in (folder, folder / "image.zarr"):
        result = export(target, tmp_path / "pacs")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"not complete (state {state}" in result.stderr and str(target) in result.stderr
        assert not (tmp_path / "pacs").exists() and not (tmp_path / "pacs.partial").exists()


def test_an_s3_case_still_arriving_is_refused(sent: dict[str, object], tmp_path: Path) -> None:
    server, bucket = sent["server"], sent["bucket"]
    arriving = qualified_case(STATION, "ARRIVING")
    manifest = {"format": "slidestream-manifest/2", "case": arriving, "state": "sending", "complete": False}
    server.client().put_object(Bucket=bucket, Key=f"cases/{SlideRef(arriving).root}/manifest.json", Body=json.dumps(manifest).encode())
    result = export(case_url(bucket, arriving), tmp_path / "pacs", "--endpoint-url", server.endpoint_url)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not complete (state sending)" in result.stderr


@pytest.mark.parametrize(("target", "endpoint", "problem"), [
    ("s3://Bad_Bucket/cases/X", "http://127.0.0.1:9", "not a valid S3 bucket name"),
    ("s3://bucket/cases/X", "ftp://127.0.0.1", "is not an endpoint URL"),
])  # fmt: skip
def test_a_malformed_store_url_is_one_line(tmp_path: Path, target: str, endpoint: str, problem: str) -> None:
    result = export(target, tmp_path / "pacs", "--endpoint-url", endpoint)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and problem in result.stderr, result.stderr
