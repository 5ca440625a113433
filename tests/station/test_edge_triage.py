"""The station's edge triage routes a slide by the hub's rule before any model sees it, and scores a sample of tissue
tiles exactly as the hub scores them: a slide no model is validated for gets its refusal and QC, never a score; a
colorectal one a first map on the hub's tile grid whose every scored tile carries the full analysis's score."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import S3Server
from support import STATION, colorectal_context, scorable, slide_version, slidestream
from typer.testing import CliRunner

from caseformat.layout import EDGE, HEATMAP, TRIAGE, qualified_case
from caseformat.results import Routed, Triage
from inference.tiles import spread_sample
from slidestream.cli import app
from station.edge import SAMPLED_TILES


def specimen(folder: Path, site: str) -> Path:
    """A send's --context-file registering a specimen of `site`."""
    path = folder / f"{site}.json"
    path.write_text(json.dumps({"specimen_site": site}))
    return path


def send(s3_server: S3Server, s3_bucket: str, state: Path, local: str, context: Path, *extra: str) -> tuple[str, Triage]:
    """`send --edge` of the scorable sample as case `local`: what it printed, and the station's own triage.json."""
    store = f"s3://{s3_bucket}/cases"
    sent = CliRunner().invoke(app, ["send", str(scorable()), store, "--case", local, "--station", STATION, "--endpoint-url",
                                    s3_server.endpoint_url, "--state-dir", str(state), "--context-file", str(context), "--edge",
                                    *extra])  # fmt: skip
    assert sent.exit_code == 0, sent.output
    edge = slide_version(store, s3_server.endpoint_url, qualified_case(STATION, local)).sent.read_bytes(TRIAGE)
    assert edge is not None, sent.output
    return sent.output, Triage.read(edge)


@pytest.mark.slow  # a send with edge triage (the model in a process of its own)
def test_a_skin_case_gets_its_refusal_and_qc_at_the_edge_never_a_score(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    said, triage = send(s3_server, s3_bucket, tmp_path / "state", "SKIN-1", specimen(tmp_path, "skin"))
    assert "edge triage: no validated AI for skin" in said and "triage heatmap" not in said, said
    assert triage.stage == EDGE and triage.refused == "no validated AI for skin"
    assert triage.score is None and triage.valid_score is None and triage.routed is None and triage.tiles_scored == 0
    assert triage.summary["qc"]["focus_tiles"] > 0 and triage.summary["qc"]["blur_fraction"] is not None
    location = slide_version(f"s3://{s3_bucket}/cases", s3_server.endpoint_url, qualified_case(STATION, "SKIN-1"))
    assert not location.sent.exists(f"{HEATMAP}/zarr.json"), "a refused slide has no heatmap"


@pytest.mark.slow  # a send with edge triage (the model in a process of its own)
def test_a_colorectal_case_s_edge_map_is_the_hubs_tiles_scored_as_the_hub_scores_them(s3_server: S3Server, s3_bucket: str,
                                                                                      tmp_path: Path) -> None:
    from inference import AnalyzeOptions, ModelRef, analyze_slide
    from inference.model import default_package
    from inference.pipeline import edge_map, edge_priority

    said, triage = send(s3_server, s3_bucket, tmp_path / "state", "CRC-1", colorectal_context())
    assert "triage heatmap available" in said, said
    assert triage.routed == Routed("sigmoid colon", "H&E", 0.5) and triage.valid_score is not None
    assert triage.tiles_scored == triage.summary["tiles_measured"] == SAMPLED_TILES < triage.tissue_tiles

    options = AnalyzeOptions(model=ModelRef.of_package(default_package()))
    location = slide_version(f"s3://{s3_bucket}/cases", s3_server.endpoint_url, qualified_case(STATION, "CRC-1"))
    edge = edge_map(location, options)  # as the hub reads it: on the grid it scores
    assert edge is not None
    full = analyze_slide(scorable(), None, options)  # every tissue tile at full magnification
    sampled = np.isfinite(edge.score)
    assert sampled.sum() == SAMPLED_TILES and not (sampled & ~full.tissue).any()
    np.testing.assert_allclose(edge.score[sampled], full.score[sampled], atol=1e-5)
    priority = edge_priority(location, options)  # the hub's order: the sampled tiles by score, then the rest
    assert priority is not None and (priority >= 0).sum() == SAMPLED_TILES
    np.testing.assert_array_equal(priority[sampled], edge.score[sampled])


@pytest.mark.slow  # a send with edge triage (the model in a process of its own)
def test_send_model_is_the_package_the_edge_scores_with_and_resume_keeps_it(s3_server: S3Server, s3_bucket: str,
                                                                             tmp_path: Path) -> None:
    """A package validated for skin (the default model's weights, its intended use rewritten) scores the skin case."""
    from inference.model import default_package

    default = default_package()
    package = tmp_path / "skin-trial"
    package.mkdir()
    (package / default.weights.name).symlink_to(default.weights.resolve())
    config = json.loads((default.folder / "config.json").read_text())
    config["slidestream"]["intended_use"]["sites"] = ["skin"]
    (package / "config.json").write_text(json.dumps(config))
    state = tmp_path / "state"

    said, triage = send(s3_server, s3_bucket, state, "SKIN-2", specimen(tmp_path, "skin"), "--model", str(package))
    assert "triage heatmap available" in said, said
    assert triage.model == "skin-trial" and triage.routed == Routed("skin", "H&E", 0.5) and triage.valid_score is not None
    with sqlite3.connect(state / "journal.sqlite3") as db:
        (args,) = [json.loads(row[0]) for row in db.execute("SELECT args FROM sends")]
    assert args["model"] == str(package.resolve()), "what `resume` sends with"


def test_a_package_that_cannot_be_used_stops_the_send_before_it_starts(tmp_path: Path) -> None:
    shutil.copyfile(scorable(), tmp_path / "slide.tiff")
    sent = slidestream("send", tmp_path / "slide.tiff", "s3://bucket/cases", "--station", STATION, "--state-dir", tmp_path / "state",
                       "--model", tmp_path / "no-such-package")  # fmt: skip
    assert sent.returncode != 0 and f"model package not found: {tmp_path / 'no-such-package'}" in sent.stderr, sent.stderr
    assert not (tmp_path / "state").exists(), "nothing was sent, nothing journaled"


@pytest.mark.parametrize("count", [1, 7, 80])
def test_the_sample_is_spread_over_every_fragment_of_tissue(count: int) -> None:
    tissue = np.zeros((40, 60), bool)
    tissue[2:12, 3:30] = True  # two fragments far apart, one three times the other
    tissue[25:35, 40:49] = True
    sample = spread_sample(tissue, count)
    assert sample.sum() == count and not (sample & ~tissue).any()
    if count > 2:
        assert sample[:20].any() and sample[20:].any(), "both fragments are looked at"
    assert (spread_sample(tissue, 10_000) == tissue).all()


def test_half_the_edge_sample_goes_where_the_hematoxylin_is_densest_and_never_to_one_nest_alone() -> None:
    from inference.order import edge_sample

    tissue = np.zeros((40, 60), bool)
    tissue[2:12, 3:30] = True
    tissue[25:35, 40:49] = True
    hematoxylin = np.where(tissue, 0.1, -1.0)
    hematoxylin[30:33, 44:47] = 0.9  # one dense nest of 3 x 3 tiles in the small fragment
    hematoxylin[5, 10] = 0.8  # and a dense tile in the large one
    sample = edge_sample(tissue, hematoxylin, 20)
    assert sample.sum() == 20 and not (sample & ~tissue).any()
    assert sample[5, 10] and sample[30:33, 44:47].any(), "the densest tissue is looked at"
    assert sample[30:33, 44:47].sum() <= 4, "not the whole nest (its corners at most): its tiles agree with one another"
    assert (sample & ~spread_sample(tissue, 10)).sum() >= 8 and sample[:20].sum() > 2 and sample[20:].sum() > 2
    assert (edge_sample(tissue, None, 20) == spread_sample(tissue, 20)).all(), "spread alone without a hematoxylin rank"


def test_the_send_order_puts_a_hot_sample_first_then_the_tissue_densest_in_hematoxylin() -> None:
    """As the hub orders its work: a shard with a sampled tile at or above the threshold first, then by hematoxylin
    (below the threshold), so a cold sample does not lift its shard above denser tissue."""
    from inference import CAPRICORN, Heatmap
    from inference.tiles import TileGrid
    from station.edge import send_priority
    from tiling.tissue import TissueMask

    heatmap = Heatmap(TileGrid(100, 1000, 100), np.ones((1, 10), bool), CAPRICORN, 0.5, False, "case/s1/v1", EDGE)
    heatmap.score[0, 1], heatmap.score[0, 8] = 0.9, 0.1  # the two tiles the edge sampled
    denser_to_the_right = np.linspace(0.0, 1.0, 10, dtype=np.float32)[None, :]  # one view pixel a tile
    priority = send_priority(heatmap, TissueMask(np.ones((1, 10), bool), 100.0, False, denser_to_the_right), 0.5)
    boxes = [(j * 100, 0, (j + 1) * 100, 100) for j in range(10)]
    assert sorted(range(10), key=lambda j: -priority(*boxes[j])) == [1, 9, 8, 7, 6, 5, 4, 3, 2, 0]
    assert priority(*boxes[1]) == pytest.approx(0.9) and max(priority(*box) for box in boxes[2:]) < 0.5
    assert np.isnan(heatmap.score[0, 3]), "the published map keeps what the edge did not score unscored"
