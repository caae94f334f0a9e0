"""BOSS straightening (experiments/train/straighten.py) through the training loop: the straightened model's few-step
error against its own teacher drops, a killed run resumes bit for bit, and unfit teachers fail before any compute.

The runs use `boss_straighten.py:smoke,teacher=toy2d_fm`, the moons MLP: the same code path as digits_fm's UNet (the
pool, the loss and the loop do not look at the network), at a tenth of the time: the smoke UNet's compilations alone
take about a minute and a half of CPU for the teacher and the straightened run. `scripts/benchmark_boss.py` runs
digits_fm itself."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastsamplers.experiments import train
from fastsamplers.experiments.configs import boss_straighten, toy2d_fm
from fastsamplers.experiments.runs import boss_benchmark
from fastsamplers.experiments.train import straighten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def _config(teacher_dir, teacher_config="toy2d_fm.py:smoke", **boss):
    config = boss_straighten.get_config(f"smoke,teacher=toy2d_fm,teacher_workdir={teacher_dir}")
    config.boss.teacher_config = teacher_config and os.path.join(CONFIGS, teacher_config)  # any working directory
    for key, value in boss.items():
        config.boss[key] = value
    return config


def _state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def _leaves(tree):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _curve(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(line["step"], line["loss"], line["lr"]) for line in map(json.loads, f)]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    config = toy2d_fm.get_config("smoke")
    config.eval.num_samples = config.sample.num_samples = 100  # the teacher's own evaluation is not tested here
    train.train(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def straightened(teacher_dir, tmp_path_factory):
    config = _config(teacher_dir)
    workdir = tmp_path_factory.mktemp("boss")
    result = train.train(config, str(workdir))
    return config, workdir, result


def test_straightening_lowers_the_few_step_error_against_the_teacher(straightened):
    config, workdir, result = straightened
    k = config.boss.num_steps
    pool = straighten.read_pool(os.path.join(workdir, straighten.POOL_FILE))
    assert pool.ts.shape == (k + 1,) and pool.ts[0] == 1.0 and pool.ts[-1] == 0.0
    assert pool.states.shape == (config.boss.pool_size, k + 1, 2)
    assert json.load(open(workdir / straighten.schedule_file(k)))["ts"] == pool.ts.tolist()
    assert result["sampler"]["grid"] == "bellman" and result["sampler"]["ts"] == pool.ts.tolist()
    curve = _curve(workdir)
    assert [step for step, _, _ in curve] == [10, 20, 30, 40, 50, 60] and curve[-1][1] < 0.5 * curve[0][1]

    # K-step Euler on the Bellman steps against the fine teacher solve, on noise that neither the DP nor the pool saw.
    teacher = straighten.load_teacher(config)
    noise = straighten.heldout_noise(config, 512, teacher.shape, teacher.process)
    reference = straighten.teacher_states(config, teacher, noise)
    errors = {name: straighten.few_step_rmse(teacher.model_fn, params, teacher.process, pool.ts, noise, reference)
              for name, params in (("before", teacher.args), ("after", _state(workdir, 60)["params"]))}
    # measured: 0.68 before, 0.15 after
    assert errors["after"] / errors["before"] < 0.5, errors


def test_killed_run_resumes_with_the_same_curve_and_parameters(straightened, tmp_path):
    config, whole, result = straightened
    # Killed after its step-30 checkpoint: the same workdir without the later checkpoint and log lines.
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "60")
    with open(killed / "metrics.jsonl", "w") as f:
        f.writelines(line for line in open(whole / "metrics.jsonl") if json.loads(line)["step"] <= 30)
    pool_time = os.path.getmtime(killed / straighten.POOL_FILE)
    assert train.train(config, str(killed)) == result
    assert os.path.getmtime(killed / straighten.POOL_FILE) == pool_time  # reused, not made again
    assert _curve(killed) == _curve(whole)
    whole_state, killed_state = _leaves(_state(whole, 60)), _leaves(_state(killed, 60))
    assert whole_state.keys() == killed_state.keys()
    for name in whole_state:
        np.testing.assert_array_equal(whole_state[name], killed_state[name], err_msg=name)  # bitwise
    # A run killed before its pool was written makes the same pool again.
    teacher = straighten.load_teacher(config)
    stored = straighten.read_pool(os.path.join(whole, straighten.POOL_FILE))
    np.testing.assert_array_equal(straighten.make_pool(config, teacher).states, stored.states)


def test_unfit_teachers_and_pools_fail_before_compute(teacher_dir, straightened, tmp_path):
    missing = _config(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*nowhere.*train first"):
        train.train(missing, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="teacher .*digits_vp.py:smoke predicts 'eps'"):
        train.train(_config(teacher_dir, "digits_vp.py:smoke"), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="teacher .*digits_tarflow.py:smoke is a normalizing flow"):
        train.train(_config(teacher_dir, "digits_tarflow.py:smoke"), str(tmp_path / "c"))
    wider = _config(teacher_dir)
    wider.model.mlp.hidden = 32
    with pytest.raises(ValueError, match="not the teacher's architecture"):
        train.train(wider, str(tmp_path / "d"))
    with pytest.raises(ValueError, match="boss.teacher_config is not set"):
        train.train(_config(teacher_dir, teacher_config=""), str(tmp_path / "e"))
    for name in "abcde":
        assert not (tmp_path / name / straighten.POOL_FILE).exists()
    # A workdir whose pool was made for other settings (here another teacher grid) is not reused.
    _, workdir, _ = straightened
    with pytest.raises(ValueError, match=r"was made for other settings \(boss: .*'teacher_steps': 16.* there"):
        train.train(_config(teacher_dir, teacher_steps=20), str(workdir))


def test_the_benchmark_measures_the_straightened_run_against_its_teacher(teacher_dir, straightened, tmp_path):
    config, workdir, _ = straightened
    k = config.boss.num_steps
    spec = os.path.join(CONFIGS, f"boss_straighten.py:smoke,teacher=toy2d_fm,teacher_workdir={teacher_dir}")
    record = boss_benchmark.benchmark({k: str(workdir)}, str(tmp_path / "boss.json"), config_spec=spec, nfes=(k,),
                                      num_noise=64)
    rmse = {(r["model"], r["grid"]): r["rmse"] for r in record["rows"] if "rmse" in r}
    assert set(rmse) == {(m, g) for m in ("teacher", f"BOSS K={k}") for g in ("bellman", "uniform")}
    # as the test above finds on 512 noises (0.68 -> 0.15); here, on 64: 0.66 -> 0.14
    assert rmse[(f"BOSS K={k}", "bellman")] < 0.5 * rmse[("teacher", "bellman")], rmse
    assert record["costs"][f"BOSS K={k}"]["ts"] == record["bellman_ts"][str(k)]
    assert json.load(open(tmp_path / "boss.json"))["num_noise"] == 64


@pytest.mark.parametrize("arg", ["", "num_steps=4", "smoke", "teacher=toy2d_fm", "smoke,teacher=toy2d_fm"])
def test_configs_name_their_teacher_and_fit_the_checks(arg):
    config = boss_straighten.get_config(arg)
    straighten.check_boss_config(config)
    assert os.path.isfile(os.path.join(ROOT, config.boss.teacher_config.partition(":")[0]))
    assert config.sample.solver == "euler" and config.sample.nfe == config.boss.num_steps
    assert config.boss.calibration_size == config.boss.pool_batch  # one compiled teacher solve
    with pytest.raises(ValueError, match="unknown teacher"):
        boss_straighten.get_config("teacher=digits_vp")
