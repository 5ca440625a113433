"""A hub whose store fails mid-case looks again on its own: the case reaches its final map without a restart.

Against the real S3 server through a TCP proxy the test controls, with the real model: the hub runs as a subprocess,
as a pathology centre runs it, and the store becomes unreachable while the hub scores a case whose send is complete.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import S3Server
from support import ARRIVING, STATION, Proxy, colorectal_context, final_triage, running_hub, scorable, slide_version, wait_for

from caseformat.layout import SlideRef, qualified_case

pytestmark = pytest.mark.slow  # a running hub

OUTAGE_SECONDS = 12


def test_a_store_outage_while_the_hub_scores_is_retried_until_the_case_is_done(s3_server: S3Server, s3_bucket: str,
                                                                               tmp_path: Path) -> None:
    store = f"s3://{s3_bucket}/outage"
    case = qualified_case(STATION, "OUTAGE-1")
    name = SlideRef(case).label
    sent = subprocess.run([sys.executable, "-m", "slidestream", "send", str(scorable(ARRIVING)), store, "--case", "OUTAGE-1", "--context-file", str(colorectal_context()),
                           "--station", STATION, "--endpoint-url", s3_server.endpoint_url, "--no-edge", "--state-dir",
                           str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stderr  # the send is complete before the hub looks: nothing new will arrive
    location = slide_version(store, s3_server.endpoint_url, case)
    proxy = Proxy(s3_server.endpoint_url)
    log = tmp_path / "hub.log"
    try:
        with running_hub(store, proxy.endpoint_url, log) as hub:
            wait_for(lambda: f"PARTIAL {name}" in log.read_text(), "the hub's first pass", 300)
            proxy.set_down(True)  # the store is gone while the hub scores the rest
            time.sleep(OUTAGE_SECONDS)
            proxy.set_down(False)
            final = wait_for(lambda: final_triage(location), "the hub's final map after the outage", 90)
            wait_for(lambda: f"DONE {name}" in log.read_text(), "the hub's DONE line", 30)
            assert hub.poll() is None  # the same hub, never restarted
    finally:
        proxy.close()
    lines = log.read_text().splitlines()
    retries = [line for line in lines if line.startswith(f"RETRY {name} in ")]
    assert 1 <= len(retries) <= 3, "\n".join(lines)  # said once per reason, not once per poll
    assert final["summary"]["tiles_scored"] == final["summary"]["tissue_tiles"]
