"""The oracle benchmarks of experiments/runs/ (schedules, learned samplers, stochastic samplers, guidance, OT
couplings, flow matching) on tiny settings: each runs end to end, writes its record, and its rows say what they
should; each script shows its flags. (The solver and pretrained benchmarks have their own test files; the BOSS
benchmark is tested in test_boss.py, on its straightened run.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastsamplers.experiments.metrics import transport
from fastsamplers.experiments.runs import (coupling_benchmark, fm_benchmark, guidance_benchmark, learned_benchmark,
                                           schedule_benchmark, stochastic_benchmark)
from sweep import slow_unless

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schedule_benchmark(tmp_path):
    record = schedule_benchmark.benchmark(str(tmp_path / "s.json"), nfes=(3,), teacher_steps=8, distill_batch=8,
                                          eval_batch=8, solvers={"deis_tab3": ("deis_tab", {"order": 3})})
    assert {f.name for f in tmp_path.iterdir()} == {"s.json", "benchmark_schedules.md", "benchmark_schedules.png"}
    rows = {r["schedule"]: r for r in record["rows"]}
    best = rows["uniform"]["best_grid"]
    assert set(rows) == {"uniform", "quadratic", "logsnr", "edm", "oss", "bellman", "gits", "refine(oss)",
                         f"refine({best})"}
    assert rows[best]["ratio_to_best_grid"] == 1.0 and all(len(r["ts"]) == 4 for r in rows.values())
    assert [c["method"] for c in record["distillation_cost"]] == ["oss", "bellman", "gits"]


def test_learned_benchmark(tmp_path):
    record = learned_benchmark.benchmark(str(tmp_path / "l.json"), nfes=(3,), calibration=8, evaluation=8,
                                         teacher_steps=8, fixed={"DDIM": ("ddim", {})},
                                         learned={"OLSS": ("olss", {"refine": 0})})
    fixed = [r for r in record["rows"] if r["kind"] == "fixed"]
    (olss,) = [r for r in record["rows"] if r["kind"] == "learned"]
    assert len(fixed) == len(learned_benchmark.GRIDS) and olss["nfe"] == 3 and len(olss["ts"]) == 4
    assert "best fixed pair" in open(tmp_path / "l.md").read()
    with pytest.raises(ValueError, match="unknown learning method 'nope'"):
        learned_benchmark.benchmark(str(tmp_path / "x.json"), learned={"x": ("nope", {})})


def test_stochastic_benchmark_traces_the_model_once_for_new_parameters(tmp_path):
    record = stochastic_benchmark.benchmark(str(tmp_path / "st.json"), num_samples=16, nfes=(4,), floor_pairs=2,
                                            calls=3, solvers=(("ddim eta=1", "ddim", {"eta": 1.0}),))
    assert record["compilations"]["traces"] == 1 and record["compilations"]["calls"] == 3
    (row,) = record["rows"]
    assert row["nfe"] == 4 and np.isfinite(row["energy_distance"]) and record["floor"]["n"] == 16


def test_energy_distance_is_zero_for_one_sample_set_and_positive_for_a_shifted_one():
    x = np.random.default_rng(0).normal(size=(64, 2))
    assert transport.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert transport.energy_distance(x, x + 3.0) > 1.0


def test_guidance_benchmark(tmp_path):
    record = guidance_benchmark.benchmark(str(tmp_path / "g.json"), nfe=4, batch=8, scales=(1.0, 2.0),
                                          solvers=["ddim"])
    assert [(r["solver"], r["scale"], r["nfe"]) for r in record["rows"]] == [("ddim", 1.0, 4), ("ddim", 2.0, 4)]
    assert all(0 < r["rmse"] < 10 for r in record["rows"])
    # The 16-point sweep compiles once, as a loop of sample calls and as one vmap, and not again on a second pass.
    assert [(r["mode"], r["compilations"], r["recompilations_in_pass_2"]) for r in record["sweep"]] == [
        ("loop", 1, 0), ("vmap", 1, 0)]


def test_coupling_benchmark_solvers_agree(tmp_path):
    rows = coupling_benchmark.benchmark((2,), (8,), repeats=3, budget_s=0.01, stack=2,
                                        json_path=str(tmp_path / "c.json"))
    (row,) = rows
    assert row["costs_agree"] and row["scipy_cost"] <= row["independent_cost"]
    assert json.load(open(tmp_path / "c.json"))["settings"]["batches"] == [8]
    with pytest.raises(ValueError, match="unknown data 'rings'"):
        coupling_benchmark.benchmark((2,), (8,), data_2d="rings")


def test_fm_benchmark_without_torchcfm(tmp_path):
    from fastsamplers.experiments.configs import toy2d_fm

    steps = toy2d_fm.get_config().train.steps_per_call  # one compiled chunk of training steps
    record = fm_benchmark.benchmark(str(tmp_path / "fm.json"), steps=steps, couplings=("independent",), num_eval=16,
                                    eval_steps=(2, 1))
    (row,) = record["rows"]
    assert row["framework"] == "ours" and row["steps_per_s"] > 0 and row["straightness"] >= 0
    assert np.isfinite([row["w2_euler2"], row["w2_euler1"]]).all() and "torchcfm" not in record
    with pytest.raises(ValueError, match="unknown coupling 'emd'"):
        fm_benchmark.benchmark(str(tmp_path / "x.json"), couplings=("emd",))


# Each script is the same three lines around cli.main: two in the default suite, all in the slow set.
@pytest.mark.parametrize("name", slow_unless(["schedules", "learned", "stochastic", "guidance", "couplings", "fm",
                                              "boss", "dpm_ot"], lambda name: name in ("schedules", "guidance"),
                                             unpack=False))
def test_the_scripts_show_their_flags(name):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"benchmark_{name}.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--json" in out
