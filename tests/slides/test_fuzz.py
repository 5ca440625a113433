"""Damaged input never crashes a command: truncations and byte flips of every sample, and special files.

Each case runs the real command in a subprocess with a timeout (a hang fails) and an address-space limit (a memory
spike fails: the allocation raises inside the command, which then cannot exit cleanly). Every outcome must be exit 0
with sane output, or exit 2 with exactly one line on stderr naming the file; never a traceback, a warning or a
progress line before it. The cases are a fixed list (seeded), the same on every run, so a failure reproduces.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SLIDES, sample

pytestmark = pytest.mark.slow  # damaged inputs through every command

# The bound: each process of a command (the CLI, its shard builders) gets this much address space. The reader decodes
# whole stored tiles or strips of at most slides.slide.MAX_CHUNK_BYTES (256 MiB) each; a normal info, convert or send
# of the samples stays far below (torch, for analyze, maps more address space than it uses).
ADDRESS_SPACE = 3 << 30
ANALYZE_ADDRESS_SPACE = 8 << 30
TIMEOUT = 180
SAMPLES = sorted(p.name for p in SLIDES.iterdir() if p.name != "README.md")
SEED = 18


def _damaged(name: str, kind: str, index: int, folder: Path) -> Path:
    """A truncation at a seeded point, or 10 seeded random byte flips, of one sample."""
    data = bytearray(sample(name).read_bytes())
    rng = random.Random(f"{SEED}-{name}-{kind}-{index}")
    if kind == "cut":
        data = data[: rng.randrange(1, len(data))]
    else:
        for _ in range(10):
            data[rng.randrange(len(data))] = rng.randrange(256)
    path = folder / f"{Path(name).stem}-{kind}{index}{Path(name).suffix}"
    path.write_bytes(bytes(data))
    return path


def _special(kind: str, folder: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(folder / "pipe.svs")
        return folder / "pipe.svs"
    if kind == "link loop":
        os.symlink("loop.svs", folder / "loop.svs")
        return folder / "loop.svs"
    if kind == "device":
        return Path("/dev/zero")
    if kind == "dicom beside a fifo":  # openslide opens every file of a DICOM file's folder
        os.mkfifo(folder / "pipe")
        (folder / "slide.dcm").write_bytes(sample("wsi2dcm-jpeg.dcm").read_bytes())
        return folder / "slide.dcm"
    if kind == "name not utf-8":
        path = Path(os.fsdecode(bytes(folder) + b"/S26-\xff\xfe.svs"))
        path.write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
        return path
    raise AssertionError(kind)


SPECIAL = ["fifo", "link loop", "device", "dicom beside a fifo", "name not utf-8"]
SPECIAL_OK = {"dicom beside a fifo", "name not utf-8"}


def _run(args: list[str], limit: int = ADDRESS_SPACE, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        return subprocess.run([sys.executable, "-m", "slidestream", *args], capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT, preexec_fn=bounded, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: slidestream {' '.join(args)} ran past {TIMEOUT} s")


def _assert_clean(result: subprocess.CompletedProcess[str], path: Path) -> bool:
    """Exit 0, or exit 2 with one line naming the file; returns whether it succeeded."""
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 0:
        return True
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("slidestream: error: ") and path.name.encode("utf-8", "backslashreplace").decode() in lines[0], lines
    return False


def _cases(kinds: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(name, kind, index) for name in SAMPLES for kind, count in kinds.items() for index in range(count)]


INFO_CASES = _cases({"cut": 3, "flip": 3})
CONVERT_CASES = _cases({"cut": 1, "flip": 2})
SEND_CASES = [(name, "flip" if i % 2 else "cut", 0) for i, name in enumerate(SAMPLES)]  # S3 sends: one per sample


@pytest.mark.parametrize("name, kind, index", INFO_CASES)
def test_info_on_damaged_samples(tmp_path: Path, name: str, kind: str, index: int) -> None:
    path = _damaged(name, kind, index, tmp_path)
    result = _run(["info", "--json", str(path)])
    if _assert_clean(result, path):
        summary = json.loads(result.stdout)
        assert summary["levels"] and all(level["width"] > 0 and level["height"] > 0 for level in summary["levels"])


@pytest.mark.parametrize("name, kind, index", CONVERT_CASES)
def test_convert_on_damaged_samples(tmp_path: Path, name: str, kind: str, index: int) -> None:
    import zarr

    path, out = _damaged(name, kind, index, tmp_path), tmp_path / "out.zarr"
    if _assert_clean(_run(["convert", str(path), str(out)]), path):
        info = json.loads(_run(["info", "--json", str(path)]).stdout)
        image = zarr.open_group(out, mode="r")
        assert image["0"].shape == (3, info["levels"][0]["height"], info["levels"][0]["width"])
        assert image[str(len(list(image.array_keys())) - 1)][:].any()  # the overview level decodes
    else:
        assert not out.exists(), "nothing half-written is left where the output belongs"


@pytest.mark.parametrize("name, kind, index", SEND_CASES)
def test_send_on_damaged_samples(tmp_path: Path, s3_server, s3_bucket: str, name: str, kind: str, index: int) -> None:
    path = _damaged(name, kind, index, tmp_path)
    result = _run(["send", str(path), f"s3://{s3_bucket}/fuzz", "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"),
                   "--deadline", "30"])
    if _assert_clean(result, path):
        client = s3_server.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"] if o["Key"].endswith("manifest.json")]
        manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=keys[0])["Body"].read())
        assert manifest["complete"] is True and set(manifest["arrived"]) == set(manifest["planned"])


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("command", ["info", "convert"])
def test_special_files(tmp_path: Path, command: str, kind: str) -> None:
    path = _special(kind, tmp_path)
    args = ["info", str(path)] if command == "info" else ["convert", str(path), str(tmp_path / "out.zarr")]
    ok = _assert_clean(_run(args), path)
    assert ok == (kind in SPECIAL_OK), kind


@pytest.mark.parametrize("kind", SPECIAL)
def test_send_special_files(tmp_path: Path, s3_server, s3_bucket: str, kind: str) -> None:
    path = _special(kind, tmp_path)
    result = _run(["send", str(path), f"s3://{s3_bucket}/fuzz", "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path / "state")])
    assert _assert_clean(result, path) == (kind in SPECIAL_OK), kind


def test_analyze_batch_goes_on_past_every_damaged_input(tmp_path: Path) -> None:
    """One batch: a damaged variant of each sample, special files, a name that is not UTF-8 and a good slide. Every
    input gets its row (an error row is one line naming the problem); the good slide is scored; no traceback."""
    rng = random.Random(SEED)
    inputs = [_damaged(name, rng.choice(["cut", "flip"]), 0, tmp_path) for name in SAMPLES]
    inputs += [_special(kind, tmp_path) for kind in ("fifo", "link loop", "name not utf-8")]
    good = tmp_path / "good.svs"
    good.write_bytes(sample("CMU-1-Small-Region.svs").read_bytes())
    report = tmp_path / "report.csv"
    result = _run(["analyze", *map(str, inputs), str(good), "--report", str(report), "--coarse", "--site", "colon"], limit=ANALYZE_ADDRESS_SPACE)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 1), result.stderr[-3000:]
    with report.open(newline="", errors="replace") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(inputs) + 1
    assert {row["status"] for row in rows} <= {"ok", "no tissue", "no validated AI", "error"}
    assert all(row["error"] and "\n" not in row["error"] for row in rows if row["status"] == "error")
    assert rows[-1]["status"] == "ok" and float(rows[-1]["score"]) >= 0
    odd = next(row for row in rows if "S26-" in row["slide"])
    assert odd["status"] == "ok" and "\\udcff" in odd["slide"], odd
    failed = [row for row in rows if row["status"] == "error"]
    assert any("FIFO" in row["error"] for row in failed) and any("symbolic link loop" in row["error"] for row in failed)
    # the summary line comes last and counts the failures exactly
    assert result.stderr.strip().splitlines()[-1].startswith(f"{len(rows)} items, {len(failed)} failed")


@pytest.mark.parametrize("edge", ["--no-edge", "--edge"])
def test_send_failing_after_its_overview_ends_in_one_line(tmp_path: Path, s3_server, s3_bucket: str, edge: str) -> None:
    """A damaged level-0 tile in a slide whose overview comes from its own low level: the overview reaches the store
    before the send meets the damage. Its milestone line would stand before the error (and no longer be true once
    the send is retracted); off a terminal, milestones wait for success. With edge triage, its thread still imports
    torch when the send exits: its failure at shutdown must not print a traceback after the error line."""
    import tifffile

    data = bytearray(sample("TCGA-CR-7395-jp2k.svs").read_bytes())
    with tifffile.TiffFile(sample("TCGA-CR-7395-jp2k.svs")) as tiff:
        page = tiff.pages[0]
        middle = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[middle], page.databytecounts[middle]
    data[offset + 100 : offset + count - 10 : 7] = b"\x55" * len(range(offset + 100, offset + count - 10, 7))
    path = tmp_path / "bad-tile.svs"
    path.write_bytes(bytes(data))
    result = _run(["send", str(path), f"s3://{s3_bucket}/fuzz", "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"), edge])
    assert not _assert_clean(result, path)
    assert "level 0" in result.stderr
