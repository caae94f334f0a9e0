"""Inference-time scaling of flows (`scripts/benchmark_scaling.py`, issue 26): reward and mode fraction against the
budget of model calls per sample, for best-of-N, SMC and RBF (`samplers.scaling`), on the linear path's SDE twin and
on the VP path it converts to.

"oracle": the 1-d two-mode mixture 0.9 N(-2, 0.5^2) + 0.1 N(2, 0.5^2) as an exact velocity model on the OT path, the
reward x (it prefers the rare mode); per cell, `batch` independent searches: the mean reward of the returned samples
and the fraction in the rare mode (x > 0). One trajectory lands there with probability 0.1, so best-of-N's fraction
is 1 - 0.9^N (N = budget // (steps + 1)) up to the SDE's discretisation.

"checkpoint": a trained digits flow (a workdir of `experiments/configs/digits_fm.py`, loaded as every runner loads a
training run, `experiments.train.checkpoint_target`) with the FD-digits classifier's log-probability of `label` as
the reward (`digits_classifier.ClassReward`); the fraction is the share of samples the classifier assigns to `label`.

Paths: "linear" (the model on its own OT path, grid linspace(1, 1e-3)) and "vp" (`schedules.transform` to
vp_linear, the sheet's VP interpolant, grid linspace(1, vp_linear.t_min)); the SDE twin's diffusion is RBF's
"square" (3 t^2) on both.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, schedules
from fastsamplers.experiments.metrics import digits_classifier
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers import scaling

BUDGETS = (20, 40, 80, 160, 320)
SOURCES = core.Registry.of_names("source", ("oracle", "checkpoint"), ordered=True)
PATHS = core.Registry.of_names("path", ("linear", "vp"), ordered=True)


def oracle_problem():
    """(model_fn, process, prediction, shape, reward, reward_args, in_mode, description) of the oracle."""
    gm = GaussianMixture.create([0.9, 0.1], [[-2.0], [2.0]], 0.5)
    ot = schedules.get_process("ot")
    return dict(model_fn=gm.model_fn(ot, "velocity"), process=ot, prediction="velocity", shape=(1,), args=None,
                reward=_reward_x, reward_args=None, in_mode=lambda x: np.asarray(x)[:, 0] > 0,
                description="0.9 N(-2, 0.25) + 0.1 N(2, 0.25), reward x")


def _reward_x(x):
    return x[:, 0]


def checkpoint_problem(train_config, checkpoint_dir, label, classifier=None):
    """The same for a trained digits flow and the class reward; `classifier` a `digits_classifier.Classifier`
    (None: the cached FD-digits classifier of the model's size, trained if missing)."""
    from fastsamplers.experiments.metrics import digits_training
    from fastsamplers.experiments.train import checkpoint_target

    target = checkpoint_target(train_config, checkpoint_dir)
    if target.num_classes:
        raise ValueError(f"{train_config} is class-conditional: the search needs an unconditional flow (the reward "
                         f"names the class)")
    size = target.shape[0]
    classifier = classifier or digits_training.classifier(size)
    reward = digits_classifier.ClassReward(size)
    params = classifier.params

    def in_mode(x):
        log_p = jax.vmap(lambda l: reward(jnp.asarray(x), (params, l)), out_axes=1)(jnp.arange(10))
        return np.asarray(jnp.argmax(log_p, axis=1) == label)

    return dict(model_fn=target.model_fn, process=target.process, prediction=target.prediction, shape=target.shape,
                args=target.args, reward=reward, reward_args=(params, jnp.int32(label)), in_mode=in_mode,
                description=f"{target.description}, reward log p({label} | x) of the {size}px FD-digits classifier")


def benchmark(json_path: str, *, source: str = "oracle", budgets=BUDGETS, strategies=("best_of_n", "smc", "rbf"),
              paths=("linear", "vp"), batch: int = 1000, num_steps: int = 8, init: int = 2, chains: int = 2,
              seed: int = 0, train_config: str = "", checkpoint_dir: str = "", label: int = 0,
              classifier=None, command: str = "") -> dict:
    """The table of the module docstring, printed and written with its rows to json_path.

    Args:
      json_path: the JSON file.
      source: "oracle" or "checkpoint" (then train_config and checkpoint_dir name the digits flow).
      budgets: model calls per sample.
      strategies: names of `samplers.scaling.STRATEGIES`.
      paths: "linear" and / or "vp".
      batch: independent searches per cell.
      num_steps: SDE steps of the grid.
      init, chains: RBF's initial draws per chain and chains (budgets below init * chains + num_steps * chains are
        left out for RBF).
      seed: the searches' key.
      train_config, checkpoint_dir, label, classifier: the "checkpoint" source (`checkpoint_problem`).
      command: the command line, recorded.

    Returns:
      The record written: rows (strategy, path, budget, nfe, mean_reward, mode_fraction, time_s), problem,
      versions.
    """
    SOURCES.check(source)
    for path in paths:
        PATHS.check(path)
    for name in strategies:
        scaling.STRATEGIES.check(name)
    problem = oracle_problem() if source == "oracle" else checkpoint_problem(train_config, checkpoint_dir, label,
                                                                              classifier)
    vp = schedules.get_process("vp_linear")
    rows = []
    for path in paths:
        model_fn, process = problem["model_fn"], problem["process"]
        if path == "vp":
            model_fn = schedules.transform(model_fn, problem["prediction"], process, vp)
            process = vp
        t_end = 1e-3 if path == "linear" else vp.t_min
        ts = np.linspace(1.0, t_end, num_steps + 1)
        for name in strategies:
            options = {"init": init, "chains": chains} if name == "rbf" else {}
            strategy = scaling.STRATEGIES.build(name, **options)
            for budget in budgets:
                if budget < strategy.min_budget(num_steps)[0]:
                    continue
                start = time.perf_counter()
                x, info = scaling.search(strategy, model_fn, process, ts, problem["reward"], budget=budget,
                                         batch=batch, shape=problem["shape"], key=jax.random.PRNGKey(seed),
                                         prediction=problem["prediction"], args=problem["args"],
                                         reward_args=problem["reward_args"])
                x.block_until_ready()
                rows.append({"strategy": name, "path": path, "budget": budget, "nfe": int(info["nfe"]),
                             "mean_reward": float(jnp.mean(info["reward"])),
                             "mode_fraction": float(np.mean(problem["in_mode"](x))),
                             "time_s": time.perf_counter() - start})
                print(f"  {path:6s} {name:9s} budget={budget:4d} nfe={rows[-1]['nfe']:4d} "
                      f"reward={rows[-1]['mean_reward']:.3f} fraction={rows[-1]['mode_fraction']:.3f}", flush=True)
    by = {(r["path"], r["strategy"], r["budget"]): r for r in rows}
    print(f"\n## Inference-time scaling ({problem['description']}): mean reward / mode fraction, {batch} searches "
          f"per cell, {num_steps} SDE steps\n")
    print(render_table(["path", "strategy"] + [f"NFE {b}" for b in budgets],
                       [[path, name] + [f"{by[(path, name, b)]['mean_reward']:.3f} / "
                                        f"{by[(path, name, b)]['mode_fraction']:.3f}" if (path, name, b) in by
                                        else "-" for b in budgets]
                        for path in paths for name in strategies]))
    record = {"rows": rows, "problem": problem["description"], "source": source, "batch": batch,
              "num_steps": num_steps, "rbf": {"init": init, "chains": chains}, "seed": seed, "command": command,
              "versions": versions()}
    core.write_json(json_path, record, indent=1)
    return record
