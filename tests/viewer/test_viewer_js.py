"""The pages' pure rules (viewer/static/viewer-core.mjs: lengths, areas, the scale bar, the clock's colours, tile
arrival) by their own unit tests in tests/viewer/js/, run with node's built-in test runner."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO


def test_the_viewer_core_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the viewer's JavaScript unit tests (tests/viewer/js/) need node 20 or later")
    result = subprocess.run([node, "--test", "tests/viewer/js/"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
