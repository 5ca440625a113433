"""Model packages a centre brings (inference/packages.py), their validation before use (inference/validation.py,
`slidestream models`) and their maps from `slidestream analyze` and `slidestream hub`: tiny models of the tests' own,
exported to TorchScript and ONNX with WSInfer-style configs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from conftest import S3Server, sample
from PIL import Image
from sklearn.metrics import roc_auc_score
from support import STATION, colorectal_context, final_triage, send_args, slide_version, slidestream, stored_json
from torch import nn
from typer.testing import CliRunner

from caseformat.errors import DocumentError
from caseformat.layout import HEATMAP, TRIAGE, qualified_case
from caseformat.results import Triage
from inference.model import ModelChecksumError
from inference.packages import covers, load, read_package
from inference.validation import RECORD, ValidationRecord, read_record
from slidestream.cli import app

CLASSES = ["adenocarcinoma epithelium", "normal mucosa", "background"]
PATCH, RESIZE, SPACING = 32, 24, 0.5
MEAN, STD = [0.7, 0.55, 0.68], [0.15, 0.15, 0.1]
THRESHOLD = 0.4
TILE, TILE_SPACING = 64, 0.25  # labelled tiles: 64 px at 0.25 um/px, the 16 um field the model sees as 32 px


class ColourNet(nn.Module):
    """A small CNN with set weights: redder tiles score as the first class, so scores spread and AUC means something."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            for channel in range(3):
                self.conv.weight[channel, channel, 1, 1] = 1.0
            self.head.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.5]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return logits


def config(sha256: str) -> dict[str, Any]:
    return {
        "spec_version": "1.0", "architecture": "colournet", "num_classes": 3, "class_names": CLASSES,
        "patch_size_pixels": PATCH, "spacing_um_px": SPACING,
        "transform": [{"name": "Resize", "arguments": {"size": RESIZE}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}}],
        "slidestream": {"detects": "colorectal adenocarcinoma epithelium", "positive_classes": [CLASSES[0]],
                        "threshold": THRESHOLD, "sha256": sha256,
                        "intended_use": {"sites": ["colon", "sigmoid colon", "rectum"], "stains": ["H&E"],
                                         "spacing_um_px": [0.4, 0.6]}},
    }  # fmt: skip


def write_package(folder: Path, weights: Path) -> Path:
    folder.mkdir()
    shutil.move(weights, folder / weights.name)
    sha256 = hashlib.sha256((folder / weights.name).read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config(sha256)))
    return folder


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same network as a TorchScript package and as an ONNX package."""
    root = tmp_path_factory.mktemp("models")
    net = ColourNet().eval()
    example = torch.rand(2, 3, RESIZE, RESIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, and the ONNX exporter that needs no onnxscript
        torch.jit.trace(net, example).save(str(root / "model.pt"))  # type: ignore[no-untyped-call]
        torch.onnx.export(net, (example,), str(root / "model.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"torchscript": write_package(root / "colon-ts", root / "model.pt"),
            "onnx": write_package(root / "colon-onnx", root / "model.onnx")}


def colour_tiles(rng: np.random.Generator, base: tuple[int, int, int], count: int) -> list[np.ndarray]:
    tiles = []
    for _ in range(count):
        colour = np.clip(np.array(base) + rng.normal(0, 35, 3), 0, 255)
        tiles.append(np.clip(colour + rng.normal(0, 20, (TILE, TILE, 3)), 0, 255).astype(np.uint8))
    return tiles


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tumor/ (pinker) and normal/ (less red) tiles whose colours overlap, and labels.json naming their classes."""
    folder = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(1)
    for name, base in (("tumor", (200, 120, 190)), ("normal", (170, 150, 190))):
        (folder / name).mkdir()
        for index, tile in enumerate(colour_tiles(rng, base, 12)):
            Image.fromarray(tile).save(folder / name / f"{index:02d}.png")
    (folder / "labels.json").write_text(json.dumps({"tumor": CLASSES[0], "normal": CLASSES[1]}))
    return folder


def test_torchscript_and_onnx_packages_give_the_same_probabilities(packages: dict[str, Path]) -> None:
    tiles = np.stack(colour_tiles(np.random.default_rng(0), (190, 130, 190), 5)[:5])[:, :PATCH, :PATCH]
    scripted = load(read_package(packages["torchscript"]))
    onnx = load(read_package(packages["onnx"]))
    probs = scripted.predict(tiles)
    np.testing.assert_allclose(onnx.predict(tiles), probs, atol=1e-5)
    # the config's transform is what reaches the network: resized, scaled, normalised, then a softmax
    resized = np.stack([np.asarray(Image.fromarray(tile).resize((RESIZE, RESIZE), Image.Resampling.BILINEAR)) for tile in tiles])
    x = (torch.from_numpy(resized).permute(0, 3, 1, 2) / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    expected = torch.softmax(ColourNet()(x.float()), dim=1).detach().numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(scripted.score(probs), probs[:, 0])
    assert scripted.spec.input_size == PATCH and scripted.spec.mpp == SPACING and scripted.spec.score_classes == (0,)


def test_weights_other_than_the_config_names_are_refused_in_one_line(packages: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(packages["onnx"], tmp_path / "colon-onnx")
    settings = json.loads((copy / "config.json").read_text())
    settings["slidestream"]["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ModelChecksumError) as refused:
        load(read_package(copy))
    assert "\n" not in str(refused.value) and "SHA-256" in str(refused.value) and "model.onnx" in str(refused.value)


@pytest.mark.parametrize(("change", "named"), [
    (lambda c: c.pop("patch_size_pixels"), "patch_size_pixels"),
    (lambda c: c.update(spacing_um_px=-0.5), "spacing_um_px"),
    (lambda c: c["slidestream"].pop("threshold"), "threshold"),
    (lambda c: c["slidestream"]["intended_use"].update(spacing_um_px=[0.6, -1]), "spacing_um_px"),
    (lambda c: c["slidestream"].update(detects="tumour"), "detects"),
    (lambda c: c["slidestream"].update(positive_classes=["tumour"]), "positive_classes"),
    (lambda c: c.update(transform=[{"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}}, {"name": "ToTensor"}]), "transform"),
])  # fmt: skip
def test_a_config_with_a_missing_or_impossible_field_is_refused_in_one_line(packages: dict[str, Path], tmp_path: Path,
                                                                           change: Callable[[dict[str, Any]], object], named: str) -> None:
    copy = shutil.copytree(packages["torchscript"], tmp_path / "colon")
    settings = json.loads((copy / "config.json").read_text())
    change(settings)
    (copy / "config.json").write_text(json.dumps(settings))
    with pytest.raises(DocumentError) as refused:
        read_package(copy)
    assert "\n" not in str(refused.value) and named in str(refused.value)


def test_validate_gives_scikit_learns_auc_and_hand_counted_sensitivity(packages: dict[str, Path], labelled: Path,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no config file of the machine's user
    package = shutil.copytree(packages["torchscript"], tmp_path / "models" / "colon")
    runner = CliRunner()
    done = runner.invoke(app, ["models", "validate", str(package), str(labelled), "--spacing", str(TILE_SPACING),
                               "--describe", "synthetic pink and grey tiles"])
    assert done.exit_code == 0, done.output
    record = ValidationRecord.read((package / RECORD).read_bytes(), RECORD)

    # the same scores, computed here: each 64 px tile at 0.25 um/px is the model's 16 um field, taken down to 32 px
    model = load(read_package(package))
    truth, scores = [], []
    for name, positive in (("normal", False), ("tumor", True)):
        for path in sorted((labelled / name).glob("*.png")):
            tile = np.asarray(Image.open(path).convert("RGB").resize((PATCH, PATCH), Image.Resampling.BOX))
            scores.append(float(model.score(model.predict(tile[None]))[0]))
            truth.append(positive)
    truth_array, score_array = np.array(truth), np.array(scores)
    assert record.auc == pytest.approx(roc_auc_score(truth_array, score_array), abs=1e-9)
    assert 0.5 < record.auc < 1  # the colours overlap: neither a coin toss nor a perfect split
    low, high = record.auc_ci95
    assert low < record.auc < high and high - low > 0.05
    flagged = score_array >= THRESHOLD
    assert record.sensitivity == (flagged & truth_array).sum() / truth_array.sum()
    assert record.specificity == (~flagged & ~truth_array).sum() / (~truth_array).sum()
    assert 0 < record.sensitivity < 1 and 0 < record.specificity < 1
    assert (record.n, record.n_positive, record.tile_spacing_um_px) == (24, 12, TILE_SPACING)
    assert {label: sum(row.values()) for label, row in record.confusion.items()} == {CLASSES[0]: 12, CLASSES[1]: 12}
    assert record.data == "synthetic pink and grey tiles" and record.sha256 == read_package(package).sha256
    assert f"{record.auc:.3f}" in done.output and "sensitivity" in done.output

    shown = runner.invoke(app, ["models", "show", "colon", "--dir", str(tmp_path / "models")])
    assert shown.exit_code == 0 and "ROC AUC" in shown.output and "synthetic pink and grey tiles" in shown.output
    listed = runner.invoke(app, ["models", "list", "--dir", str(tmp_path / "models")])
    assert listed.exit_code == 0 and "colon: detects colorectal adenocarcinoma epithelium" in listed.output
    assert f"AUC {record.auc:.3f} on 24 tiles" in listed.output


def test_onnx_package_validates_like_its_torchscript_twin(packages: dict[str, Path], labelled: Path) -> None:
    from inference.validation import validate

    records = [validate(read_package(packages[kind]), labelled, spacing=TILE_SPACING) for kind in ("torchscript", "onnx")]
    assert records[0].auc == pytest.approx(records[1].auc, abs=1e-6)
    assert records[0].confusion == records[1].confusion


def test_a_record_of_other_weights_is_not_shown(packages: dict[str, Path], labelled: Path, tmp_path: Path) -> None:
    from inference.validation import validate, write_record

    package = read_package(shutil.copytree(packages["torchscript"], tmp_path / "colon"))
    write_record(package, validate(package, labelled, spacing=TILE_SPACING))
    assert read_record(package) is not None
    settings = json.loads((package.folder / "config.json").read_text())
    settings["slidestream"]["sha256"] = "1" * 64  # the weights were replaced after validation
    (package.folder / "config.json").write_text(json.dumps(settings))
    assert read_record(read_package(package.folder)) is None


def test_tiles_smaller_than_the_models_field_are_refused(packages: dict[str, Path], labelled: Path) -> None:
    from inference.validation import ValidationError, validate

    with pytest.raises(ValidationError, match="smaller than the 16 um field"):
        validate(read_package(packages["torchscript"]), labelled, spacing=0.1)  # 64 px at 0.1 um/px: 6.4 um


def test_covers_refuses_other_sites_stains_and_resolutions(packages: dict[str, Path]) -> None:
    package = read_package(packages["torchscript"])
    assert covers(package, "Colon", "H&E", 0.5) is None
    assert covers(package, "skin", "H&E", 0.5) == "no validated AI for skin"
    assert covers(package, "head and neck", "H&E", 0.5) == "no validated AI for head and neck"
    assert covers(package, "colon", "IHC", 0.5) == "no validated AI for IHC"
    assert covers(package, "colon", "fluorescence", 0.5) == "no validated AI for fluorescence"
    assert covers(package, "colon", "H&E", 2.0) == "no validated AI at 2 um/px (colon-ts is validated for 0.4-0.6 um/px)"
    assert covers(package, None, "H&E", 0.5) == "no validated AI: the specimen site is not known"


def test_the_default_model_ships_its_public_record_and_keeps_a_centres_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record measured on public CRC-VAL-HE-7K tiles (README) is what the viewer shows beside the default model's
    map until the centre validates on its own tiles; a record the centre wrote is never replaced by it."""
    from inference.model import default_package

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = default_package()
    record = read_record(package)
    assert record is not None and record.n == 32 and round(record.auc, 3) == 0.991 and "CRC-VAL-HE-7K" in record.data
    own = json.loads((package.folder / RECORD).read_text()) | {"data": "the centre's own frozen sections", "n": 400}
    (package.folder / RECORD).write_text(json.dumps(own))
    kept = read_record(default_package())
    assert kept is not None and kept.data == "the centre's own frozen sections" and kept.n == 400


def analyzed(package: Path, out: Path, site: str) -> tuple[dict[str, str], str]:
    """`slidestream analyze` of CMU-1-Small-Region (H&E, 0.499 um/px) as a user runs it, with `package` and the
    specimen `site`: the report's row and what the command wrote."""
    report = out / "report.csv"
    env = {**os.environ, "XDG_CONFIG_HOME": str(out / "config")}  # no config file of the machine's user
    done = slidestream("analyze", sample("CMU-1-Small-Region.svs"), "--report", report, "--out", out, "--model", package,
                       "--site", site, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with report.open() as fh:
        (row,) = csv.DictReader(fh)
    return row, done.stdout + done.stderr


@pytest.mark.slow  # `slidestream analyze` twice, one process each
def test_analyze_scores_a_colorectal_slide_with_either_package_and_both_maps_agree(packages: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    maps = {}
    for kind, package in packages.items():
        row, output = analyzed(package, tmp_path / kind, "sigmoid colon")
        assert row["status"] == "ok" and row["score"] != "" and row["refused"] == "", output
        case = tmp_path / kind / row["case"]
        triage = Triage.read((case / TRIAGE).read_bytes())
        assert triage.model == package.name and triage.summary["model_sha256"] == read_package(package).sha256
        assert triage.summary["detects"] == "colorectal adenocarcinoma epithelium"  # the legend's words, as the hub's map has them
        assert triage.routed is not None and (triage.routed.site, triage.routed.stain) == ("sigmoid colon", "H&E")
        assert triage.valid_score is not None and triage.tiles_scored == triage.tissue_tiles > 100
        attributes = json.loads((case / HEATMAP / "zarr.json").read_bytes())["attributes"]
        assert attributes["slidestream"]["heatmap"]["model"] == package.name
        maps[kind] = np.asarray(zarr.open_array(case / HEATMAP / "0", mode="r")[:]).astype(int)  # score x 255; 0: background
    torchscript, onnx = maps["torchscript"], maps["onnx"]
    assert len(np.unique(torchscript[torchscript > 0])) > 10  # a map with something to agree on, not one colour
    assert np.abs(torchscript - onnx).max() <= 1  # the same network: at most a rounding apart, tile for tile


def test_analyze_with_a_package_made_for_other_sites_gives_no_score(packages: dict[str, Path], tmp_path: Path) -> None:
    row, output = analyzed(packages["onnx"], tmp_path, "skin")
    assert row["status"] == "no validated AI" and row["refused"] == "no validated AI for skin" and row["score"] == ""
    assert "no validated AI for skin" in output
    triage = Triage.read((tmp_path / row["case"] / TRIAGE).read_bytes())
    assert triage.refused == "no validated AI for skin" and triage.score is None and triage.valid_score is None
    assert not (tmp_path / row["case"] / HEATMAP).exists()


@pytest.mark.slow  # a send and a hub against the real S3 server
def test_the_hub_gives_a_colorectal_case_its_final_map_from_an_onnx_package(packages: dict[str, Path], s3_server: S3Server,
                                                                           s3_bucket: str, tmp_path: Path) -> None:
    package = packages["onnx"]
    store, endpoint = f"s3://{s3_bucket}/cases", s3_server.endpoint_url
    context = ("--case", "onnx-1", "--context-file", colorectal_context())  # a sigmoid colon: a site the package covers
    sent = slidestream("send", sample("CMU-1-Small-Region.svs"), *send_args(s3_server, s3_bucket, tmp_path / "state", *context))
    assert sent.returncode == 0, sent.stderr
    hub = slidestream("hub", store, "--endpoint-url", endpoint, "--once", "--model", package,
                      env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}, timeout=600)  # fmt: skip
    assert hub.returncode == 0, hub.stderr
    location = slide_version(store, endpoint, qualified_case(STATION, "onnx-1"))
    final = final_triage(location)
    assert final is not None, hub.stderr
    triage = Triage.read(json.dumps(final).encode())
    assert triage.model == package.name and triage.summary["model_sha256"] == read_package(package).sha256
    assert triage.summary["detects"] == "colorectal adenocarcinoma epithelium"
    assert triage.routed is not None and (triage.routed.site, triage.routed.stain) == ("sigmoid colon", "H&E")
    assert triage.valid_score is not None and triage.tiles_scored == triage.tissue_tiles > 100
    heatmap = stored_json(location.child(HEATMAP), "zarr.json")["attributes"]["slidestream"]["heatmap"]
    assert heatmap["model"] == package.name and heatmap["complete"] and heatmap["tiles_scored"] == triage.tiles_scored
