"""`slidestream demo` runs the whole chain from a fresh clone, live: the viewer link first, then the milestones as the
store shows them, until the hub's full-magnification map is complete."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_prints_the_link_first_then_each_milestone_as_it_happens() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slidestream", "demo", "--port", "0", "--exit-when-ready"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"viewer: http://127\.0\.0\.1:\d+/view/[0-9a-f]{16}#token=\S+ .*", lines[0]), result.stdout
    times = {}
    for line in lines:
        match = re.fullmatch(r"\s*(\d+\.\d) s  (.+)", line)
        if match:
            times[match.group(2).split(" (")[0]] = float(match.group(1))
    for milestone in ("overview readable", "all tissue at full resolution", "send complete", "hub map readable", "hub map complete"):
        assert milestone in times, result.stdout
    assert times["overview readable"] <= times["all tissue at full resolution"] <= times["send complete"]
    assert times["hub map readable"] <= times["hub map complete"]
    assert re.search(r"hub map complete .*\(score 0\.\d{3}\)", result.stdout)
