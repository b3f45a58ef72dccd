"""notebooks/analyze_study.ipynb runs top to bottom (nbclient, the venv's ipykernel) against the demo study
the cluster test logged to its MLflow server, and shows its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analyze_study.ipynb"

pytestmark = pytest.mark.slow


def test_analyze_study_notebook_runs_and_draws_its_figures(cluster_study, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for name, value in cluster_study.mlflow.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CYTOTUNE_STUDY", cluster_study.study)
    monkeypatch.setenv("CYTOTUNE_REPORT_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    # Figure 1 (shots), parameters vs accuracy and the parallel coordinates; the demo has no fraction cell.
    assert len(images) >= 3
    assert (tmp_path / "reports" / f"{cluster_study.study}_figure1_shots.png").is_file()
    text = "\n".join(str(out.get("data", {}).get("text/plain", "")) + out.get("text", "") for out in outputs)
    assert cluster_study.study in text
