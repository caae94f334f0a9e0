"""DPM-OT on digits against fixed samplers at equal NFE (`scripts/benchmark_dpm_ot.py`; issue 28, item 2).

For a trained digits model (`experiments.train.checkpoint_target`):

- the targets: the run's training digits noised to t_k, y_i = alpha(t_k) x0_i + sigma(t_k) eps_i (one draw of
  eps per digit, key `seed + 1`), one `samplers.SemiDiscreteOT` fitted per t_k from N(0, I) (`fit_iterations`
  iterations of DPM-OT's Monte Carlo Adam, 10 N draws each: its cost, final ||grad|| and empty cells are recorded);
- DPM-OT rows: `samplers.dpm_ot_sample` with each solver of DPM_OT_SOLVERS on the uniform grid from t_k to the
  process's t_min, at each NFE (the model calls after t_k; the map's own cost is one N-way argmax a sample);
- fixed rows: each solver of FIXED on each grid of GRIDS from the process's t_max, same NFE, same seed;
- a row per t_k of the training digits behind the cells the same noise draws fall in (DPM-OT's memorisation limit,
  no model call);
- per row: FD-digits of `num_samples` samples against all real digits, and the samples' nearest-neighbour distance
  to the training digits (root mean square over pixels; median and 10th percentile), beside the real digits'
  own leave-one-out nearest-neighbour distance; DPM-OT rows also count the distinct cells their samples came from.

A deterministic solver after the map gives at most N distinct samples, each the solve of one noisy training digit
from t_k: at small t_k the samples are near-copies of training digits (NN distance far below the real digits' own),
which FD-digits against the same digits rewards. The table shows both.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report.tables import render_table

FIXED = ("euler", "dpmpp_2m", "dpmpp_3m", "ipndm")
GRIDS = ("uniform", "logsnr")
DPM_OT_SOLVERS = ("euler", "dpmpp_2m")


def steps_for(solver: samplers.Solver, nfe: int) -> int | None:
    """The most steps of `solver` within `nfe` model calls (None when no grid it accepts fits: a multistep method
    of order k needs k steps)."""
    for k in range(nfe, 0, -1):
        if solver.nfe(k) <= nfe:
            try:
                solver.check_grid(k)
            except ValueError:
                return None
            return k
    return None


def nearest_distances(x: np.ndarray, reference: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """The root-mean-square (over pixels) distance of each row of x to its nearest row of `reference`; with
    `leave_one_out`, x is the reference and a row's own zero distance is left out."""
    x, reference = x.reshape(len(x), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
    d2 = (x**2).sum(1)[:, None] + (reference**2).sum(1)[None] - 2 * x @ reference.T
    if leave_one_out:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(d2.min(1), 0) / x.shape[1])


def benchmark(train_config: str, checkpoint_dir: str, json_path: str, *, nfes=(1, 2, 4, 6, 10), t_ks=(0.3, 0.6),
              num_samples: int = 2000, fit_iterations: int = 100, fixed=FIXED, grids=GRIDS,
              dpm_ot_solvers=DPM_OT_SOLVERS, seed: int = 0, command: str = "") -> dict:
    """Measure DPM-OT and the fixed samplers (module docstring), print the table and write the record.

    Args:
      train_config: the run's training config, file.py[:arg].
      checkpoint_dir: the run's workdir.
      json_path: the JSON record (the markdown table beside it, .md).
      nfes: the NFE budgets.
      t_ks: the levels of the OT targets (one fit each).
      num_samples: samples per row.
      fit_iterations: the OT fit's iterations (its max_iter; tol stays DPM-OT's 8e-4).
      fixed, grids, dpm_ot_solvers: the solvers and grids of the rows.
      seed: the root seed.
      command: the command line, recorded.

    Returns:
      The record written: {"meta", "fits", "rows"}.
    """
    from fastsamplers.experiments.metrics import fd_digits
    from fastsamplers.experiments.train import checkpoint_target

    for name in (*fixed, *dpm_ot_solvers):  # every name before any compute
        samplers.get_solver(name)
    for grid in grids:
        schedules.GRIDS.check(grid)
    target = checkpoint_target(train_config, checkpoint_dir)
    if target.num_classes:
        raise ValueError(f"{checkpoint_dir}: DPM-OT here samples an unconditional model")
    process, shape = target.process, (num_samples, *target.shape)
    train = np.asarray(target.dataset.data)
    start = time.perf_counter()
    rows, fits = [], {}
    data_nn = nearest_distances(train, train, leave_one_out=True)

    def record(complete):
        return {"meta": {"train_config": train_config, "checkpoint": target.description, "num_samples": num_samples,
                         "nfes": list(nfes), "t_ks": list(t_ks), "fit_iterations": fit_iterations, "seed": seed,
                         "data_nn_median": float(np.median(data_nn)),
                         "data_nn_p10": float(np.percentile(data_nn, 10)), "num_train": int(train.shape[0]),
                         "seconds": time.perf_counter() - start, "complete": complete,
                         "device": jax.devices()[0].device_kind, "host": platform.node(), "command": command,
                         "date": datetime.datetime.now().isoformat(timespec="seconds")},
                "fits": fits, "rows": rows}

    def score(x, row):
        x = np.asarray(x, np.float64)
        nn = nearest_distances(x, train)
        row.update(fd_digits=fd_digits.fd_digits(x), nn_median=float(np.median(nn)),
                   nn_p10=float(np.percentile(nn, 10)))
        rows.append(row)
        print(f"  {row}", flush=True)
        _write(json_path, record(False))  # a partial record after each row: an interrupted run keeps its rows

    key = jax.random.PRNGKey(seed)
    for t_k in t_ks:
        y = process.marginal(jax.random.PRNGKey(seed + 1), jnp.asarray(train), t_k)
        ot, info = samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(seed + 2), y, max_iter=fit_iterations)
        fits[str(t_k)] = dict(info)
        print(f"fit at t_k = {t_k}: {fits[str(t_k)]}", flush=True)
        # pure memorisation, for scale: the training digits behind the cells of the same noise draws (no model call)
        cells = np.asarray(ot.assign(jax.random.normal(jax.random.split(key)[0], shape, y.dtype)))
        score(train[cells], {"sampler": "training digits of the cells", "t_k": t_k, "grid": "", "nfe_budget": 0,
                             "nfe": 0, "distinct_cells": int(np.unique(cells).size), "seconds": 0.0})
        for name in dpm_ot_solvers:
            solver = samplers.get_solver(name)
            for nfe in nfes:
                num_steps = steps_for(solver, nfe)
                if num_steps is None:
                    continue
                ts = schedules.get_timesteps("uniform", process, num_steps, t_max=t_k)
                t0 = time.perf_counter()
                x, out = samplers.dpm_ot_sample(target.model_fn, solver, process, ot, key, shape, ts,
                                                prediction=target.prediction, args=target.args)
                score(x, {"sampler": f"DPM-OT {name}", "t_k": t_k, "grid": "uniform", "nfe_budget": nfe,
                          "nfe": int(out["nfe"]), "distinct_cells": int(np.unique(np.asarray(out["cells"])).size),
                          "seconds": time.perf_counter() - t0})
    x_init = process.prior(key, shape, dtype=jnp.float32)
    for name in fixed:
        solver = samplers.get_solver(name)
        for nfe in nfes:
            num_steps = steps_for(solver, nfe)
            for grid in grids if num_steps else ():
                ts = schedules.get_timesteps(grid, process, num_steps)
                t0 = time.perf_counter()
                x, out = samplers.sample(target.model_fn, solver, process, x_init, ts, prediction=target.prediction,
                                         args=target.args, check_finite=False)
                if int(out["num_nonfinite"]):
                    print(f"  {name} {grid} NFE {nfe}: {int(out['num_nonfinite'])} non-finite values, row left out")
                    continue
                score(x, {"sampler": name, "t_k": None, "grid": grid, "nfe_budget": nfe, "nfe": int(out["nfe"]),
                          "distinct_cells": None, "seconds": time.perf_counter() - t0})
    final = record(True)
    print(_write(json_path, final))
    return final


def _write(json_path: str, record: dict) -> str:
    """Write the record and its markdown table beside it (.md); return the table."""
    table = markdown(record)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    core.write_json(json_path, record)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return table


def markdown(record: dict) -> str:
    """Per NFE: the best fixed sampler and each DPM-OT (solver, t_k), FD-digits and NN distances; the fits' cost."""
    rows, meta = record["rows"], record["meta"]
    lines = []
    for nfe in [0, *meta["nfes"]]:
        fixed = [r for r in rows if r["nfe_budget"] == nfe and r["t_k"] is None]
        best = [min(fixed, key=lambda r: r["fd_digits"])] if fixed else []
        ot = [r for r in rows if r["nfe_budget"] == nfe and r["t_k"] is not None]
        for r in best + ot:
            lines.append([nfe, r["sampler"] if r["t_k"] is not None else f"best fixed: {r['sampler']}",
                          r["grid"], "" if r["t_k"] is None else r["t_k"], r["nfe"], f"{r['fd_digits']:.2f}",
                          f"{r['nn_median']:.3f}", f"{r['nn_p10']:.3f}",
                          "" if r["distinct_cells"] is None else r["distinct_cells"]])
    table = render_table(["NFE", "sampler", "grid", "t_k", "calls", "FD-digits", "NN median", "NN p10",
                          "distinct cells"], lines)
    fits = render_table(["t_k", "iterations", "final grad norm", "empty cells", "draws", "seconds"],
                        [[k, f["iterations"], f"{f['grad_norm']:.4f}", f["num_empty"], f["samples_drawn"],
                          f"{f['seconds']:.0f}"] for k, f in record["fits"].items()])
    return (f"{meta['checkpoint']}, {meta['num_samples']} samples; the real digits' own leave-one-out NN distance: "
            f"median {meta['data_nn_median']:.3f}, p10 {meta['data_nn_p10']:.3f}\n\n{table}\n\nOT fits:\n\n{fits}")
