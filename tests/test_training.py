"""The training loop end to end: the smoke runs, resume after kill -9 (also of a guided class-conditional UNet),
clear failures. The image configs' smoke runs are in test_training_images.py (a file of its own: pytest-xdist's
--dist loadfile gives a file to one worker, so the two halves run side by side)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.experiments import train
from fastsamplers.experiments.configs import digits_dit, digits_fm, digits_vp, toy2d_fm
from fastsamplers.experiments.train import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
TOY = os.path.join(ROOT, "experiments", "configs", "toy2d_fm.py")


def _override(config, **values):
    config = config.copy_and_resolve_references()
    config.unlock()
    for path, value in values.items():
        *parents, leaf = path.split("__")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    config.lock()
    return config


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_params(workdir, step):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))
    return state["params"]


def test_toy_flow_matching_learns_and_resumes_finished_run(tmp_path, capsys):
    config = _override(toy2d_fm.get_config("smoke"), eval__num_samples=400)
    result = train.train(config, str(tmp_path))
    # The smoke run says what it will do and, at the end, the evaluation and where the files are.
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"training in {tmp_path}: a new run", "  devices: 1 (cpu), batch 256",
                           "  steps: 300 to run, to step 300; a checkpoint every 100, metrics every 100 in "
                           "metrics.jsonl"]
    assert printed[-1] == (f"done at step 300: eval loss {result['eval_loss']:.4g} (raw weights), W2 "
                           f"{result['resolutions']['2']['w2']:.4g}; in {tmp_path}: eval.json, metrics.jsonl, "
                           "config.json, checkpoints/, samples: samples/step_0000300.png")
    lines = _metrics(tmp_path)
    assert [line["step"] for line in lines] == [100, 200, 300]
    assert lines[-1]["loss"] < lines[0]["loss"]
    # W2 between N(0, I) and the moons is about 2.2; 300 steps of CFM already move the samples most of the way.
    w2 = result["resolutions"]["2"]["w2"]
    assert w2 < 1.0, result
    assert json.load(open(tmp_path / "eval.json"))["resolutions"]["2"]["w2"] == w2
    assert os.path.exists(tmp_path / "samples" / "step_0000300.png")
    # Rerunning a finished run restores it and evaluates again, identically.
    assert train.train(config, str(tmp_path)) == result
    assert len(_metrics(tmp_path)) == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"training in {tmp_path}: resuming from the checkpoint at step 300"
    assert printed[2].startswith("  steps: 0 to run, to step 300") and printed[-1].startswith("done at step 300")
    assert len(printed) == 4 and not [name for name in os.listdir(tmp_path) if name.startswith("config_step")]


def test_resuming_with_a_changed_config_names_the_keys_and_keeps_the_earlier_config(tmp_path, capsys):
    config = _override(toy2d_fm.get_config("smoke"), train__num_steps=100, eval__num_samples=50)
    train.train(config, str(tmp_path))
    earlier = json.loads((tmp_path / "config.json").read_text())
    capsys.readouterr()
    train.train(_override(config, train__num_steps=200, train__lr=2e-3), str(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"training in {tmp_path}: resuming from the checkpoint at step 100"
    assert printed[3:6] == ["  the config changed since the earlier run (2 keys; the earlier config is kept as "
                            "config_step_0000100.json):", "    train.lr: 0.001 -> 0.002",
                            "    train.num_steps: 100 -> 200"]
    assert json.loads((tmp_path / "config_step_0000100.json").read_text()) == earlier
    now = json.loads((tmp_path / "config.json").read_text())
    assert (now["train"]["num_steps"], now["train"]["lr"]) == (200, 2e-3)
    assert [line["step"] for line in _metrics(tmp_path)] == [100, 200]


def test_save_config_keeps_every_earlier_config(tmp_path):
    config = toy2d_fm.get_config("smoke")
    assert checkpoints.save_config(str(tmp_path), config, 0) == ([], None)  # a new run
    assert checkpoints.save_config(str(tmp_path), config, 5) == ([], None)  # resumed, unchanged
    assert os.listdir(tmp_path) == ["config.json"]
    changes, kept = checkpoints.save_config(str(tmp_path), _override(config, seed=1), 5)
    assert changes == ["seed: 0 -> 1"] and kept == str(tmp_path / "config_step_0000005.json")
    changes, kept = checkpoints.save_config(str(tmp_path), _override(config, seed=2), 5)  # again at step 5
    assert changes == ["seed: 1 -> 2"] and kept == str(tmp_path / "config_step_0000005_1.json")
    assert [json.loads((tmp_path / name).read_text())["seed"] for name in
            ("config_step_0000005.json", "config_step_0000005_1.json", "config.json")] == [0, 1, 2]
    (tmp_path / "config.json").write_text("{broken")
    changes, kept = checkpoints.save_config(str(tmp_path), config, 7)
    assert changes == [f"{tmp_path / 'config.json'} is not valid JSON"]
    assert (tmp_path / "config_step_0000007.json").read_text() == "{broken"
    assert checkpoints.config_changes({"a": {"b": 1}}, {"a": {"c": 2}}) == ["a.b: 1 -> (absent)",
                                                                                  "a.c: (absent) -> 2"]


def test_the_progress_bar_of_a_resumed_run_counts_only_its_own_steps():
    from fastsamplers.experiments.train import writers

    config = _override(toy2d_fm.get_config("smoke"), train__num_steps=1000, train__progress=True)
    bar = writers.progress_bar(config.train, 900, enabled=True)
    try:
        assert (bar.n, bar.initial, bar.total) == (900, 900, 1000)
        time.sleep(0.2)  # past tqdm's mininterval, so that the update sets the rate
        bar.update(50)
        stats = bar.format_dict
        # 50 steps in about `elapsed` seconds: 950 / elapsed (the resume step counted as run) would be 19x that.
        assert 0.5 < stats["rate"] * stats["elapsed"] / 50 < 2, stats
    finally:
        bar.close()


@pytest.mark.slow  # 55 s of CPU (a smoke conditional UNet trained, sampled guided, resumed): over CI's budget; the
# default suite keeps the kill-and-resume test and tests/test_networks.py's class-conditioning test
def test_conditional_unet_trains_samples_guided_and_resumes_bitwise(tmp_path):
    config = digits_vp.get_config("conditional,smoke")
    assert config.model.unet.num_classes == 10 and config.sample.guidance_scale != 1.0
    whole = tmp_path / "whole"
    result = train.train(config, str(whole))
    assert result["sampler"]["guidance_scale"] == config.sample.guidance_scale and np.isfinite(result["eval_loss"])
    assert os.listdir(whole / "samples") == ["step_0000020.png"]
    assert _final_params(whole, 20)["params"]["label_embed"]["embedding"].shape == (11, 32)
    # Sampled without labels (args the parameters alone): one sentence, not the parameter tree.
    target = train.checkpoint_target(os.path.join(ROOT, "experiments", "configs", "digits_vp.py:conditional,smoke"),
                                     str(whole))
    x_init = target.process.prior(jax.random.PRNGKey(0), (2, *target.shape))
    ts = schedules.get_timesteps("uniform", target.process, num_steps=2)
    with pytest.raises(ValueError, match=r"args a dict of \d+ arrays \([\d,]+ numbers\): the model is class-"
                                         r"conditional: pass args=\(params, labels\), labels of shape \(batch,\), "
                                         r"not a dict"):
        samplers.sample(target.model_fn, "ddim", target.process, x_init, ts, prediction=target.prediction,
                        args=target.args)
    # A run killed after its step-10 checkpoint: the same workdir without the later checkpoint and log lines.
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "20")
    with open(killed / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in _metrics(whole) if line["step"] <= 10)
    assert train.train(config, str(killed)) == result
    for (name, x), (_, y) in zip(*(sorted(_flatten(_final_params(w, 20)).items()) for w in (whole, killed))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)  # bitwise
    assert [line["step"] for line in _metrics(killed)] == [10, 20]


def test_conditional_configs_check_their_labels_and_guidance():
    with pytest.raises(ValueError, match="has no labels"):
        train.build(_override(digits_fm.get_config("conditional,smoke"), data__name="moons", data__image_sizes=()))
    with pytest.raises(ValueError, match="coupling"):
        train.build(digits_fm.get_config("conditional,smoke,coupling=ot"))
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        train.build(_override(digits_vp.get_config("smoke"), sample__guidance_scale=2.0))


def _train_command(workdir, *overrides):
    return [sys.executable, TRAIN, f"--config={TOY}:smoke", f"--workdir={workdir}", *overrides]


RESUME_OVERRIDES = ("--config.train.num_steps=2000", "--config.train.steps_per_call=10",
                    "--config.train.checkpoint_every=100", "--config.train.log_every=100",
                    "--config.eval.num_samples=50", "--config.eval.loss_batches=1", "--config.sample.nfe=10",
                    "--config.sample.num_samples=50")


def test_kill_and_resume_gives_the_uninterrupted_parameters(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_command(whole, *RESUME_OVERRIDES), check=True, env=env, capture_output=True)

    process = subprocess.Popen(_train_command(killed, *RESUME_OVERRIDES), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        done = [int(name) for name in (os.listdir(checkpoints) if checkpoints.exists() else []) if name.isdigit()]
        if done and max(done) >= 100:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stopped_at = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())
    assert stopped_at < 2000

    subprocess.run(_train_command(killed, *RESUME_OVERRIDES), check=True, env=env, capture_output=True)
    whole_params, killed_params = _final_params(whole, 2000), _final_params(killed, 2000)
    flat_whole, flat_killed = (sorted(_flatten(p).items()) for p in (whole_params, killed_params))
    for (name, x), (_, y) in zip(flat_whole, flat_killed):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)  # bitwise
    steps = [line["step"] for line in _metrics(killed)]
    assert steps == list(range(100, 2001, 100))  # no line lost or repeated across the kill
    assert json.load(open(whole / "eval.json")) == json.load(open(killed / "eval.json"))


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    return {prefix: tree}


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    config = _override(toy2d_fm.get_config("smoke"), train__num_steps=100, eval__num_samples=50)
    train.train(config, str(tmp_path))
    # Continue with an absurd learning rate: the parameters blow up, the loss goes non-finite.
    blowup = _override(config, train__num_steps=300, train__lr=1e30, train__steps_per_call=1)
    message = r"non-finite loss .* at step 1\d\d; .*last good checkpoint is step 100"
    with pytest.raises(FloatingPointError, match=message):
        train.train(blowup, str(tmp_path))
    params = _final_params(tmp_path, 100)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in _flatten(params).values())
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == [100]


def test_checkpoint_of_another_shape_fails_before_training(tmp_path):
    config = _override(toy2d_fm.get_config("smoke"), train__num_steps=100, eval__num_samples=50)
    train.train(config, str(tmp_path))
    wider = _override(config, model__mlp__hidden=32, train__num_steps=200)
    with pytest.raises(ValueError, match=r"does not fit this config: .*\(64,\) float32 there, \(32,\) float32 here"):
        train.train(wider, str(tmp_path))
    assert [line["step"] for line in _metrics(tmp_path)] == [100]
    # A refused run leaves the run's config as it was.
    assert json.loads((tmp_path / "config.json").read_text())["model"]["mlp"]["hidden"] == 64
    assert not [name for name in os.listdir(tmp_path) if name.startswith("config_step")]


def test_the_sample_grid_may_be_a_schedule_file(tmp_path):
    """config.sample.grid takes a "file:PATH" grid, as evaluate's grids do ({num_steps} and {nfe} filled in), through
    the one helper of experiments.configs."""
    config = toy2d_fm.get_config("smoke")
    process = schedules.get_process(config.process.name)
    solver = samplers.get_solver(config.sample.solver)
    num_steps = solver.steps_for_nfe(config.sample.nfe)
    ts = schedules.get_timesteps("quadratic", process, num_steps)  # not the config's uniform grid
    schedules.save_schedule(str(tmp_path / f"oss_s{num_steps}.json"), ts, process=process, solver=solver,
                            nfe=config.sample.nfe, method="oss")
    grid = f"file:{tmp_path}/oss_s{{num_steps}}.json"
    experiment = train.build(_override(config, sample__grid=grid))
    np.testing.assert_array_equal(experiment.ts, np.asarray(ts))
    assert experiment.sampler_info["grid"] == grid
    with pytest.raises(FileNotFoundError, match="schedule file .*none.json"):
        train.build(_override(config, sample__grid=f"file:{tmp_path}/none.json"))


def test_bad_configs_fail_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        train.build(_override(toy2d_fm.get_config("smoke"), data__name="npz",
                                 data__path=str(tmp_path / "nowhere.npz"), data__noise=None))
    with pytest.raises(ValueError, match="divisible"):
        train.build(_override(digits_dit.get_config("smoke"), model__dit__patch_size=3))
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        train.build(_override(toy2d_fm.get_config("smoke"), model__name="resnet"))
    with pytest.raises(ValueError, match="devices are visible"):
        train.build(_override(toy2d_fm.get_config("smoke"), train__num_devices=64))
    with pytest.raises(AttributeError):
        toy2d_fm.get_config("smoke").train.num_step = 5  # locked: a misspelt key is an error
    # The same through the script's flags, before any JAX work.
    run = subprocess.run(_train_command(tmp_path / "x", "--config.train.num_stepz=5"), capture_output=True,
                         text=True)
    assert run.returncode != 0 and "num_stepz" in run.stderr
    # One line naming the key and the closest valid one, not ml_collections' traceback (scripts/cli.py).
    assert run.stderr.strip() == ("error: --config.train.num_stepz: config.train has no key 'num_stepz'; "
                                  "did you mean 'num_steps'?")
    assert not (tmp_path / "x").exists()


def test_time_scale_reaches_the_network():
    """`digits_vp.py:time_scale=S` builds the UNet with t x S in its time embedding (default DDPM's 1000), also from
    the spec string a restored run is rebuilt from (the option is not a parameter: a mismatch would be silent)."""
    assert train.build(digits_vp.get_config("smoke")).net.time_scale == 1000.0
    spec = os.path.join(ROOT, "experiments", "configs", "digits_vp.py:smoke,time_scale=100")
    assert train.build(train.load_config(spec)).net.time_scale == 100.0
