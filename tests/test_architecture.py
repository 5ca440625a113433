"""The house rules, checked: data flows one way between the top-level packages, and only the case format
(caseformat/) spells a store key, so a writer and its readers cannot drift apart."""

from __future__ import annotations

import ast
from pathlib import Path

from caseformat import layout

REPO = Path(__file__).resolve().parents[1]
# each package may import only those before it
LAYERS = ["slides", "caseformat", "hospital", "tiling", "transfer", "objectstore", "inference", "station", "hub", "viewer", "slidestream"]
# the layout's names that are path segments of keys: using one inside an f-string or a "+" builds a key by hand
KEY_PARTS = {name for name in dir(layout) if name.isupper() and isinstance(getattr(layout, name), str)
             and name not in ("LAYOUT_FORMAT", "EDGE", "HUB", "ANALYZE")}  # fmt: skip
KEY_LITERALS = {getattr(layout, name) for name in KEY_PARTS}


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_packages_import_only_the_layers_below_them() -> None:
    wrong = []
    for rank, package in enumerate(LAYERS):
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else []  # fmt: skip
                for name in names:
                    top = name.split(".")[0]
                    if top in LAYERS and LAYERS.index(top) > rank:
                        wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


def _builds_a_key(node: ast.AST) -> bool:
    """An f-string or a "+" with a layout name in it ({REPORTS}, "reports/", "case.json")."""
    if isinstance(node, ast.JoinedStr):
        for part in node.values:
            if isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id in KEY_PARTS:
                return True
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and _names_a_key(part.value):
                return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        sides = (node.left, node.right)
        return any(isinstance(side, ast.Name) and side.id in KEY_PARTS for side in sides) or any(
            isinstance(side, ast.Constant) and isinstance(side.value, str) and _names_a_key(side.value) for side in sides)
    return False


def _names_a_key(text: str) -> bool:
    pieces = text.replace("/", " / ").split()
    return "/" in pieces and any(piece in KEY_LITERALS for piece in pieces)


def test_no_module_outside_the_case_format_builds_a_store_key_by_hand() -> None:
    wrong = []
    for package in LAYERS:
        if package == "caseformat":
            continue
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if _builds_a_key(node):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not wrong, "keys built outside caseformat/layout.py:\n" + "\n".join(wrong)
