"""A station's side of the trust tests: the centre's signing key, reports it signs, notices on the store, and `watch --once` run as a technician would."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from caseformat.documents import Author, Report, SlideRead
from caseformat.layout import notice_key, qualified_case
from caseformat.signing import SigningKey, public_pem

STATION, PREFIX = "theatre-3", "site"
CENTRE = SigningKey.generate()
AUTHOR = Author("u0123abcd", "Dr P. Kovacs", "pathologist")


def station_case(local: str) -> str:
    """A case ID of this station (a case ID names its station)."""
    return qualified_case(STATION, local)


def time_ago(minutes_ago: float) -> str:
    """A time stamp in the past (old enough for the cursor to move over its notice)."""
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed_report(case: str, number: int = 1, diagnosis: str = "metastatic carcinoma in one sentinel node", station: str | None = STATION,
            signed_at: str | None = None) -> Report:
    return Report(case, number, "malignant", diagnosis, AUTHOR, signed_at or time_ago(30), station, slides=(SlideRead("s1", "v1"),),
                  amends=number - 1 if number > 1 else None)


def centre_keys_file(tmp_path: Path, key: SigningKey = CENTRE) -> Path:
    path = tmp_path / "centre.pem"
    path.write_bytes(public_pem(key.public))
    return path


def put_object(s3_server: Any, bucket: str, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=body)


def put_notice(s3_server: Any, bucket: str, at: str, case: str, body: bytes, number: int = 1, station: str = STATION) -> str:
    """Writes `body` where the centre puts a notice for `station`; returns its store key."""
    key = notice_key(station, at, case, "report", number)
    put_object(s3_server, bucket, key, body)
    return f"{PREFIX}/{key}"


def watch_command(tmp_path: Path, s3_server: Any, bucket: str, *extra: str) -> list[str]:
    hot = tmp_path / "hot"
    hot.mkdir(exist_ok=True)
    return [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{bucket}/{PREFIX}", "--endpoint-url", s3_server.endpoint_url,
            "--state-dir", str(tmp_path / "state"), "--station", STATION, "--no-edge", "--settle", "0.2", *extra]  # fmt: skip


def watch_once(tmp_path: Path, s3_server: Any, bucket: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(watch_command(tmp_path, s3_server, bucket, "--once", *extra), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def outbox_texts(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "hot" / "outbox"
    return {path.name: path.read_text() for path in folder.iterdir()} if folder.exists() else {}
