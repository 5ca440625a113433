"""The centre's routing table (`inference.routing`): the case's specimen site, the stain on its overview and its um/px
choose which model package scores a slide, in the order the centre listed them; a slide no package covers gets QC and
"no validated AI", never a number; and the viewer shows a score only from a routed triage.

The packages are tiny networks of the test's own (TorchScript, 224 px tiles seen as 16 px), one for colon and one for
skin; the cases are CMU-1-Small-Region (H&E, 0.499 um/px) as a station sends it, registered with a site.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample
from support.viewer import ROUTED, heatmap_objects, pyramid, serving, triage_json, write_local
from torch import nn
from typer.testing import CliRunner

from caseformat.documents import CaseRecord
from caseformat.layout import CASE_RECORD, HEATMAP, HUB, TRIAGE, SlideRef, case_key, image_key, station_of
from caseformat.results import Triage
from slides import open_slide
from slidestream.cli import app
from tiling import ConvertOptions, plan_pyramid, produce
from viewer import LocalStorage
from viewer.summary import UNROUTED

PATCH, RESIZE = 224, 16


class MeanColour(nn.Module):
    """Logits from a tile's mean colour: enough of a model to score tiles, quickly."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return logits


def tiny_package(folder: Path, detects: str, sites: list[str]) -> Path:
    """A model package of the test's own, validated (its config says) for `sites`, H&E, 0.4-0.6 um/px."""
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(MeanColour().eval(), torch.rand(2, 3, RESIZE, RESIZE)).save(str(folder / "model.pt"))  # type: ignore[no-untyped-call]
    config = {
        "spec_version": "1.0", "architecture": "meancolour", "num_classes": 2, "class_names": [detects, "other"],
        "patch_size_pixels": PATCH, "spacing_um_px": 0.5,
        "transform": [{"name": "Resize", "arguments": {"size": RESIZE}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}],
        "slidestream": {"detects": detects, "positive_classes": [detects], "threshold": 0.5,
                        "sha256": hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest(),
                        "intended_use": {"sites": sites, "stains": ["H&E"], "spacing_um_px": [0.4, 0.6]}},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"colon": tiny_package(root / "colon-tiny", "colorectal adenocarcinoma epithelium", ["colon", "sigmoid colon", "rectum"]),
            "skin": tiny_package(root / "skin-tiny", "basal cell carcinoma", ["skin"])}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CMU-1-Small-Region as the OME-Zarr a station sends, with its resolution."""
    folder = tmp_path_factory.mktemp("image") / "image.zarr"
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        assert slide.mpp is not None
        for piece in produce(slide, plan_pyramid(slide, ConvertOptions(workers=2)), "sample", {"mpp": list(slide.mpp)}):
            (folder / piece.key).parent.mkdir(parents=True, exist_ok=True)
            (folder / piece.key).write_bytes(piece.data)
    return folder


def register(store: Path, image: Path, case: str, site: str) -> SlideRef:
    """A case on a store (a folder in the layout), registered with `site`, its one slide's image sent whole."""
    ref = SlideRef(case)
    shutil.copytree(image, store / ref.key(image_key("")).rstrip("/"))
    record = CaseRecord(case, datetime.now(UTC).isoformat(), station_of(case), (("specimen_site", site),))
    write_local(store, case_key(case, CASE_RECORD), record.to_json())
    return ref


def analyze(*args: str) -> tuple[int, str, list[dict[str, str]]]:
    report = Path(args[args.index("--report") + 1])
    result = CliRunner().invoke(app, ["analyze", *args])
    with report.open() as fh:
        return result.exit_code, result.output, list(csv.DictReader(fh))


def test_analyze_routes_a_skin_case_to_the_skin_package_and_a_colon_case_to_the_colon_one(
    packages: dict[str, Path], image: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    skin, colon = register(store, image, "h1.skin", "skin"), register(store, image, "h1.colon", "sigmoid colon")
    code, output, rows = analyze(str(store), "--report", str(tmp_path / "r.csv"), "--model", str(packages["colon"]),
                                 "--model", str(packages["skin"]))  # fmt: skip
    assert code == 0, output
    assert {row["case"].split("/")[0]: row["status"] for row in rows} == {"h1.skin": "ok", "h1.colon": "ok"}
    for ref, model, site in ((skin, "skin-tiny", "skin"), (colon, "colon-tiny", "sigmoid colon")):
        triage = Triage.read((store / ref.centre_key(TRIAGE)).read_bytes())
        assert triage.model == model and triage.valid_score is not None, triage
        assert triage.routed is not None and (triage.routed.site, triage.routed.stain) == (site, "H&E")


def test_analyze_of_a_case_no_package_covers_gives_qc_and_no_score(packages: dict[str, Path], image: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    skin = register(store, image, "h1.skin", "skin")
    code, output, (row,) = analyze(str(store), "--report", str(tmp_path / "r.csv"), "--model", str(packages["colon"]))
    assert code == 0, output  # not a failure: the AI says nothing where it was not validated
    assert row["status"] == "no validated AI" and row["refused"] == "no validated AI for skin" and row["score"] == ""
    assert "no validated AI for skin" in output
    triage = Triage.read((store / skin.centre_key(TRIAGE)).read_bytes())
    assert triage.refused == "no validated AI for skin" and triage.score is None and triage.valid_score is None
    assert triage.summary["qc"]["focus_tiles"] > 0 and triage.summary["qc"]["blur_fraction"] is not None  # QC still done
    assert not (store / skin.centre_key(HEATMAP)).exists(), "a refused slide has no heatmap"


def test_a_slide_file_is_scored_only_with_its_site_given(packages: dict[str, Path], tmp_path: Path) -> None:
    slide, model = str(sample("CMU-1-Small-Region.svs")), str(packages["colon"])
    code, output, (row,) = analyze(slide, "--report", str(tmp_path / "r.csv"), "--out", str(tmp_path / "a"), "--model", model)
    assert code == 0, output
    assert row["status"] == "no validated AI" and row["refused"] == "no validated AI: the specimen site is not known"
    code, output, (row,) = analyze(slide, "--report", str(tmp_path / "r.csv"), "--out", str(tmp_path / "b"), "--model", model,
                                   "--site", "rectum")  # fmt: skip
    assert code == 0 and row["status"] == "ok" and row["score"] != "", output
    assert Triage.read((tmp_path / "b" / row["case"] / TRIAGE).read_bytes()).routed is not None


def status(store: Path, case: str) -> dict:  # type: ignore[type-arg]
    with serving(LocalStorage(store)) as served:
        response = served.get(f"/api/cases/{case}/slides/s1/v1/status", served.token(case))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def station_results(store: Path, ref: SlideRef, triage: bytes) -> None:
    """The station's edge triage and its map, beside the slide version's image."""
    _, pieces = pyramid()
    for piece in pieces:
        write_local(store, ref.key(image_key(piece.key)), piece.data)
    for key, data in heatmap_objects(np.full((30, 22), 200, np.uint8), 2220, 0.499).items():
        write_local(store, ref.key(f"{HEATMAP}/{key}"), data)
    write_local(store, ref.key(TRIAGE), triage)


def test_an_unrouted_edge_triage_shows_no_score_and_no_map(tmp_path: Path) -> None:
    ref = SlideRef("h1.edge")
    summary = {"tiles_scored": 40, "tissue_tiles": 40, "qc": {"focus_tiles": 40, "blur_fraction": 0.05, "pen_fraction": 0.0}}
    station_results(tmp_path, ref, Triage(ref.label, 0.91, "capricorn0.1", "edge", True, summary).to_json())  # no `routed`
    shown = status(tmp_path, ref.case)
    assert shown["triage"]["score"] is None and shown["triage"]["refused"] == UNROUTED
    assert shown["triage"]["qc"] == {"blur_fraction": 0.05, "pen_fraction": 0.0, "tiles": 40}
    assert shown["heatmap"] is None and shown["top_regions"] == []


def test_the_hubs_empty_first_map_gives_way_to_a_routed_edge_map(tmp_path: Path) -> None:
    ref = SlideRef("h1.early")
    station_results(tmp_path, ref, triage_json(ref, 0.7, "edge", complete=False))
    first = Triage(ref.label, None, "capricorn0.1", HUB, False, {"tiles_scored": 0, "tissue_tiles": 40}, routed=ROUTED)
    write_local(tmp_path, ref.centre_key(TRIAGE), first.to_json())
    shown = status(tmp_path, ref.case)
    assert shown["triage"]["score"] == pytest.approx(0.7) and shown["triage"]["stage"] == "edge"
    assert shown["heatmap"] is not None  # the station's map, not the hub's empty one
