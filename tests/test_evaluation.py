"""Sampler-by-schedule evaluation: the oracle table, non-finite samples counted not averaged, checkpoint errors,
the markdown table and the make_table script."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.experiments import train
from fastsamplers.experiments.report import tables
from fastsamplers.experiments.runs import sampler_tables, sources
from fastsamplers.experiments.configs import evaluate as evaluate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
    config = evaluate_config.get_config("model=oracle,smoke")
    config.unlock()
    for key, value in overrides.items():
        config[key] = value
    config.lock()
    return config


@pytest.fixture(scope="module")
def oracle_results(tmp_path_factory):
    config = smoke_config(nfes=(4, 8), num_samples=256, batch_size=128)
    return sampler_tables.run(config, str(tmp_path_factory.mktemp("oracle")))


def test_oracle_table_has_every_cell_and_deis_beats_ddim(oracle_results):
    rows = oracle_results["rows"]
    assert len(rows) == 2 * 2 * 2  # solvers x grids x NFE budgets
    assert {row["metric"] for row in rows} == {"exact"}
    assert all(row["nfe"] == row["nfe_budget"] and row["num_nonfinite"] == 0 for row in rows)
    value = {(row["label"], row["grid"], row["nfe"]): row["value"] for row in rows}
    for grid in ("uniform", "logsnr"):
        for label in ("DDIM", "DEIS tAB3"):
            assert value[(label, grid, 8)] < value[(label, grid, 4)]  # more steps, less error
        assert value[("DEIS tAB3", grid, 8)] < 0.7 * value[("DDIM", grid, 8)]


def test_rows_json_and_table(oracle_results, tmp_path):
    rows = oracle_results["rows"]
    text = tables.markdown(rows, title="oracle")
    assert "| solver | NFE 4 | NFE 8 |" in text and "### grid: logsnr" in text
    ddim = next(r for r in rows if r["label"] == "DDIM" and r["grid"] == "uniform" and r["nfe"] == 4)
    assert f"| DDIM | {ddim['value']:.4f} |" in text
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(oracle_results))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_table.py"), "--rows", str(path),
                          "--out", str(tmp_path / "t")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "table.md").read_text() == tables.markdown(rows, title=oracle_results["description"])
    assert (tmp_path / "t" / "table.png").stat().st_size > 1000
    mixed = dict(oracle_results, rows=rows + [dict(rows[0], metric="fd_digits")])
    path.write_text(json.dumps(mixed))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_table.py"), "--rows", str(path),
                          "--out", str(tmp_path / "t")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "mix metrics" in out.stderr


def test_nonfinite_samples_are_counted_and_left_out(tmp_path, monkeypatch):
    config = smoke_config(nfes=(4,), grids=("logsnr",), num_samples=64, batch_size=64)
    real = sources.oracle_target(config.oracle, config.seed)

    def broken(x, t):  # the first sample's prediction is NaN
        out = real.model_fn(x, t)
        return out.at[0].set(jnp.nan)

    target = train.Target(real.process, real.prediction, real.shape, broken, oracle=real.oracle)
    monkeypatch.setattr(sources, "oracle_target", lambda *args: target)
    rows = sampler_tables.run(config, str(tmp_path))["rows"]
    for row in rows:
        assert row["num_nonfinite"] == 1 and np.isfinite(row["value"])
    assert "(1 non-finite)" in tables.markdown(rows)


def test_clear_errors_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="unknown metric"):
        sampler_tables.run(smoke_config(metric="psnr"), str(tmp_path))
    with pytest.raises(ValueError, match="unknown solver"):
        sampler_tables.run(smoke_config(solvers=[dict(label="x", name="plms", options={})]), str(tmp_path))
    with pytest.raises(ValueError, match="unknown time grid"):
        sampler_tables.run(smoke_config(grids=("cosine",)), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train first"):
        train.checkpoint_target("experiments/configs/toy2d_fm.py:smoke", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="not found"):
        train.load_config("experiments/configs/nope.py")


def _tree(directory):
    return {os.path.join(folder, name): os.stat(os.path.join(folder, name)).st_mtime_ns
            for folder, subfolders, files in os.walk(directory) for name in subfolders + files}


def test_checkpoint_of_another_config_is_refused(tmp_path, caplog):
    from fastsamplers.experiments.configs import toy2d_fm

    config = toy2d_fm.get_config("smoke")
    config.unlock()
    config.train.num_steps = 2
    config.train.progress = False
    config.lock()
    train.train(config, str(tmp_path))
    before = _tree(tmp_path / "checkpoints")
    with caplog.at_level(logging.INFO):
        target = train.checkpoint_target(os.path.join(ROOT, "experiments/configs/toy2d_fm.py:smoke"), str(tmp_path))
    assert target.shape == (2,) and "step 2" in target.description
    # Reading a run neither writes in it nor warns (orbax's read_only option logged "Given directory is read only").
    assert _tree(tmp_path / "checkpoints") == before
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    x = target.model_fn(jnp.zeros((3, 2), jnp.float32), jnp.asarray(0.5, jnp.float32), target.args)
    assert x.shape == (3, 2)
    with pytest.raises(ValueError, match="does not fit|another config"):
        train.checkpoint_target(os.path.join(ROOT, "experiments/configs/digits_fm.py:smoke"), str(tmp_path))


@pytest.mark.slow  # 30 s on 2 cores; the default suite scores FD-digits in tests/test_fd_digits.py and test_scoring.py
def test_fd_digits_table_on_a_trained_checkpoint(tmp_path, monkeypatch):
    # End to end on the smallest real case: a few steps of the digits_vp smoke run, FD-digits on 64 samples.
    from fastsamplers.experiments.metrics import digits_classifier, fd_digits
    from fastsamplers.experiments.configs import digits_vp

    monkeypatch.setenv("FASTSAMPLERS_CACHE", str(tmp_path / "cache"))
    config = digits_vp.get_config("smoke")
    config.unlock()
    config.train.num_steps = 3
    config.train.progress = False
    config.lock()
    train.train(config, str(tmp_path / "run"))
    evaluation_config = evaluate_config.get_config("model=digits_vp,smoke")
    evaluation_config.unlock()
    evaluation_config.train_config = os.path.join(ROOT, "experiments/configs/digits_vp.py:smoke")
    evaluation_config.checkpoint_dir = str(tmp_path / "run")
    evaluation_config.nfes, evaluation_config.grids = (4,), ("quadratic",)
    evaluation_config.lock()
    rows = sampler_tables.run(evaluation_config, str(tmp_path / "eval"))["rows"]
    assert [row["metric"] for row in rows] == ["fd_digits", "fd_digits"]
    assert os.path.exists(digits_classifier.weights_path(8))  # the classifier was trained into the test's cache
    real = fd_digits.reference_stats(8)
    data_floor = fd_digits.data_floor(8)["half_vs_half"]
    for row in rows:  # 3 training steps: far from the data, and far above the data's own floor
        assert row["num_samples"] == 64 and row["value"] > 5 * data_floor
    assert real.count == 1797


def test_a_conditional_target_is_guided_per_batch_with_one_cached_wrapper():
    """`Target.conditioned`: labels go in args, scale 1 is the conditional model, another scale the CFG combination
    with the null label (= num_classes), one wrapper per batch size (so the compiled samplers are reused)."""
    from fastsamplers import schedules

    model = lambda x, t, a: x * a[0] * (1.0 + a[1][:, None]) + t  # a = (params, labels)
    target = train.Target(schedules.get_process("vp_linear"), "eps", (2,), model, args=jnp.float32(0.5),
                          num_classes=3)
    x, labels = jnp.ones((4, 2)), np.array([0, 1, 2, 0])
    fn, args = target.conditioned(labels)
    np.testing.assert_allclose(fn(x, 0.1, args), model(x, 0.1, (0.5, jnp.asarray(labels))))
    fn, args = target.conditioned(labels, 3.0)
    cond, uncond = model(x, 0.1, (0.5, jnp.asarray(labels))), model(x, 0.1, (0.5, jnp.full(4, 3)))
    np.testing.assert_allclose(fn(x, 0.1, args), uncond + 3.0 * (cond - uncond), rtol=1e-6)
    assert target.conditioned(labels, 3.0)[0] is fn and target.conditioned(labels[:2], 3.0)[0] is not fn
    unconditional = train.Target(target.process, "eps", (2,), lambda x, t, p: x, args=1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        unconditional.conditioned(labels)


def test_guidance_on_an_unconditional_model_is_refused_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a class-conditional model"):
        sampler_tables.run(smoke_config(guidance_scale=2.0), str(tmp_path))
    assert not os.path.exists(tmp_path / "rows.json")


def test_two_checkpoints_of_one_architecture_share_one_compiled_sampler():
    """Two builds of one config (two runs, two checkpoints) give equal model functions, and their parameters are
    traced args: the second one's sampling reuses the first one's compiled program (no new trace)."""
    import dataclasses

    import jax

    from fastsamplers import samplers
    from fastsamplers import schedules
    from fastsamplers.experiments.configs import toy2d_fm
    from fastsamplers.samplers import driver

    experiment = train.build(toy2d_fm.get_config("smoke"))
    init = experiment.net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    models, params = [], []
    for seed in (0, 1):
        # what a second build of the config makes: an equal module definition in a new NetworkFn
        models.append(train.SamplerModel(dataclasses.replace(experiment.model_fn, net=experiment.net.clone())))
        # every weight moved (the output layer starts at zero): two checkpoints with different predictions
        params.append(jax.tree.map(lambda w: w + 0.05 * jax.random.normal(jax.random.PRNGKey(seed), w.shape), init))
    assert models[0] == models[1] and hash(models[0]) == hash(models[1]) and models[0] is not models[1]
    process = experiment.process
    ts = schedules.get_timesteps("logsnr", process, 3)
    x = jnp.ones((4, 2))
    outputs = []
    for model, p in zip(models, params):
        before = driver._sample_compiled.cache_info()
        y, _ = samplers.sample(model, "ddim", process, x, ts, prediction="velocity", args=p)
        outputs.append(np.asarray(y))
    after = driver._sample_compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 1  # the second run: a cache hit
    assert np.max(np.abs(outputs[0] - outputs[1])) > 1e-3  # and its own weights


def test_a_stochastic_solver_row_draws_per_sample_noise(tmp_path):
    """The restart set (Heun against Restart(Heun), a stochastic solver): its cells draw sample k's noise from
    fold_in(key, k), so another batch size gives the same samples; both rows are at equal NFE."""
    config = evaluate_config.get_config("model=oracle,solvers=restart")
    assert [entry["label"] for entry in config.solvers] == ["Heun", "Restart(Heun)"]
    config.unlock()
    config.solvers, config.nfes, config.num_samples, config.reference = config.solvers[1:], (27,), 32, False
    config.lock()
    target = sources.load(config).target
    (row, solver, ts), = sampler_tables.plan_cells(config, target.process)
    assert solver.stochastic and row["nfe_budget"] == 27
    key = jax.random.PRNGKey(1)
    x_init = target.process.prior(jax.random.PRNGKey(0), (32, *target.shape), t=float(ts[0]))
    draw = sampler_tables.cell_sampler(target, solver, 1.0, key)
    whole, nfe = sampler_tables.sample_cell(draw, ts, x_init, 32)
    halves, _ = sampler_tables.sample_cell(draw, ts, x_init, 16)
    np.testing.assert_allclose(whole, halves, rtol=0, atol=1e-12)
    assert nfe == 27
