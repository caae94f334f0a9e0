"""Align Your Steps schedules against the fixed grids and the distilled ones on the Gaussian-mixture oracle
(`scripts/benchmark_ays.py`, issue 27 item 3).

Problem: the oracle of `experiments.runs.learned_benchmark` (the 8-dimensional, 6-component
GaussianMixture.random(PRNGKey(0)), vp_linear from t = 1 to 0.001). AYS (`schedules.distill("ays", ...)`) is fitted
on exact *data* draws (key 1; it needs x0, not noise); OSS and GITS (`schedules.distill("oss" | "gits", ...)`) on
exact draws of the marginal at t = 1 (key 1), each for its solver; the evaluation batch is held-out noise at t = 1
(key 2), and the error is the RMSE of x(t_min) against `samplers.exact_flow_map`. One AYS fit serves every solver
(its objective, the KL upper bound of stochastic DDIM, does not name one); NFE 5 is the log-linear interpolation
of its 10-step fit, as the paper does. Fit cost: wall seconds (compilation included) and model calls per
calibration sample (OSS and GITS: the teacher's and the DP's batched calls).
Output: the markdown table (printed, and beside the JSON) and the JSON of every cell.
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
from fastsamplers.models import GaussianMixture

SOLVERS = {"DDIM": ("ddim", {}), "DPM-Solver++(2M)": ("dpmpp_2m", {})}
GRIDS = ("logsnr", "edm", "quadratic")
DISTILLED = ("oss", "gits")


def benchmark(json_path: str, *, nfes=(5, 10), calibration: int = 1024, evaluation: int = 1024,
              teacher_steps: int = 200, command: str = "") -> dict:
    """Every solver on every schedule at every NFE; the table printed and written beside the JSON.

    Args:
      json_path: the JSON file (meta and rows); the markdown goes to the same path with .md.
      nfes: the NFE budgets (= steps: both solvers make one call a step).
      calibration, evaluation: the sizes of the calibration batches and the held-out batch.
      teacher_steps: OSS's and GITS's teacher grid.
      command: the command line, recorded.

    Returns:
      The record written: {"meta", "rows"}.
    """
    nfes = sorted({int(n) for n in nfes})
    solvers = {label: samplers.get_solver(name, **options) for label, (name, options) in SOLVERS.items()}
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
    model = gm.model_fn(p)
    data = gm.sample(jax.random.PRNGKey(1), calibration)
    x_cal = gm.marginal_sample(jax.random.PRNGKey(1), calibration, p.t_max, p)
    x_eval = gm.marginal_sample(jax.random.PRNGKey(2), evaluation, p.t_max, p)
    exact = samplers.exact_flow_map(gm, p, x_eval, p.t_max, p.t_min)
    rmse = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))  # noqa: E731

    schedules_of = {}  # (schedule label, solver label) -> {nfe: ts}; fits: schedule label -> cost
    fits = {}
    start = time.perf_counter()
    ays = schedules.distill_many("ays", model, "ddim", p, data, nfes, return_info=True, key=jax.random.PRNGKey(3))
    info = ays[nfes[0]][1]
    # ays counts every sample's calls; the teacher methods count batched calls (one per sample each)
    fits["AYS"] = dict(seconds=time.perf_counter() - start, calls_per_sample=int(info["model_calls"]) // calibration,
                       sweeps=info["sweeps"], klub_history=info["klub_history"])
    for label in solvers:
        schedules_of["AYS", label] = {n: ays[n][0] for n in nfes}
        for grid in GRIDS:
            schedules_of[grid, label] = {n: schedules.get_timesteps(grid, p, n) for n in nfes}
    for method in DISTILLED:
        for label, solver in solvers.items():
            start = time.perf_counter()
            out = schedules.distill_many(method, model, solver, p, x_cal, nfes, teacher_steps=teacher_steps,
                                         return_info=True)
            schedules_of[method.upper(), label] = {n: out[n][0] for n in nfes}
            fits[f"{method.upper()} ({label})"] = dict(seconds=time.perf_counter() - start,
                                                       calls_per_sample=int(out[nfes[-1]][1]["model_calls"]))
    rows = []
    for (schedule, label), by_nfe in schedules_of.items():
        for nfe, ts in by_nfe.items():
            x, out = samplers.sample(model, solvers[label], p, x_eval, ts)
            if out["nfe"] != nfe:
                raise RuntimeError(f"{label} on {schedule}: {out['nfe']} model calls, not NFE {nfe}")
            rows.append(dict(schedule=schedule, solver=label, nfe=nfe, rmse=rmse(x), ts=np.asarray(ts).tolist()))
            print(f"{label:18s} {schedule:10s} NFE {nfe:2d}  rmse {rows[-1]['rmse']:.4f}", flush=True)
    table = markdown(rows, fits, nfes)
    print(table)
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.platform(), jax=jax.__version__, cpu_count=os.cpu_count(),
                settings=dict(nfes=nfes, calibration=calibration, evaluation=evaluation, teacher_steps=teacher_steps))
    record = dict(meta=meta, rows=rows, fits=fits)
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return record


def markdown(rows: list, fits: dict, nfes) -> str:
    """One line per (solver, schedule): the RMSE per NFE and its ratio to the logSNR grid's; then the fit costs."""
    cell = {(r["solver"], r["schedule"], r["nfe"]): r["rmse"] for r in rows}
    lines = []
    for label, schedule in dict.fromkeys((r["solver"], r["schedule"]) for r in rows):
        lines.append([label, schedule] + [f"{cell[label, schedule, n]:.4f} "
                                          f"({cell[label, schedule, n] / cell[label, 'logsnr', n]:.2f}x)"
                                          for n in nfes])
    table = render_table(["solver", "schedule"] + [f"RMSE NFE {n} (ratio to logSNR)" for n in nfes], lines)
    cost = render_table(["fit", "seconds (compilation included)", "model calls per calibration sample"],
                        [[name, f"{f['seconds']:.1f}", f"{f['calls_per_sample']}"] for name, f in fits.items()])
    return table + "\n\n" + cost
