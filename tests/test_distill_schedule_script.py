"""Schedule distillation end to end: the real config (its `smoke` variant) through `run` and through the script."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.experiments.configs import boss_straighten, distill_oracle, learn_sampler
from fastsamplers.experiments.runs import learned_samplers, schedule_distillation
from fastsamplers.experiments.train import straighten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke run, twice at once: the script in a subprocess (started first, it runs while this process works,
    with a few iterations of gradient refinement) and `run` in this process (no refinement). Both are compile-bound,
    so side by side they take about the time of one."""
    script_dir, run_dir = tmp_path_factory.mktemp("script"), tmp_path_factory.mktemp("run")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the packages itself
    proc = subprocess.Popen(
        [sys.executable, "scripts/distill_schedule.py", "--config", "experiments/configs/distill_oracle.py:smoke",
         "--workdir", str(script_dir)]
        + ["--config.refine.enabled=True", "--config.refine.num_iters=5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        config = distill_oracle.get_config("smoke")
        results = schedule_distillation.run(config, run_dir)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    yield {"config": config, "results": results, "dir": run_dir, "proc": proc, "script_dir": script_dir}
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_run_writes_a_schedule_that_loads_back_exactly(smoke):
    config, results, workdir = smoke["config"], smoke["results"], smoke["dir"]
    process = schedules.get_process(config.process)
    distilled = results["rows"][0]
    assert distilled["kind"] == "distilled" and math.isfinite(distilled["rmse"]) and distilled["rmse"] > 0
    assert [row["label"] for row in results["rows"][1:]] == list(config.compare_grids)
    assert all(row["nfe"] == config.nfe for row in results["rows"])

    path = str(workdir / config.outputs.schedule)
    ts = schedules.get_timesteps("file", process, distilled["num_steps"], path=path)
    np.testing.assert_array_equal(np.asarray(ts), np.asarray(results["ts"][distilled["label"]]))
    # The steps are teacher times, from t_max to t_min.
    teacher_ts = np.asarray(results["distill"]["teacher_ts"])
    np.testing.assert_array_equal(np.asarray(ts), teacher_ts[results["distill"]["indices"]])
    assert float(ts[0]) == process.t_max and float(ts[-1]) == pytest.approx(process.t_min)

    _, record = schedules.load_schedule(path)
    assert (record["method"], record["solver"], record["nfe"], record["process"]) == ("oss", "deis_tab", 5,
                                                                                      "vp_linear")
    assert record["model"] == "gaussian_mixture_oracle(dim=8,K=6,seed=0)"
    assert record["teacher"] == {"steps": 40, "grid": "logsnr", "solver": "deis_tab", "options": {"order": 3}}
    assert record["rmse_heldout"] == distilled["rmse"] and record["config"]["batch"] == config.batch
    assert record["model_calls"] > 0 and math.isfinite(record["cost"]) and record["distill_seconds"] > 0

    with open(workdir / config.outputs.json) as f:
        saved = json.load(f)
    assert saved["rows"][0]["rmse"] == distilled["rmse"] and "jax" in saved["versions"]
    with open(workdir / config.outputs.png, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_script_runs_from_a_checkout(smoke):
    stdout, stderr = smoke["proc"].communicate(timeout=300)
    assert smoke["proc"].returncode == 0, stderr[-3000:]
    assert "RMSE vs exact" in stdout and "oss distilled" in stdout
    for name in ("schedule.json", "distill.json", "distill.png"):
        assert (smoke["script_dir"] / name).is_file()


@pytest.mark.parametrize("key, value, match", [
    ("method", "boss", "unknown distillation method 'boss'; valid names"),
    ("solver.name", "deis_tabb", "unknown solver 'deis_tabb'; valid names"),
    ("student", "dpmpp_2m", "single-step"),
    ("compare_grids", ["logsnr", "edn"], "unknown time grid 'edn'; valid names"),
])
def test_a_wrong_name_fails_before_any_distillation(key, value, match, tmp_path, monkeypatch):
    monkeypatch.setattr(schedules, "distill", lambda *a, **k: pytest.fail("distill was called"))
    config = distill_oracle.get_config("smoke")
    parent, _, leaf = key.rpartition(".")
    setattr(config[parent] if parent else config, leaf, value)
    with pytest.raises(ValueError, match=match):
        schedule_distillation.run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _Learning(Exception):
    """Raised by a stand-in of schedules.learn: the run got as far as learning."""


def test_teacher_and_compare_grids_take_schedule_files(tmp_path, monkeypatch):
    """Every grid key takes a "file:PATH" schedule file, as sample.grid and evaluate's grids do, through
    experiments.configs.grid_timesteps (and grid_spec where a schedule optimiser builds the grid): schedule
    distillation's teacher.grid and compare_grids, boss.teacher_grid, and the learned samplers' teacher.grid (each
    followed up to its use: no distillation, pool or learning is run)."""
    paths = {}
    for name in ("vp_linear", "ot"):
        process = schedules.get_process(name)
        paths[name] = str(tmp_path / f"{name}.json")
        schedules.save_schedule(paths[name], schedules.get_timesteps("quadratic", process, 6), process=process,
                                solver="ddim", nfe=6, method="oss")
    resampled = lambda name, n: np.asarray(schedules.get_timesteps("file", name, n, path=paths[name]))
    file_grid = f"file:{paths['vp_linear']}"

    config = distill_oracle.get_config("smoke")
    config.teacher.grid, config.compare_grids = file_grid, ("logsnr", file_grid)
    setup = schedule_distillation._validate(config)
    (k,) = setup.step_counts
    assert setup.distill_options["teacher_grid"] == ("file", {"path": paths["vp_linear"]})
    np.testing.assert_array_equal(setup.grids[k][file_grid], resampled("vp_linear", k))
    assert schedule_distillation._teacher_record(config)["grid"] == file_grid

    boss = boss_straighten.get_config("smoke,teacher=toy2d_fm")
    boss.boss.teacher_grid = f"file:{paths['ot']}"
    straighten.check_boss_config(boss)
    assert straighten.teacher_grid_spec(boss) == ("file", {"path": paths["ot"]})
    np.testing.assert_array_equal(straighten.teacher_grid(boss, schedules.get_process("ot")),
                                  resampled("ot", boss.boss.teacher_steps))
    boss.boss.teacher_grid = f"file:{tmp_path}/none.json"
    with pytest.raises(FileNotFoundError, match="none.json"):
        straighten.check_boss_config(boss)

    learn = learn_sampler.get_config("model=oracle,method=olss,smoke")
    learn.teacher.grid = file_grid
    seen = {}

    def learning(*args, teacher_grid, **kwargs):
        seen["teacher_grid"] = teacher_grid
        raise _Learning

    monkeypatch.setattr(schedules, "learn", learning)
    with pytest.raises(_Learning):
        learned_samplers.run(learn, str(tmp_path / "learned"))
    assert seen["teacher_grid"] == ("file", {"path": paths["vp_linear"]})


def test_config_args():
    assert distill_oracle.get_config().batch > distill_oracle.get_config("smoke").batch
    config = distill_oracle.get_config("method=gits,nfe=6")
    assert (config.method, config.nfe, config.teacher.steps) == ("gits", 6, 200)
    with pytest.raises(ValueError, match="valid args"):
        distill_oracle.get_config("smok")
    with pytest.raises(AttributeError):  # locked: a misspelt override fails instead of adding a key
        distill_oracle.get_config().nfee = 5


def test_refinement_is_saved_when_enabled(smoke):
    smoke["proc"].communicate(timeout=300)  # the script's run refined its schedule
    assert smoke["proc"].returncode == 0
    with open(smoke["script_dir"] / "distill.json") as f:
        results = json.load(f)
    distilled, refined = results["rows"][:2]
    assert results["config"]["refine"]["enabled"] and refined["kind"] == "refined"
    assert math.isfinite(refined["rmse"]) and results["refine"]["iterations"] == 5
    path = str(smoke["script_dir"] / "schedule.json")
    process = schedules.get_process(results["config"]["process"])
    ts = schedules.get_timesteps("file", process, refined["num_steps"], path=path)
    np.testing.assert_array_equal(np.asarray(ts), np.asarray(results["ts"][refined["label"]]))
    _, record = schedules.load_schedule(path)
    assert record["refined"] is True and record["rmse_heldout"] == refined["rmse"]
    assert record["distilled_ts"] == results["ts"][distilled["label"]]
