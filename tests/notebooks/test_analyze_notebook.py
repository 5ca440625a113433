"""notebooks/analyze_samples.ipynb runs from top to bottom (its last cell asserts its own results)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # a Jupyter kernel

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analyze_samples.ipynb"


def test_notebook_runs_routes_each_slide_and_draws_its_figures() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2, "the slides and their QC chart"
    text = "".join(output.get("text", "") for output in outputs)
    assert "1. " in text and "failed: broken:" in text
