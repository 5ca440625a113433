"""Model packages: a model a centre brings is a folder, not code, so that choosing, checking and replacing it needs no
release of slidestream.

A package holds one weights file (TorchScript `.pt`, ONNX `.onnx` run with onnxruntime, or the Keras 3 DenseNet121
`.keras` the default model ships as) and `config.json` in the WSInfer model-config format (spec_version 1.0,
architecture, num_classes, class_names, patch_size_pixels, spacing_um_px, transform), so a WSInfer zoo folder loads
once slidestream's additions are written into its `slidestream` object:

    "slidestream": {
      "detects": "colorectal adenocarcinoma epithelium",   # what a hot tile means, never a bare "tumour"
      "positive_classes": ["colorectal adenocarcinoma epithelium"],  # their probabilities add up to the score
      "threshold": 0.5,                                     # a tile at or above it is flagged
      "intended_use": {"sites": ["colon", "rectum"], "stains": ["H&E"], "spacing_um_px": [0.4, 0.6]},
      "sha256": "<the weights file's SHA-256>"
    }

The SHA-256 is checked each time the weights are loaded: a package whose weights changed after it was validated is
refused, since its validation record (`inference.validation`) would describe another model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from caseformat import bounded
from caseformat.bounded import Fields
from caseformat.errors import DocumentError
from inference.model import ModelError, ModelSpec, load_keras, verify_sha256
from slides.errors import first_line

CONFIG = "config.json"
SPEC_VERSIONS = ("1.0",)
WEIGHT_SUFFIXES = (".pt", ".onnx", ".keras")
STAINS = ("H&E", "IHC", "fluorescence")
GENERIC_TARGETS = frozenset({"tumour", "tumor", "cancer", "malignancy", "malignant", "lesion", "positive", "abnormal"})
"""What `detects` may not be: a word that claims more than any tile classifier was validated for."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONFIG_LIMIT = 64 * 1024

Run = Callable[[np.ndarray], np.ndarray]
"""A loaded network: float32 NCHW tiles in, one row of logits per tile out."""


class PackageError(ModelError):
    """A model package that cannot be used: no weights, several, or a config it cannot be run by."""


@dataclass(frozen=True)
class ModelPackage:
    """A model package as its config describes it; `load` runs it, `covers` says where it may be used."""

    folder: Path
    weights: Path
    sha256: str
    architecture: str
    class_names: tuple[str, ...]
    patch_size: int
    """Side of the tile the pipeline reads, in pixels at `spacing`."""
    spacing: float
    """Microns per pixel the model was trained at."""
    resize: int | None
    """The transform's Resize: the side the network takes when it differs from `patch_size`."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    detects: str
    positive_classes: tuple[str, ...]
    threshold: float
    sites: tuple[str, ...]
    stains: tuple[str, ...]
    spacing_range: tuple[float, float]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def spec(self) -> ModelSpec:
        """The pipeline's view of the model: tile grid, classes and which of them make the triage score."""
        return ModelSpec(self.name, self.patch_size, self.spacing, self.class_names,
                         tuple(self.class_names.index(name) for name in self.positive_classes), self.mean, self.std, self.sha256)


def read_package(folder: str | Path) -> ModelPackage:
    """The package in `folder`, its config read with bounds; `DocumentError` or `PackageError` in one line."""
    folder = Path(folder)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise PackageError(f"{folder}: not a model package (no {CONFIG})")
    what = str(config_path)
    fields = Fields(bounded.load(config_path.read_bytes(), what, _CONFIG_LIMIT), what)
    fields.choice("spec_version", SPEC_VERSIONS)
    architecture = fields.text("architecture", 200)
    num_classes = fields.integer("num_classes", 1, 1000)
    class_names = _names(fields, "class_names", 1000)
    if len(class_names) != num_classes:
        raise DocumentError(f"{what}: class_names has {len(class_names)} names, num_classes says {num_classes}")
    patch_size = fields.integer("patch_size_pixels", 8, 4096)
    spacing = fields.number("spacing_um_px", 0.01, 100.0)
    resize, mean, std = _transform(fields, what)
    ours = fields.fields("slidestream")
    assert ours is not None  # not optional: `fields` raised when absent
    detects = ours.text("detects", 200)
    if detects.strip().lower() in GENERIC_TARGETS:
        raise DocumentError(f"{what}: slidestream: detects must name what the model was trained to find "
                            f"(e.g. \"colorectal adenocarcinoma epithelium\"), not {detects!r}")
    positive = _names(ours, "positive_classes", num_classes)
    unknown = [name for name in positive if name not in class_names]
    if unknown or not positive:
        raise DocumentError(f"{what}: slidestream: positive_classes must be some of class_names, found {unknown or 'none'}")
    threshold = ours.number("threshold", 0.0, 1.0)
    sha256 = ours.text("sha256", 64, pattern=_SHA256)
    use = ours.fields("intended_use")
    assert use is not None
    sites = tuple(site.lower() for site in _names(use, "sites", 100))
    if not sites:
        raise DocumentError(f"{use.what}: sites must name at least one tissue site")
    stains = _names(use, "stains", len(STAINS))
    if not stains or not set(stains) <= set(STAINS):
        raise DocumentError(f"{use.what}: stains must be some of {', '.join(STAINS)}, found {list(stains)}")
    low, high = _range(use, "spacing_um_px")
    if not low <= spacing <= high:
        raise DocumentError(f"{use.what}: spacing_um_px [{low:g}, {high:g}] leaves out the model's own {spacing:g} um/px")
    return ModelPackage(folder, _weights(folder), sha256, architecture, class_names, patch_size, spacing, resize, mean,
                        std, detects, positive, threshold, sites, stains, (low, high))


def find_package(name_or_path: str | Path, models_dir: Path) -> ModelPackage:
    """A package by its folder, or by its name in `models_dir` (the centre's models)."""
    path = Path(name_or_path)
    if not path.is_dir() and path.name == str(name_or_path) and (models_dir / path).is_dir():
        path = models_dir / path
    if not path.is_dir():
        raise PackageError(f"model package not found: {name_or_path} (a folder, or a name in {models_dir})")
    return read_package(path)


def list_packages(models_dir: Path) -> list[ModelPackage | PackageError | DocumentError]:
    """Each folder of `models_dir` that has a config, read; a broken one is listed as its error, not hidden."""
    found: list[ModelPackage | PackageError | DocumentError] = []
    for folder in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        if (folder / CONFIG).is_file():
            try:
                found.append(read_package(folder))
            except (PackageError, DocumentError) as error:
                found.append(error)
    return found


def covers(package: ModelPackage, site: str | None, stain: str | None, spacing: float | None) -> str | None:
    """None when the package was made for this specimen (site), stain and resolution; else why its score would mean
    nothing here, as the line the hub and the viewer show in place of a map."""
    if site is None:
        return "no validated AI: the specimen site is not known"
    if site.strip().lower() not in package.sites:
        return f"no validated AI for {site}"
    if stain is None:
        return "no validated AI: the stain is not known"
    if stain not in package.stains:
        return f"no validated AI for {stain}"
    low, high = package.spacing_range
    if spacing is None:
        return "no validated AI: the slide's resolution is not known"
    if not low <= spacing <= high:
        return f"no validated AI at {spacing:g} um/px ({package.name} is validated for {low:g}-{high:g} um/px)"
    return None


class PackageModel:
    """A package ready to score tiles, with the pipeline's call shape (`inference.model.TileModel`): `predict` takes
    uint8 RGB tiles of the package's patch size and gives class probabilities, `score` the triage score."""

    def __init__(self, package: ModelPackage, run: Run) -> None:
        self.package = package
        self.spec = package.spec
        self._run = run
        self._mean = np.array(package.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.array(package.std, np.float32).reshape(1, 3, 1, 1)

    def predict(self, batch_uint8_nhwc: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 of shape (N, classes), for uint8 tiles of shape (N, patch, patch, 3)."""
        size = self.package.patch_size
        batch = batch_uint8_nhwc
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ModelError(f"{self.spec.name} takes uint8 tiles of shape (N, {size}, {size}, 3), got {batch.dtype} {batch.shape}")
        side = self.package.resize
        if side is not None and side != size:  # WSInfer's Resize works on the PIL image: bilinear, antialiased
            batch = np.stack([np.asarray(Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR)) for tile in batch])
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - self._mean) / self._std
        logits = np.asarray(self._run(np.ascontiguousarray(x, np.float32)), np.float32)
        classes = len(self.package.class_names)
        if classes == 1 and logits.ndim == 1:
            logits = logits[:, None]
        if logits.shape != (len(batch), classes):
            raise ModelError(f"{self.spec.name}: the network gave outputs of shape {logits.shape}, its config names {classes} classes")
        if classes == 1:  # as WSInfer reads a single output: a sigmoid, not a softmax over one class
            return np.asarray(1.0 / (1.0 + np.exp(-logits)), np.float32)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), np.float32)

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Triage score per tile: the summed probability of the positive classes."""
        return np.asarray(probs[:, list(self.spec.score_classes)].sum(axis=1))


def load(package: ModelPackage, device: str = "cpu") -> PackageModel:
    """The package's network, its weights checked against the config's SHA-256 before they are read."""
    verify_sha256(package.weights, package.sha256)
    suffix = package.weights.suffix
    run = _onnx(package.weights, device) if suffix == ".onnx" else _torch(package, device)
    return PackageModel(package, run)


def _torch(package: ModelPackage, device: str) -> Run:
    """A TorchScript file (or the default model's Keras DenseNet121) run with torch; modules return logits."""
    if package.weights.suffix == ".keras":
        module: Any = load_keras(package.weights)
    else:
        try:
            module = torch.jit.load(package.weights, map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError) as error:
            raise PackageError(f"{package.weights}: not a TorchScript file: {first_line(error)}") from error
    target = torch.device(device)
    module = module.to(target).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(target)).float().cpu().numpy()  # type: ignore[no-any-return]

    return run


def _onnx(path: Path, device: str) -> Run:
    """An ONNX file run with onnxruntime, on as many threads as torch was given (the pipeline's share per task)."""
    try:
        import onnxruntime
    except ImportError:
        raise PackageError(f"{path}: ONNX models need onnxruntime (pip install 'slidestream[onnx]')") from None
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise PackageError(f"{path}: --device {device} needs onnxruntime-gpu (onnxruntime here has no CUDA provider)")
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped errors for a file that is not a model
        raise PackageError(f"{path}: not an ONNX model onnxruntime can run: {first_line(error)}") from error
    feed = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {feed: x})[0])

    return run


def _weights(folder: Path) -> Path:
    """The package's one weights file: two would leave it unclear which one the config's SHA-256 and record are of."""
    found = sorted(path for path in folder.iterdir() if path.suffix in WEIGHT_SUFFIXES and path.is_file())
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) or "none"
        raise PackageError(f"{folder}: a model package holds one weights file ({'/'.join(WEIGHT_SUFFIXES)}), found {listed}")
    return found[0]


def _transform(fields: Fields, what: str) -> tuple[int | None, tuple[float, float, float], tuple[float, float, float]]:
    """(resize, mean, std) from WSInfer's transform list: [Resize], ToTensor, [Normalize], in that order, since that
    is the order torchvision needs them in."""
    steps = fields.items("transform", 3, lambda step: (step.choice("name", ("Resize", "ToTensor", "Normalize")),
                                                        step.fields("arguments", optional=True)))
    names = [name for name, _ in steps]
    if names not in (["ToTensor"], ["Resize", "ToTensor"], ["ToTensor", "Normalize"], ["Resize", "ToTensor", "Normalize"]):
        raise DocumentError(f"{what}: transform must be [Resize,] ToTensor[, Normalize], found {names}")
    resize = None
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    for name, arguments in steps:
        if name == "Resize":
            if arguments is None:
                raise DocumentError(f"{what}: transform: Resize needs arguments {{\"size\": pixels}}")
            resize = _resize_size(arguments)
        elif name == "Normalize":
            if arguments is None:
                raise DocumentError(f"{what}: transform: Normalize needs arguments {{\"mean\": [r, g, b], \"std\": [r, g, b]}}")
            mean, std = _triple(arguments, "mean", -10.0, 10.0), _triple(arguments, "std", 1e-6, 10.0)
    return resize, mean, std


def _resize_size(arguments: Fields) -> int:
    """Resize's size: one side, or [height, width] equal (tiles are square)."""
    value = arguments.document.get("size")
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 4096:
        raise arguments.fail("size", "a side from 8 to 4,096 pixels (or [side, side])")
    return value


def _triple(arguments: Fields, name: str, low: float, high: float) -> tuple[float, float, float]:
    values = arguments.raw_list(name, 3)
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high for v in values):
        raise arguments.fail(name, f"three numbers (r, g, b) from {low:g} to {high:g}")
    return float(values[0]), float(values[1]), float(values[2])


def _names(fields: Fields, name: str, limit: int) -> tuple[str, ...]:
    """A list of distinct names of 1-200 characters."""
    values = fields.raw_list(name, limit)
    if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in values) or len(set(values)) != len(values):
        raise fields.fail(name, f"a list of at most {limit:,} distinct names")
    return tuple(values)


def _range(fields: Fields, name: str) -> tuple[float, float]:
    values = fields.raw_list(name, 2)
    if (len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            or not 0.01 <= values[0] <= values[1] <= 100):
        raise fields.fail(name, "[lowest, highest] um/px from 0.01 to 100")
    return float(values[0]), float(values[1])

