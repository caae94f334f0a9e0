"""The fitted_solvers notebook (issue 27) runs headless on its smoke settings, in the slow set (`bash
scripts/test_slow.sh`): about 80 s, most of it the DPM-Solver-v3 calibration, the AMED fit and the AYS fit."""

import pytest

from test_notebook import execute


@pytest.mark.slow
def test_fitted_solvers_notebook_executes_on_smoke_settings(tmp_path, monkeypatch):
    """DPM-Solver-v3 (its statistics drawn), AMED, AYS beside the fixed and distilled grids, and DualFast against the
    fixed solvers on the oracle; the digits section says how to make the checkpoint it needs."""
    text = execute("fitted_solvers", tmp_path, monkeypatch, FASTSAMPLERS_CHECKPOINT=str(tmp_path / "no_run"))
    assert "| DDIM on | NFE 5 | NFE 10 |" in text and "| AYS |" in text and "| GITS |" in text
    assert "| DPM-Solver-v3 + corrector |" in text and "| AMED (iPNDM plugin) |" in text
    assert "| DDIM + DualFast (c = 0.5) |" in text
    assert "no checkpoint in" in text
    for name in ("dpm_solver_v3_statistics.png", "ays_schedules.png", "error_vs_nfe.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
