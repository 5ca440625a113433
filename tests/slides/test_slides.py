"""slides/: every sample opens, pixels equal openslide's, raw tiles are the stored bytes, PHI stays home."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from conftest import ALL_SAMPLES, OPENSLIDE_SAMPLES, sample

from slides import CorruptSlideError, SlidestreamError, UnsupportedSlideError, fully_written, open_slide
from slides.slide import MAX_CHUNK_BYTES


@pytest.mark.parametrize("name", OPENSLIDE_SAMPLES)
def test_geometry_and_mpp_equal_openslide(name: str) -> None:
    reference = openslide.OpenSlide(sample(name))
    with open_slide(sample(name)) as slide:
        assert [(level.width, level.height) for level in slide.levels] == list(reference.level_dimensions)
        assert [level.downsample for level in slide.levels] == pytest.approx(reference.level_downsamples)
        mpp_x = reference.properties.get(openslide.PROPERTY_NAME_MPP_X)
        assert slide.mpp == ((float(mpp_x), float(reference.properties[openslide.PROPERTY_NAME_MPP_Y])) if mpp_x else None)
        assert slide.vendor == reference.properties[openslide.PROPERTY_NAME_VENDOR]


@pytest.mark.parametrize("name", OPENSLIDE_SAMPLES)
def test_region_pixels_equal_openslide(name: str) -> None:
    reference = openslide.OpenSlide(sample(name))
    width, height = reference.dimensions
    location, size = (width // 3, height // 3), (min(300, width // 2), min(200, height // 2))
    expected = np.asarray(reference.read_region(location, 0, size))
    assert (expected[..., 3] == 255).all(), "region chosen inside the scanned area"
    with open_slide(sample(name)) as slide:
        np.testing.assert_array_equal(slide.read_region(location, 0, size), expected[..., :3])
        last = len(slide.levels) - 1
        lowest = np.asarray(reference.read_region((0, 0), last, reference.level_dimensions[last]))
        got = slide.read_region((0, 0), last, reference.level_dimensions[last])
        opaque = lowest[..., 3] == 255
        np.testing.assert_array_equal(got[opaque], lowest[..., :3][opaque])


def test_plain_strip_tiff_opens_through_tifffile() -> None:
    expected = tifffile.imread(sample("kidney-ihc-strip.tif"))
    with open_slide(sample("kidney-ihc-strip.tif")) as slide:
        assert slide.vendor == "tiff"
        assert slide.dimensions == (expected.shape[1], expected.shape[0])
        assert slide.tile_size is None and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((100, 50), 0, (400, 300)), expected[50:350, 100:500])


def test_raw_tiles_of_svs_are_the_stored_jpeg_bytes() -> None:
    path = sample("CMU-1-Small-Region.svs")
    expected = tifffile.imread(path)  # tifffile's own decode of level 0
    with open_slide(path) as slide:
        assert slide.has_raw_tiles(0)
        tile_size = slide.tile_size
        rows, cols = -(-slide.dimensions[1] // tile_size), -(-slide.dimensions[0] // tile_size)
        for row in range(rows):
            for col in range(cols):
                raw = slide.raw_tile(0, row, col)
                assert raw.codec == "jpeg" and raw.photometric == "rgb" and raw.jpeg_tables
                # Aperio stores untransformed RGB in JPEG: tell the decoder, as tifffile does
                pixels = imagecodecs.jpeg8_decode(raw.data, tables=raw.jpeg_tables, colorspace="RGB", outcolorspace="RGB")
                y, x = row * tile_size, col * tile_size
                crop = expected[y : y + tile_size, x : x + tile_size]
                np.testing.assert_array_equal(pixels[: crop.shape[0], : crop.shape[1]], crop)
                np.testing.assert_array_equal(slide.decode_raw_tile(0, raw), pixels)


def test_jpeg2000_svs_raw_tiles_decode() -> None:
    path = sample("TCGA-CR-7395-jp2k.svs")
    with open_slide(path) as slide:
        raw = slide.raw_tile(1, 2, 3)
        assert raw.codec == "jpeg2000"
        expected = tifffile.imread(path, series=0, level=1)[2 * 256 : 3 * 256, 3 * 256 : 4 * 256]
        np.testing.assert_array_equal(slide.decode_raw_tile(1, raw), expected)


IDENTIFYING_APERIO_FIELDS = ("Date", "Time", "User", "ScanScope ID", "Filename", "ImageID")


def test_deidentified_svs_has_no_label_macro_or_identifying_description() -> None:
    with open_slide(sample("CMU-1-Small-Region.svs"), keep_phi=True) as raw:
        assert {"label", "macro"} <= set(raw.associated_images)
        description = raw.properties["tiff.ImageDescription"]
        assert all(field in description for field in IDENTIFYING_APERIO_FIELDS)
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        assert "label" not in slide.associated_images and "macro" not in slide.associated_images
        text = repr(slide.properties)
        for field in IDENTIFYING_APERIO_FIELDS:
            assert f"aperio.{field}" not in slide.properties
        for value in ("12/29/09", "09:59:15", "b414003d-95c6-48b0-9369-8010ed517ba7", "CPAPERIOCS", "1004486"):
            assert value not in text
        with pytest.raises(KeyError, match="label"):
            slide.associated_image("label")
        assert slide.mpp == (0.499, 0.499) and slide.objective_power == 20


def test_deidentified_ndpi_has_no_macro_serials_or_dates() -> None:
    with open_slide(sample("ndpi-fluorescence-DAPI.ndpi"), keep_phi=True) as raw:
        assert "macro" in raw.associated_images and "hamamatsu.NDP.S/N" in raw.properties
    with open_slide(sample("ndpi-fluorescence-DAPI.ndpi")) as slide:
        assert slide.associated_images == []
        for key in slide.properties:
            assert not any(word in key for word in ("S/N", "Created", "Updated", "DateTime", "barcode", "Reference"))


def test_deidentified_dicom_has_no_patient_or_study_attributes(tmp_path) -> None:
    dataset = pydicom.dcmread(sample("wsi2dcm-jpeg.dcm"))
    phi = {
        "PatientName": "DOE^JANE",
        "PatientID": "MRN123456",
        "PatientBirthDate": "19700101",
        "AccessionNumber": "ACC987654",
        "StudyDate": "20260101",
        "InstitutionName": "General Hospital",
        "ContainerIdentifier": "BARCODE42",
    }
    for keyword, value in phi.items():
        setattr(dataset, keyword, value)
    path = tmp_path / "with-phi.dcm"
    dataset.save_as(path)
    with open_slide(path, keep_phi=True) as raw:  # proves the values are visible to a reader at all
        assert {f"dicom.{k}" for k in phi} <= set(raw.properties)
    with open_slide(path) as slide:
        text = repr(slide.properties)
        for value in phi.values():
            assert value not in text
        assert slide.mpp == pytest.approx((16.783, 16.783))


# -- bad input: one line on stderr naming the file, exit 2, no traceback ---------------------------------------
def _huge_tiff(path) -> None:
    tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8), tile=(128, 128), photometric="rgb")
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages[0].tags
        entries = [(tags[name].offset) for name in ("ImageWidth", "ImageLength")]
    with open(path, "r+b") as handle:
        for entry in entries:  # rewrite each entry as LONG 10**9: type (4) at +2, count 1 at +4, value at +8
            handle.seek(entry + 2)
            handle.write(struct.pack("<HII", 4, 1, 10**9))


def _bad_inputs(tmp_path) -> dict[str, object]:
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    text = tmp_path / "notes.svs"
    text.write_text("this is a text file, not a slide\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    huge = tmp_path / "huge.tiff"
    _huge_tiff(huge)
    return {
        "broken": sample("broken.svs"),
        "unreadable tiles": sample("synthetic-unreadable.svs"),
        "empty": empty,
        "directory": folder,
        "missing": tmp_path / "missing.svs",
        "text": text,
        "huge": huge,
    }


@pytest.mark.parametrize("case", ["broken", "unreadable tiles", "empty", "directory", "missing", "text", "huge"])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, case: str) -> None:
    path = _bad_inputs(tmp_path)[case]
    result = subprocess.run(
        [sys.executable, "-m", "slidestream", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "Traceback" not in result.stderr


def test_absurd_header_is_rejected_by_the_library(tmp_path) -> None:
    path = tmp_path / "huge.tiff"
    _huge_tiff(path)
    with pytest.raises(UnsupportedSlideError, match="huge.tiff"):
        open_slide(path)


def test_unreadable_tiles_raise_corrupt_slide_error() -> None:
    with open_slide(sample("synthetic-unreadable.svs")) as slide:
        with pytest.raises(CorruptSlideError, match="synthetic-unreadable.svs"):
            slide.read_region((0, 0), 0, (16, 16))


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_info_json_has_the_documented_keys(name: str) -> None:
    import json

    result = subprocess.run(
        [sys.executable, "-m", "slidestream", "info", "--json", str(sample(name))], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"vendor", "levels", "mpp", "tile_size", "associated_images"} <= set(summary)
    with open_slide(sample(name)) as slide:
        assert summary["levels"][0] == {
            "width": slide.dimensions[0],
            "height": slide.dimensions[1],
            "downsample": 1.0,
            "raw_tiles": summary["levels"][0]["raw_tiles"],
        }
    assert "label" not in summary["associated_images"] and "macro" not in summary["associated_images"]


@pytest.mark.parametrize("name", [name for name in ALL_SAMPLES if not name.endswith(".dcm")] + ["synthetic-boxes.tiff"])
def test_a_tiff_slide_is_whole_only_with_its_last_byte(name: str, tmp_path: Path) -> None:
    """What `watch` trusts to send a slide the moment a scanner finishes it: any cut, even of the last byte alone
    (a tag value there), reads as not written yet."""
    data = sample(name).read_bytes()
    assert fully_written(sample(name)) is True
    for cut in [1, 8, len(data) // 10, len(data) // 2, len(data) * 9 // 10, len(data) - 1]:
        partial = tmp_path / f"{cut}-{name}"
        partial.write_bytes(data[:cut])
        assert fully_written(partial) is False, f"{name} cut at {cut} of {len(data)} bytes"


def test_whole_means_nothing_for_formats_of_several_files(tmp_path: Path) -> None:
    assert fully_written(sample("camelyon-lymphnode.dcm")) is None
    (tmp_path / "slide.mrxs").write_text("[GENERAL]\n")
    assert fully_written(tmp_path / "slide.mrxs") is None


def test_a_strip_decoding_beyond_the_bound_is_refused_before_reading(tmp_path: Path) -> None:
    """A plain TIFF stored as one deflated strip of 10,000 x 10,000 px (286 MiB decoded, 0.3 MB on disk): reading any
    pixel would decode all of it at once, so it is refused at open, naming the bound."""
    path = tmp_path / "one-strip.tif"
    tifffile.imwrite(path, np.zeros((10_000, 10_000, 3), np.uint8), photometric="rgb", rowsperstrip=10_000, compression="zlib")
    with pytest.raises(UnsupportedSlideError, match=f"one-strip.tif: a stored tile or strip decodes to 286 MiB \\(limit {MAX_CHUNK_BYTES >> 20} MiB\\)"):
        open_slide(path)


@pytest.mark.parametrize("kind", ["fifo", "link loop", "dangling link"])
def test_only_regular_files_are_opened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "slide.svs"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(path if kind == "link loop" else tmp_path / "gone.svs", path)
    expected = {"fifo": "is a FIFO, not a slide file", "link loop": "symbolic link loop", "dangling link": "no such file"}[kind]
    with pytest.raises(SlidestreamError, match=expected):
        open_slide(path)


def test_a_fifo_beside_a_dicom_file_is_never_opened(tmp_path: Path) -> None:
    """openslide opens every file in a DICOM file's folder; a FIFO there would block it forever (a hung hot folder)."""
    (tmp_path / "slide.dcm").write_bytes(sample("wsi2dcm-jpeg.dcm").read_bytes())
    os.mkfifo(tmp_path / "pipe")
    with open_slide(tmp_path / "slide.dcm") as slide, open_slide(sample("wsi2dcm-jpeg.dcm")) as reference:
        assert np.array_equal(slide.read_region((0, 0), 0, (256, 256)), reference.read_region((0, 0), 0, (256, 256)))
    with open_slide(tmp_path) as slide:  # the folder as a series
        assert slide.dimensions == reference.dimensions


def test_a_truncated_tiff_is_refused_at_open(tmp_path: Path) -> None:
    """openslide reads a cut SVS as far as it goes; the reader refuses it whole instead of publishing part of it."""
    data = sample("CMU-1-Small-Region.svs").read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) - 100_000])
    with pytest.raises(CorruptSlideError, match="cut.svs: truncated or damaged TIFF structure"):
        open_slide(path)
