"""The AI overlay's colours and cell kinds, from maps written by inference's own writer.

What a pathologist relies on: the colour scale is the published viridis (perceptual, legible in greyscale), the
legend on the page is the scale the tiles are drawn with, a scored tile never looks like an unscored one, glass
stays clear, and tissue the hub has not scored yet is hatched while the map is partial (and only then).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.viewer import CELL, inference_heatmap, pyramid, serving, write_local

from caseformat.layout import HEATMAP, HUB, TRIAGE, SlideRef, image_key
from viewer import LocalStorage
from viewer.heatmap import HATCH_PERIOD, LUT, PENDING_RGBA, legend

REF = SlideRef("h1.case")  # the one slide version the overlay is drawn on


def test_the_colour_scale_is_viridis_and_the_legend_is_that_scale() -> None:
    colormaps = pytest.importorskip("matplotlib").colormaps
    reference = np.array([colormaps["viridis"](i / 255)[:3] for i in range(256)]) * 255
    assert np.abs(LUT[:, :3].astype(float) - reference).max() <= 6
    assert (LUT[:, 3] == 255).all()  # opaque: the page's opacity slider decides how much tissue shows through
    lightness = LUT[:, :3] @ np.array([0.2126, 0.7152, 0.0722])  # luminance rises with probability
    assert (np.diff(lightness) > -0.5).all() and lightness[-1] - lightness[0] > 150  # (up to uint8 rounding)
    for stop in legend()["stops"]:
        assert list(LUT[round(stop["at"] * 255), :3]) == stop["rgb"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    _, pieces = pyramid()
    for piece in pieces:
        write_local(root, REF.key(image_key(piece.key)), piece.data)
    return root


def overlay_tile(root: Path, scores: np.ndarray, complete: bool) -> tuple[np.ndarray, dict]:
    """The level-2 overlay tile (0, 0) (240 px of 4 level-0 pixels: cells 0-8 and part of 9) and the status, of the
    hub's map (in the centre's folder)."""
    objects, triage = inference_heatmap(scores, complete)
    write_local(root, REF.centre_key(TRIAGE), json.dumps(triage).encode())
    for key, data in objects.items():
        write_local(root, REF.centre_key(f"{HEATMAP}/{key}"), data)
    with serving(LocalStorage(root)) as served:
        token = served.token(REF.case)
        status = served.get(f"/api/cases/{REF.case}/slides/s1/v1/status", token).json()
        png = served.get(f"/api/cases/{REF.case}/slides/s1/v1/heatmap/2/0/0.png?v={status['heatmap']['version']}", token).content
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")), status


def cell_pixels(tile: np.ndarray, row: int, col: int) -> np.ndarray:
    """The tile pixels inside heatmap cell (row, col), two pixels clear of its edges."""
    side = CELL / 4
    return tile[int(row * side) + 2 : int((row + 1) * side) - 2, int(col * side) + 2 : int((col + 1) * side) - 2]


def test_scored_glass_and_pending_cells_are_told_apart(image_folder: Path) -> None:
    scores = np.full((30, 22), np.nan, np.float32)
    scores[2, 7] = 0.9
    scores[2, 6] = 0.0  # a real score of zero: coloured, not clear
    tile, status = overlay_tile(image_folder, scores, complete=False)
    assert tuple(cell_pixels(tile, 2, 7)[0, 0]) == tuple(LUT[round(0.9 * 255)])
    assert tuple(cell_pixels(tile, 2, 6)[0, 0]) == tuple(LUT[0]) and LUT[0, 3] == 255
    glass = cell_pixels(tile, 5, 2)  # the slide's left edge holds no tissue (its label image says so)
    assert (glass[..., 3] == 0).all()
    pending = cell_pixels(tile, 4, 8)  # tissue, not scored yet, map partial: hatched, half the pixels
    hatched = (pending == PENDING_RGBA).all(axis=2)
    assert 0.35 < hatched.mean() < 0.65 and (pending[~hatched][..., 3] == 0).all()
    assert hatched[0, :HATCH_PERIOD].any() and not hatched[0, :HATCH_PERIOD].all()  # stripes, not a fill
    assert status["heatmap"] | {"version": None, "legend": None} == {
        "version": None, "legend": None, "stage": HUB, "complete": False, "tiles_scored": 2, "tissue_tiles": 660,
    }  # fmt: skip
    assert status["top_regions"] == [{"x": 7 * CELL, "y": 2 * CELL, "width": CELL, "height": CELL, "score": pytest.approx(0.9)}]

    final, status = overlay_tile(image_folder, scores, complete=True)  # the final map: unscored tissue is clear
    assert (cell_pixels(final, 4, 8)[..., 3] == 0).all() and status["heatmap"]["complete"] is True
