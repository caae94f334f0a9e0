"""The sampling_targets notebook (issue 26) runs headless on its smoke settings, in the slow set (`bash
scripts/test_slow.sh`): about 70 s, most of it compiling the FK, scaling and Restart programs it draws."""

import pytest

from test_notebook import execute


@pytest.mark.slow
def test_sampling_targets_notebook_executes_on_smoke_settings(tmp_path, monkeypatch):
    """FK-corrected guidance, annealing and products against the exact targets, the scaling strategies against the
    NFE budget, and Restart against Heun, headless on small settings."""
    text = execute("sampling_targets", tmp_path, monkeypatch)
    assert "| target | exact vs exact | FK | uncorrected | ODE | NFE |" in text
    assert "| guidance, w = 2 |" in text and "| product of experts |" in text
    assert "| main Heun steps | NFE | Restart |" in text
    for name in ("fk_densities.png", "fk_ess.png", "fk_product_2d.png", "scaling.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
