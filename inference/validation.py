"""Validation before use: a model package scored on labelled tiles the centre chose, and the record of how it did.

A labelled folder holds one subfolder of tiles per class. A subfolder named after one of the package's classes is
that class; any other is mapped to one by `labels` or the folder's `labels.json` ({"tumor": "colorectal
adenocarcinoma epithelium", ...}). Tiles go through the pipeline's own path: the model's field of view (patch size x
spacing, in microns) is cut from the tile's centre when the tile's own microns per pixel are given, else the whole
tile is taken as that field, then area-resampled to the patch size (`inference.sources.read_tiles` does the same
on slides) and scored by the package's scorer.

The record (`validation.json`, beside the package's config) is what a pathologist sees beside the map: the ROC AUC
of the triage score for the positive classes against the rest with a bootstrap 95% interval, sensitivity and
specificity at the package's threshold, the confusion per class, n, the date and what the tiles were.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.stats import rankdata

from caseformat.bounded import Fields, dump, load, utc_now
from caseformat.errors import DocumentError
from inference.packages import ModelPackage, PackageError, PackageModel
from inference.packages import load as load_package

RECORD = "validation.json"
RECORD_FORMAT = "slidestream-validation/1"
DESCRIPTION_LIMIT = 2000
LABELS = "labels.json"
TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RESAMPLES = 1000
SEED = 0
BATCH = 32
SHORT_FIELD = 0.9
"""A tile may cover this fraction of the model's field of view and still be scored (stretched to it); less is refused:
the model would see tissue larger than it was trained on."""


class ValidationError(PackageError):
    """A labelled folder that cannot validate a package: no tiles, an unmapped class, one class only, a bad tile."""


@dataclass(frozen=True)
class LabelledScores:
    """What the package made of each labelled tile, in file order."""

    files: tuple[Path, ...]
    labels: tuple[str, ...]
    """The package class each tile is labelled with."""
    probs: np.ndarray
    score: np.ndarray
    positive: np.ndarray
    """Whether each tile's label is one of the package's positive classes."""


@dataclass(frozen=True)
class ValidationRecord:
    """How a package scored on one labelled set: the numbers shown beside its maps."""

    model: str
    sha256: str
    """Of the weights validated: a record of other weights says nothing about these."""
    detects: str
    positive_classes: tuple[str, ...]
    threshold: float
    date: str
    data: str
    tile_spacing_um_px: float | None
    n: int
    n_positive: int
    auc: float
    auc_ci95: tuple[float, float]
    sensitivity: float
    specificity: float
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    """Labelled class -> class the model called most probable -> tiles."""

    def to_json(self) -> bytes:
        return dump({"format": RECORD_FORMAT, "model": self.model, "sha256": self.sha256, "detects": self.detects,
                     "positive_classes": list(self.positive_classes), "threshold": self.threshold, "date": self.date,
                     "data": self.data, "tile_spacing_um_px": self.tile_spacing_um_px, "n": self.n,
                     "n_positive": self.n_positive, "auc": self.auc, "auc_ci95": list(self.auc_ci95),
                     "sensitivity": self.sensitivity, "specificity": self.specificity, "confusion": self.confusion})

    @classmethod
    def read(cls, data: bytes, what: str) -> ValidationRecord:
        """A record as written by `to_json`, read with bounds (the viewer shows its text)."""
        fields = Fields(load(data, what), what)
        fields.choice("format", (RECORD_FORMAT,))
        ci = fields.raw_list("auc_ci95", 2)
        if len(ci) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in ci):
            raise fields.fail("auc_ci95", "[low, high] from 0 to 1")
        positive = fields.raw_list("positive_classes", 1000)
        if not all(isinstance(name, str) and len(name) <= 200 for name in positive):
            raise fields.fail("positive_classes", "a list of class names")
        confusion = fields.fields("confusion")
        assert confusion is not None
        table = {label: _counts(confusion.fields(label)) for label in list(confusion.document)[:1000]}
        return cls(fields.text("model", 200), fields.text("sha256", 64), fields.text("detects", 200), tuple(positive),
                   fields.number("threshold", 0, 1), fields.time("date"), fields.text("data", DESCRIPTION_LIMIT, empty=True),
                   fields.number("tile_spacing_um_px", 0.01, 100, optional=True), fields.integer("n", 2, 10**9),
                   fields.integer("n_positive", 1, 10**9), fields.number("auc", 0, 1), (float(ci[0]), float(ci[1])),
                   fields.number("sensitivity", 0, 1), fields.number("specificity", 0, 1), table)


def validate(package: ModelPackage, folder: str | Path, *, labels: Mapping[str, str] | None = None,
             spacing: float | None = None, data: str = "", device: str = "cpu") -> ValidationRecord:
    """Score the labelled tiles in `folder` with `package` and measure how well its triage score separates them.

    `spacing` is the tiles' microns per pixel (None: each tile is the model's field of view); `data` says what the
    tiles are (source, cohort, licence), for whoever reads the record.
    """
    if len(data) > DESCRIPTION_LIMIT:
        raise ValidationError(f"the data description has {len(data):,} characters, more than the {DESCRIPTION_LIMIT:,} a record keeps")
    scored = score_folder(package, load_package(package, device), folder, labels=labels, spacing=spacing)
    positive, score = scored.positive, scored.score
    n_positive = int(positive.sum())
    if n_positive in (0, len(positive)):
        raise ValidationError(f"{folder}: the tiles are all {'positive' if n_positive else 'negative'} for "
                              f"{', '.join(package.positive_classes)}: validation needs both")
    flagged = score >= package.threshold
    confusion: dict[str, dict[str, int]] = {}
    for label, predicted in zip(scored.labels, scored.probs.argmax(axis=1)):
        row = confusion.setdefault(label, {})
        name = package.class_names[predicted]
        row[name] = row.get(name, 0) + 1
    low, high = bootstrap_auc(score, positive)
    return ValidationRecord(
        package.name, package.sha256, package.detects, package.positive_classes, package.threshold, utc_now(), data,
        spacing, len(score), n_positive, roc_auc(score, positive), (low, high),
        float((flagged & positive).sum() / n_positive), float((~flagged & ~positive).sum() / (len(score) - n_positive)),
        confusion)


def write_record(package: ModelPackage, record: ValidationRecord) -> Path:
    """Write the record beside the package's config, where `read_record` and the viewer find it."""
    path = package.folder / RECORD
    path.write_bytes(record.to_json())
    return path


def read_record(package: ModelPackage) -> ValidationRecord | None:
    """The package's validation record; None when it has none or the one it has is of other weights (not this
    model's record, so not to be shown beside its maps)."""
    path = package.folder / RECORD
    if not path.is_file():
        return None
    record = ValidationRecord.read(path.read_bytes(), str(path))
    return record if record.sha256 == package.sha256 else None


def score_folder(package: ModelPackage, model: PackageModel, folder: str | Path, *, labels: Mapping[str, str] | None = None,
                 spacing: float | None = None) -> LabelledScores:
    """Every labelled tile in `folder` read as the pipeline reads a slide's tiles, and scored."""
    folder = Path(folder)
    tiles = list(_labelled_tiles(package, folder, labels))
    if not tiles:
        raise ValidationError(f"{folder}: no tiles ({', '.join(TILE_SUFFIXES)}) in its class subfolders")
    probs = np.concatenate([model.predict(np.stack([_read_tile(path, package, spacing) for path, _ in tiles[k : k + BATCH]]))
                            for k in range(0, len(tiles), BATCH)])
    tile_labels = tuple(label for _, label in tiles)
    return LabelledScores(tuple(path for path, _ in tiles), tile_labels, probs, model.score(probs),
                          np.array([label in package.positive_classes for label in tile_labels]))


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive tile outscores a negative one, ties counting half
    (Mann-Whitney U from average ranks)."""
    return float(_auc_rows(score[None, :], positive)[0])


def bootstrap_auc(score: np.ndarray, positive: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95% percentile interval of the AUC over `resamples` resamplings of the tiles, positives and negatives each
    resampled on their own so every resample has both (the AUC is undefined otherwise); a fixed seed, so the same
    tiles give the same record."""
    rng = np.random.default_rng(seed)
    pos, neg = score[positive], score[~positive]
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    aucs = []
    for start in range(0, resamples, 50):  # 50 resamples at a time bound the memory on large sets
        count = min(50, resamples - start)
        rows = np.concatenate([rng.choice(pos, (count, len(pos))), rng.choice(neg, (count, len(neg)))], axis=1)
        aucs.append(_auc_rows(rows, labels))
    low, high = np.percentile(np.concatenate(aucs), [2.5, 97.5])
    return float(low), float(high)


def _auc_rows(rows: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUC of each row of scores against the same labels."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(rows, method="average", axis=1)
    u = ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2
    return np.asarray(u / (n_pos * n_neg))


def _labelled_tiles(package: ModelPackage, folder: Path, labels: Mapping[str, str] | None) -> Iterator[tuple[Path, str]]:
    """(tile, package class) for each tile of each class subfolder, in name order."""
    if not folder.is_dir():
        raise ValidationError(f"labelled folder not found: {folder}")
    mapping = dict(labels) if labels is not None else _labels_file(folder)
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        label = mapping.get(sub.name, sub.name)
        if label not in package.class_names:
            raise ValidationError(f"{sub}: no class of {package.name} for this folder: name it after one of its classes "
                                  f"or map it in {LABELS} (e.g. {{\"{sub.name}\": \"{package.class_names[0]}\"}})")
        for path in sorted(sub.iterdir()):
            if path.is_file() and path.suffix.lower() in TILE_SUFFIXES:
                yield path, label


def _labels_file(folder: Path) -> dict[str, str]:
    path = folder / LABELS
    if not path.is_file():
        return {}
    document = load(path.read_bytes(), str(path))
    if not all(isinstance(value, str) for value in document.values()):
        raise DocumentError(f"{path}: must map each subfolder's name to a class name")
    return document


def _read_tile(path: Path, package: ModelPackage, spacing: float | None) -> np.ndarray:
    """The model's field of view from the tile's centre, area-resampled to the patch size (uint8 RGB)."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValidationError(f"{path}: not a readable image: {error}") from None
    width, height = image.size
    side = min(width, height) if spacing is None else package.patch_size * package.spacing / spacing
    if side > min(width, height):
        if side * SHORT_FIELD > min(width, height):
            raise ValidationError(f"{path}: {width}x{height} px at {spacing:g} um/px is smaller than the "
                                  f"{package.patch_size * package.spacing:g} um field {package.name} looks at")
        side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    size = package.patch_size
    return np.asarray(image.resize((size, size), Image.Resampling.BOX, box=(left, top, left + side, top + side)))


def _counts(row: Fields | None) -> dict[str, int]:
    assert row is not None
    return {name: row.integer(name, 0, 10**9) for name in list(row.document)[:1000]}


def record_lines(record: ValidationRecord) -> list[tuple[str, str]]:
    """The record as (label, value) rows, the same words wherever it is shown (the CLI, the viewer)."""
    low, high = record.auc_ci95
    spacing = "each tile taken as the model's field" if record.tile_spacing_um_px is None else f"{record.tile_spacing_um_px:g} um/px"
    rows = [
        ("model", f"{record.model} (detects {record.detects})"),
        ("data", record.data or "(not described)"),
        ("tiles", f"{record.n} ({record.n_positive} {', '.join(record.positive_classes)}), {spacing}"),
        ("ROC AUC", f"{record.auc:.3f} (95% CI {low:.3f}-{high:.3f})"),
        ("sensitivity", f"{record.sensitivity:.1%} at threshold {record.threshold:g}"),
        ("specificity", f"{record.specificity:.1%}"),
        ("date", record.date),
    ]
    rows += [(f"{label} tiles", "called " + ", ".join(f"{name} {count}" for name, count in sorted(row.items(), key=lambda kv: -kv[1])))
             for label, row in sorted(record.confusion.items())]
    return rows
