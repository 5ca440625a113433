"""bench/make_large_slide.py writes a slide that openslide reads as Aperio, pixel-exact with tifffile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "make_large_slide.py"
SLIDES = REPO.parent / "shared" / "slides"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SLIDES.is_dir(), reason=f"sample slides not found at {SLIDES}")]  # slow: builds a large slide


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run the maker once with a tiny size (a few MB): its path and its printed summary."""
    out = tmp_path_factory.mktemp("derived") / "tiny.svs"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--gigabytes", "0.003", "--output", str(out), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_prints_summary_and_thumbnail(made: tuple[Path, str]) -> None:
    path, stdout = made
    for key in ("path:", "dimensions:", "levels:", "bytes:", "seconds:"):
        assert key in stdout
    assert 1e6 < path.stat().st_size < 20e6
    assert path.with_name("tiny-thumbnail.png").exists()


def test_openslide_reads_it_as_aperio(made: tuple[Path, str]) -> None:
    path, _ = made
    with openslide.OpenSlide(path) as slide, tifffile.TiffFile(path) as tif:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.499)
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert props["aperio.Derived"].startswith("SYNTHETIC")  # labelled as derived, not a scan
        tiled = [page for page in tif.pages if page.is_tiled]
        assert slide.level_count == len(tiled) >= 2
        assert slide.level_downsamples == pytest.approx([4.0**i for i in range(slide.level_count)])
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
        assert tif.is_bigtiff


def test_tiles_are_aperio_style_jpeg(made: tuple[Path, str]) -> None:
    """240 px tiles, Photometric RGB, shared JPEGTables: each tile stream carries no tables."""
    path, _ = made
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.tile == (240, 240)
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.jpegtables and b"\xff\xdb" in page.jpegtables
        tif.filehandle.seek(page.dataoffsets[0])
        tile = tif.filehandle.read(page.databytecounts[0])
        assert tile.startswith(b"\xff\xd8\xff\xc0") and b"\xff\xdb" not in tile[:200]


@pytest.mark.parametrize("level", [0, 1])
def test_region_equals_tifffile_decode(made: tuple[Path, str], level: int) -> None:
    path, _ = made
    with openslide.OpenSlide(path) as slide, tifffile.TiffFile(path) as tif:
        w, h = slide.level_dimensions[level]
        x, y, rw, rh = w // 4, h // 4, min(600, w // 2), min(500, h // 2)
        scale = round(slide.level_downsamples[level])
        region = np.asarray(slide.read_region((x * scale, y * scale), level, (rw, rh)).convert("RGB"))
        page = [p for p in tif.pages if p.is_tiled][level]
        expected = page.asarray()[y : y + rh, x : x + rw]
        np.testing.assert_array_equal(region, expected)
        assert region.std() > 5  # real content, not an empty canvas
