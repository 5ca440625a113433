"""Dark-field (fluorescence) slides: the tissue mask comes from an overview in which faint signal averages away, so
on them a full-resolution chunk the mask calls background is omitted only where its own pixels are background.

The slide is made here: dark noise (0-5), bright nuclei where the overview sees tissue, and faint points (20-60) in
a shard the mask misses whole and in chunks of a tissue shard that it misses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from PIL import Image

from caseformat.layout import SlideRef
from slides import open_slide
from tiling import ConvertOptions, PyramidPlan, SendOrder, plan_pyramid, produce, write_pieces
from tiling.shard_format import EMPTY, read_shard_index, shard_index_size
from tiling.shard_jobs import StoredLevel, downsample_shard
from tiling.tissue import DARK, SIGNAL_ABOVE_DARK
from transfer.manifest import Arrivals

SIDE, TILE = 4096, 256  # 16 x 16 JPEG tiles: level 0 is 2 x 2 shards of 8 x 8 chunks
COMPLETE_SIDE = 1500  # levels 0 and 1 above the overview (the shipped 4096 px would make this slide all overview)
# (y0, y1, x0, x1) of faint points: shard (1, 1), without any tissue; chunk row 7 of shard (0, 0), below the nuclei
FAINT = ((2600, 3600, 2600, 3600), (1850, 2040, 300, 1000))


@pytest.fixture(scope="module")
def fluorescence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-level pyramidal TIFF of 256 px JPEG tiles that openslide reads as a generic tiled TIFF."""
    rng = np.random.default_rng(7)
    level0 = rng.integers(0, 6, (SIDE, SIDE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[-6:7, -6:7]
    disk = yy**2 + xx**2 <= 30
    for cy in range(300, 1300, 22):
        for cx in range(300, 1300, 22):
            y, x, value = cy + rng.integers(-4, 5), cx + rng.integers(-4, 5), int(rng.integers(150, 240))
            level0[y - 6 : y + 7, x - 6 : x + 7][disk] = (value // 4, value // 3, value)  # DAPI blue
    for y0, y1, x0, x1 in FAINT:
        for _ in range(30):
            y, x = rng.integers(y0, y1), rng.integers(x0, x1)
            level0[y : y + 2, x : x + 2] = rng.integers(20, 61)
    path = tmp_path_factory.mktemp("darkfield") / "fluorescence.tiff"
    with tifffile.TiffWriter(path) as tiff:
        for pixels, kind in ((level0, 0), (np.asarray(Image.fromarray(level0).reduce(4)), 1)):
            tiff.write(pixels, tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                       subfiletype=kind)
    return path


@pytest.fixture(scope="module")
def small_overview() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tiling.plan.COMPLETE_SIDE", COMPLETE_SIDE)
        yield


def convert(path: Path, out: Path, **options) -> PyramidPlan:  # type: ignore[no-untyped-def]
    """The project's convert path (as `slidestream convert` runs it); returns the plan it followed."""
    with open_slide(path) as slide:
        plan = plan_pyramid(slide, ConvertOptions(**options))
        write_pieces(produce(slide, plan, path.name, {}), out)
    return plan


@pytest.fixture(scope="module", params=["passthrough", "reencoded"])
def converted(
    request: pytest.FixtureRequest, fluorescence: Path, small_overview: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, PyramidPlan]:
    """The slide converted with its JPEG tiles passed through (level 1 then downsampled from level 0's chunks) and
    re-encoded (every level read from the slide)."""
    out = tmp_path_factory.mktemp(request.param) / "fluorescence.ome.zarr"
    plan = convert(fluorescence, out, passthrough=request.param == "passthrough")
    return out, plan


def source_level0(path: Path) -> np.ndarray:
    """Level 0 as openslide shows it (RGB)."""
    with openslide.OpenSlide(path) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3]


def written_chunks(array: Path, plan: PyramidPlan, level: int) -> np.ndarray:
    """(rows, cols) of a level's chunks: True where its shards hold the chunk."""
    info, n = plan.levels[level], plan.shard_chunks
    written = np.zeros((-(-info.height // plan.chunk), -(-info.width // plan.chunk)), bool)
    for shard in (array / "c" / "0").glob("*/*"):
        row, col = int(shard.parent.name), int(shard.name)
        index = read_shard_index(shard.read_bytes()[-shard_index_size(n) :], n)
        rows, cols = min(n, written.shape[0] - row * n), min(n, written.shape[1] - col * n)
        written[row * n : row * n + rows, col * n : col * n + cols] = index[:rows, :cols, 0] != EMPTY
    return written


def test_every_signal_pixel_the_overview_misses_is_in_level_0(converted: tuple[Path, PyramidPlan], fluorescence: Path) -> None:
    out, plan = converted
    tissue = plan.tissue
    assert plan.darkfield and tissue is not None
    assert not any(tissue.any_in(x0, y0, x1, y1) for y0, y1, x0, x1 in FAINT), "the overview misses the faint points"
    reference = source_level0(fluorescence)
    got = np.asarray(zarr.open_array(out / "0", mode="r")[:]).transpose(1, 2, 0)
    signal = reference.max(axis=2) > DARK + SIGNAL_ABOVE_DARK
    faint = np.zeros_like(signal)
    for y0, y1, x0, x1 in FAINT:
        faint[y0:y1, x0:x1] = signal[y0:y1, x0:x1]
    written = np.repeat(np.repeat(written_chunks(out / "0", plan, 0), plan.chunk, 0), plan.chunk, 1)[:SIDE, :SIDE]
    error = np.abs(got.astype(int) - reference).max(axis=2)
    mse = np.mean((got.astype(float) - reference) ** 2)
    print(
        f"\n{out.parent.name}: level 0 max error {error.max()}, mean {error.mean():.3f}, "
        f"PSNR {10 * np.log10(255**2 / mse):.1f} dB; "
        f"faint signal pixels {faint.sum()}: max error {error[faint].max()}, mean {error[faint].mean():.2f}; "
        f"chunks omitted {1 - written.mean():.1%} of level 0"
    )
    assert faint.sum() > 100
    assert written[signal].all(), f"{(signal & ~written).sum()} of {signal.sum()} signal pixels lie in omitted chunks"
    assert error[~written].max() <= SIGNAL_ABOVE_DARK, "what is omitted reads as the dark background it was"
    if plan.levels[0].passthrough:
        assert error[written].max() == 0, "the scanner's own tiles, as openslide shows them"
    else:  # re-encoded at quality 90: a faint point keeps its brightness within JPEG's error
        assert error[faint].max() <= 8
    assert 1 - written.mean() > 0.4, "the dark background is still left out"


def test_shards_that_may_hold_faint_signal_are_planned_last_and_the_empty_ones_never_produced(
    converted: tuple[Path, PyramidPlan],
) -> None:
    """The plan is fixed before any pixel is read; a shard found empty is never produced, which the sender's
    manifest counts as empty (not pending, not arrived) once production ends."""
    out, plan = converted
    level0 = {(task.row, task.col): task for task in plan.shards if task.level == 0}
    assert set(level0) == {(0, 0), (0, 1), (1, 0), (1, 1)}, "every level-0 shard: the mask cannot tell which is dark"
    assert [key for key, task in level0.items() if task.tissue] == [(0, 0)]
    order = [task.key for task in plan.shards]
    assert order.index(level0[(0, 0)].key) < min(order.index(level0[key].key) for key in ((0, 1), (1, 0), (1, 1)))
    produced = {str(path.relative_to(out)) for path in out.glob("[0-9]*/c/0/*/*")}
    assert produced <= set(order)
    assert {key for key in ((0, 1), (1, 0), (1, 1)) if level0[key].key in produced} == {(1, 1)}, "only the faint one"
    arrivals = Arrivals(SlideRef("h1.c"), plan, "2026-01-01T00:00:00.000Z", {})
    for key in produced:
        arrivals.produced(key)
        arrivals.arrive(key, 1)
    arrivals.finished_producing()
    assert arrivals.counts == (len(produced), len(produced))
    assert json.loads((out / "zarr.json").read_text())["attributes"]["slidestream"]["background"]["chunks"] == (
        f"omitted above the overview levels where no pixel reads more than {SIGNAL_ABOVE_DARK} over the fill value"
    )


@pytest.mark.parametrize("converted", ["passthrough"], indirect=True)  # re-encoded, level 1 is read from the slide
def test_the_level_downsampled_from_level_0_is_what_the_hub_builds_from_the_stored_chunks(
    converted: tuple[Path, PyramidPlan],
) -> None:
    """The writer decides a faint chunk of the stored level twice (for it, and for the level built from it); the hub
    only sees what the store holds. Both must agree, or the hub's shards would differ from a full send's."""
    out, plan = converted
    level = plan.levels[1]
    assert level.downsampled_from == 0
    n, c = plan.shard_chunks, plan.chunk
    stored = {}
    for shard in (out / "0" / "c" / "0").glob("*/*"):
        data, row, col = shard.read_bytes(), int(shard.parent.name), int(shard.name)
        index = read_shard_index(data[-shard_index_size(n) :], n)
        for i in range(n):
            for j in range(n):
                offset, size = (int(v) for v in index[i, j])
                if offset != EMPTY:
                    stored[(row * n + i, col * n + j)] = data[offset : offset + size]
    source = StoredLevel(0, SIDE, SIDE, c, stored)
    for task in (task for task in plan.shards if task.level == 1):
        built = downsample_shard(level, task.row, task.col, c, n, source, plan.fill, plan.options)
        path = out / task.key
        assert (path.read_bytes() if path.exists() else None) == built, task.key
    written = written_chunks(out / "1", plan, 1)
    assert written[5:8, 5:8].any() and not written[:4, 4:].any(), "the faint points show at level 1, the dark stays out"


def test_a_send_plans_and_produces_the_same_image_as_a_convert(fluorescence: Path, small_overview: None, tmp_path: Path) -> None:
    """A send plans the overview first and settles the plan once the tissue is known: the faint shards join then."""
    with open_slide(fluorescence) as slide:
        full = plan_pyramid(slide, ConvertOptions())
        converted = {piece.key: piece.data for piece in produce(slide, full, "fl", {})}
        order = SendOrder(plan_pyramid(slide, ConvertOptions(), defer_tissue=True))
        streamed = {piece.key: piece.data for piece in produce(slide, order.plan, "fl", {}, order)}
    assert order.plan.shards == full.shards
    assert streamed == converted and "0/c/0/1/1" in streamed, "the same image, with the shard of faint points"
