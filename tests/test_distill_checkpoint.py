"""Schedules for a checkpoint at many step counts: `experiments.runs.schedule_distillation.run` with
`distill_checkpoint.py:smoke` on a random-weight checkpoint of the digits_vp smoke model, the files
`scripts/evaluate.py` reads, clear errors, and the config."""

import contextlib
import io
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments import train
from fastsamplers.experiments.runs import sampler_tables, schedule_distillation
from fastsamplers.experiments.train.experiment import abstract_state
from fastsamplers.experiments.configs import digits_vp, distill_checkpoint, distill_oracle, distill_pretrained
from fastsamplers.experiments.configs import evaluate as evaluate_config
from fastsamplers.samplers.unipc import UniC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with(config, **values):
    config = config.copy_and_resolve_references()
    config.unlock()
    for key, value in values.items():
        parent, _, leaf = key.rpartition("__")
        (config[parent] if parent else config)[leaf] = value
    config.lock()
    return config


def write_checkpoint(train_config, workdir, scale=0.1, seed=1):
    """A checkpoint of `train_config`'s model where `training.train` puts one (WORKDIR/checkpoints/0): random weights
    scale * N(0, 1) (numpy's generator: no compile) as the raw and EMA parameters, zeros for the rest of the state.
    A random network that predicts non-zero noise (an initialised UNet's zero output layer would make every sampler
    exact), in seconds instead of a training run's compiles."""
    experiment = train.build(train_config)
    abstract = abstract_state(experiment)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), abstract["params"])
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    state = dict(state, params=params, ema_params=params)
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler(),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(0, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    manager.close()


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A random-weight checkpoint of the digits_vp smoke model, then the smoke distillation of it (OSS at 2 and 3
    steps) with `run`, its printout captured."""
    root = tmp_path_factory.mktemp("distill_checkpoint")
    write_checkpoint(digits_vp.get_config("smoke"), str(root / "run"))
    config = distill_checkpoint.get_config(f"smoke,checkpoint_dir={root / 'run'}")
    # The smoke variant names the smoke training config relative to the repository root; the test may run elsewhere.
    config = _with(config, train_config=os.path.join(ROOT, config.train_config))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = schedule_distillation.run(config, str(root / "out"))
    return {"config": config, "results": results, "dir": root / "out", "printed": printed.getvalue()}


def test_one_schedule_file_per_count_loads_as_a_grid(checkpoint_run):
    config, results, workdir = checkpoint_run["config"], checkpoint_run["results"], checkpoint_run["dir"]
    process = schedules.get_process("vp_linear")  # digits_vp's
    assert results["step_counts"] == [2, 3] and results["source"] == "checkpoint"
    for k in (2, 3):
        path = str(workdir / f"oss_s{k}.json")
        ts = np.asarray(schedules.get_timesteps("file", process, k, path=path))
        assert ts.shape == (k + 1,) and np.all(np.diff(ts) < 0)
        assert float(ts[0]) == pytest.approx(process.t_max) and float(ts[-1]) == pytest.approx(process.t_min)
        np.testing.assert_array_equal(ts, results["ts"][str(k)]["oss distilled"])
        teacher_ts = np.asarray(results["distill"]["teacher_ts"])
        np.testing.assert_array_equal(ts, teacher_ts[results["distill"]["schedules"][str(k)]["indices"]])
        _, record = schedules.load_schedule(path)
        assert (record["method"], record["solver"], record["process"], record["num_steps"]) == ("oss", "deis_tab",
                                                                                               "vp_linear", k)
        assert record["source"] == "checkpoint" and record["reference"]["kind"] == "teacher"
        assert record["reference"]["steps"] == 2 * config.teacher.steps and "step 0" in record["model"]
        assert record["step_counts"] == [2, 3] and record["refined"] is False


def test_rows_score_every_count_against_the_teacher(checkpoint_run):
    config, results, workdir = checkpoint_run["config"], checkpoint_run["results"], checkpoint_run["dir"]
    rows = results["rows"]
    labels = ["oss distilled", *config.compare_grids]
    assert [(row["num_steps"], row["label"]) for row in rows] == [(k, label) for k in (2, 3) for label in labels]
    for row in rows:
        assert math.isfinite(row["rmse"]) and row["rmse"] >= 0 and row["nfe"] == row["num_steps"]
    # deis_tab of order 3 cannot run 2 steps: it is scored at order 2, which is its warm-up on such a grid.
    assert {row["num_steps"]: row["solver_label"] for row in rows} == {2: "deis_tab order=2", 3: "deis_tab order=3"}
    assert results["reference"] == {"kind": "teacher", "steps": 40, "grid": "logsnr", "solver": "deis_tab",
                                    "options": {"order": 3}}
    printed = checkpoint_run["printed"]
    assert "RMSE vs teacher (held-out)" in printed and "40 steps of deis_tab on the logsnr grid" in printed
    for row in rows:  # one table: every row printed with its RMSE
        assert f"{row['rmse']:.3e}" in printed
    with open(workdir / config.outputs.json) as f:
        saved = json.load(f)
    assert saved["rows"] == rows and saved["reference"]["kind"] == "teacher"
    assert (workdir / config.outputs.png).stat().st_size > 1000


def test_evaluate_accepts_the_files_as_a_grid(checkpoint_run):
    """The table's planner resolves "file:DIR/oss_s{num_steps}.json" for solvers whose budgets land on 2 and 3 steps."""
    workdir = checkpoint_run["dir"]
    table = evaluate_config.get_config("model=digits_vp,smoke")
    table = _with(table, solvers=[dict(label="DDIM", name="ddim", options={}),
                                  dict(label="Heun", name="heun", options={})],
                  nfes=(3,), grids=("uniform", f"file:{workdir}/oss_s{{num_steps}}.json"))
    process = schedules.get_process("vp_linear")
    cells = sampler_tables.plan_cells(table, process)
    steps = {(row["label"], row["nfe_budget"]): row["num_steps"] for row, _, _ in cells if row["grid"] != "uniform"}
    assert steps == {("DDIM", 3): 3, ("Heun", 3): 2}
    files = {row["num_steps"]: ts for row, _, ts in cells if row["grid"] != "uniform"}
    for k in (2, 3):
        np.testing.assert_array_equal(files[k], checkpoint_run["results"]["ts"][str(k)]["oss distilled"])


def test_the_oracle_source_takes_step_counts_too():
    """The oracle config with step_counts plans the same run, scored against the exact map (planning only: `run`'s
    step_counts path is the checkpoint fixture's, and the oracle's reference is the single-schedule tests')."""
    config = distill_oracle.get_config("smoke")
    config.unlock()
    config.step_counts = (4, 2, 4)
    config.outputs.schedule = "oss_s{num_steps}.json"
    config.lock()
    plan = schedule_distillation._validate(config)
    assert plan.step_counts == (2, 4) and plan.source_name == "oracle" and plan.reference_kind == "exact"
    assert {k: schedule_distillation._solver_text(s) for k, s in plan.score_solvers.items()} == {
        2: "deis_tab order=2", 4: "deis_tab order=3"}
    assert sorted(plan.grids) == [2, 4] and list(plan.grids[2]) == list(config.compare_grids)
    assert all(ts.shape == (k + 1,) for k in (2, 4) for ts in plan.grids[k].values())


def test_a_wrapped_solver_is_scored_at_the_order_of_a_short_grid():
    """UniPC (UniC around UniP of order 3) on a 2-step grid is scored at order 2, as deis_tab is: `Solver.at_order`
    lowers the wrapper's predictor (the order lives there), and the lowered solver is still the wrapper."""
    config = _with(distill_oracle.get_config("smoke"), step_counts=(2, 4), outputs__schedule="oss_s{num_steps}.json",
                   solver__name="unipc")
    plan = schedule_distillation._validate(config)
    lowered, solver = plan.score_solvers[2], plan.score_solvers[4]
    assert {k: schedule_distillation._solver_text(s) for k, s in plan.score_solvers.items()} == {
        2: "unipc order=2", 4: "unipc order=3"}
    assert type(lowered) is type(solver) is UniC
    assert lowered == samplers.get_solver("unipc", order=2) and lowered.step_orders(2).tolist() == [1, 1]


@pytest.mark.parametrize("values, match", [
    (dict(refine__enabled=True), "not supported with step_counts"),
    (dict(outputs__schedule="oss.json"), "one file per count"),
    (dict(outputs__schedule="oss_{nfe}.json"), "only use the field"),
    (dict(step_counts=(0, 3)), "integers >= 1"),
    (dict(step_counts=(3, 21)), "teacher.steps = 20"),
    (dict(oss__exact_steps=False), "single step count"),
    (dict(source="data"), "unknown source"),
    (dict(train_config=""), "needs train_config"),
])
def test_clear_errors_before_any_distillation(values, match, tmp_path, monkeypatch):
    monkeypatch.setattr(schedules, "distill_many", lambda *a, **k: pytest.fail("distill_many was called"))
    config = _with(distill_checkpoint.get_config(f"smoke,checkpoint_dir={tmp_path / 'none'}"), **values)
    with pytest.raises(ValueError, match=match):
        schedule_distillation.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_says_train_first(tmp_path):
    config = distill_checkpoint.get_config(f"smoke,checkpoint_dir={tmp_path / 'none'}")
    config = _with(config, train_config=os.path.join(ROOT, config.train_config))
    with pytest.raises(FileNotFoundError, match="train first"):
        schedule_distillation.run(config, str(tmp_path / "out"))


def test_config_variants():
    table = evaluate_config.get_config("model=digits_vp")
    config = distill_checkpoint.get_config()
    # Every step count of the evaluation table, and nothing else.
    wanted = {samplers.get_solver(e["name"], **dict(e["options"])).steps_for_nfe(nfe)
              for e in table.solvers for nfe in table.nfes}
    assert list(config.step_counts) == sorted(wanted) and 1 in wanted and 20 in wanted
    assert (config.train_config, config.checkpoint_dir) == evaluate_config.MODELS["digits_vp"][:2]
    assert list(config.compare_grids) == list(table.grids) and config.outputs.schedule == "oss_s{num_steps}.json"
    assert (config.solver.name, dict(config.solver.options), config.teacher.steps) == ("deis_tab", {"order": 3}, 200)
    fm = distill_checkpoint.get_config("model=digits_fm,method=gits")
    assert fm.train_config == "experiments/configs/digits_fm.py" and fm.outputs.schedule == "gits_s{num_steps}.json"
    smoke = distill_checkpoint.get_config("smoke,checkpoint_dir=/tmp/x")
    assert (smoke.step_counts, smoke.batch, smoke.eval_batch, smoke.teacher.steps) == ((2, 3), 8, 16, 20)
    assert (smoke.train_config, smoke.checkpoint_dir) == ("experiments/configs/digits_vp.py:smoke", "/tmp/x")
    with pytest.raises(ValueError, match="valid"):
        distill_checkpoint.get_config("model=oracle")


def test_schedules_distil_on_a_published_latent_dit_with_guidance(tmp_path, guided_calls):
    """distill_pretrained on the DiT fixture: balanced labels, DiT's 3-channel classifier-free guidance in the
    distillation, the scoring and the teacher reference; the files record the checkpoint they were made on."""
    config = _with(distill_pretrained.get_config("smoke"), guidance_scale=1.5)
    with contextlib.redirect_stdout(io.StringIO()):
        results = schedule_distillation.run(config, str(tmp_path))
    masks = [call["channel_mask"] for call in guided_calls]
    assert masks == [(True, True, True, False)] * 2  # the distillation batch and the held-out batch
    assert results["source"] == "pretrained" and results["step_counts"] == [2, 3]
    assert all(math.isfinite(row["rmse"]) for row in results["rows"])
    record = json.load(open(results["files"]["schedules"]["2"]))
    assert record["source"] == "pretrained" and record["checkpoint"]["layout"] == "dit"
    unconditional = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")
    with pytest.raises(ValueError, match="guidance_scale=1.5 needs a class-conditional model"):
        schedule_distillation.run(_with(config, checkpoint=unconditional), str(tmp_path / "x"))
