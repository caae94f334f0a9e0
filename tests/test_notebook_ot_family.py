"""The ot_family notebook (issue 28) runs headless on its smoke settings, in the slow set (`bash
scripts/test_slow.sh`): about 150 s, most of it the LightSB fits and the kinetic paths' Monte Carlo."""

import pytest

from test_notebook import execute


@pytest.mark.slow
def test_ot_family_notebook_executes_on_smoke_settings(tmp_path, monkeypatch):
    """LightSB against the closed-form Gaussian plan and on 2-d sets, the DPM-OT cells and their masses, the
    kinetic-optimal paths against cond-OT; the flow-map section says how to make the run it needs."""
    text = execute("ot_family", tmp_path, monkeypatch, FASTSAMPLERS_FLOWMAP_RUN=str(tmp_path / "no_run"))
    assert "| closed form |" in text and "| LightSB set by hand |" in text
    assert "| 8gaussians |" in text and "| moons |" in text
    assert "empty cells; largest |mass carried - mass asked|" in text
    assert "| data | Phi | KE cond-OT | KE kinetic |" in text
    assert "no flow-map run in" in text
    for name in ("light_sb.png", "dpm_ot_cells.png", "kinetic.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
