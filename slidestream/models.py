"""`slidestream models`: the centre's model packages (`inference.packages`): list them, show one, and validate one on
labelled tiles before it scores anyone's slide (`inference.validation`), which writes the record shown beside its maps.

A package is named by its folder, or by its name in the centre's models folder (--dir, SLIDESTREAM_MODELS, default
~/.config/slidestream/models beside the config file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slidestream.config import default_config_path

stdout = Console(highlight=False, soft_wrap=True)
models = typer.Typer(no_args_is_help=True, help="Model packages the centre brings: list them, show one, validate one on labelled tiles.")

ModelsDir = Annotated[Path | None, typer.Option("--dir", envvar="SLIDESTREAM_MODELS", help="The centre's models folder (default: ~/.config/slidestream/models).")]
Package = Annotated[str, typer.Argument(metavar="PACKAGE", help="A model package: its folder, or its name in the models folder.")]


def models_dir(given: Path | None) -> Path:
    """The centre's models folder: beside the config file unless given."""
    return given if given is not None else default_config_path().parent / "models"


def _print_rows(rows: list[tuple[str, str]]) -> None:
    from slides.errors import printable

    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        stdout.print(printable(f"{label:<{width}}  {value}"), markup=False)


@models.command("list")
def list_models(folder: ModelsDir = None) -> None:
    """List the packages in the models folder: what each detects, where it may be used, and how it validated."""
    from inference.packages import ModelPackage, list_packages
    from inference.validation import read_record
    from slides.errors import printable

    where = models_dir(folder)
    found = list_packages(where)
    if not found:
        stdout.print(printable(f"no model packages in {where}"), markup=False)
        return
    for item in found:
        if not isinstance(item, ModelPackage):
            stdout.print(printable(f"unusable: {item}"), markup=False)
            continue
        record = read_record(item)
        validated = "not validated" if record is None else f"AUC {record.auc:.3f} on {record.n} tiles"
        low, high = item.spacing_range
        stdout.print(printable(f"{item.name}: detects {item.detects}; {', '.join(item.sites)}; {', '.join(item.stains)}; "
                               f"{low:g}-{high:g} um/px; {validated}"), markup=False)


@models.command("show")
def show(package: Package, folder: ModelsDir = None) -> None:
    """Show a package: its classes, what makes its score, its intended use and its validation record."""
    from inference.packages import find_package
    from inference.validation import read_record, record_lines

    found = find_package(package, models_dir(folder))
    low, high = found.spacing_range
    _print_rows([
        ("package", str(found.folder)),
        ("weights", f"{found.weights.name} (SHA-256 {found.sha256})"),
        ("architecture", found.architecture),
        ("detects", found.detects),
        ("score", f"{' + '.join(found.positive_classes)}, flagged at {found.threshold:g}"),
        ("tiles", f"{found.patch_size} px at {found.spacing:g} um/px"),
        ("classes", ", ".join(found.class_names)),
        ("intended use", f"{', '.join(found.sites)}; {', '.join(found.stains)}; {low:g}-{high:g} um/px"),
    ])
    record = read_record(found)
    if record is None:
        stdout.print("validation: none (run `slidestream models validate`)", markup=False)
    else:
        stdout.print("validation:", markup=False)
        _print_rows(record_lines(record))


@models.command("validate")
def validate_model(
    package: Package,
    labelled_folder: Annotated[Path, typer.Argument(help="One subfolder of tiles per class (named after the package's classes, or mapped in labels.json).")],
    spacing: Annotated[float | None, typer.Option("--spacing", min=0.01, max=100, help="The tiles' microns per pixel (default: each tile is the model's field of view).")] = None,
    describe: Annotated[str, typer.Option("--describe", help="What the tiles are: source, cohort, licence (kept in the record).")] = "",
    labels: Annotated[Path | None, typer.Option("--labels", exists=True, dir_okay=False, help="JSON mapping subfolder names to class names (default: the folder's labels.json).")] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda for a GPU.")] = "cpu",
    folder: ModelsDir = None,
) -> None:
    """Score labelled tiles with a package and write its validation record (validation.json beside its config)."""
    from caseformat.bounded import load
    from inference.packages import find_package
    from inference.validation import record_lines, validate, write_record
    from slides.errors import printable

    found = find_package(package, models_dir(folder))
    mapping = None if labels is None else load(labels.read_bytes(), str(labels))
    if mapping is not None and not all(isinstance(value, str) for value in mapping.values()):
        raise typer.BadParameter(f"{labels}: must map subfolder names to class names", param_hint="--labels")
    record = validate(found, labelled_folder, labels=mapping, spacing=spacing, data=describe, device=device)
    _print_rows(record_lines(record))
    stdout.print(printable(f"wrote {write_record(found, record)}"), markup=False)

