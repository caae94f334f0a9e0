"""A data-free flow map measured against its teacher (`scripts/benchmark_flow_map.py`; issue 28 item 4).

For a flow-map run (`experiments/configs/flow_map_distill.py`, its latest checkpoint, EMA weights by default):

- the reference: the teacher's fine solve (`reference` solver and steps on the uniform grid) from held-out noise
  (`HELDOUT_STREAM` of the run's seed: the run trained on prior draws of its own streams);
- the student sampled in `steps` steps of the flow_map solver (NFE = steps) on each of `grids` from the same noise;
- the teacher at the same NFE with `teacher_solvers` on the uniform grid (Euler at NFE k is also the untrained
  student: the run starts as the teacher's Euler step, `experiments.train.flow_map_training`);
- per row the RMSE against the reference (over samples and elements) and the distance to the data: FD-digits for
  digit images (`experiments.metrics.fd_digits`), the exact W2 (`experiments.metrics.transport.w2_exact`) for
  vectors, with W2's data-vs-data floor at the same sample size beside it.

A solver that predicts x0 or eps cannot start at alpha = 0 (t = 1 on the OT path): there it starts from the same
noise at t_max - `start_offset` (on the OT path the state there is (1 - d) z + d x0; d = 1e-3 moves it by ~1e-3,
below every few-step error measured). `benchmark` prints the markdown table and writes it beside the JSON (.md).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers
from fastsamplers.experiments.configs import grid_timesteps
from fastsamplers.experiments.metrics.transport import w2_exact
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train import flow_map_training, straighten
from fastsamplers.experiments.train.experiment import HELDOUT_STREAM
from fastsamplers.models.flow_map import FlowMapModel


def benchmark(workdir: str, json_path: str, *, config_spec: str = "experiments/configs/flow_map_distill.py",
              steps=(1, 2, 4), grids=("uniform",), teacher_solvers=("euler", "heun", "dpmpp_2m"),
              reference=("heun", 100), num_samples: int = 2000, use_ema: bool | None = None,
              start_offset: float = 1e-3) -> dict:
    """Measure a flow-map run against its teacher (module docstring), print the table and write the record.

    Args:
      workdir: the flow-map run's --workdir.
      json_path: the JSON record.
      config_spec: the run's training config, file.py[:arg] (`flow_map_training.restore_run`).
      steps: the flow map's step counts (= NFE), also the teacher's NFEs.
      grids: the flow map's time grids (names of `schedules.GRIDS` between the run's sample.t_max and t_min).
      teacher_solvers: the teacher's solvers at those NFEs, on the uniform grid.
      reference: (solver, steps) of the teacher's fine solve on the uniform grid.
      num_samples: held-out noises (and samples per row).
      use_ema: the student's EMA weights (else the raw ones); None: as the run samples (sample.use_ema).
      start_offset: how far below t_max a solver that cannot start at alpha = 0 starts.

    Returns:
      The record written.
    """
    start = time.perf_counter()
    config, experiment, params, step = flow_map_training.restore_run(workdir, config_spec, use_ema)
    teacher = flow_map_training.load_teacher(config)
    process, shape = teacher.process, teacher.shape
    t_min, t_max = (process.t_min if config.sample.t_min is None else config.sample.t_min,
                    process.t_max if config.sample.t_max is None else config.sample.t_max)
    noise = straighten.noise(config, HELDOUT_STREAM, num_samples, shape, process)
    images = len(shape) == 3
    metric = "fd_digits" if images else "w2"
    if images:
        from fastsamplers.experiments.metrics.fd_digits import fd_digits as distance
        floor = None
    else:  # the exact W2 of two independent data sets of this size: differences below it are noise
        data = [np.asarray(experiment.datasets[0].sample(jax.random.PRNGKey(k), num_samples)) for k in (1, 2)]
        distance = lambda x: w2_exact(np.asarray(x, np.float64), data[0])  # noqa: E731
        floor = w2_exact(data[1], data[0])

    def solve(solver_name, ts):
        x, info = samplers.sample(teacher.model_fn, solver_name, process, noise, ts, prediction="velocity",
                                  args=teacher.args)
        return x, info["nfe"]

    tic = time.perf_counter()
    ref_solver, ref_steps = reference
    x_ref, ref_nfe = solve(ref_solver, grid_timesteps("uniform", process, ref_steps, ref_steps, t_min, t_max))
    reference_seconds = time.perf_counter() - tic

    def row(model, solver, grid, ts, x, nfe):
        x = np.asarray(x, np.float32)
        return {"model": model, "solver": solver, "grid": grid, "nfe": int(nfe), "ts": [float(t) for t in ts],
                "rmse": float(np.sqrt(np.mean(np.square(x - np.asarray(x_ref, np.float32))))),
                metric: float(distance(x))}

    rows = [row("teacher", ref_solver, "uniform", grid_timesteps("uniform", process, ref_steps, ref_steps, t_min,
                                                                 t_max), x_ref, ref_nfe)]
    model = FlowMapModel(experiment.model_fn)
    for grid in grids:
        for k in steps:
            ts = grid_timesteps(grid, process, k, k, t_min, t_max)
            x, info = samplers.sample(model, "flow_map", process, noise, ts, prediction="flow_map",
                                      args=params["student"])
            rows.append(row(f"flow map @ {step}", "flow_map", grid, ts, x, info["nfe"]))
    skipped, done = [], set()
    for name in teacher_solvers:
        solver = samplers.get_solver(name)
        for nfe in steps:
            k = solver.steps_for_nfe(nfe)
            if (name, k) in done:  # a budget that buys no more steps than a smaller one (Heun at NFE 2)
                continue
            done.add((name, k))
            try:  # e.g. Heun at NFE 1 (no step), DPM-Solver++(2M) in one step (below its order): no row
                solver.check_grid(k)
                if k < 1:
                    raise ValueError(f"{nfe} model calls make no step")
            except ValueError as error:
                skipped.append(f"{name} at NFE {nfe}: {error}")
                continue
            top = t_max
            if solver.native != "velocity" and float(process.alpha(jnp.asarray(t_max))) == 0.0:
                top = t_max - start_offset
            ts = grid_timesteps("uniform", process, k, nfe, t_min, top)
            x, used = solve(name, ts)
            rows.append(row("teacher", name, "uniform", ts, x, used))

    label = "FD-digits" if images else "W2"
    cells = [[r["model"], r["solver"], r["grid"], r["nfe"], f"{r['rmse']:.4f}", f"{r[metric]:.3f}"] for r in rows]
    print(f"{experiment.config.flow_map.teacher_config} distilled ({workdir}, step {step}); {num_samples} held-out "
          f"noises; RMSE against the teacher's {ref_steps}-step {ref_solver} solve (NFE {ref_nfe})"
          + ("" if floor is None else f"; W2 data-vs-data floor {floor:.3f}") + ":")
    table = render_table(["model", "solver", "grid", "NFE", "RMSE", label], cells, style="markdown")
    print(table)
    for note in skipped:
        print(f"  (no row: {note})")
    record = {"workdir": workdir, "config": config_spec, "step": step, "use_ema": use_ema,
              "teacher": teacher.description, "reference": {"solver": ref_solver, "steps": ref_steps,
                                                            "nfe": ref_nfe},
              "num_samples": num_samples, "metric": metric, "data_floor": floor, "rows": rows, "skipped": skipped,
               "table": table,
              "seconds": {"reference": reference_seconds, "total": time.perf_counter() - start},
              "devices": str(jax.devices())}
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    print(f"wrote {json_path} and its table beside it (.md)")
    return record
