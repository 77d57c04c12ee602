"""The results notebook runs end to end against a project that went through train and tune."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.mark.slow
def test_the_results_notebook_executes_end_to_end(trained_project):
    import nbformat
    from nbclient import NotebookClient

    folder = trained_project / "notebooks"
    folder.mkdir(exist_ok=True)
    shutil.copy(PROJECT_ROOT / "notebooks/results.ipynb", folder / "results.ipynb")
    notebook = nbformat.read(folder / "results.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert not any(o.output_type == "error" for cell in outputs.values() for o in cell)
    mimes = [set(o.get("data", {})) for cell in outputs.values() for o in cell]
    assert sum("image/png" in m for m in mimes) >= 2  # the training curves and the image grid
    assert any("text/markdown" in m for m in mimes)  # the evaluation table
