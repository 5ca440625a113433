"""The command line behaves as people expect: each behaviour through the real command in a subprocess (stdout,
stderr, exit code), against the real S3 server and the real slides."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import sample
from support import free_port

pytestmark = pytest.mark.slow  # commands in subprocesses

CLI = [sys.executable, "-m", "slidestream"]
INTERRUPTED = "interrupted: `slidestream resume` (or the same send command) continues where this stopped"


def slidestream(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    result = slidestream("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"slidestream {version('slidestream')}", result
    assert result.stderr == ""


def test_help_loads_no_heavy_library() -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['slidestream', '--help']\n"
        "try:\n    runpy.run_module('slidestream', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in ('torch', 'zarr', 'botocore', 'dask', 'openslide', 'numpy') if m in sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "Usage" in result.stdout and result.stderr.strip() == "", result.stderr


# -- malformed URLs: one line and exit 2 in every command that takes one ------------------------------------------
BAD_ENDPOINT = "http//host:9000"
BAD_STORES = ["s3://Bad_Bucket/site-a", "s3:/bucket/site-a", "s3://bucket/a/../b"]


def _command(command: str, tmp_path: Path, store: str) -> list[str]:
    return {
        "send": ["send", str(sample("synthetic-boxes.tiff")), store, "--state-dir", str(tmp_path / "s")],
        "watch": ["watch", str(tmp_path), store, "--state-dir", str(tmp_path / "s")],
        "serve": ["serve", "--store", store],
        "analyze": ["analyze", store, "--report", str(tmp_path / "r.csv")],
    }[command]


@pytest.mark.parametrize("command", ["send", "watch", "serve", "analyze"])
def test_a_malformed_endpoint_is_one_line_in_every_command(tmp_path: Path, command: str) -> None:
    result = slidestream(*_command(command, tmp_path, "s3://bucket/site-a"), "--endpoint-url", BAD_ENDPOINT, timeout=60)
    assert result.returncode == 2
    assert one_line(result) == f"slidestream: error: --endpoint-url '{BAD_ENDPOINT}' is not an endpoint URL (expected http(s)://HOST[:PORT])"


@pytest.mark.parametrize("command", ["send", "watch", "serve", "analyze", "resume"])
def test_a_malformed_aws_endpoint_variable_is_one_line_in_every_command(tmp_path: Path, command: str) -> None:
    args = ["resume", "--state-dir", str(tmp_path / "s")] if command == "resume" else _command(command, tmp_path, "s3://bucket/site-a")
    result = slidestream(*args, env={"AWS_ENDPOINT_URL": "ftp://host"}, timeout=60)
    assert result.returncode == 2
    assert one_line(result) == "slidestream: error: AWS_ENDPOINT_URL 'ftp://host' is not an endpoint URL (expected http(s)://HOST[:PORT])"


@pytest.mark.parametrize("store", BAD_STORES)
@pytest.mark.parametrize("command", ["send", "watch", "serve", "analyze"])
def test_a_malformed_store_url_is_one_line_in_every_command(tmp_path: Path, command: str, store: str) -> None:
    result = slidestream(*_command(command, tmp_path, store), "--endpoint-url", "http://127.0.0.1:9", timeout=60)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"slidestream: error: {store}: ") and "Traceback" not in result.stderr, line


# -- the config file --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("[watch]\nsetle = 20\n", "unknown key 'setle' in [watch] (did you mean 'settle'?)"),
    ("[defaults]\nendpoint = 'http://x'\n", "unknown key 'endpoint' in [defaults] (did you mean 'endpoint_url'?)"),
    ("[sned]\nquality = 50\n", "unknown section [sned] (did you mean 'send'?)"),
    ("[serve]\ncolour = 'red'\n", "unknown key 'colour' in [serve]"),
])
def test_a_mistyped_config_key_is_one_line_naming_key_section_and_file(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = slidestream("--config", config, "info", sample("CMU-1-Small-Region.svs"), timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result) == f"slidestream: error: {config}: {words}"


def test_defaults_apply_only_to_commands_that_have_the_option(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nquality = 40\nendpoint_url = 'http://127.0.0.1:9'\n")  # convert has no endpoint_url
    out = tmp_path / "out.zarr"
    result = slidestream("--config", config, "convert", "--reencode", sample("CMU-1-Small-Region.svs"), out, timeout=120)
    assert result.returncode == 0, result.stderr
    codecs = json.loads((out / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert codecs[1]["configuration"]["level"] == 40


# -- info -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["camelyon-lymphnode.dcm", "wsi2dcm-jpeg.dcm"])
def test_info_qc_on_a_slide_the_model_refuses_still_gives_the_info(name: str) -> None:
    result = slidestream("info", "--qc", sample(name), timeout=180)
    assert result.returncode == 0, result.stderr
    assert "mpp: " in result.stdout and "level" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("qc: skipped: ")]
    assert len(skipped) == 1 and "too coarse for the" in skipped[0] and "um/px" in skipped[0], result.stdout
    summary = json.loads(slidestream("info", "--qc", "--json", sample(name), timeout=180).stdout)
    assert "too coarse" in summary["qc_skipped"] and "qc" not in summary


def test_info_says_objective_unknown_and_the_background() -> None:
    dicom = slidestream("info", sample("camelyon-lymphnode.dcm"), timeout=60)
    assert dicom.returncode == 0 and "objective: unknown " in dicom.stdout and "unknownx" not in dicom.stdout
    aperio = slidestream("info", sample("CMU-1-Small-Region.svs"), timeout=60)
    assert "objective: 20x " in aperio.stdout and "background: bright-field" in aperio.stdout
    fluorescence = json.loads(slidestream("info", "--json", sample("ndpi-fluorescence-DAPI.ndpi"), timeout=60).stdout)
    assert fluorescence["background"] == "dark-field"
    assert json.loads(slidestream("info", "--json", sample("CMU-1-Small-Region.svs"), timeout=60).stdout)["background"] == "bright-field"


# -- serve ------------------------------------------------------------------------------------------------------
def _serve_lines(process: subprocess.Popen[str], count: int, timeout: float = 90) -> list[str]:
    """The first `count` lines serve prints. A thread reads them: `select` on the pipe would miss lines that
    arrived together with the first one and wait in the file's buffer (it did, on a loaded machine)."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in stdout], daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline and process.poll() is None, f"serve said {got}: {process.stderr.read() if process.poll() is not None else ''}"  # type: ignore[union-attr]
        try:
            got.append(lines.get(timeout=1))
        except queue.Empty:
            continue
    return got


def _get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def test_serve_on_a_single_converted_image_serves_it_as_one_case(tmp_path: Path) -> None:
    from caseformat.layout import qualified_case
    from slidestream.serve import LOCAL_STATION

    image = tmp_path / "biopsy.ome.zarr"
    assert slidestream("convert", sample("CMU-1-Small-Region.svs"), image, timeout=120).returncode == 0
    port = free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "SLIDESTREAM_SECRET": "s" * 32}
    process = subprocess.Popen([*CLI, "serve", "--store", str(image), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = _serve_lines(process, 3)
        case = qualified_case(LOCAL_STATION, "biopsy")  # a converted image served alone is a case of no hospital's
        assert "1 case(s)" in lines[0] and lines[2].startswith(f"{case}: http://127.0.0.1:{port}/view/{case}#token="), lines
        token = lines[2].split("#token=")[1]
        status, body = _get(f"http://127.0.0.1:{port}/api/cases/{case}/slides/s1/v1/image", token)
        assert status == 200 and json.loads(body)["levels"], body
        status, tile = _get(f"http://127.0.0.1:{port}/api/cases/{case}/slides/s1/v1/tiles/0/0/0", token)
        assert status == 200 and tile[:2] == b"\xff\xd8"  # the JPEG chunk, as stored
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_default_viewer_port_is_uncommon_and_gives_way_to_a_free_one(tmp_path: Path) -> None:
    from slidestream.serve import DEFAULT_PORT

    assert DEFAULT_PORT not in (80, 443, 3000, 4200, 5000, 5173, 8000, 8008, 8080, 8081, 8443, 8888, 9000)
    store = tmp_path / "store"
    store.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "SLIDESTREAM_SECRET": "s" * 32}
    with socket.create_server(("127.0.0.1", DEFAULT_PORT)) if _port_free(DEFAULT_PORT) else socket.socket():
        process = subprocess.Popen([*CLI, "serve", "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            lines = _serve_lines(process, 2)
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/worklist", lines[1]).group(1))  # type: ignore[union-attr]
            assert port != DEFAULT_PORT
        finally:
            process.terminate()
            stderr = process.communicate(timeout=30)[1]
    assert stderr.splitlines()[0] == f"port {DEFAULT_PORT} is taken; serving on port {port} instead (--port to choose)"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# -- send: progress, Ctrl-C, shared defaults ------------------------------------------------------------------------
def _in_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Runs the command with a pseudo-terminal as its stdout and stderr (rich draws its bar only on a terminal)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the command closed its terminal
                break
            if not data:
                break
            output += data
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=30), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))


def test_the_send_progress_bar_never_runs_backwards_and_ends_at_the_final_count(tmp_path: Path, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    # the JPEG 2000 slide: several levels re-encoded, the tissue plan settles mid-send and empty shards drop out
    code, screen = _in_terminal([*CLI, "send", str(sample("TCGA-CR-7395-jp2k.svs")), f"s3://{s3_bucket}/cases", "--no-edge",
                                 "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path / "s"), "--max-rate", "20"])
    assert code == 0, screen[-2000:]
    counts = [(int(done), int(total)) for done, total in re.findall(r"sending case \S+ .*?(\d+)/(\d+)", screen)]
    assert len(counts) >= 3, screen[-2000:]
    totals = [total for _, total in counts]
    done = [d for d, _ in counts]
    assert totals == sorted(totals) and done == sorted(done), counts
    final = re.search(r"s3://\S+: (\d+)/(\d+) shards", screen)
    assert final is not None, screen[-2000:]
    assert int(final.group(1)) == int(final.group(2)) == totals[-1] == done[-1], (counts[-3:], final.group(0))


def test_ctrl_c_during_a_send_says_how_to_continue_and_resume_finishes_it(tmp_path: Path, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    args = [*CLI, "send", str(sample("TCGA-CR-7395-jp2k.svs")), f"s3://{s3_bucket}/cases", "--no-edge",
            "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(state), "--max-rate", "4", "--concurrency", "2"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = s3_server.client()
    deadline = time.monotonic() + 120
    while sum("/c/" in o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [INTERRUPTED] and stdout == ""
    from transfer import Journal, parse_destination

    with Journal(state) as journal:
        assert [record.destination.bucket for record in journal.unfinished()] == [s3_bucket]
    resumed = slidestream("resume", "--state-dir", state, "--json")
    assert resumed.returncode == 0, resumed.stderr
    [summary] = json.loads(resumed.stdout)
    assert summary["objects_skipped"] >= 2
    dest = parse_destination(f"s3://{s3_bucket}/cases", summary["case"], slide=summary["slide"], version=summary["version"])
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=dest.manifest_key)["Body"].read())
    assert manifest["complete"] is True


def test_watch_takes_every_option_send_takes_with_the_same_default_and_help() -> None:
    import typer

    from slidestream.cli import app
    from station.request import SendRequest

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    watch_options = {param.name: param for param in commands["watch"].params}
    only_send = {"slide", "destination", "case", "context_file", "state_dir", "as_json"}  # a file's own, or said differently
    for param in commands["send"].params:
        if param.name in only_send:
            continue
        twin = watch_options.get(param.name)
        assert twin is not None, f"watch lacks send's {param.opts}"
        assert (twin.opts, twin.default, twin.help) == (param.opts, param.default, param.help), param.name
    for name in ("concurrency", "quality", "keep_phi", "deadline", "edge", "max_rate", "lossless", "keep_background", "hub_wait"):
        assert watch_options[name].default == getattr(SendRequest("", ""), name), name
    for command in ("send", "watch"):
        help_text = re.sub(r"[\s│]+", " ", slidestream(command, "--help", env={"COLUMNS": "300"}, timeout=60).stdout)
        assert "Triage here first (default: on)" in help_text, help_text
