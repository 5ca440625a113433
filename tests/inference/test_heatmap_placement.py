"""The triage heatmap sits on the tiles it scores in any NGFF reader, not half a tile up and left of them.

NGFF puts a pixel's centre at index x scale + translation. A map pixel scores the level-0 box [j T, (j + 1) T), so
its centre must be that box's centre as the image's own level-0 transform places it. Both images are read back with
ome-zarr-models (an independent reader and validator of NGFF 0.5), never with slidestream's readers: the map of
a converted case (what the hub and `analyze` write) and that of a slide file (what the edge writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from support.inference import PURPLE, TILE, save_dark_model, write_slide

from inference import AnalyzeOptions, ModelRef, analyze_case, analyze_slide
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, plan_pyramid, produce, write_pieces

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")]  # slow: the model path on a converted case

T = int(TILE)  # level-0 pixels per map pixel (the dark model's 64 px at 1 um/px on a 0.5 um/px slide)
SQUARE = (5 * T, 3 * T, 8 * T, 6 * T)  # level-0 (x0, y0, x1, y1): exactly map columns 5-7, rows 3-5


@pytest.fixture(scope="module")
def dark_model(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    return save_dark_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "square.tif", (2048, 1536), [(*SQUARE, PURPLE)])


def transform(group: zarr.Group) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) scale and translation of the first level, as ome-zarr-models validates and reads them."""
    (multiscale,) = Image.from_zarr(group).ome_attributes.multiscales
    scale, translation = np.ones(2), np.zeros(2)
    for step in multiscale.datasets[0].coordinateTransformations:
        if step.type == "scale":
            scale = np.asarray(step.scale[-2:], float)
        elif step.type == "translation":
            translation = np.asarray(step.translation[-2:], float)
    return scale, translation


def assert_on_its_tiles(heatmap: zarr.Group, image: tuple[np.ndarray, np.ndarray]) -> None:
    scale0, origin0 = image
    scale, translation = transform(heatmap)
    values = np.asarray(heatmap["0"][:])[0]
    rows, cols = np.indices(values.shape)
    index = np.stack([rows, cols], axis=-1).astype(float)  # (i, j) of every map pixel
    centre = index * scale + translation
    box_centre = ((index + 0.5) * T - 0.5) * scale0 + origin0  # of the level-0 box the pixel covers
    assert np.abs(centre - box_centre).max() < scale0.min(), "every map pixel centred on its level-0 box"
    # what a pathologist sees: the hot cells cover the square exactly, edge to edge
    hot = np.argwhere(values > 250)
    assert values[3:6, 5:8].min() > 250 and len(hot) == 9
    top_left = hot.min(axis=0) * scale + translation - scale / 2
    bottom_right = hot.max(axis=0) * scale + translation + scale / 2
    x0, y0, x1, y1 = SQUARE
    np.testing.assert_allclose(top_left, (np.array([y0, x0]) - 0.5) * scale0 + origin0, atol=scale0.min())
    np.testing.assert_allclose(bottom_right, (np.array([y1, x1]) - 0.5) * scale0 + origin0, atol=scale0.min())


def test_a_converted_cases_map_sits_on_its_tiles(slide: Path, dark_model: ModelRef, tmp_path: Path) -> None:  # noqa: F811
    case = tmp_path / "case"
    with open_slide(slide) as opened:
        write_pieces(produce(opened, plan_pyramid(opened, ConvertOptions()), "square", {"mpp": list(opened.mpp)}), case / "image.zarr", False)
    analyze_case(Location.parse(case), options=AnalyzeOptions(model=dark_model))
    image = transform(zarr.open_group(case / "image.zarr", mode="r"))
    assert image[0] == pytest.approx([0.5, 0.5])  # in micrometres: the map must be placed in the image's units
    assert_on_its_tiles(zarr.open_group(case / "heatmap.zarr", mode="r"), image)


def test_a_slide_files_map_sits_on_its_tiles(slide: Path, dark_model: ModelRef, tmp_path: Path) -> None:  # noqa: F811
    """What the edge writes before the send: the map of the slide file, overlaying the image the send writes."""
    analyze_slide(slide, tmp_path / "out", AnalyzeOptions(model=dark_model))
    case = tmp_path / "image.zarr"
    with open_slide(slide) as opened:
        write_pieces(produce(opened, plan_pyramid(opened, ConvertOptions()), "square", {"mpp": list(opened.mpp)}), case, False)
    assert_on_its_tiles(zarr.open_group(tmp_path / "out" / "heatmap.zarr", mode="r"), transform(zarr.open_group(case, mode="r")))
