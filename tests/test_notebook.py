"""The notebooks run headless on their smoke settings (nbclient), and show what they are for."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "experiments", "notebooks")


def execute(name, tmp_path, monkeypatch, **env):
    """Run experiments/notebooks/NAME.ipynb with FASTSAMPLERS_SMOKE=1, its outputs under tmp_path/out, the given
    environment (None: unset); returns the text its code cells printed or displayed as markdown."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    env = dict(FASTSAMPLERS_SMOKE="1", FASTSAMPLERS_NOTEBOOK_OUT=str(tmp_path / "out"), JAX_PLATFORMS="cpu", **env)
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()
    return "".join(output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))


def test_notebook_executes_on_smoke_settings(tmp_path, monkeypatch):
    text = execute("compare_samplers", tmp_path, monkeypatch, FASTSAMPLERS_CHECKPOINT=str(tmp_path / "no_run"))
    assert "| solver | NFE 4 | NFE 6 |" in text  # the oracle table
    assert "lowest error: DEIS tAB3" in text
    assert "no checkpoint in" in text
    assert (tmp_path / "out" / "oracle" / "rows.json").exists()
    assert (tmp_path / "out" / "oracle" / "table.png").stat().st_size > 1000


def test_published_checkpoints_notebook_executes_on_the_edm_fixture(tmp_path, monkeypatch):
    """Convert (printed: no torch here), load the committed EDM fixture, sample solvers x NFE, score a smoke FID of
    one preset row, and print it beside the published table."""
    text = execute("published_checkpoints", tmp_path, monkeypatch, FASTSAMPLERS_SOURCE=None,
                   FASTSAMPLERS_CHECKPOINT=None, FASTSAMPLERS_REFERENCE=None)
    assert "convert with:" in text and "--layout edm" in text
    assert "layout edm, process edm, prediction x0" in text
    assert "iPNDM-4 NFE  5" in text and "Euler NFE  6" in text
    assert "iPNDM-4 at NFE 5: fd_random_projection" in text
    assert "| iPNDM-4 | " in text and " / 13.59 (" in text  # ours beside the published 13.59 at NFE 5
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000


@pytest.mark.slow  # 10 s of CPU, over CI's budget; the checkpoints notebook stays in the default suite
def test_published_transformers_notebook_executes_on_the_fixtures(tmp_path, monkeypatch):
    """GS-Jacobi plans on the TarFlow fixture (every plan agrees with sequential to its tolerance) and bottleneck
    sampling on the DiT pipeline fixture (decoded), headless."""
    text = execute("published_transformers", tmp_path, monkeypatch, FASTSAMPLERS_TARFLOW=None, FASTSAMPLERS_DIT=None)
    assert "| block | CRM | share |" in text
    for line in text.splitlines():
        if "max |x - x_sequential|" in line:  # every plan at tol 1e-4 lands within 1e-3 of the sequential inverse
            assert float(line.rsplit("=", 1)[1]) < 1e-3, line
    assert "layout diffusers_dit, latents (8, 8, 4) -> images (16, 16, 3)" in text
    assert "plain: NFE 12" in text and "bottleneck: NFE 12 (per stage [5, 5, 2])" in text
    for name in ("tarflow_passes.png", "dit_plain.png", "dit_bottleneck.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000

