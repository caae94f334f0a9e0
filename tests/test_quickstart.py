"""The quickstart end to end: the real config (its `smoke` variant) through `run` and through the script."""

import json
import math
import os
import subprocess
import sys

import pytest

from fastsamplers.experiments.runs import oracle_quickstart
from fastsamplers.experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(results, solver):
    return next(row for row in results["rows"] if row["solver"] == solver)


def test_run_writes_results_and_deis_beats_ddim(tmp_path):
    config = quickstart.get_config("smoke")
    results = oracle_quickstart.run(config, tmp_path)

    with open(tmp_path / config.outputs.json) as f:
        saved = json.load(f)
    assert [row["label"] for row in saved["rows"]] == [entry["label"] for entry in config.solvers]
    assert saved["config"]["batch"] == config.batch and "jax" in saved["versions"]
    with open(tmp_path / config.outputs.png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    deis, ddim = _row(results, "deis_tab"), _row(results, "ddim")
    assert all(row["nfe"] == config.nfe for row in results["rows"])
    assert math.isfinite(deis["rmse"]) and 0 < deis["rmse"] < ddim["rmse"]
    assert ddim["ratio_to_baseline"] == 1.0


def test_unknown_solver_fails_before_sampling(tmp_path):
    config = quickstart.get_config("smoke")
    config.solvers = [*config.solvers, dict(label="typo", name="deis_tabb", options=dict())]
    with pytest.raises(ValueError, match="valid names"):
        oracle_quickstart.run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_args():
    assert quickstart.get_config().batch > quickstart.get_config("smoke").batch
    assert quickstart.get_config("smoke,nfe=5").nfe == 5
    with pytest.raises(ValueError, match="valid args"):
        quickstart.get_config("smok")
    with pytest.raises(AttributeError):  # locked: a misspelt override fails instead of adding a key
        quickstart.get_config().nfee = 5


def test_script_runs_from_a_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the packages itself
    proc = subprocess.run(
        [sys.executable, "scripts/sample.py", "--config", "experiments/configs/quickstart.py:smoke",
         "--config.nfe=6", "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSE vs exact" in proc.stdout
    with open(tmp_path / "quickstart.json") as f:
        assert json.load(f)["config"]["nfe"] == 6
