"""The solver benchmark (experiments/runs/solver_benchmark.py, its report, scripts/benchmark_solvers.py) on a tiny
plan: every section runs, the files are written, the report's cells follow from the rows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastsamplers.experiments.report import solver_report as report
from fastsamplers.experiments.runs import solver_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = solver_benchmark.Plan(
    configs=(solver_benchmark.cfg("ddim"), solver_benchmark.cfg("deis_tab", order=2)), grids=("logsnr",),
    nfe_targets=(1, 4), adaptive_tols=(1e-3,), overhead_configs=(solver_benchmark.cfg("ddim"),), accuracy_batch=8,
    overhead_batch=8, accuracy_repeats=1, sample_repeats=1, model_repeats=1)


def test_a_tiny_plan_runs_every_section_and_writes_its_files(tmp_path):
    record = solver_benchmark.benchmark(TINY, str(tmp_path / "out.json"), command="test")
    rows = record["rows"]
    assert json.load(open(tmp_path / "out.json"))["rows"] == json.loads(json.dumps(rows))
    assert {f.name for f in tmp_path.iterdir()} == {"out.json", "benchmark_solvers.md", "benchmark_solvers.png"}
    accuracy = {(r["config"], r["nfe_target"]): r for r in rows if r["section"] == "accuracy"}
    assert set(accuracy) == {(c, n) for c in ("ddim", "deis_tab[order=2]") for n in (1, 4)}
    # a cell that cannot run is recorded with the reason: second-order DEIS needs two steps
    skipped = accuracy.pop(("deis_tab[order=2]", 1))
    assert skipped["status"] == "skipped" and "at least 2 steps" in skipped["message"]
    for (config, target), row in accuracy.items():
        assert row["status"] == "ok" and row["nfe"] == target and row["num_nonfinite"] == 0
        assert 0 < row["rmse"] < 5.0 and row["max_abs_err"] >= row["rmse"]
    # more steps of a convergent solver end closer to the exact flow map
    assert accuracy[("ddim", 4)]["rmse"] < accuracy[("ddim", 1)]["rmse"]
    (adaptive,) = [r for r in rows if r["section"] == "adaptive"]
    assert adaptive["status"] == "ok" and adaptive["rmse"] < accuracy[("ddim", 4)]["rmse"]
    (overhead,) = [r for r in rows if r["section"] == "overhead"]
    assert overhead["nfe"] == 10 and overhead["model_fraction"] > 0 and overhead["sample_s"] > 0
    text = open(tmp_path / "benchmark_solvers.md").read()
    assert "| ddim | logsnr |" in text and "| deis_tab[order=2] | logsnr | skipped |" in text
    assert "## Overhead" in text


def test_a_wrong_name_in_the_plan_fails_before_any_compute(tmp_path):
    plan = solver_benchmark.Plan(configs=(solver_benchmark.cfg("dddim"),), overhead_configs=())
    with pytest.raises(ValueError, match="unknown solver 'dddim'"):
        solver_benchmark.benchmark(plan, str(tmp_path / "out.json"))
    with pytest.raises(ValueError, match="unknown time grid 'log'"):
        solver_benchmark.benchmark(solver_benchmark.Plan(grids=("log",)), str(tmp_path / "out.json"))
    assert not os.listdir(tmp_path)


def _row(config, grid, target, rmse, nfe=None, status="ok"):
    return {"section": "accuracy", "config": config, "solver": config.split("[")[0], "grid": grid,
            "nfe_target": target, "nfe": target if nfe is None else nfe, "rmse": rmse, "status": status,
            "num_nonfinite": 0 if rmse is not None else 3, "message": "boom"}


def test_the_report_flags_growing_errors_and_picks_the_best_per_family():
    plan = solver_benchmark.Plan(configs=(solver_benchmark.cfg("ddim"), solver_benchmark.cfg("deis_tab", order=3)),
                                 grids=("uniform", "logsnr"), nfe_targets=(5, 10))
    rows = [_row("ddim", "uniform", 5, 0.3), _row("ddim", "uniform", 10, 0.6),  # grows 2x: flagged
            _row("ddim", "logsnr", 5, 0.2), _row("ddim", "logsnr", 10, 0.1),
            _row("deis_tab[order=3]", "uniform", 5, None), _row("deis_tab[order=3]", "uniform", 10, 0.05, nfe=9),
            _row("deis_tab[order=3]", "logsnr", 5, 0.01, status="error"), _row("deis_tab[order=3]", "logsnr", 10, 0.02)]
    flags = report.suspicious_cells(rows, plan)
    assert flags == ["deis_tab[order=3] / uniform / NFE 5: 3 non-finite values",
                     "deis_tab[order=3] / logsnr / NFE 5: boom",
                     "ddim / uniform: RMSE grows from 3.00e-01 (NFE 5) to 6.00e-01 (NFE 10)"]
    best = report.best_per_family_markdown(rows, plan).splitlines()
    assert best[2] == "| ddim | 2.00e-01 (ddim, logsnr, NFE 5) | 1.00e-01 (ddim, logsnr, NFE 10) |"
    assert best[3] == "| deis_tab | - | 2.00e-02 (deis_tab[order=3], logsnr, NFE 10) |"
    table = report.accuracy_markdown(rows, plan).splitlines()
    assert table[4] == "| deis_tab[order=3] | uniform | nonfinite (3) | 5.00e-02 (9) |"
    assert report.curve(rows, "ddim", "logsnr") == [(5, 0.2), (10, 0.1)]


def test_error_stats_count_nonfinite_values_and_report_no_error():
    ref = np.zeros((4, 2))
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    stats = solver_benchmark.error_stats(x, ref)
    assert stats == {"rmse": np.sqrt(25 / 8), "max_abs_err": 4.0, "median_sample_err": 0.0, "num_nonfinite": 0}
    x[1, 0] = np.nan
    assert solver_benchmark.error_stats(x, ref) == {"rmse": None, "max_abs_err": None, "median_sample_err": None,
                                                    "num_nonfinite": 1}


def test_the_script_shows_its_flags():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_solvers.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--quick" in out and "--json" in out
