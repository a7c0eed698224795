"""Notebooks run top to bottom at a small size, and are kept without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"toy2d.ipynb", "sweep_report.ipynb", "digits_diagnostic.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_stale_outputs(path: Path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, shared_cache: Path, monkeypatch):
    monkeypatch.setenv("NEON_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("NEON_CACHE_DIR", str(shared_cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("NEON_SWEEP", raising=False)
    book = nbformat.read(path, as_version=4)
    # allow_errors: every cell runs and records its error as an output, so the check below is what fails
    NotebookClient(book, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [f"{o.ename}: {o.evalue}" for c in book.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    assert any(o.get("name") == "stdout" for c in book.cells if c.cell_type == "code" for o in c.outputs)
    assert list((tmp_path / "notebook_runs").rglob("summary.json"))
