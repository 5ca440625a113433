"""tiling/: the OME-Zarr pyramid is readable by standard tools, pixel-exact where copied, and ordered for sending."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from conftest import ALL_SAMPLES, sample
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader

from inference.sources import ZarrSource
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, SendOrder, plan_pyramid, produce, pyramid, write_pieces
from tiling.ngff import metadata_pieces
from tiling.tissue import detect_tissue, tissue_mask


def convert(name: str, out: Path, **options) -> Path:  # type: ignore[no-untyped-def]
    with open_slide(sample(name)) as slide:
        plan = plan_pyramid(slide, ConvertOptions(**options))
        write_pieces(produce(slide, plan, name, {}), out)
    return out


def level(path: Path, index: int) -> np.ndarray:
    """A whole level as (y, x, 3), read back with plain zarr."""
    return np.asarray(zarr.open_array(path / str(index), mode="r")[:]).transpose(1, 2, 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def cmu_passthrough(tmp_path_factory) -> Path:
    return convert("CMU-1-Small-Region.svs", tmp_path_factory.mktemp("cmu") / "cmu.ome.zarr")


def test_output_is_a_multiscale_image_for_ome_zarr_py(cmu_passthrough: Path) -> None:
    nodes = list(Reader(parse_url(str(cmu_passthrough)))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [tuple(array.shape) for array in image.data] == [(3, 2967, 2220), (3, 1484, 1110), (3, 742, 555)]
    assert [axis["name"] for axis in image.metadata["axes"]] == ["c", "y", "x"]
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales[0] == pytest.approx([1, 0.499, 0.499]) and scales[2] == pytest.approx([1, 0.499 * 4, 0.499 * 4], rel=1e-3)
    np.testing.assert_array_equal(np.asarray(image.data[0][:, 100:140, 200:260]), level(cmu_passthrough, 0)[100:140, 200:260].transpose(2, 0, 1))
    attributes = json.loads((cmu_passthrough / "zarr.json").read_text())["attributes"]
    assert attributes["ome"]["version"] == "0.5"
    codecs = json.loads((cmu_passthrough / "0" / "zarr.json").read_text())["codecs"]
    assert codecs[0]["name"] == "sharding_indexed", "one object holds many chunks"


def test_passthrough_level0_equals_openslide_exactly(cmu_passthrough: Path) -> None:
    reference = np.asarray(openslide.OpenSlide(sample("CMU-1-Small-Region.svs")).read_region((0, 0), 0, (2220, 2967)))[..., :3]
    got = level(cmu_passthrough, 0)
    assert np.abs(got.astype(int) - reference).mean() == 0
    # and the chunks are the scanner's own JPEG data, not a re-encoding
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        raw = slide.raw_tile(0, 0, 0)
    shard = (cmu_passthrough / "0" / "c" / "0" / "0" / "0").read_bytes()
    assert raw.data[2:] in shard


def test_reencoded_level0_is_within_jpeg_tolerance(tmp_path: Path) -> None:
    out = convert("CMU-1-Small-Region.svs", tmp_path / "re.zarr", passthrough=False)
    reference = np.asarray(openslide.OpenSlide(sample("CMU-1-Small-Region.svs")).read_region((0, 0), 0, (2220, 2967)))[..., :3]
    got = level(out, 0)
    assert 40 <= psnr(got, reference) < 100


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-jp2k.svs", "ndpi-fluorescence-DAPI.ndpi", "kidney-ihc-strip.tif"])
def test_every_level_is_a_downsample_of_the_one_above(tmp_path: Path, name: str) -> None:
    out = convert(name, tmp_path / "x.zarr", keep_background=True)
    count = len(json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"])
    assert count >= 2
    for index in range(1, count):
        upper, lower = level(out, index - 1).astype(np.float64), level(out, index).astype(np.float64)
        height, width = min(upper.shape[0] // 2, lower.shape[0]), min(upper.shape[1] // 2, lower.shape[1])
        reduced = upper[: 2 * height, : 2 * width].reshape(height, 2, width, 2, 3).mean(axis=(1, 3))
        assert psnr(reduced, lower[:height, :width]) >= 30, f"level {index}"
    assert max(level(out, count - 1).shape[:2]) <= 1024


def test_output_carries_no_label_macro_or_identifying_metadata(tmp_path: Path) -> None:
    out = tmp_path / "cmu.zarr"
    run = subprocess.run([sys.executable, "-m", "slidestream", "convert", str(sample("CMU-1-Small-Region.svs")), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    blob = b"".join(path.read_bytes() for path in out.rglob("*") if path.is_file())
    for secret in (b"CPAPERIOCS", b"b414003d-95c6-48b0-9369-8010ed517ba7", b"12/29/09", b"09:59:15", b"ScanScope", b"macro"):
        assert secret not in blob, secret
    source = json.loads((out / "zarr.json").read_text())["attributes"]["slidestream"]["source"]
    assert source["associated_images"] == ["thumbnail"] and source["deidentified"] is True
    kept = tmp_path / "kept.zarr"
    run = subprocess.run([sys.executable, "-m", "slidestream", "convert", "--keep-phi", str(sample("CMU-1-Small-Region.svs")), str(kept)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert b"CPAPERIOCS" in (kept / "zarr.json").read_bytes()


# -- tissue ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_every_sample_has_tissue_and_not_only_tissue(name: str) -> None:
    with open_slide(sample(name)) as slide:
        mask = detect_tissue(slide)
    assert 0.001 < mask.fraction < 0.99 or name == "synthetic-boxes.tiff"
    assert mask.fraction > 0.001


def test_glass_is_background_and_a_stained_island_is_tissue() -> None:
    rng = np.random.default_rng(7)
    glass = np.clip(rng.normal(238, 3, (600, 800, 3)), 0, 255).astype(np.uint8)  # slightly noisy, not pure white
    glass[200:400, 300:500] = (190, 110, 170)  # an eosin/haematoxylin-ish island
    glass[50:60, 50:52] = (40, 40, 40)  # a speck of dust
    mask, darkfield = tissue_mask(glass)
    assert not darkfield
    assert mask[220:380, 320:480].all()
    assert not mask[:150].any() and not mask[450:].any() and not mask[:, 600:].any()


def test_cmu_glass_corner_is_background() -> None:
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        mask = detect_tissue(slide)
        # the top-right corner of CMU-1-Small-Region is empty glass (see bench/out/tissue after bench/tissue_overlays.py)
        assert not mask.any_in(1700, 0, 2200, 400)
        assert mask.any_in(1000, 1500, 1400, 1900)


# -- send order ------------------------------------------------------------------------------------------------
def test_send_plan_overview_first_then_level0_by_priority() -> None:
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        plain = plan_pyramid(slide, ConvertOptions())
        # a synthetic priority map: hotter towards the right edge of the slide
        hot = plan_pyramid(slide, ConvertOptions(), priority=lambda x0, y0, x1, y1: x1 / slide.dimensions[0])
    for plan in (plain, hot):
        order = [task.level for task in plan.shards]
        lowest = {len(plan.levels) - 1, len(plan.levels) - 2}
        assert all(order.index(0) > i for i, level in enumerate(order) if level in lowest)
    level0 = [task for task in hot.shards if task.level == 0]
    assert len(level0) > 1 and all(task.tissue for task in level0)
    assert [task.col for task in level0] == sorted((task.col for task in level0), reverse=True)


def test_without_a_heatmap_level0_sends_the_tissue_densest_in_hematoxylin_first(tmp_path: Path, monkeypatch) -> None:
    """Before any model has looked, the nuclei-dense (purple) corner of pink tissue travels first: where carcinoma
    is likeliest (`TissueMask.hematoxylin_priority`), not the top-left shard of raster order."""
    from support.inference import PINK, PURPLE, write_slide

    monkeypatch.setattr("tiling.plan.COMPLETE_SIDE", 1000)  # level 0 is then sent by tissue, not whole row by row
    slide = write_slide(tmp_path / "nest.tif", (2048, 1536), [(128, 128, 1920, 1408, PINK), (1536, 1024, 1920, 1408, PURPLE)])
    with open_slide(slide) as opened:
        plan = plan_pyramid(opened, ConvertOptions(chunk=256, shard_chunks=2))
    assert plan.tissue is not None and plan.tissue.hematoxylin is not None
    level0 = [(task.row, task.col) for task in plan.shards if task.level == 0 and task.tissue]
    assert len(level0) == 12 and level0[0] == (2, 3), level0


def test_computed_in_between_levels_follow_full_resolution(monkeypatch) -> None:
    """Stored levels travel before the levels computed from them (those add bytes but no information)."""
    monkeypatch.setattr("tiling.plan.COMPLETE_SIDE", 1000)  # CMU then has a computed, incomplete level 1
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        plan = plan_pyramid(slide, ConvertOptions())
    assert [(lv.complete, lv.scale) for lv in plan.levels] == [(False, 1.0), (False, 2.0), (True, 4.0)]
    order = [task.level for task in plan.shards]
    assert order == sorted(order, key=lambda level: {2: 0, 0: 1, 1: 2}[level])


def test_produce_yields_metadata_then_shards_in_plan_order() -> None:
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        plan = plan_pyramid(slide, ConvertOptions())
        pieces = list(produce(slide, plan, "cmu", {}))
    kinds = [piece.kind.value for piece in pieces]
    assert kinds[0] == "metadata" and pieces[0].key == "zarr.json"
    first_shard = kinds.index("shard")
    assert "shard" not in kinds[:first_shard] and all(kind == "shard" for kind in kinds[first_shard:])
    assert [piece.key for piece in pieces[first_shard:]] == [task.key for task in plan.shards]


def test_a_deferred_plan_sends_the_overview_before_the_tissue_is_known_and_ends_with_the_same_image() -> None:
    """A send plans only the overview, streams it, and finds the tissue meanwhile: same objects as a convert."""
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        full = plan_pyramid(slide, ConvertOptions(workers=2))
        deferred = plan_pyramid(slide, ConvertOptions(workers=2), defer_tissue=True)
        assert deferred.tissue is None and {t.level for t in deferred.shards} == {lv.index for lv in deferred.levels if lv.complete}
        order = SendOrder(deferred)
        streamed = list(produce(slide, deferred, "tcga", {}, order))
        converted = list(produce(slide, full, "tcga", {}))
    assert order.plan.settled and order.plan.shards == full.shards
    assert {p.key: p.data for p in streamed} == {p.key: p.data for p in converted}, "the same image either way"
    keys = [p.key for p in streamed]
    overview = [t.key for t in deferred.shards]
    assert max(keys.index(k) for k in overview) < keys.index("labels/tissue/zarr.json") < min(
        keys.index(t.key) for t in full.shards if t.key not in overview
    ), "overview shards, then the tissue label, then the tissue shards"


def test_the_labels_large_levels_follow_among_the_shards_and_make_the_same_image(monkeypatch) -> None:
    """Level 0 of a 1.6 GB slide's tissue label is 5 Gpx: built before the first tissue shard, it held a send's
    uplink idle for 30 s. The large levels are built in the shard pool and yielded as they are done (here every
    level is large): nothing of the label is lost, and its groups still come before the tissue shards."""
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        plan = plan_pyramid(slide, ConvertOptions(workers=2))
        at_once = list(produce(slide, plan, "tcga", {}))
        monkeypatch.setattr(pyramid, "LABEL_AT_ONCE", 0)
        beside = list(produce(slide, plan, "tcga", {}))
    assert {p.key: p.data for p in beside} == {p.key: p.data for p in at_once}, "the same image either way"
    assert len(beside) == len(at_once), "no object twice"
    keys = [p.key for p in beside]
    tissue_shards = [keys.index(t.key) for t in plan.shards if t.tissue and not plan.levels[t.level].complete]
    assert keys.index("labels/tissue/zarr.json") < min(tissue_shards)
    assert {k.split("/")[2] for k in keys if k.startswith("labels/tissue/") and k.count("/") == 3 and k.endswith("/zarr.json")} == {
        str(level.index) for level in plan.levels
    }


def test_a_reader_finds_the_tissue_mask_before_the_labels_large_levels_arrive(tmp_path: Path) -> None:
    """The hub reads the mask from a small label level while the large ones are still on their way."""
    image = convert("CMU-1-Small-Region.svs", tmp_path / "cmu.ome.zarr")
    whole = ZarrSource(Location.parse(image)).tissue()
    shutil.rmtree(image / "labels/tissue/0")  # not arrived yet
    early = ZarrSource(Location.parse(image)).tissue()
    assert early.mask.shape == whole.mask.shape and (early.mask == whole.mask).all() and early.downsample == whole.downsample


def test_image_metadata_equals_what_zarr_itself_writes() -> None:
    """metadata_pieces writes zarr.json without importing zarr (start-up time): it must match zarr's own."""
    from zarr.codecs import BytesCodec, TransposeCodec, ZstdCodec

    from tiling.codec import JpegCodec

    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        for options in (ConvertOptions(), ConvertOptions(quality=70), ConvertOptions(lossless=True)):
            plan = plan_pyramid(slide, options, defer_tissue=True)
            ours = {piece.key: json.loads(piece.data) for piece in metadata_pieces(plan, "cmu", {"vendor": "aperio"})}
            store = zarr.storage.MemoryStore()
            zarr.create_group(store, zarr_format=3, attributes=ours["zarr.json"]["attributes"])
            codecs = (
                {"serializer": BytesCodec(), "compressors": [ZstdCodec(level=5)]}
                if options.lossless
                else {"filters": [TransposeCodec(order=(1, 2, 0))], "serializer": JpegCodec(level=options.quality), "compressors": None}
            )
            for lv in plan.levels:
                zarr.create_array(store, name=str(lv.index), shape=(3, lv.height, lv.width), dtype="uint8", chunks=(3, plan.chunk, plan.chunk),
                                  shards=(3, plan.shard_side, plan.shard_side), dimension_names=["c", "y", "x"], fill_value=plan.fill, **codecs)  # fmt: skip
            assert ours == {key: json.loads(buffer.to_bytes()) for key, buffer in store._store_dict.items()}


# -- bad input -------------------------------------------------------------------------------------------------
def _corrupt_copy(tmp_path: Path) -> Path:
    """CMU-1-Small-Region.svs with one level-0 tile in the middle overwritten by zeros."""
    path = tmp_path / "corrupt.svs"
    path.write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        index = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * count)
    return path


def _convert_cli(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "slidestream", "convert", *args], capture_output=True, text=True, timeout=300)


def test_corrupt_tile_mid_slide_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    result = _convert_cli(str(_corrupt_copy(tmp_path)), str(out))
    assert result.returncode == 2
    assert "corrupt.svs" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


def test_unwritable_output_fails_cleanly(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "out.zarr" if os.geteuid() != 0 else Path("/proc/slidestream-test/out.zarr")
    result = _convert_cli(str(sample("CMU-1-Small-Region.svs")), str(target))
    assert result.returncode == 2 and "cannot write output" in result.stderr and str(target) in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill the disk needs root")
def test_full_disk_fails_cleanly_and_leaves_nothing_complete(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "out.zarr"
        result = _convert_cli(str(sample("TCGA-CR-7395-jp2k.svs")), str(out))
        assert result.returncode == 2
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
        assert not out.exists() and not (disk / "out.zarr.partial").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_heatmap_arriving_mid_stream_reorders_the_shards_not_yet_built() -> None:
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        plan = plan_pyramid(slide, ConvertOptions(workers=1))
        order = SendOrder(plan)
        pieces = produce(slide, plan, "tcga", {}, order)
        first = [next(pieces) for _ in range(len(metadata_pieces(plan, "tcga", {})) + 3)]
        # hot towards the bottom of the slide; arrives after a few shards were built
        order.reprioritize(lambda x0, y0, x1, y1: y1 / slide.dimensions[1])
        rest = list(pieces)
    keys = [p.key for p in first + rest if p.kind.value == "shard"]
    assert sorted(keys) == sorted(task.key for task in plan.shards), "every shard exactly once"
    level0 = [p for p in rest if p.level == 0]
    rows = [int(p.key.split("/")[3]) for p in level0]
    assert rows == sorted(rows, reverse=True), "level 0 follows the new priority: bottom rows first"


# -- background ------------------------------------------------------------------------------------------------
def absent_chunks(array_dir: Path, n: int) -> list[tuple[str, int]]:
    """(shard key, chunk index) of every chunk that the level's shards leave out (background)."""
    from tiling.shard_format import EMPTY

    absent = []
    for shard in sorted(p for p in (array_dir / "c").rglob("*") if p.is_file()):
        index = np.frombuffer(shard.read_bytes()[-(16 * n * n + 4) : -4], dtype="<u8").reshape(n * n, 2)
        absent += [(str(shard.relative_to(array_dir)), i) for i in np.flatnonzero(index[:, 0] == EMPTY)]
    return absent


@pytest.mark.parametrize(("name", "field", "fill"), [("ndpi-fluorescence-DAPI.ndpi", "dark-field", 0), ("TCGA-CR-7395-jp2k.svs", "bright-field", 255)])
def test_omitted_background_reads_as_the_slides_own_background(tmp_path: Path, name: str, field: str, fill: int) -> None:
    out = convert(name, tmp_path / "x.zarr")
    background = json.loads((out / "zarr.json").read_text())["attributes"]["slidestream"]["background"]
    where = " where no pixel reads more than 16 over the fill value" if fill == 0 else ""  # dark-field: judged by its pixels
    assert background == {"field": field, "fill_value": fill, "chunks": f"omitted above the overview levels{where}"}
    assert absent_chunks(out / "0", 8), "level 0 leaves background chunks out"
    reference = np.asarray(openslide.OpenSlide(sample(name)).read_region((0, 0), 0, openslide.OpenSlide(sample(name)).dimensions))[..., :3]
    got = level(out, 0)
    if fill == 0:  # openslide's DAPI level 0 averages 13; white blocks would make the difference ~90
        assert np.abs(got.astype(int) - reference).mean() < 1
        assert (got == 255).all(axis=2).mean() < 0.001
        # no omitted chunk held signal (one read 0 where openslide shows 255): what is left is JPEG's error, 16 here
        assert np.abs(got.astype(int) - reference).max() <= 20
    else:  # an omitted chunk of glass reads white
        chunk = json.loads((out / "zarr.json").read_text())["attributes"]["slidestream"]["chunk"]
        key, index = absent_chunks(out / "0", 8)[0]
        row, col = (int(part) for part in key.split("/")[-2:])
        y, x = (row * 8 + index // 8) * chunk, (col * 8 + index % 8) * chunk
        assert (got[y : y + chunk, x : x + chunk] == 255).all()
        assert reference[y : y + chunk, x : x + chunk].mean() > 200, "and it is glass in the source"
