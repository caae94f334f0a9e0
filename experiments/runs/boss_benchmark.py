"""BOSS straightening measured: Euler's error against the teacher before and after straightening, and its cost
(`scripts/benchmark_boss.py`).

For straightened runs of one teacher (`experiments/configs/boss_straighten.py`, one run per K):

- the reference: the teacher's fine solve (the runs' boss.teacher_solver on boss.teacher_grid, boss.teacher_steps
  steps) from held-out noise (`HELDOUT_STREAM` of the config's seed: neither the Bellman DP's calibration batch nor the
  pool saw it);
- the Bellman steps of the teacher for every NFE of the table, from one DP on the runs' calibration batch
  (`schedules.distill_many`; the K of each run gets the run's own steps back, which `benchmark` checks);
- the RMSE (over the noises and pixels) of Euler at each NFE on those steps and on the uniform grid, for the teacher
  and for each straightened model (EMA weights when the run samples with them);
- optionally FD-digits (`fd_samples` = N) of N samples of each model by Euler on the Bellman steps, and of the
  teacher's own fine solve;
- the training objective (one Euler step per interval from the teacher's states) on the pool and on held-out
  trajectories, before and after: how much of the fit is to the pool;
- the cost of each run: the teacher's model calls and seconds for the DP and the pool (from its schedule file),
  and the training loop's seconds (from metrics.jsonl; compilation included).

`benchmark` prints the tables and writes the JSON.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train import checkpoints, losses, straighten
from fastsamplers.experiments.train.experiment import CALIBRATION_STREAM


def benchmark(runs: dict, json_path: str, *, config_spec: str = "experiments/configs/boss_straighten.py",
              nfes=(4, 5, 6, 8, 10), num_noise: int = 1000, fd_samples: int = 0) -> dict:
    """Measure straightened runs of one teacher (module docstring), print the tables and write the record.

    Args:
      runs: {K: the workdir of the run straightened on K Bellman steps}.
      json_path: the JSON record.
      config_spec: the runs' training config, file.py[:arg]; each run's is this with num_steps=K.
      nfes: the NFEs of the table.
      num_noise: held-out noises for the RMSE.
      fd_samples: FD-digits of this many samples (0: skip).

    Returns:
      The record written.
    """
    start = time.perf_counter()

    runs = dict(runs)
    specs = {k: run_spec(config_spec, k) for k in runs}
    configs = {k: checkpoints.load_config(spec) for k, spec in specs.items()}
    config = configs[min(runs)]
    for k, other in configs.items():
        same = {key: v for key, v in other.boss.items() if key != "num_steps"}
        if same != {key: v for key, v in config.boss.items() if key != "num_steps"} or other.seed != config.seed:
            raise ValueError(f"run K={k} has another teacher, seed or boss settings than run K={min(runs)}")
    teacher = straighten.load_teacher(config)
    process, shape = teacher.process, teacher.shape
    boss = config.boss

    tic = time.perf_counter()
    noise = straighten.heldout_noise(config, num_noise, shape, process)
    # the whole fine trajectory: its end is the reference, its states at a run's steps the held-out pairs
    trajectories = straighten.teacher_states(config, teacher, noise, np.arange(boss.teacher_steps + 1))
    reference = trajectories[:, -1]
    reference_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    bellman = schedules.distill_many(
        "bellman", teacher.model_fn, "euler", process,
        straighten.noise(config, CALIBRATION_STREAM, boss.calibration_size, shape, process), nfes,
        prediction="velocity", teacher_steps=boss.teacher_steps, teacher_grid=straighten.teacher_grid_spec(config),
        teacher_solver=boss.teacher_solver, t_min=config.sample.t_min, t_max=config.sample.t_max, args=teacher.args)
    bellman = {k: np.asarray(ts, np.float64) for k, ts in bellman.items()}
    dp_seconds = time.perf_counter() - tic
    ends = {key: config.sample[key] for key in ("t_min", "t_max") if config.sample[key] is not None}
    grids = {"bellman": bellman,
             "uniform": {k: np.asarray(schedules.get_timesteps("uniform", process, k, **ends)) for k in nfes}}

    models = {"teacher": (teacher.args, teacher.description)}
    costs, pools = {}, {}
    for k, workdir in sorted(runs.items()):
        pool = straighten.read_pool(os.path.join(workdir, straighten.POOL_FILE))
        if k in bellman and not np.allclose(pool.ts, bellman[k], rtol=0, atol=1e-9):
            raise ValueError(f"run K={k}: its Bellman steps {pool.ts} are not the teacher's {bellman[k]}")
        run_config, _, params, step = checkpoints.restore_run(specs[k], workdir, use_ema=configs[k].sample.use_ema)
        models[f"BOSS K={k}"] = (params, f"{specs[k]} @ step {step}")
        pools[k] = pool
        costs[f"BOSS K={k}"] = {
            "ts": pool.ts.tolist(), "train_steps": step, "batch_trajectories": run_config.train.batch_size,
            "pool_size": int(pool.states.shape[0]), "model_calls": pool.record["model_calls"],
            "teacher_seconds": pool.record["seconds"], "train_loop_seconds": loop_seconds(workdir)}

    # The training objective itself, on the pool (trained on) and on held-out trajectories, before and after.
    rows = []
    for k, pool in pools.items():
        loss_fn = losses.make_straightening_loss(teacher.model_fn.fn, pool.ts)
        loss = jax.jit(lambda params, batch: loss_fn(params, None, batch))
        for split, batch in (("pool", pool.states[: num_noise]), ("heldout", trajectories[:, pool.indices])):
            for name in ("teacher", f"BOSS K={k}"):
                rows.append({"model": name, "k": k, "split": split,
                             "straightening_loss": float(loss(models[name][0], batch))})
    for grid, table in grids.items():
        for nfe in nfes:
            for name, (params, _) in models.items():
                rmse = straighten.few_step_rmse(teacher.model_fn, params, process, table[nfe], noise, reference)
                rows.append({"model": name, "grid": grid, "nfe": nfe, "rmse": rmse})
    if fd_samples:
        from fastsamplers.experiments.metrics.fd_digits import fd_digits

        fd_noise = straighten.heldout_noise(config, fd_samples, shape, process)
        fd_teacher = float(fd_digits(straighten.teacher_states(config, teacher, fd_noise)))
        for nfe in nfes:
            for name, (params, _) in models.items():
                x, _ = samplers.sample(teacher.model_fn, "euler", process, fd_noise, grids["bellman"][nfe],
                                       prediction="velocity", args=params)
                rows.append({"model": name, "grid": "bellman", "nfe": nfe, "fd_digits": float(fd_digits(x))})

    names = list(models)
    value = {(r["model"], r["grid"], r["nfe"], metric): r[metric] for r in rows for metric in ("rmse", "fd_digits")
             if metric in r}
    cells = [[grid, nfe] + [f"{value[name, grid, nfe, 'rmse']:.4f}" for name in names]
             for grid in grids for nfe in nfes]
    print(f"Euler vs the teacher ({boss.teacher_solver}, {boss.teacher_steps} {boss.teacher_grid} steps), RMSE over "
          f"{num_noise} held-out noises:")
    print(render_table(["grid", "NFE"] + names, cells, style="text", align="lr" + "r" * len(names)))
    if fd_samples:
        print(f"\nFD-digits of {fd_samples} samples, Euler on the Bellman steps (the teacher's own "
              f"{boss.teacher_steps}-step {boss.teacher_solver} solve: {fd_teacher:.2f}):")
        cells = [[nfe] + [f"{value[name, 'bellman', nfe, 'fd_digits']:.2f}" for name in names] for nfe in nfes]
        print(render_table(["NFE"] + names, cells, style="text", align="r" * (len(names) + 1)))
    print("\nThe straightening loss (one Euler step per interval from the teacher's states) on the pool and on "
          "held-out trajectories:")
    loss = {(r["model"] == "teacher", r["k"], r["split"]): r["straightening_loss"] for r in rows if "k" in r}
    cells = [[f"K={k}", split, f"{loss[True, k, split]:.3g}", f"{loss[False, k, split]:.3g}"]
             for k in pools for split in ("pool", "heldout")]
    print(render_table(["run", "trajectories", "teacher", "straightened"], cells, style="text", align="llrr"))
    print("\nCost of each run (teacher model calls and seconds; the training loop's seconds include compilation):")
    cells = [[name, " ".join(f"{t:.3f}" for t in c["ts"]), c["pool_size"], c["model_calls"]["bellman_dp"],
              f"{c['teacher_seconds']['bellman_dp']:.0f}", c["model_calls"]["pool"],
              f"{c['teacher_seconds']['pool']:.0f}", f"{c['train_steps']} x {c['batch_trajectories']}",
              f"{c['train_loop_seconds']:.0f}"] for name, c in costs.items()]
    print(render_table(["run", "Bellman steps", "pool", "DP calls", "DP s", "pool calls", "pool s",
                        "steps x batch", "train s"], cells, style="text", align="ll" + "r" * 7))

    record = {
        "teacher": teacher.description, "config": config_spec, "runs": {name: d for name, (_, d) in models.items()},
        "boss": config.boss.to_dict(), "num_noise": num_noise, "fd_samples": fd_samples,
        "bellman_ts": {str(k): ts.tolist() for k, ts in bellman.items()}, "rows": rows, "costs": costs,
        "fd_digits_teacher_solve": fd_teacher if fd_samples else None,
        "seconds": {"reference": reference_seconds, "bellman_dp": dp_seconds, "total": time.perf_counter() - start},
        "devices": str(jax.devices()),
    }
    core.write_json(json_path, record, indent=1)
    print(f"wrote {json_path}")
    return record


def run_spec(config_spec, k):
    """The training config of the K-step run: config_spec with num_steps=K added to its arg."""
    return config_spec + ("," if ":" in config_spec else ":") + f"num_steps={k}"


def loop_seconds(workdir):
    """The training loop's wall time from metrics.jsonl (the steps between log lines over their steps/s)."""
    seconds, last = 0.0, 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in map(json.loads, f):
            seconds += (line["step"] - last) / line["steps_per_s"]
            last = line["step"]
    return seconds
