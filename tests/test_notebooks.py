"""Every example notebook executes top to bottom on the tiny checkpoints (as CI runs them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REFERENCE_ROOT, REPO_ROOT, reference_dir

NOTEBOOKS = sorted((REPO_ROOT / "examples").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_example_notebook_executes(notebook: Path, monkeypatch):
    import nbclient
    import nbformat

    model = notebook.stem
    if (REFERENCE_ROOT / model).exists() or model in {"ivvae", "odvae", "opensora", "reducio", "cascadev"}:
        reference_dir(model)
    monkeypatch.setenv("VIDEOVAE_REFERENCE_DIR", str(REFERENCE_ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    client.execute()
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
