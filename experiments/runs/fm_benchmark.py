"""Flow matching on the 2-D benchmark, side by side with TorchCFM: training speed, W2 and straightness per coupling.

Task (TorchCFM's, Tong et al. 2023): N(0, I) -> moons (sklearn make_moons(noise=0.2) * 3 - 1), MLP 3 x 64 SELU
with t appended to the input, Adam lr 1e-3, batch 256, fresh samples every step. For each coupling both
frameworks train `steps` steps; then Euler with 100, 4 and 2 steps from the same kind of noise, and the exact W2
distance (scipy assignment) between 2000 samples and one fixed set of 2000 target points (the TorchCFM script's
sklearn draw), and the straightness (Liu et al. 2022) of the 100-step Euler trajectories.

`benchmark` runs it (`scripts/benchmark_fm.py`); without a torchcfm python only this framework is measured. Our "ot" is exact minibatch OT as a permutation (each
noise and data point used once); TorchCFM's draws 256 pairs from the exact plan with replacement. Our "sinkhorn"
uses epsilon relative to the mean cost (0.05); TorchCFM's reg is absolute, so it is given 0.05 x the mean cost of a
batch (`torchcfm_reg`, default 0.6).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import jax
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments import metrics, train
from fastsamplers.experiments.configs import toy2d_fm
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train.couplings import COUPLINGS


def benchmark(json_path: str, *, steps: int = 5000, couplings=("independent", "ot", "sinkhorn"),
              num_eval: int = 2000, seed: int = 0, eval_steps=(100, 4, 2), torchcfm_python: str | None = None,
              torchcfm_script: str | None = None, torchcfm_reg: float = 0.6) -> dict:
    """Both frameworks per coupling (module docstring); the table printed, the record written to json_path.

    Args:
      json_path: the JSON record.
      steps: training steps per coupling.
      couplings: coupling names (`experiments.train.couplings.COUPLINGS`).
      num_eval: samples per Euler run (and target points).
      seed: the seed of both frameworks' runs.
      eval_steps: the Euler step counts; the straightness is the largest's.
      torchcfm_python, torchcfm_script: a python with torchcfm, pot and scikit-learn and the baseline script it runs
        (scripts/torchcfm_baseline.py); None: this framework only.
      torchcfm_reg: POT's absolute reg for TorchCFM's sinkhorn.

    Returns:
      The record written.
    """
    for coupling in couplings:  # every name, before any compute
        COUPLINGS.lookup(coupling)
    if torchcfm_python and not torchcfm_script:
        raise ValueError("torchcfm_python needs torchcfm_script, the baseline script it runs")
    couplings, eval_steps = list(couplings), list(eval_steps)

    results = {"task": "N(0,I) -> moons*3-1, MLP 3x64 SELU, Adam 1e-3, batch 256", "steps": steps,
               "jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        if torchcfm_python:
            theirs, target, info = torchcfm(torchcfm_python, torchcfm_script, couplings, steps, num_eval, eval_steps,
                                            seed, torchcfm_reg, workdir)
            results["torchcfm"] = info
        else:
            from sklearn.datasets import make_moons

            theirs, target = {}, make_moons(num_eval, noise=0.2, random_state=seed + 2)[0] * 3 - 1
    for coupling in couplings:
        row = {"framework": "ours", "coupling": coupling,
               **ours(coupling, steps, num_eval, eval_steps, target, seed)}
        results["rows"].append(row)
        if coupling in theirs:
            results["rows"].append({"framework": "torchcfm", "coupling": coupling, **theirs[coupling]})
            row["speedup_vs_torchcfm"] = row["steps_per_s"] / theirs[coupling]["steps_per_s"]

    headers = ["framework", "coupling", "steps/s", "speedup", "loss", *(f"W2 E{n}" for n in eval_steps), "straight"]
    cells = [[row["framework"], row["coupling"], f"{row['steps_per_s']:.1f}",
              f"{row['speedup_vs_torchcfm']:.2f}x" if "speedup_vs_torchcfm" in row else "",
              f"{row['final_loss']:.3f}", *(f"{row[f'w2_euler{n}']:.3f}" for n in eval_steps),
              f"{row['straightness']:.3f}"] for row in results["rows"]]
    print(render_table(headers, cells, style="text", align="ll" + "r" * (len(headers) - 2),
                       widths=[10, 12, 9, 8, 7, *(8 for _ in eval_steps), 9], sep=" ", rule=False))
    core.write_json(json_path, results, indent=2)
    return results


def ours(coupling, steps, num_eval, eval_steps, target, seed):
    """This framework's row for one coupling: toy2d_fm trained `steps` steps (timed after the compile), then Euler
    at each of eval_steps: W2 to `target`, and the straightness of the longest."""
    config = toy2d_fm.get_config(f"coupling={coupling}")
    config.unlock()
    config.train.num_steps, config.seed = steps, seed
    config.lock()
    experiment = train.build(config)
    state = train.init_state(experiment)
    per_call = config.train.steps_per_call
    chunk = train.make_train_chunk(experiment, per_call)
    chunk = chunk.lower(state, experiment.datasets).compile()  # compile outside the timed loop
    losses = []
    start = time.perf_counter()
    for _ in range(steps // per_call):
        state, chunk_losses, _ = chunk(state, experiment.datasets)
        losses.append(chunk_losses)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    losses = np.concatenate([np.asarray(x) for x in losses])
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"ours/{coupling}: non-finite training loss")
    process = experiment.process
    x_init = jax.random.normal(jax.random.PRNGKey(seed + 1), (num_eval, 2))
    model = lambda x, t: experiment.model_fn(state["params"], x, t)
    row = {"steps_per_s": steps / seconds, "train_seconds": seconds, "final_loss": float(losses[-100:].mean())}
    for n in eval_steps:
        ts = schedules.get_timesteps("uniform", process, n, t_min=0.0, t_max=1.0)
        x, info = samplers.sample(model, "euler", process, x_init, ts, prediction="velocity", save_trajectory=True)
        row[f"w2_euler{n}"] = metrics.w2_exact(np.asarray(x), target)
        if n == max(eval_steps):
            row["straightness"] = metrics.straightness(np.asarray(info["trajectory"]), np.asarray(ts))
    return row


def torchcfm(python, script, couplings, steps, num_eval, eval_steps, seed, reg, workdir):
    """TorchCFM's rows, run by `python` (a virtualenv with torchcfm, pot, scikit-learn) on the baseline `script`
    (scripts/torchcfm_baseline.py): ({coupling: row}, the target points, the run's other info)."""
    out, js = os.path.join(workdir, "torchcfm.npz"), os.path.join(workdir, "torchcfm.json")
    command = [python, script, "--steps", str(steps), "--couplings",
               ",".join(couplings), "--seed", str(seed), "--num-eval", str(num_eval), "--eval-steps",
               ",".join(map(str, eval_steps)), "--reg", str(reg), "--out", out, "--json", js]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(js, encoding="utf-8") as f:
        report = json.load(f)
    arrays = np.load(out)
    rows = {}
    for coupling in couplings:
        row = dict(report["results"][coupling])
        for n in eval_steps:
            trajectory = arrays[f"{coupling}_euler{n}_trajectory"]
            row[f"w2_euler{n}"] = metrics.w2_exact(trajectory[-1], arrays["target"])
            if n == max(eval_steps):
                row["straightness"] = metrics.straightness(trajectory, arrays[f"{coupling}_euler{n}_ts"])
        rows[coupling] = row
    return rows, arrays["target"], {k: v for k, v in report.items() if k != "results"}
