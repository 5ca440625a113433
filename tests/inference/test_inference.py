"""inference/: heatmaps line up with the slide, cover tissue only, and are valid OME-Zarr; coarse-to-fine, send
priority and a dask.distributed cluster give the heatmap a user expects.

Alignment is checked with synthetic slides whose answer is known: glass with textured squares, scored by a tiny
TorchScript model whose tumour "probability" is the fraction of dark pixels in the tile, so every heatmap pixel
must equal the fraction of its tile the dark square covers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import SHARED, sample
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader
from PIL import Image
from scipy import ndimage
from support.inference import MPP, PINK, PURPLE, TILE, save_dark_model, write_slide

from inference import AnalyzeOptions, Heatmap, ModelRef, analyze_case, analyze_slide, priority_from_heatmap
from inference.pipeline import plan_heatmap
from inference.sources import SlideFileRef, open_source
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, plan_pyramid, produce, write_pieces

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")]  # slow: the real model on slides









@pytest.fixture(scope="module")
def dark_model(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    return save_dark_model(tmp_path_factory.mktemp("model"))


def covered(box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Fraction of each TILE-sided tile of a grid of `shape` that `box` covers."""
    x0, y0, x1, y1 = box
    edges_y, edges_x = np.arange(shape[0] + 1) * TILE, np.arange(shape[1] + 1) * TILE
    over_y = np.clip(np.minimum(edges_y[1:], y1) - np.maximum(edges_y[:-1], y0), 0, None)
    over_x = np.clip(np.minimum(edges_x[1:], x1) - np.maximum(edges_x[:-1], x0), 0, None)
    return np.outer(over_y, over_x) / TILE**2


HOT = (592, 336, 1000, 750)  # off the tile grid on purpose: its edge tiles are 37.5%-86% covered


@pytest.fixture(scope="module")
def hot_square(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "hot.tif", (2048, 1536), [(*HOT, PURPLE)])


@pytest.fixture(scope="module")
def hot_result(hot_square: Path, dark_model: ModelRef, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("out") / "hot"
    return analyze_slide(hot_square, out, AnalyzeOptions(model=dark_model)), out


def test_heatmap_is_hot_exactly_over_the_square(hot_result: tuple[object, Path]) -> None:
    heatmap, out = hot_result
    image = np.asarray(zarr.open_array(out / "heatmap.zarr" / "0", mode="r")[:])
    assert image.shape == (1, 12, 16)  # 1536 x 2048 px in 128 px tiles
    expected = covered(HOT, image.shape[1:]) * 255
    hot = expected > 0
    assert np.abs(image[0][hot].astype(int) - expected[hot]).max() <= 3
    assert (image[0][~hot] == 0).all(), "glass must read 0"
    assert heatmap.tissue.sum() == hot.sum(), "every tile the square touches is analysed, nothing else"


def test_heatmap_is_ome_zarr_that_overlays_the_slide(hot_result: tuple[object, Path]) -> None:
    _, out = hot_result
    image = list(Reader(parse_url(str(out / "heatmap.zarr")))())[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [axis["name"] for axis in image.metadata["axes"]] == ["c", "y", "x"]
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([1, TILE * MPP, TILE * MPP])  # one heatmap pixel = one 128 px tile, in um
    attributes = json.loads((out / "heatmap.zarr" / "zarr.json").read_text())["attributes"]["slidestream"]["heatmap"]
    assert attributes["tile_level0_px"] == TILE and attributes["complete"] is True
    assert attributes["class_names"] == ["dark"] and attributes["model"] == "dark-fraction"


def test_triage_summarises_the_hot_region(hot_result: tuple[object, Path]) -> None:
    _, out = hot_result
    triage = json.loads((out / "triage.json").read_text())
    top5 = np.sort(covered(HOT, (12, 16)).ravel())[-5:].mean()  # four whole tiles and one 86% covered
    assert triage["complete"] is True and triage["score"] == pytest.approx(top5, abs=0.01)
    summary = triage["summary"]
    (region,) = summary["top_regions"]
    # tiles at least half dark: columns 5-7, rows 3-5 (the 37.5% edge tiles fall below the 0.5 threshold)
    assert (region["x"], region["y"], region["width"], region["height"]) == (5 * TILE, 3 * TILE, 3 * TILE, 3 * TILE)
    assert summary["area_above_threshold_mm2"] == pytest.approx(9 * (TILE * MPP / 1000) ** 2, rel=1e-4)
    assert summary["mpp"] == MPP and summary["mpp_assumed"] is False
    assert summary["qc"]["blur_fraction"] == 0.0  # the texture is sharp


def test_real_model_scores_a_tumour_patch_where_it_lies(tmp_path: Path) -> None:
    """The default model on a slide made of real tiles: the tumour tile is hot, normal mucosa and glass are not."""
    tumour = np.asarray(Image.open(SHARED / "tiles/tumor/tiatoolbox-target-HE.png").convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    normal = np.asarray(Image.open(SHARED / "tiles/normal/CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif").convert("RGB"))
    pixels = np.full((1120, 1344, 3), 240, np.uint8)
    pixels[448:672, 672:896] = tumour  # tile (2, 3)
    pixels[224:448, 224:448] = normal  # tile (1, 1)
    path = tmp_path / "patches.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", compression="deflate",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    heatmap = analyze_slide(path)
    image = heatmap.image()
    assert image.shape == (5, 6)
    assert image[2, 3] > 0.9 * 255 and image[1, 1] < 0.1 * 255
    image[2, 3] = image[1, 1] = 0
    assert (image == 0).all()


def test_sample_slide_heatmap_covers_its_tissue_only(tmp_path: Path) -> None:
    """CMU-1 at full magnification (TCGA-CR-7395 and the other samples: coarse-to-fine, in test_analyze.py)."""
    heatmap = analyze_slide(sample("CMU-1-Small-Region.svs"), tmp_path / "case")
    image = list(Reader(parse_url(str(tmp_path / "case" / "heatmap.zarr")))())[0]
    values = np.asarray(image.data[0])[0]
    assert values.shape == (np.ceil(2967 / (224 * 0.5 / 0.499)), np.ceil(2220 / (224 * 0.5 / 0.499)))
    assert (values[~heatmap.tissue] == 0).all(), "background tiles read 0"
    assert heatmap.tissue.mean() > 0.2 and values.max() > 0.9 * 255
    triage = json.loads((tmp_path / "case" / "triage.json").read_text())
    assert 0 <= triage["score"] <= 1 and triage["complete"] is True
    assert triage["summary"]["tiles_scored"] == triage["summary"]["tissue_tiles"] == triage["summary"]["tiles_measured"]
    assert triage["summary"]["mpp_assumed"] is False


COLD = (256, 256, 1792, 1792, PINK)  # a large pale tissue area the dark model scores ~0
HOT_SMALL = (4224, 2816, 4736, 3328, PURPLE)  # off the 256 px coarse grid: coarse tiles half covered


@pytest.fixture(scope="module")
def two_squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Larger than tiling's whole-level limit (4096 px), so its level 0 is sent by priority, not in raster order."""
    return write_slide(tmp_path_factory.mktemp("slide") / "two.tif", (6144, 4608), [COLD, HOT_SMALL])


def test_coarse_to_fine_maps_the_whole_slide_first_then_refines_hot_tiles(two_squares: Path, dark_model: ModelRef) -> None:
    full = analyze_slide(two_squares, options=AnalyzeOptions(model=dark_model))
    early: list[tuple[int, int, int]] = []

    def on_update(heatmap) -> None:  # type: ignore[no-untyped-def]
        early.append((int(heatmap.scored.sum()), int(heatmap.measured.sum()), heatmap.coarse_tiles))

    coarse = analyze_slide(two_squares, options=AnalyzeOptions(model=dark_model, coarse=True), on_update=on_update)
    tissue = int(full.tissue.sum())
    # first update: every tissue tile has a (coarse) score, none seen at full magnification yet
    assert early[0][:2] == (tissue, 0) and 0 < early[0][2] <= tissue / 3
    hot = full.score >= 0.5
    assert coarse.measured[hot].all(), "every hot tile is refined"
    np.testing.assert_array_equal(coarse.image()[hot], full.image()[hot])
    assert coarse.coarse_tiles + coarse.measured.sum() < tissue / 2, "most of the cold area is never seen at full size"
    assert (coarse.image()[~full.tissue] == 0).all()
    assert coarse.triage_score() == pytest.approx(full.triage_score(), abs=1 / 255)


def test_priority_from_heatmap_sends_hot_shards_first(two_squares: Path, dark_model: ModelRef) -> None:
    heatmap = analyze_slide(two_squares, options=AnalyzeOptions(model=dark_model, coarse=True))
    with open_slide(two_squares) as slide:
        def level0_order(**kwargs) -> list[str]:  # type: ignore[no-untyped-def]
            plan = plan_pyramid(slide, ConvertOptions(), **kwargs)
            return [task.key for task in plan.shards if task.level == 0 and task.tissue]

        assert level0_order(priority=priority_from_heatmap(heatmap)) == ["0/c/0/1/2", "0/c/0/0/0"]  # not raster order
        heatmap.score = 1 - heatmap.score  # a model that calls the pale square hot: the send follows it
        assert level0_order(priority=priority_from_heatmap(heatmap)) == ["0/c/0/0/0", "0/c/0/1/2"]
        # without a map, the square densest in hematoxylin (the purple one, which this model scores hot) goes first
        assert level0_order() == ["0/c/0/1/2", "0/c/0/0/0"]


def test_distributed_cluster_gives_the_same_heatmap(hot_square: Path, dark_model: ModelRef, hot_result: tuple[object, Path]) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        remote = analyze_slide(hot_square, options=AnalyzeOptions(model=dark_model, scheduler=cluster.scheduler_address, batch=4))
    local = hot_result[0]
    np.testing.assert_array_equal(remote.image(), local.image())


def test_too_coarse_slide_is_refused_in_one_line() -> None:
    from inference import InferenceError

    with pytest.raises(InferenceError, match="too coarse") as info:
        plan_heatmap(open_source(SlideFileRef.of(sample("camelyon-lymphnode.dcm"))), AnalyzeOptions())
    assert "\n" not in str(info.value) and "camelyon-lymphnode.dcm" in str(info.value)


@pytest.fixture
def nest_case(tmp_path: Path) -> Location:
    """A case of pink tissue with a purple (dark, nuclei-dense) nest at map rows 7-9, columns 8-11: the far end of
    the grid order."""
    nest = (8 * int(TILE), 7 * int(TILE), 12 * int(TILE), 10 * int(TILE))
    slide = write_slide(tmp_path / "nest.tif", (2048, 1536), [(128, 128, 1920, 1408, PINK), (*nest, PURPLE)])
    case = tmp_path / "case"
    with open_slide(slide) as opened:
        write_pieces(produce(opened, plan_pyramid(opened, ConvertOptions()), "nest", {"mpp": list(opened.mpp)}), case / "image.zarr", False)
    return Location.parse(case)


def score_until_the_nest_is_done(case: Location, options: AnalyzeOptions, priority: np.ndarray, limit: int) -> tuple[Heatmap, set[tuple[int, ...]], np.ndarray]:
    """Hub passes of `limit` tiles until every tile of the nest is scored: the last map, the tiles scored before its
    last pass, the nest's tiles."""
    heatmap = analyze_case(case, options=options, limit=0)
    in_nest = np.zeros(heatmap.tissue.shape, bool)
    in_nest[7:10, 8:12] = True
    before: set[tuple[int, ...]] = set()
    while not heatmap.scored[in_nest].all():
        before = {tuple(tile) for tile in np.argwhere(heatmap.scored)}
        heatmap = analyze_case(case, options=options, heatmap=heatmap, limit=limit, priority=priority)
    assert heatmap.tissue.sum() > 100 and not heatmap.complete  # the nest done, most of the pale tissue still to come
    return heatmap, before, in_nest


def test_a_pass_scores_the_tiles_beside_a_hot_one_before_the_rest_of_the_slide(dark_model: ModelRef, nest_case: Location) -> None:
    """The hub's order (`limit` passes, `hottest_first`): once the edge's one sample on a hot nest is scored hot, its
    neighbours come next, and theirs, so the whole nest is scored before any tile away from it, though it lies at
    the far end of the grid order under pale tissue."""
    options = AnalyzeOptions(model=dark_model, batch=4, threads=1)
    edge = np.full((12, 16), -1.0)
    edge[9, 11] = 0.9  # the edge map's one sample on the nest (its corner: the far end of the grid order)
    heatmap, before, in_nest = score_until_the_nest_is_done(nest_case, options, edge, 8)
    beside = {tuple(tile) for tile in np.argwhere(ndimage.binary_dilation(in_nest, np.ones((3, 3), bool)))}
    # away from the nest: only the first round's other slots, filled in grid order while nothing was known
    assert len(before - beside) <= options.batch - 1, f"scored away from the nest before it was done: {sorted(before - beside)}"
    in_grid_order = int(np.argwhere(heatmap.tissue).tolist().index([9, 11]))  # tissue tiles grid order scores first
    assert len(before) < in_grid_order / 3, (len(before), in_grid_order)


def test_a_pass_starts_at_the_tissue_densest_in_hematoxylin_without_an_edge_map(dark_model: ModelRef, nest_case: Location) -> None:
    """With no edge sample anywhere near it, the purple (nuclei-dense) nest is scored before any pink tile: the
    overview's hematoxylin (`overview_priority`) puts it first. Without it the hub would reach the nest last."""
    from inference.pipeline import overview_priority

    options = AnalyzeOptions(model=dark_model, batch=4, threads=1)
    prior = overview_priority(nest_case, options, None)
    assert prior is not None and prior.max() < options.threshold, "a rank below the threshold, never a score"
    _, before, in_nest = score_until_the_nest_is_done(nest_case, options, prior, 4)
    beside = {tuple(tile) for tile in np.argwhere(ndimage.binary_dilation(in_nest, np.ones((3, 3), bool)))}
    assert before <= beside, f"scored away from the nest before it was done: {sorted(before - beside)}"
