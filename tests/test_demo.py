"""`slidestream demo` runs the whole chain from a fresh clone and ends with a reachable viewer URL."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_to_a_reachable_viewer() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slidestream", "demo", "--port", "0", "--exit-when-ready"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"viewer: http://127\.0\.0\.1:\d+/view/[0-9a-f]{16}#token=\S+", result.stdout), result.stdout
    assert re.search(r"overview readable\s+\d+\.\d s", result.stdout)
    assert re.search(r"all tissue at full resolution\s+\d+\.\d s", result.stdout)
