"""The receiving side: results say what produced them (an edge triage's coarse map is never final), and
`slidestream hub` finds arriving cases by itself and publishes their full-magnification map as it grows.

Against the real S3 server, with the real model and real slides. The hub runs as a subprocess, as a pathology
centre runs it.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import S3Server
from support import (
    ARRIVING,
    STATION,
    colorectal_context,
    final_triage,
    running_hub,
    scorable,
    slide_version,
    stored_json,
    wait_for,
)
from typer.testing import CliRunner

from caseformat.layout import (
    ANALYZE,
    EDGE,
    HEATMAP,
    HUB,
    IMAGE,
    LEASE,
    MANIFEST,
    PYRAMID,
    TRIAGE,
    SlideRef,
    qualified_case,
    station_case_folder,
)
from caseformat.results import Lease, Manifest
from caseformat.signing import TrustedKeys
from hub.pyramid import complete_pyramid
from inference import AnalyzeOptions, analyze_slide
from objectstore.location import Location
from slides import open_slide
from slidestream.cli import app
from tiling import ConvertOptions, plan_pyramid
from tiling.shard_format import EMPTY, read_shard_index, shard_index_size
from viewer import S3Storage
from viewer.cases import Cases
from viewer.image import ARRIVED, BACKGROUND, PENDING
from viewer.tiles import Chunk
from viewer.worklist import read_worklist

pytestmark = pytest.mark.slow  # a running hub

REPO = Path(__file__).resolve().parents[2]
NO_REPORTS = TrustedKeys([])  # these stores hold no signed report: the viewer needs no centre key to read them


def heatmap_of(location: Location) -> tuple[np.ndarray, dict[str, Any]]:
    group = zarr.open_group(location.child(HEATMAP).zarr_store(), mode="r")
    return np.asarray(group["0"][:]), group.attrs.asdict()["slidestream"]["heatmap"]


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def worklist(server: S3Server, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    entries = asyncio.run(read_worklist(Cases(S3Storage(bucket, prefix, server.endpoint_url), NO_REPORTS)))
    return {entry["case"]: entry for entry in entries}


def test_an_edge_result_is_never_final_and_a_full_analysis_supersedes_it(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    slide = scorable()  # more tissue tiles than the edge samples
    store = f"s3://{s3_bucket}/cases"
    case = qualified_case(STATION, "EDGE-1")
    sent = CliRunner().invoke(app, ["send", str(slide), store, "--case", "EDGE-1", "--station", STATION, "--endpoint-url",
                                    s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"),
                                    "--context-file", str(colorectal_context())])  # fmt: skip
    assert sent.exit_code == 0, sent.output
    location = slide_version(store, s3_server.endpoint_url, case)
    edge = wait_for(lambda: stored_json(location.sent, TRIAGE), "the edge triage", 600)  # the station's own folder
    assert edge["stage"] == EDGE and edge["complete"] is True and heatmap_of(location.sent)[1]["stage"] == EDGE
    assert stored_json(location, TRIAGE) is None, "an edge triage is never the centre's result"
    listed = worklist(s3_server, s3_bucket, "cases")[case]["triage"]
    assert listed["stage"] == EDGE and listed["final"] is False and listed["score"] == pytest.approx(edge["score"])

    report = tmp_path / "report.csv"
    args = ["analyze", store, "--report", str(report), "--endpoint-url", s3_server.endpoint_url]
    analysed = CliRunner().invoke(app, args)
    assert analysed.exit_code == 0, analysed.output
    (row,) = report_rows(report)
    assert row["status"] == "ok"
    full = stored_json(location, TRIAGE)  # the centre's folder
    assert full["summary"]["tiles_measured"] == full["summary"]["tissue_tiles"] > edge["summary"]["tiles_measured"]
    assert full["stage"] == ANALYZE and full["complete"] is True and full["score"] == pytest.approx(float(row["score"]), abs=1e-4)
    image, attributes = heatmap_of(location)
    assert attributes["stage"] == ANALYZE and attributes["tiles_scored"] == full["summary"]["tiles_scored"]
    listed = worklist(s3_server, s3_bucket, "cases")[case]["triage"]
    assert listed == {"score": pytest.approx(full["score"]), "stage": ANALYZE, "final": True,  # with the legend's words
                      "detects": full["summary"]["detects"], "validation": full["summary"]["validation"]}
    assert full["summary"]["detects"] == "colorectal adenocarcinoma epithelium" and "ROC AUC" in full["summary"]["validation"]
    status = asyncio.run(Cases(S3Storage(s3_bucket, "cases", s3_server.endpoint_url), NO_REPORTS).status(SlideRef(case).root))
    assert status["triage"]["stage"] == ANALYZE and status["triage"]["final"] is True

    # a late edge triage (say, a resend's) leaves the full result alone, written where the centre's result is or
    # where the station's is
    for where in (location, location.sent):
        late = analyze_slide(slide, where, AnalyzeOptions(coarse=True, refine=False, stage=EDGE), name=case)
        assert late.stage == EDGE and stored_json(location, TRIAGE) == full
        assert (heatmap_of(location)[0] == image).all()
    assert worklist(s3_server, s3_bucket, "cases")[case]["triage"] == listed

    # and a rerun takes the full result as done
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert report_rows(report)[0]["status"] == "skipped"


def sending(slide: Path, store: str, endpoint: str, state: Path, case: str, rate: float = 2) -> subprocess.Popen[bytes]:
    """`slidestream send` of the slide as case `case` of its station, slow enough (`rate` Mbit/s) that a hub sees the
    case arriving."""
    station, local = case.split(".", 1)
    return subprocess.Popen([sys.executable, "-m", "slidestream", "send", str(slide), store, "--case", local, "--station",
                             station, "--endpoint-url", endpoint, "--no-edge", "--max-rate", str(rate), "--state-dir", str(state),
                             "--context-file", str(colorectal_context())],  # a site and resolution the model covers
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def scored_here(log: Path, case: str) -> int:
    """Tiles the hub that wrote `log` says it scored of `case` (its PARTIAL and DONE lines)."""
    return sum(int(line.rsplit("(scored ", 1)[1].split()[0]) for line in log.read_text().splitlines()
               if line.startswith(("PARTIAL " + case, "DONE " + case)) and "(scored " in line)


def test_the_hub_finds_an_arriving_case_and_publishes_its_map_as_it_grows(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    slide = scorable(ARRIVING)
    store = f"s3://{s3_bucket}/arriving"
    case = qualified_case(STATION, "ARRIVING-1")
    location = slide_version(store, s3_server.endpoint_url, case)
    log = tmp_path / "hub.log"
    with running_hub(store, s3_server.endpoint_url, log):
        send = sending(slide, store, s3_server.endpoint_url, tmp_path / "state", case, rate=1)  # two passes at least, under load
        partial = set()
        while send.poll() is None:  # what a viewer polling the case sees while it arrives
            triage = stored_json(location, TRIAGE)
            assert stored_json(location.sent, TRIAGE) is None, "the hub writes its map in the centre's folder only"
            if triage and not triage["complete"]:
                assert triage["stage"] == HUB
                partial.add(triage["summary"]["tiles_scored"])
            time.sleep(0.2)
        assert send.returncode == 0, send.stdout.read() if send.stdout else ""
        final = wait_for(lambda: (t := stored_json(location, TRIAGE)) and t["complete"] and t, "the hub's final map", 600)
        wait_for(lambda: f"DONE {case}" in log.read_text(), "the hub's DONE line (after the map it published)", 600)
    assert len(partial) >= 2, f"partial maps seen during the send: {sorted(partial)}"  # it grew while arriving
    assert final["stage"] == HUB and final["summary"]["tiles_scored"] == final["summary"]["tissue_tiles"]
    hub_image, attributes = heatmap_of(location)
    assert attributes["stage"] == HUB and attributes["complete"] is True
    assert (stored_json(location, LEASE) or {}).get("finished") is True

    # the same as a one-shot analysis of the complete case, tile for tile
    report = tmp_path / "report.csv"
    out = tmp_path / "one-shot"
    analysed = CliRunner().invoke(app, ["analyze", f"{store}/{station_case_folder(case)}", "--report", str(report), "--out",
                                        str(out), "--endpoint-url", s3_server.endpoint_url])  # fmt: skip
    assert analysed.exit_code == 0, analysed.output
    one_shot_results = out / case / SlideRef(case).path  # --out mirrors {case}/slides/{slide}/{version}
    one_shot, _ = heatmap_of(Location.parse(one_shot_results))
    assert hub_image.shape == one_shot.shape and (hub_image == one_shot).all()
    assert final["score"] == pytest.approx(json.loads((one_shot_results / TRIAGE).read_text())["score"], abs=1e-6)

    # a restarted hub does not redo a finished case
    with running_hub(store, s3_server.endpoint_url, tmp_path / "again.log") as again:
        wait_for(lambda: f"DONE {SlideRef(case).label}: already analysed" in (tmp_path / "again.log").read_text(), "the restarted hub's look", 600)
        assert again.poll() is None
    assert stored_json(location, TRIAGE) == final


def test_a_hub_killed_mid_case_is_replaced_and_the_case_finishes_without_rescoring(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    slide = scorable(ARRIVING)
    store = f"s3://{s3_bucket}/killed"
    case = qualified_case(STATION, "KILLED-1")
    location = slide_version(store, s3_server.endpoint_url, case)
    send = sending(slide, store, s3_server.endpoint_url, tmp_path / "state", case)
    with running_hub(store, s3_server.endpoint_url, tmp_path / "first.log", lease=5) as first:
        wait_for(lambda: (t := stored_json(location, TRIAGE)) and t["stage"] == HUB and not t["complete"]
                 and t["summary"]["tiles_scored"] > 0,
                 "a partial map with scored tiles", 600)
        first.kill()  # kill -9: no cleanup, its lease stays until it expires
        first.wait()
    assert stored_json(location, TRIAGE)["complete"] is False
    state = zarr.open_group(location.child(HEATMAP).zarr_store(), mode="r")["tile_state"][:]
    published = int((~np.isnan(state[0])).sum())  # the exact per-tile results it continues from
    assert published > 0
    with running_hub(store, s3_server.endpoint_url, tmp_path / "second.log", lease=5):
        final = wait_for(lambda: final_triage(location), "the second hub's final map", 600)
    assert send.wait() == 0
    assert final["summary"]["tiles_scored"] == final["summary"]["tissue_tiles"]
    assert f"DONE {case}" in (tmp_path / "second.log").read_text()
    # it continued from the published partial map: what the first hub published is not scored again
    assert scored_here(tmp_path / "second.log", case) == final["summary"]["tissue_tiles"] - published


def test_two_hubs_share_two_arriving_cases_without_doubling_work(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = f"s3://{s3_bucket}/shared"
    slides = [scorable(ARRIVING), scorable("CMU-1-Small-Region.svs")]
    cases = [qualified_case(STATION, "SHARED-1"), qualified_case("h2", "SHARED-2")]  # two stations
    logs = [tmp_path / "hub-a.log", tmp_path / "hub-b.log"]
    with running_hub(store, s3_server.endpoint_url, logs[0]), running_hub(store, s3_server.endpoint_url, logs[1]):
        sends = [sending(slide, store, s3_server.endpoint_url, tmp_path / f"state-{i}", case) for i, (slide, case) in enumerate(zip(slides, cases))]
        finals = [wait_for(lambda c=c: final_triage(slide_version(store, s3_server.endpoint_url, c)), f"case {c}", 600) for c in cases]
        assert [send.wait() for send in sends] == [0, 0]
    for case, final in zip(cases, finals):
        tissue = final["summary"]["tissue_tiles"]
        counts = [scored_here(log, case) for log in logs]
        assert sum(counts) == tissue and 0 in counts, f"{case}: tiles scored by each hub {counts} of {tissue}"


@pytest.fixture(scope="module")
def in_between(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A derived Aperio-like slide (bench/make_large_slide.py: real tissue, 240 px JPEG tiles, the scanner's own
    levels at 1x and 4x) with level 0 over 8192 px, so its 2x level is an in-between level above the overview.
    No sample slide has one: their in-between levels are all small enough to be overview levels."""
    out = tmp_path_factory.mktemp("derived") / "in-between.svs"
    made = subprocess.run([sys.executable, str(REPO / "bench" / "make_large_slide.py"), "--gigabytes", "0.01",
                           "--tissue-fraction", "0.15", "--output", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    return out


def test_the_hub_builds_the_in_between_levels_the_send_left_out(s3_server: S3Server, s3_bucket: str, tmp_path: Path,
                                                                 in_between: Path) -> None:
    endpoint, case = s3_server.endpoint_url, qualified_case(STATION, "between")
    root = SlideRef(case).root
    client = s3_server.client()
    with open_slide(in_between) as slide:
        plan = plan_pyramid(slide, ConvertOptions(hub_levels=True))
    hub_levels = [level.index for level in plan.levels if level.at_hub]
    assert hub_levels == [1] and all(level.complete for level in plan.levels[2:])  # 2x: in between; the overview stays

    def send(prefix: str, *flags: str) -> dict[str, Any]:
        """A send of the slide under `prefix`; its final manifest."""
        sent = subprocess.run([sys.executable, "-m", "slidestream", "send", str(in_between), f"s3://{s3_bucket}/{prefix}",
                               "--endpoint-url", endpoint, "--case", "between", "--station", STATION, "--no-edge", "--state-dir",
                               str(tmp_path / prefix), *flags],
                              capture_output=True, text=True, timeout=600)
        assert sent.returncode == 0, sent.stderr
        return stored_json(Location.parse(f"s3://{s3_bucket}/{prefix}/{root}", endpoint), MANIFEST) or {}

    def level_objects(prefix: str, level: int) -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{prefix}/{root}/{IMAGE}/{level}/c/").get("Contents", [])
        return {item["Key"].split(f"/{IMAGE}/")[1]: client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
                for item in listed}

    # today's send: the edge builds and sends the 2x level too
    full = send("full", "--full-pyramid")
    expected = level_objects("full", 1)
    assert expected and "hub_planned" not in full

    # a send a hub claimed but has not built for yet: the 2x level does not travel, and the image is still viewable
    claimed = Location.slide_version(Location.parse(f"s3://{s3_bucket}/alone", endpoint), SlideRef(case))
    claimed.write_bytes(LEASE, Lease("a hub that has not built yet", time.time() + 600).to_json())
    alone = send("alone")
    assert alone["state"] == "complete" and not any(key.startswith("1/") for key in alone["planned"])
    assert sorted(alone["hub_planned"]) == sorted(expected) and alone["hub_levels"] == {"1": 0}
    assert level_objects("alone", 1) == {}
    assert full["bytes_sent"] - alone["bytes_sent"] == sum(len(data) for data in expected.values())
    cases = Cases(S3Storage(s3_bucket, "alone", endpoint), NO_REPORTS)
    status = asyncio.run(cases.status(root))
    states = [level["state"] for level in status["levels"]]
    assert set(states[1]) <= {PENDING, BACKGROUND} and PENDING in states[1]  # pending for the hub, never an error
    assert all(set(state) == {ARRIVED} for state in states[2:])  # the overview arrived, whole
    key, n = sorted(expected)[0], plan.shard_chunks
    table = read_shard_index(expected[key][-shard_index_size(n):], n)
    i, j = next((i, j) for i in range(n) for j in range(n) if table[i, j, 0] != EMPTY)  # a chunk the hub will write
    row, col = int(key.split("/")[3]) * n + i, int(key.split("/")[4]) * n + j
    assert asyncio.run(cases.tiles.locate(root, 1, row, col)) == PENDING
    assert isinstance(asyncio.run(cases.tiles.locate(root, 2, 0, 0)), Chunk)

    # sent while the hub runs: the hub builds the 2x level from what arrived, byte for byte today's
    live = slide_version(f"s3://{s3_bucket}/live", endpoint, case)
    log = tmp_path / "hub.log"
    with running_hub(f"s3://{s3_bucket}/live", endpoint, log):
        manifest = send("live")
        record = wait_for(lambda: (r := stored_json(live, PYRAMID)) and r["complete"] and r, "the hub's pyramid", 900)
    assert manifest["bytes_sent"] == alone["bytes_sent"] and f"PYRAMID {SlideRef(case).label}" in log.read_text()
    assert sorted(record["built"]) == sorted(expected) and record["empty"] == []
    assert level_objects("live", 1) == expected  # in the station's image, one NGFF image; its record is the centre's
    assert stored_json(live.sent, PYRAMID) is None
    live_cases = Cases(S3Storage(s3_bucket, "live", endpoint), NO_REPORTS)
    assert set(asyncio.run(live_cases.status(root))["levels"][1]["state"]) <= {ARRIVED, BACKGROUND}
    assert isinstance(asyncio.run(live_cases.tiles.locate(root, 1, row, col)), Chunk)
    # restart-safe: a hub that looks again has nothing left to build
    assert complete_pyramid(live, Manifest.from_document(manifest)) == (0, True)
