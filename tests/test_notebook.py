"""The research notebook runs headless on the smoke settings (nbclient), and shows the oracle table."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "compare_samplers.ipynb")


def test_notebook_executes_on_smoke_settings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FASTSAMPLERS_SMOKE", "1")
    monkeypatch.setenv("FASTSAMPLERS_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("FASTSAMPLERS_CHECKPOINT", str(tmp_path / "no_run"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    text = "".join(output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "| solver | NFE 4 | NFE 6 |" in text  # the oracle table
    assert "lowest error: DEIS tAB3" in text
    assert "no checkpoint in" in text
    assert (tmp_path / "out" / "oracle" / "rows.json").exists()
    assert (tmp_path / "out" / "oracle" / "table.png").stat().st_size > 1000


PUBLISHED = os.path.join(ROOT, "experiments", "notebooks", "published_checkpoints.ipynb")


def test_published_checkpoints_notebook_executes_on_the_edm_fixture(tmp_path, monkeypatch):
    """Convert (printed: no torch here), load the committed EDM fixture, sample solvers x NFE, score a smoke FID of
    one preset row, and print it beside the published table."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FASTSAMPLERS_SMOKE", "1")
    monkeypatch.setenv("FASTSAMPLERS_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for name in ("FASTSAMPLERS_SOURCE", "FASTSAMPLERS_CHECKPOINT", "FASTSAMPLERS_REFERENCE"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(PUBLISHED, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(PUBLISHED)}}).execute()
    text = "".join(output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "convert with:" in text and "--layout edm" in text
    assert "layout edm, process edm, prediction x0" in text
    assert "iPNDM-4 NFE  5" in text and "Euler NFE  6" in text
    assert "iPNDM-4 at NFE 5: fd_random_projection" in text
    assert "| iPNDM-4 | " in text and " / 13.59 (" in text  # ours beside the published 13.59 at NFE 5
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000


TRANSFORMERS = os.path.join(ROOT, "experiments", "notebooks", "published_transformers.ipynb")


def test_published_transformers_notebook_executes_on_the_fixtures(tmp_path, monkeypatch):
    """GS-Jacobi plans on the TarFlow fixture (every plan agrees with sequential to its tolerance) and bottleneck
    sampling on the DiT pipeline fixture (decoded), headless."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FASTSAMPLERS_SMOKE", "1")
    monkeypatch.setenv("FASTSAMPLERS_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for name in ("FASTSAMPLERS_TARFLOW", "FASTSAMPLERS_DIT"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(TRANSFORMERS, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(TRANSFORMERS)}}).execute()
    text = "".join(output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "| block | CRM | share |" in text
    for line in text.splitlines():
        if "max |x - x_sequential|" in line:  # every plan at tol 1e-4 lands within 1e-3 of the sequential inverse
            assert float(line.rsplit("=", 1)[1]) < 1e-3, line
    assert "layout diffusers_dit, latents (8, 8, 4) -> images (16, 16, 3)" in text
    assert "plain: NFE 12" in text and "bottleneck: NFE 12 (per stage [5, 5, 2])" in text
    for name in ("tarflow_passes.png", "dit_plain.png", "dit_bottleneck.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
