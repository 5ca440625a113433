"""The house rules, checked: data flows one way between the top-level packages, and only the case format
(caseformat/) spells a store key, so a writer and its readers cannot drift apart."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from caseformat import layout

REPO = Path(__file__).resolve().parents[1]
# each package may import only those before it
LAYERS = ["slides", "caseformat", "hospital", "tiling", "objectstore", "transfer", "inference", "station", "hub", "viewer", "slidestream"]
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


def test_no_two_modules_import_each_other_at_load_time() -> None:
    """Module-level imports between the project's modules form no cycle (a cycle works or fails by import order);
    an import inside a function runs later and is left out."""
    graph: dict[str, set[str]] = {}
    known = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for package in LAYERS
             for path in modules(package)}
    for package in LAYERS:
        for path in modules(package):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            targets = graph.setdefault(name, set())
            for node in ast.parse(path.read_text()).body:  # module level only
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:  # a submodule, else the module
                    targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                                for alias in node.names}
                elif isinstance(node, ast.Import):
                    targets |= {alias.name for alias in node.names}
    for name in graph:
        graph[name] = {target for target in graph[name] if target in graph and target != name}
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [*path, target]
            if target not in state and (found := cycle_from(target, [*path, target])):
                return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = cycle_from(name, [name])
            assert found is None, " -> ".join(found)


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


# JSON read outside caseformat/ that is no store document, each with why (a store document has one typed reader there)
NOT_STORE_DOCUMENTS = {
    "hospital/fhir.py": "the hospital's FHIR server's answers",
    "hospital/pacs.py": "the station's own PACS outbox entries",
    "transfer/journal.py": "the station's own SQLite journal",
    "objectstore/enrolment.py": "the RGW admin API's answers and the bucket's policy",
    "objectstore/notifications.py": "a store event's body: only a hint of which station to list",
    "inference/model.py": "a model archive's config",
    "station/station.py": "a hot folder's specimen.json",
    "station/hotfolder.py": "watch's own state file",
    "station/registry.py": "the station's own SQLite registry",
    "viewer/sessions.py": "the viewer's own sessions file",
    "slidestream/demo.py": "the demo's own send's --json summary",
}


def _parses_json(node: ast.AST) -> bool:
    """json.loads(...), json.load(...), or X.read_json(...): JSON turned into dicts with no type in between."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    func = node.func
    return func.attr == "read_json" or (func.attr in ("loads", "load") and isinstance(func.value, ast.Name) and func.value.id == "json")


def test_no_module_outside_the_case_format_parses_json_it_read_from_the_store_by_hand() -> None:
    wrong = []
    for package in LAYERS:
        if package == "caseformat":
            continue
        for path in modules(package):
            name = str(path.relative_to(REPO))
            for node in ast.walk(ast.parse(path.read_text())):
                if _parses_json(node) and name not in NOT_STORE_DOCUMENTS:
                    wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not wrong, "JSON parsed by hand outside caseformat/ (read it with its document type there):\n" + "\n".join(wrong)


# -- one error family: "the store failed" is `except StorageError`, whichever client met it -------------------------
CLOSED = "http://127.0.0.1:9"  # the discard port, where nothing listens: every connection is refused at once


def test_an_unreachable_store_is_one_storage_error_naming_it_for_the_sender_the_station_and_the_viewer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from objectstore import S3Storage, StorageError, UnreachableError
    from station.registry import Registry
    from station.station import Station, Store
    from transfer import Journal, Sender, SendOptions, parse_destination

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNREACHABLE00001")  # credentials of any kind: the link fails first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-sent-anywhere")
    with Journal(tmp_path / "journal") as journal, pytest.raises(StorageError) as sender:
        Sender(parse_destination("s3://cases/x", "h1.unreached", CLOSED), journal, SendOptions(deadline=0.5)).preflight()
    with Registry(tmp_path / "registry") as registry, pytest.raises(StorageError) as station:
        Station(Store.parse("s3://cases/x", CLOSED), registry, "h1").read_bytes("x/case.json")
    with pytest.raises(StorageError) as viewer:
        asyncio.run(S3Storage("cases", "x", CLOSED).get("case.json"))
    for failure in (sender.value, station.value, viewer.value):
        assert CLOSED in str(failure) and "\n" not in str(failure), repr(failure)
    assert isinstance(sender.value, UnreachableError) and sender.value.exit_code == 3  # wait for the link, then resume
    assert isinstance(station.value, UnreachableError) and "connection refused" in str(station.value)
