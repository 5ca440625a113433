"""`slidestream demo` runs the whole chain from a fresh clone: the viewer link comes first, then each milestone as
the store shows it, up to the hub's last word on the sample: CMU-1 is skin, which the default model is not validated
for, so the edge and the hub give QC and no map of scores."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from slidestream.demo import STATION

pytestmark = pytest.mark.slow  # the whole demo


def test_demo_prints_the_viewer_first_and_the_milestones_as_they_happen() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slidestream", "demo", "--port", "0", "--exit-when-ready"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    case = rf"{STATION}\.[0-9a-f]{{16}}"  # a new specimen of the demo's station
    assert re.fullmatch(rf"viewer: http://127\.0\.0\.1:\d+/view/{case}#token=\S+ .*", lines[0]), result.stdout
    labels = ["overview readable", "edge triage: no validated AI (QC only)", "all tissue at full resolution", "send complete",
              "pyramid complete (hub)", "hub: no validated AI (QC only)"]
    times = {}
    for label in labels:
        (match,) = [m for line in lines if (m := re.fullmatch(rf"\s+{re.escape(label)}\s+(\d+\.\d) s", line))]
        times[label] = float(match.group(1))
    # printed as they happened: the overview before full resolution, the send's end before the hub's final word
    assert times["overview readable"] <= times["all tissue at full resolution"] <= times["send complete"] <= times["hub: no validated AI (QC only)"]
    assert "map readable" not in result.stdout and "hub map" not in result.stdout  # no map of scores is claimed
    assert re.search(rf"case {case}: \d+\.\d MB sent in \d+ objects", result.stdout)
