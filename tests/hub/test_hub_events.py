"""The hub with store events (`hub --events`, Ceph RGW's topics): a new case is found within seconds though the hub
lists the stores' arrivals only once a minute. Against the real RGW."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, S3Server
from support import STATION, colorectal_context, free_port, scorable, wait_for

pytestmark = pytest.mark.slow  # a hub and a send


def test_an_arrival_is_found_by_its_event_not_the_next_listing(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    if not s3_server.name.startswith("ceph-rgw"):
        pytest.skip(f"store events are Ceph RGW's topics; this server is {s3_server.name}")
    store, log = f"s3://{s3_bucket}/alliance", tmp_path / "hub.log"
    with log.open("wb") as out:
        hub = subprocess.Popen([sys.executable, "-m", "slidestream", "hub", store, "--endpoint-url", s3_server.endpoint_url,
                                "--poll", "120", "--events", f"127.0.0.1:{free_port()}"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: "store events from" in log.read_text() or hub.poll() is not None, "the hub to subscribe", 120)
        assert hub.poll() is None, log.read_text()
        time.sleep(1)  # its first look (nothing yet) is behind it
        started = time.monotonic()
        send = subprocess.Popen([sys.executable, "-m", "slidestream", "send", str(scorable()), store, "--endpoint-url", s3_server.endpoint_url,
                                 "--case", "evented", "--station", STATION, "--no-edge", "--context-file", str(colorectal_context()),
                                 "--state-dir", str(tmp_path / "state")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
        wait_for(lambda: "FOUND " in log.read_text(), "the hub to find the case", 30)
        found = time.monotonic() - started
        _, errors = send.communicate(timeout=300)
        assert send.returncode == 0, errors
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=60)
    text = log.read_text()
    assert f"FOUND {STATION}.evented/s1/v1" in text and "ERROR" not in text, text
    assert found < 20, f"found after {found:.1f} s: its event, not a listing (every 60 s, polls every 120 s)"
