"""Every JPEG's colour model comes from the stream itself, never from the container's tag alone.

QuPath's OME-TIFF exports store JFIF YCbCr 4:2:0 tiles while the TIFF says Photometric=RGB, and some DICOM converters
tag such frames PhotometricInterpretation RGB. Reading, pass-through (OME-Zarr chunks) and the DICOM export must keep
the colours the stream holds; the sources here are generated from CMU-1's real tissue so the truth is known.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from conftest import REPO, sample
from pydicom.encaps import generate_frames

from slides import open_slide
from slides.jpeg import ADOBE, JFIF, RGB, YCBCR, adobe_segment, colour_model
from slidestream.stored import StoredCase, open_stored_case
from tiling.dicom import export_dicom
from tiling.jpeg import ADOBE_RGB

TILE = 256
WIDTH, HEIGHT = 1024, 768
# 4:2:0 JPEG at quality 90 of real H&E: ~1.1-1.5 levels off on average, ~40 dB; colours read as the wrong model are
# ~75 levels off (< 10 dB)
MEAN_TOLERANCE = 3.0
MIN_PSNR = 32.0


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """CMU-1's tissue, the pixels every source below encodes."""
    with openslide.OpenSlide(sample("CMU-1-Small-Region.svs")) as source:
        return np.asarray(source.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))


def assert_true_colours(what: str, decoded: np.ndarray, expected: np.ndarray) -> None:
    error = decoded.astype(np.float64) - expected.astype(np.float64)
    mse = float(np.mean(error**2))
    psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
    print(f"{what}: max {np.abs(error).max():.0f}, mean {np.abs(error).mean():.2f}, PSNR {psnr:.1f} dB")
    assert np.abs(error).mean() <= MEAN_TOLERANCE and psnr >= MIN_PSNR, what


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the Laplacian of the luminance: fine detail, as a blur metric sees it."""
    grey = pixels[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]
    return float(np.var(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]))


def segments(jpeg: bytes) -> list[bytes]:
    """The JPEG's marker segments up to its scan (SOI excluded), then the rest as one piece."""
    out, pos = [], 2
    while jpeg[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        out.append(jpeg[pos:end])
        pos = end
    return [*out, jpeg[pos:]]


def with_markers(jpeg: bytes, *markers: bytes, component_ids: bytes | None = None) -> bytes:
    """The JPEG with its JFIF/Adobe segments replaced by `markers`, and its frame's component IDs by `component_ids`."""
    kept = [part for part in segments(jpeg) if part[1] not in (JFIF, ADOBE)]
    if component_ids is not None:
        frame = next(index for index, part in enumerate(kept) if part[1] == 0xC0)
        header = bytearray(kept[frame])
        for component, identifier in enumerate(component_ids):
            header[10 + 3 * component] = identifier
        kept[frame] = bytes(header)
    return b"\xff\xd8" + b"".join([*markers, *kept])


def ycbcr_tiles(image: np.ndarray, marker: str) -> list[bytes]:
    """QuPath's tiles: YCbCr 4:2:0 JPEG, each self-contained; "jfif" as Java's ImageIO writes them, "adobe" with an
    Adobe APP14 "YCbCr" marker instead of the JFIF one."""
    tiles = []
    for y in range(0, image.shape[0], TILE):
        for x in range(0, image.shape[1], TILE):
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            part = image[y : y + TILE, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            jpeg = bytes(imagecodecs.jpeg8_encode(tile, level=90, subsampling=(2, 2)))
            tiles.append(jpeg if marker == "jfif" else with_markers(jpeg, adobe_segment(1)))
    return tiles


def rgb_tagged_tiff(path: Path, image: np.ndarray, marker: str = "jfif", ome: bool = True) -> Path:
    """A 3-level pyramid of YCbCr JPEG tiles whose TIFF says Photometric=RGB: an OME-TIFF with SubIFDs as QuPath
    writes it, or (ome=False) a generic pyramidal TIFF, which openslide reads."""
    levels = [image, image[::2, ::2], image[::4, ::4]]
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tif:
        for index, level in enumerate(levels):
            if not ome:
                placement = {"subfiletype": int(index > 0), "metadata": None}
            elif index == 0:
                placement = {"subifds": len(levels) - 1, "metadata": {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}}
            else:
                placement = {"subfiletype": 1}
            tif.write(iter(ycbcr_tiles(level, marker)), shape=level.shape, dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      photometric="rgb", compressionargs={"outcolorspace": "RGB"}, **placement)
    with tifffile.TiffFile(path) as written:
        assert written.pages.first.photometric == tifffile.PHOTOMETRIC.RGB
    return path


def tiles_of(frames: np.ndarray, across: int, down: int) -> np.ndarray:
    """(n, TILE, TILE, 3) frames, row by row, as one image."""
    return frames[: across * down].reshape(down, across, TILE, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(down * TILE, across * TILE, 3)


# -- the rule ------------------------------------------------------------------------------------------------------
def test_colour_model_is_decided_as_libjpeg_decides_with_the_tag_only_for_a_silent_stream(truth: np.ndarray) -> None:
    jfif = bytes(imagecodecs.jpeg8_encode(truth[:TILE, :TILE], level=90, subsampling=(2, 2)))
    assert colour_model(jfif, tagged=RGB) == YCBCR, "JFIF means YCbCr, whatever the TIFF says"
    assert colour_model(ADOBE_RGB.join([jfif[:2], jfif[2:]]), tagged=RGB) == YCBCR, "JFIF wins over Adobe, as in libjpeg"
    assert colour_model(with_markers(jfif, adobe_segment(1)), tagged=RGB) == YCBCR
    assert colour_model(with_markers(jfif, adobe_segment(0)), tagged=YCBCR) == RGB
    assert colour_model(with_markers(jfif, component_ids=b"RGB"), tagged=YCBCR) == RGB
    silent = with_markers(jfif)
    assert colour_model(silent) == YCBCR, "libjpeg's guess for a stream that says nothing"
    assert colour_model(silent, tagged=RGB) == RGB, "a silent stream is what its container says"
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:  # Aperio: untransformed RGB, no marker, IDs 0, 1, 2
        raw = slide.raw_tile(0, 0, 0)
        assert colour_model(raw.data, raw.jpeg_tables, tagged=RGB) == RGB == raw.photometric
    grey = bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(truth[:TILE, :TILE, 0]), level=90))
    assert colour_model(grey, tagged=RGB) is None


# -- reading -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("marker", "ome"), [("adobe", True), ("jfif", False)], ids=["ome-tiff-adobe-ycbcr", "generic-tiff-jfif"])
def test_rgb_tagged_ycbcr_tiles_read_in_their_true_colours(tmp_path: Path, truth: np.ndarray, marker: str, ome: bool) -> None:
    """tifffile decodes an RGB-tagged tile as RGB unless its first bytes are JFIF; openslide always does."""
    path = rgb_tagged_tiff(tmp_path / ("slide.ome.tif" if ome else "slide.tif"), truth, marker, ome)
    with open_slide(path) as slide:
        assert slide.vendor == ("ome-tiff" if ome else "generic-tiff")
        for level, step in enumerate((1, 2, 4)):
            info = slide.levels[level]
            assert_true_colours(f"level {level}", slide.read_region((0, 0), level, (info.width, info.height)), truth[::step, ::step])
        raw = slide.raw_tile(0, 1, 1)
        assert raw.photometric == YCBCR
        assert_true_colours("decode_raw_tile", slide.decode_raw_tile(0, raw), truth[TILE : 2 * TILE, TILE : 2 * TILE])


# -- pass-through and export ---------------------------------------------------------------------------------------
class SentBeforeTheFix:
    """A stored case whose chunks are QuPath's tiles as slidestream passed them through before: Adobe "RGB, no
    transform" put before their JFIF marker (libjpeg lets JFIF win; pydicom's decoder does not)."""

    def __init__(self, case: StoredCase) -> None:
        self._case = case
        self.levels, self.mpp, self.source = case.levels, case.mpp, case.source

    def jpeg_tiles(self, level: int) -> bool:
        return self._case.jpeg_tiles(level)

    def jpeg_frame(self, level: int, row: int, col: int) -> bytes | None:
        frame = self._case.jpeg_frame(level, row, col)
        return None if frame is None else frame[:2] + ADOBE_RGB + frame[2:]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._case.read_region(location, level, size)


def test_qupath_ome_tiff_converts_and_exports_in_its_true_colours(tmp_path: Path, truth: np.ndarray) -> None:
    """The converted chunks are the source tiles without an "RGB, no transform" marker; the DICOM series says
    YBR_FULL_422, so pydicom and openslide decode its frames as the YCbCr they are."""
    path = rgb_tagged_tiff(tmp_path / "qupath.ome.tif", truth)
    with open_slide(path) as slide:
        assert_true_colours("read_region", slide.read_region((0, 0), 0, (WIDTH, HEIGHT)), truth)
    out = tmp_path / "case.ome.zarr"
    result = subprocess.run([sys.executable, "-m", "slidestream", "convert", "--keep-background", path, out],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    case = open_stored_case(str(out), case_id="CASE-1")
    assert case.jpeg_tiles(0)
    chunks = [case.jpeg_frame(0, row, col) for row in range(HEIGHT // TILE) for col in range(WIDTH // TILE)]
    assert all(ADOBE_RGB not in chunk and colour_model(chunk) == YCBCR for chunk in chunks)
    decoded = np.stack([imagecodecs.jpeg8_decode(chunk) for chunk in chunks])
    assert_true_colours("OME-Zarr chunks", tiles_of(decoded, WIDTH // TILE, HEIGHT // TILE), truth)

    with open_slide(path) as slide:
        sources = {"slide": slide, "stored case": case, "case sent before": SentBeforeTheFix(case)}
        for name, source in sources.items():
            exported = export_dicom(source, tmp_path / f"dicom-{name}", "CASE-1")
            assert exported.passthrough_levels >= 1
            datasets = sorted((pydicom.dcmread(file) for file in exported.files), key=lambda d: -d.TotalPixelMatrixColumns)
            assert {d.PhotometricInterpretation for d in datasets} == {"YBR_FULL_422"}
            level0 = datasets[0]
            assert (level0.TotalPixelMatrixColumns, level0.TotalPixelMatrixRows) == (WIDTH, HEIGHT)
            assert_true_colours(f"DICOM frames from the {name}, by pydicom", tiles_of(level0.pixel_array, WIDTH // TILE, HEIGHT // TILE), truth)
            with open_slide(tmp_path / f"dicom-{name}") as series:
                assert_true_colours(f"DICOM from the {name}, by slides", series.read_region((0, 0), 0, (WIDTH, HEIGHT)), truth)


# -- a DICOM series whose tag and frames disagree ------------------------------------------------------------------
def retagged_rgb(folder: Path, out: Path) -> Path:
    """The series with every instance saying RGB, its YCbCr frames untouched: another converter's output."""
    out.mkdir()
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        first = next(generate_frames(dataset.PixelData, number_of_frames=dataset.NumberOfFrames))
        frame_header = next(part for part in segments(first) if part[1] == 0xC0)
        assert colour_model(first) == YCBCR and frame_header[11] == 0x22, "YCbCr 4:2:0 frames"
        dataset.PhotometricInterpretation = "RGB"
        dataset.save_as(out / path.name)
    return out


def test_dicom_series_tagged_rgb_with_ycbcr_frames_reads_in_true_colours_from_its_own_level_0(tmp_path: Path, truth: np.ndarray) -> None:
    """Read by the tag, green and blue carry the half-resolution chroma planes: the image looked about ten times less
    sharp, like level 1 upsampled, though level 0 was the right instance."""
    with open_slide(rgb_tagged_tiff(tmp_path / "slide.ome.tif", truth)) as slide:
        series = retagged_rgb(export_dicom(slide, tmp_path / "ybr", "CASE-1").files[0].parent, tmp_path / "rgb")
    with open_slide(series) as slide:
        assert slide.vendor == "dicom"
        assert [(level.width, level.height) for level in slide.levels][:3] == [(WIDTH, HEIGHT), (WIDTH // 2, HEIGHT // 2), (WIDTH // 4, HEIGHT // 4)]
        level0 = slide.read_region((0, 0), 0, (WIDTH, HEIGHT))
        assert_true_colours("level 0", level0, truth)
        assert_true_colours("level 1", slide.read_region((0, 0), 1, (WIDTH // 2, HEIGHT // 2)), truth[::2, ::2])
        print(f"sharpness: level 0 {sharpness(level0):.0f}, source {sharpness(truth):.0f}")
        assert sharpness(level0) == pytest.approx(sharpness(truth), rel=0.15)


def test_public_dicom_sample_retagged_rgb_reads_as_the_original(tmp_path: Path) -> None:
    """camelyon-lymphnode.dcm (YBR_FULL_422, JFIF 4:2:0 frames) with its tag changed to RGB reads as the original."""
    original = tmp_path / "original"
    original.mkdir()
    (original / "camelyon.dcm").symlink_to(sample("camelyon-lymphnode.dcm"))
    with open_slide(original) as slide:
        expected = slide.read_region((0, 0), 0, slide.dimensions)
    with open_slide(retagged_rgb(original, tmp_path / "rgb")) as slide:
        read = slide.read_region((0, 0), 0, slide.dimensions)
    difference = np.abs(read.astype(int) - expected.astype(int))
    print(f"retagged vs original: max {difference.max()}, mean {difference.mean():.3f}")
    assert difference.max() <= 2
