"""`slidestream analyze` over every sample, bad files and an S3 case (heatmaps of the samples the model is validated
for, coarse-to-fine; QC and "no validated AI" for the others); resuming; and `slidestream info --qc`."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import ALL_SAMPLES, S3Server, sample
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from scipy import ndimage
from typer.testing import CliRunner

from caseformat.documents import CaseRecord
from caseformat.layout import CASE_RECORD, case_key
from inference import AnalyzeOptions
from inference.pipeline import plan_heatmap
from inference.sources import SlideFileRef, open_source
from slides import open_slide
from slidestream.cli import app
from tiling import ConvertOptions, PieceKind, plan_pyramid, produce
from transfer import content_id, target

pytestmark = pytest.mark.slow  # the real model on slides

BAD = ["broken.svs", "synthetic-unreadable.svs"]
SITE = "colon"  # what the batch says the slide files are: a site the model is validated for
# why the model may not score the other samples, colorectal though they be said to be: their stain (told from the
# overview, never assumed) or resolution is outside its intended use (H&E at 0.4-0.6 um/px)
NOT_VALIDATED = {
    "TCGA-CR-7395-jp2k.svs": "no validated AI: the slide's resolution is not known",
    "ndpi-fluorescence-DAPI.ndpi": "no validated AI for fluorescence",
    "camelyon-lymphnode.dcm": "no validated AI at 28.9685 um/px (capricorn0.1 is validated for 0.4-0.6 um/px)",
    "wsi2dcm-jpeg.dcm": "no validated AI: the stain is not known",  # 17 um/px: too coarse to tell, and to score
    "wsi2dcm-jpeg2000.dcm": "no validated AI: the stain is not known",
    "synthetic-boxes.tiff": "no validated AI: the stain is not known",  # coloured boxes; 353 um/px
    "kidney-ihc-strip.tif": "no validated AI: the stain is not known",
}
S3_CASE = "h1.case-from-s3"  # station h1's case, registered as colorectal


def upload_case(server: S3Server, bucket: str, name: str) -> str:
    """CMU-1-Small-Region converted and uploaded as a finished case of the sigmoid colon, its one slide at
    s3://bucket/cases/stations/{station}/{name}/slides/s1/v1/."""
    client = server.client()
    record = CaseRecord(name, datetime.now(UTC).isoformat(), name.split(".")[0], (("specimen_site", "sigmoid colon"),))
    client.put_object(Bucket=bucket, Key=f"cases/{case_key(name, CASE_RECORD)}", Body=record.to_json())
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        plan = plan_pyramid(slide, ConvertOptions())
        shards = []
        for piece in produce(slide, plan, name, {"mpp": list(slide.mpp)}):
            client.put_object(Bucket=bucket, Key=f"cases/{target.SlideRef(name).root}/image.zarr/{piece.key}", Body=piece.data)
            shards += [piece.key] if piece.kind is PieceKind.SHARD else []
    manifest = {"format": "slidestream-manifest/1", "planned": shards, "arrived": shards, "complete": True, "milestones": {}}
    client.put_object(Bucket=bucket, Key=f"cases/{target.SlideRef(name).root}/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/cases/"


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> tuple[list[str], Path, Path, object]:
    bucket = s3_server.new_bucket()
    prefix = upload_case(s3_server, bucket, S3_CASE)
    inputs = [str(sample(name)) for name in ALL_SAMPLES + BAD] + [prefix]
    work = tmp_path_factory.mktemp("batch")
    args = ["analyze", *inputs, "--report", str(work / "report.csv"), "--out", str(work / "out"), "--coarse",
            "--endpoint-url", s3_server.endpoint_url, "--site", SITE]
    first = CliRunner().invoke(app, args)
    return args, work / "report.csv", work / "out", first


def rows(report: Path) -> dict[str, dict[str, str]]:
    """Rows by the input's stem (a slide file's results are named by a pseudonym of its content), a slide version found under
    a prefix by its case (its results are named {case}/slides/{slide}/{version})."""
    with report.open() as fh:
        return {row["case"].split("/")[0] if row["slide"].startswith("s3://") else Path(row["slide"]).stem: row for row in csv.DictReader(fh)}


def test_batch_reports_every_slide_and_keeps_going_past_bad_ones(batch) -> None:  # type: ignore[no-untyped-def]
    _, report, out, result = batch
    assert result.exit_code == 1, result.output  # some inputs failed
    found = rows(report)
    assert set(found) == {Path(name).stem for name in ALL_SAMPLES + BAD} | {S3_CASE}
    for name in BAD:
        row = found[Path(name).stem]
        assert row["status"] == "error" and name in row["error"] and "\n" not in row["error"]
    for name, why in NOT_VALIDATED.items():
        row = found[Path(name).stem]
        assert (row["status"], row["refused"], row["score"], row["error"]) == ("no validated AI", why, "", ""), row
        triage = json.loads((out / row["case"] / "triage.json").read_text())
        assert triage["refused"] == why and triage["score"] is None and "routed" not in triage
        assert not (out / row["case"] / "heatmap.zarr").exists(), f"{name}: a slide no model may score has no heatmap"
    analysed = [case for case, row in found.items() if row["status"] == "ok"]
    assert sorted(analysed) == sorted({Path(n).stem for n in ALL_SAMPLES if n not in NOT_VALIDATED} | {S3_CASE})
    for case in analysed:
        row = found[case]
        assert 0 <= float(row["score"]) <= float(row["max"]) <= 1 and int(row["tiles_scored"]) > 0
        assert float(row["seconds"]) > 0
        if case != S3_CASE:
            assert row["case"] == content_id(Path(row["slide"]))  # named by a pseudonym of its content, never by the file
        triage = json.loads((out / row["case"] / "triage.json").read_text())
        assert triage["complete"] is True and triage["score"] == pytest.approx(float(row["score"]), abs=1e-4)
        assert triage["routed"]["stain"] == "H&E" and triage["routed"]["site"] == ("sigmoid colon" if case == S3_CASE else SITE)
        # a valid OME-Zarr on the slide's tile grid, zero on background
        image = np.asarray(list(Reader(parse_url(str(out / row["case"] / "heatmap.zarr")))())[0].data[0])[0]
        slide = sample("CMU-1-Small-Region.svs" if case == S3_CASE else row["slide"])
        expected = plan_heatmap(open_source(SlideFileRef.of(slide)), AnalyzeOptions())
        assert image.shape == expected.grid.shape and (image[~expected.tissue] == 0).all()
        assert abs(int(image.max()) - float(row["max"]) * 255) <= 1
    assert json.loads((out / found["TCGA-CR-7395-jp2k"]["case"] / "triage.json").read_text())["summary"]["mpp_assumed"] is True  # QC's
    for case in ("CMU-1-Small-Region", "TCGA-CR-7395-jp2k", S3_CASE):
        assert found[case]["blur_fraction"] == "0.0"  # sharp scans
    assert found["ndpi-fluorescence-DAPI"]["blur_fraction"] == ""  # dark-field: focus is not judged
    # the same slide read from S3 as an OME-Zarr case and from its file gives nearly the same triage
    assert float(found[S3_CASE]["score"]) == pytest.approx(float(found["CMU-1-Small-Region"]["score"]), abs=0.05)


def test_rerun_skips_finished_slides(batch) -> None:  # type: ignore[no-untyped-def]
    args, report, _, _ = batch
    before = rows(report)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    after = rows(report)
    assert set(after) == set(before)
    for case, row in after.items():
        if before[case]["status"] == "ok":
            assert row["status"] == "skipped" and row["score"] == before[case]["score"]
        elif before[case]["status"] == "no validated AI":
            assert row["status"] == "no validated AI" and row["refused"] == before[case]["refused"]
        else:
            assert row["status"] == "error" and row["error"] == before[case]["error"]


def test_info_qc_flags_a_blurred_slide(tmp_path: Path) -> None:
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        pixels = slide.read_region((0, 0), 0, slide.dimensions)
        mpp = slide.mpp[0]
    blurred = ndimage.gaussian_filter(pixels, sigma=(2, 2, 0))  # 1 um: an out-of-focus scan
    path = tmp_path / "blurred.tif"
    tifffile.imwrite(path, blurred, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")

    def qc(slide_path: Path) -> dict:  # type: ignore[type-arg]
        result = CliRunner().invoke(app, ["info", str(slide_path), "--qc", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["qc"]

    sharp, blurry = qc(sample("CMU-1-Small-Region.svs")), qc(path)
    assert sharp["blur_fraction"] < 0.1 and blurry["blur_fraction"] > 0.9
    assert sharp["focus_tiles"] > 50 and sharp["pen_fraction"] == 0
    plain = CliRunner().invoke(app, ["info", str(path), "--qc"])
    assert "blurry 100%" in plain.stdout or "blurry 9" in plain.stdout
    assert np.isfinite(blurry["focus_median"])
