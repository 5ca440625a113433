"""Receiving side: a case on the real S3 server is analysed while it arrives, and ends equal to a one-shot analysis."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import S3Server, sample
from support import stored_json

from inference import AnalyzeOptions, ModelRef, ModelSpec, analyze_case, follow_case
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, Piece, PieceKind, plan_pyramid, produce, write_pieces

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

SLIDE = "CMU-1-Small-Region.svs"  # 2220 x 2967 at 0.499 um/px: level 0 is 2 x 2 shards of 1920 px


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Piece], Path]:
    """The slide's pieces in send order, and the same case written to a local folder."""
    with open_slide(sample(SLIDE)) as slide:
        plan = plan_pyramid(slide, ConvertOptions())
        pieces = list(produce(slide, plan, SLIDE, {"mpp": list(slide.mpp)}))
    case = tmp_path_factory.mktemp("local") / "case"
    write_pieces(pieces, case / "image.zarr")
    return pieces, case


class Darkness(torch.nn.Module):
    """A stand-in model (what is under test is which tiles get scored when): "probability" = mean darkness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (1 - x.mean(dim=(1, 2, 3))).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-dark), torch.log(dark)], dim=1)


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> AnalyzeOptions:
    path = tmp_path_factory.mktemp("model") / "darkness.pt"
    torch.jit.script(Darkness()).save(str(path))
    spec = ModelSpec(name="darkness", input_size=224, mpp=0.5, class_names=("light", "dark"), score_classes=(1,))
    return AnalyzeOptions(model=ModelRef(str(path), spec))


class Upload:
    """Puts a case on S3 the way a sender does: objects first, then the manifest that lists them as arrived."""

    def __init__(self, server: S3Server, bucket: str, pieces: list[Piece]) -> None:
        self.client, self.bucket, self.pieces = server.client(), bucket, pieces
        self.arrived: list[str] = []

    def send(self, keep: Callable[[Piece], bool], complete: bool) -> None:
        for piece in self.pieces:
            if keep(piece) and piece.key not in self.arrived:
                self.client.put_object(Bucket=self.bucket, Key=f"cases/case/image.zarr/{piece.key}", Body=piece.data)
                if piece.kind is PieceKind.SHARD:
                    self.arrived.append(piece.key)
        manifest = {
            "format": "slidestream-manifest/1",
            "planned": [p.key for p in self.pieces if p.kind is PieceKind.SHARD],
            "arrived": self.arrived,
            "complete": complete,
            "milestones": {},
        }
        self.client.put_object(Bucket=self.bucket, Key="cases/case/manifest.json", Body=json.dumps(manifest).encode())


def not_bottom_of_level0(piece: Piece) -> bool:
    """Everything but the level-0 shards of the lower half (shard row 1: pixel rows 1920 and below)."""
    return not piece.key.startswith("0/c/0/1/")


def test_partial_case_gets_partial_heatmap_then_equals_one_shot_run(converted, options: AnalyzeOptions, s3_server: S3Server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    pieces, local = converted
    upload = Upload(s3_server, s3_bucket, pieces)
    case = Location(f"s3://{s3_bucket}/cases/case", s3_server.endpoint_url)
    upload.send(not_bottom_of_level0, complete=False)

    partial = analyze_case(case, options=options)
    triage = stored_json(case, "triage.json")
    assert triage["complete"] is False and partial.complete is False
    tile = partial.grid.tile  # 224.45 level-0 px
    rows_in = int(1920 // tile)  # tile rows whose pixels all lie above row 1920 (0-7)
    assert partial.scored[:rows_in].sum() == partial.tissue[:rows_in].sum() > 0, "arrived tissue is all scored"
    assert not partial.scored[rows_in:].any(), "nothing scored where shards have not arrived"
    stored = np.asarray(zarr.open_array(case.child("heatmap.zarr", "0").zarr_store(), mode="r")[:])[0]
    assert (stored[rows_in:] == 0).all() and stored[:rows_in].any()
    assert triage["summary"]["tiles_scored"] < triage["summary"]["tissue_tiles"]

    upload.send(lambda piece: True, complete=True)
    final = analyze_case(case, options=options, heatmap=partial)
    one_shot = analyze_case(local, options=options)
    assert final.complete and stored_json(case, "triage.json")["complete"] is True
    assert final.measured.sum() == final.tissue.sum() == one_shot.tissue.sum()
    stored = np.asarray(zarr.open_array(case.child("heatmap.zarr", "0").zarr_store(), mode="r")[:])[0]
    np.testing.assert_array_equal(stored, one_shot.image())
    np.testing.assert_array_equal(stored[:rows_in], partial.image()[:rows_in])  # early scores were final scores


def test_a_tissue_label_that_lands_after_the_first_pass_is_still_scored(converted, options: AnalyzeOptions, s3_server: S3Server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    """A sender publishes `plan_final` once it knows the tissue; its label objects can land a pass later. The first
    pass then reads no tissue, and the case must not end "complete" with nothing scored (seen on the 1.6 GB slide:
    a hub map of 0/0 tiles)."""
    pieces, local = converted
    upload = Upload(s3_server, s3_bucket, pieces)
    case = Location(f"s3://{s3_bucket}/cases/case", s3_server.endpoint_url)
    upload.send(lambda piece: not (piece.key.startswith("labels/") and not piece.key.endswith("zarr.json")), complete=False)  # its metadata, not its pixels

    early = analyze_case(case, options=options)
    assert not early.tissue.any() and not early.complete
    upload.send(lambda piece: True, complete=True)
    final = analyze_case(case, options=options, heatmap=early)
    one_shot = analyze_case(local, options=options)
    assert final.complete and final.tissue.sum() == final.measured.sum() == one_shot.tissue.sum() > 0
    stored = np.asarray(zarr.open_array(case.child("heatmap.zarr", "0").zarr_store(), mode="r")[:])[0]
    np.testing.assert_array_equal(stored, one_shot.image())


def test_follow_finishes_when_the_manifest_says_complete(converted, options: AnalyzeOptions, s3_server: S3Server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    pieces, _ = converted
    upload = Upload(s3_server, s3_bucket, pieces)
    case = Location(f"s3://{s3_bucket}/cases/case", s3_server.endpoint_url)
    upload.send(not_bottom_of_level0, complete=False)

    updates: list[bool] = []
    first_pass = threading.Event()
    result: dict[str, object] = {}

    def on_update(heatmap) -> None:  # type: ignore[no-untyped-def]
        updates.append(heatmap.complete)
        first_pass.set()

    def follow() -> None:
        try:
            result["heatmap"] = follow_case(case, options=options, poll_seconds=0.2, timeout=300, on_update=on_update)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            result["error"] = error

    thread = threading.Thread(target=follow)
    thread.start()
    assert first_pass.wait(120), result.get("error")
    assert stored_json(case, "triage.json")["complete"] is False
    upload.send(lambda piece: True, complete=True)
    thread.join(300)
    assert "error" not in result, result.get("error")
    assert updates[0] is False and updates[-1] is True
    assert result["heatmap"].complete and stored_json(case, "triage.json")["complete"] is True  # type: ignore[attr-defined]
