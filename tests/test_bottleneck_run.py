"""Bottleneck sampling on a checkpointed smoke DiT: the sampling entry's files, the benchmark's rows (FLOPs from the
plans, equal-cost baselines within a step), the FLOP counter, FD wiring, and clear errors for bad configs."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.experiments import train
from fastsamplers.experiments.runs import bottleneck_benchmark
from fastsamplers.experiments.configs import digits_bottleneck, digits_dit
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SMOKE = os.path.join(ROOT, "experiments/configs/digits_dit.py:smoke")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The workdir of a smoke DiT (patch 4, multi-resolution 16 / 32 px), checkpointed as `training.train` does.

    Its weights are the initial ones plus small random perturbations, so that no layer is zero (the DiT's
    adaLN-Zero gates and output layer start at zero) and its predictions are not: the checkpoint is written and read
    through the real paths while the 20-30 s of compiling a training step are saved."""
    import jax
    import orbax.checkpoint as ocp

    experiment = train.build(digits_dit.get_config("smoke"))
    state = train.init_state(experiment)
    rng = np.random.default_rng(1)  # numpy: a jax random draw per parameter shape would compile each (~1 s on CPU)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.02 * rng.standard_normal(x.shape).astype(x.dtype),
                          state["params"])
    state = dict(state, params=params, ema_params=params)
    workdir = str(tmp_path_factory.mktemp("dit"))
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler(),
                               options=ocp.CheckpointManagerOptions(create=True)) as manager:
        manager.save(1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    return workdir


def smoke_config(run_dir, **overrides):
    config = digits_bottleneck.get_config(f"smoke,checkpoint_dir={run_dir}")
    config.unlock()
    config.train_config = TRAIN_SMOKE
    config.metric = "none"
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    config.lock()
    return config


def test_model_flops_counts_the_model(run_dir):
    assert bottleneck_benchmark.model_flops(lambda x, t: x @ jnp.ones((4, 3), x.dtype) * t, (2, 4)) >= 2 * 2 * 4 * 3
    target, _, trained = bottleneck_benchmark.load_model(smoke_config(run_dir))
    assert trained == (16, 32)
    flops = {s: bottleneck_benchmark.model_flops(target.model_fn, (2, s, s, 1), args=target.args) for s in (16, 32, 64)}
    assert 0 < flops[16] < flops[32] < flops[64]
    assert bottleneck_benchmark.model_flops(target.model_fn, (4, 32, 32, 1), args=target.args) == pytest.approx(
        2 * flops[32], rel=0.01)


def test_sampling_entry_writes_the_grids_and_json(run_dir, tmp_path):
    results = bottleneck_benchmark.run(smoke_config(run_dir), str(tmp_path))
    for name in ("baseline.png", "bottleneck.png", "comparison.png", "bottleneck.json"):
        assert (tmp_path / name).stat().st_size > 100
    baseline, plan = json.loads((tmp_path / "bottleneck.json").read_text())["rows"]
    assert baseline["label"] == "baseline" and baseline["nfe"] == 4 and baseline["stage_nfe"] == [4]
    assert plan["label"] == "bottleneck_2x" and plan["stage_nfe"] == [1, 2, 1]
    assert [s["resolution"] for s in plan["stages"]] == [32, 16, 32]
    call = {int(k): v for k, v in plan["call_flops"].items()}
    assert plan["flops_per_sample"] == pytest.approx(2 * call[32] + 2 * call[16])
    assert plan["flops_ratio"] < 1 and baseline["seconds"] > 0 and plan["seconds"] > 0
    assert results["rows"][1]["num_samples"] == 16


def test_benchmark_script_writes_every_row(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the smoke model's training config relative to the repository
    path = tmp_path / "bench.json"
    load_script("benchmark_bottleneck").main(["--config", f"experiments/configs/digits_bottleneck.py:smoke,checkpoint_dir="
                                          f"{run_dir}", "--metric", "none", "--json", str(path)])
    report = json.loads(path.read_text())
    labels = ["baseline", "bottleneck_2x", "equal_cost_bottleneck_2x", "bottleneck_3x", "equal_cost_bottleneck_3x"]
    assert [row["label"] for row in report["rows"]] == labels
    assert [row["label"] for row in report["rows_64"]] == [
        "baseline@64", "bottleneck_2x@64", "equal_cost_bottleneck_2x@64", "bottleneck_3x@64",
        "equal_cost_bottleneck_3x@64"]
    for rows, high in ((report["rows"], 32), (report["rows_64"], 64)):
        base = rows[0]
        for row in rows:
            call = {int(k): v for k, v in row["call_flops"].items()}
            cost = sum(nfe * call[s["resolution"]] for s, nfe in zip(row["stages"], row["stage_nfe"]))
            assert row["flops_per_sample"] == pytest.approx(cost)
            assert row["flops_ratio"] == pytest.approx(row["flops_per_sample"] / base["flops_per_sample"])
            assert row["speedup"] == pytest.approx(base["seconds"] / row["seconds"])
            assert row["resolution"] == high and row["fd_digits"] is None
        for k in (1, 3):  # each plan, then its equal-cost baseline: full resolution, within one step's cost
            plan, equal = rows[k], rows[k + 1]
            assert [s["resolution"] for s in plan["stages"]] == [high, high // 2, high]
            assert equal["matched_to"] == plan["label"] and len(equal["stages"]) == 1
            assert abs(equal["flops_per_sample"] - plan["flops_per_sample"]) <= 0.5 * equal["call_flops"][str(high)]
            assert plan["flops_ratio"] < 1
        assert rows[3]["flops_per_sample"] < rows[1]["flops_per_sample"]
    assert all("not evaluated" in row["fd_note"] for row in report["rows_64"])
    assert "| bottleneck_2x | 32x1 -> 16x2 -> 32x1 | 4 |" in report["table"]


def test_fd_scores_the_finite_samples(monkeypatch, run_dir):
    from fastsamplers.experiments.metrics import fd_digits, frechet

    seen = {}

    def fake_features(size, images, **kwargs):
        seen.update(size=size, shape=images.shape)
        return np.random.default_rng(0).standard_normal((images.shape[0], 3))

    def fake_reference(size, split="all", **kwargs):
        seen["reference"] = split
        return frechet.FeatureStats.from_features(np.random.default_rng(1).standard_normal((50, 3)))

    monkeypatch.setattr(fd_digits, "features", fake_features)
    monkeypatch.setattr(fd_digits, "reference_stats", fake_reference)
    scorer = bottleneck_benchmark.Scorer(smoke_config(run_dir, metric="fd_digits", fd_reference="test"))
    samples = np.zeros((5, 32, 32, 1), np.float32)
    samples[2, 0, 0, 0] = np.nan
    score = scorer(samples)
    assert seen == {"size": 32, "shape": (4, 32, 32, 1), "reference": "test"}
    expected = frechet.frechet_distance(frechet.FeatureStats.from_features(fake_features(32, samples[:4])),
                                        fake_reference(32))
    assert score["fd_digits"] == pytest.approx(expected) and score["num_nonfinite"] == 1
    # 4 samples: below every subset size, so no extrapolation
    assert score["fd_digits_by_n"] == {"4": pytest.approx(expected)} and score["fd_digits_inf"] is None
    assert bottleneck_benchmark.Scorer(smoke_config(run_dir))(samples) == {
        "fd_digits": None, "fd_digits_inf": None, "fd_digits_by_n": None, "num_nonfinite": 1}


def test_clear_errors(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"bottleneck_2x: stage 1: the model cannot take images of \(18, 18\)"):
        bottleneck_benchmark.run(smoke_config(run_dir, **{"plans.bottleneck_2x.resolutions": (32, 18, 32)}),
                                 str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train first"):
        bottleneck_benchmark.run(smoke_config(str(tmp_path / "none")), str(tmp_path))
    with pytest.raises(ValueError, match="give one value per stage"):
        bottleneck_benchmark.benchmark(smoke_config(run_dir, **{"plans.bottleneck_3x.steps": (1, 1)}))
    with pytest.raises(ValueError, match="strength 1.0"):
        bottleneck_benchmark.benchmark(smoke_config(run_dir, **{"plans.bottleneck_3x.strengths": (0.9, 0.8, 0.6)}))
    with pytest.raises(ValueError, match="start and end at the baseline's resolution 32"):
        bottleneck_benchmark.benchmark(smoke_config(run_dir, **{"plans.bottleneck_3x.resolutions": (16, 16, 32)}))
    with pytest.raises(ValueError, match="unknown metric"):
        bottleneck_benchmark.benchmark(smoke_config(run_dir, metric="fid"))
    with pytest.raises(ValueError, match="not one of the config's plans"):
        bottleneck_benchmark.run(smoke_config(run_dir, plan="bottleneck_9x"), str(tmp_path))
    with pytest.raises(ValueError, match="bottleneck_2x: unknown time grid"):
        bottleneck_benchmark.run(smoke_config(run_dir, **{"plans.bottleneck_2x.grid": "cosine",
                                                     "plans.bottleneck_2x.shifts": ()}), str(tmp_path))
