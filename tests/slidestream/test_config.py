"""One configuration: flags > SLIDESTREAM_<COMMAND>_<OPTION> > config file > defaults; credentials never in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import sample


def _convert(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> int:
    out = tmp_path / "out.zarr"
    args = [sys.executable, "-m", "slidestream", *extra[:2], "convert", "--reencode", "--overwrite", *extra[2:], str(sample("CMU-1-Small-Region.svs")), str(out)]
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    assert result.returncode == 0, result.stderr
    codecs = json.loads((out / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    return codecs[1]["configuration"]["level"]


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nquality = 40\n\n[convert]\nquality = 55\n")
    assert _convert(tmp_path, "--config", str(config)) == 55
    assert _convert(tmp_path, "--config", str(config), env={"SLIDESTREAM_CONVERT_QUALITY": "66"}) == 66
    assert _convert(tmp_path, "--config", str(config), "--quality", "77", env={"SLIDESTREAM_CONVERT_QUALITY": "66"}) == 77


def test_bad_config_files_give_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[send\nendpoint_url = 1\n")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[send]\naws_secret_access_key = "x"\n')
    for path, words in ((tmp_path / "missing.toml", "not found"), (broken, "cannot read config"), (secrets, "credentials do not belong")):
        result = subprocess.run([sys.executable, "-m", "slidestream", "--config", str(path), "info", str(sample("CMU-1-Small-Region.svs"))], capture_output=True, text=True)
        assert result.returncode == 2 and words in result.stderr and str(path) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_hospitals_interface_tables_are_checked_in_one_line(tmp_path: Path) -> None:
    """[watch.hl7] and [watch.fhir] take the fields the interface team names, nothing else: a mistyped key or a
    patient mode FHIR does not know is one line naming it, before watch starts."""
    hot = tmp_path / "hot"
    hot.mkdir()
    cases = [('[watch.hl7]\nsending_facilty = "ST-MARY"\n', "unknown key 'sending_facilty' in [watch.hl7] (did you mean 'sending_facility'?)"),
             ('[watch.fhir]\npatient = 3\n', "[watch.fhir] patient must be a string"),
             ('[watch]\nhl7 = "x"\n', "'hl7' in [watch] must be the table [watch.hl7]"),
             ('[watch.fhir]\npatient = "inline"\n', "[watch.fhir] patient must be 'contained' or 'conditional'")]
    for number, (text, words) in enumerate(cases):
        config = tmp_path / f"config-{number}.toml"
        config.write_text(text)
        result = subprocess.run([sys.executable, "-m", "slidestream", "--config", str(config), "watch", str(hot), "s3://bucket/prefix",
                                 "--state-dir", str(tmp_path / "state"), "--once", "--fhir", "http://127.0.0.1:9/fhir"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert len(lines) == 1 or "Invalid value" in result.stderr, result.stderr


def test_the_centre_keys_watch_and_status_trust_can_come_from_the_config_file(tmp_path: Path, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "enrolment" / "centre.pem"
    config = tmp_path / "config.toml"
    config.write_text(f"[watch]\ncentre_keys = '{keys}'\n\n[status]\ncentre_keys = '{keys}'\n")
    (tmp_path / "hot").mkdir()
    common = [sys.executable, "-m", "slidestream", "--config", str(config)]
    watch = subprocess.run([*common, "watch", str(tmp_path / "hot"), f"s3://{s3_bucket}/site", "--endpoint-url", s3_server.endpoint_url,
                            "--state-dir", str(tmp_path / "state"), "--once"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert watch.returncode == 0 and f"no centre public key at {keys}: ask the centre for it" in watch.stderr, watch.stderr
    status = subprocess.run([*common, "status", "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
