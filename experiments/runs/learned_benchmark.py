"""Learned samplers against the best fixed (solver, grid) pair on the Gaussian-mixture oracle
(`scripts/benchmark_learned.py`, issue 17).

Problem: the 8-dimensional, 6-component oracle of the solver benchmark (GaussianMixture.random(PRNGKey(0))),
vp_linear from t = 1 to 0.001. The calibration batch (exact draws of the marginal at t = 1, key 1) and the
evaluation batch (key 2) are disjoint; the error is the RMSE of x(t_min) against `samplers.exact_flow_map` on the
evaluation batch. Every learned sampler is fitted to the same teacher (`teacher_steps` tAB-DEIS steps of order 3 on
the logSNR grid) from the calibration batch. Fixed pairs: every solver of FIXED on every grid of GRIDS at each NFE;
the table shows the best. For each method: the RMSE per NFE, the wall time to learn it, and the model calls per
calibration sample (teacher included). Output: the markdown table (printed, and beside the JSON) and the JSON of every
cell.
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
from fastsamplers.schedules.optimal.learned import METHODS

FIXED = {
    "DDIM": ("ddim", {}), "DEIS tAB2": ("deis_tab", {"order": 3}), "DEIS tAB3": ("deis_tab", {"order": 4}),
    "iPNDM": ("ipndm", {}), "DPM-Solver++(2M)": ("dpmpp_2m", {}), "DPM-Solver++(3M)": ("dpmpp_3m", {}),
    "DPM-Solver++(2M)+UniC": ("dpmpp_2m", {"corrector": True}), "UniPC-3": ("unipc", {}),
}
GRIDS = ("uniform", "quadratic", "logsnr", "edm")
LEARNED = {  # label: (method, options)
    "OLSS (student fit, OLSS times)": ("olss", {}),
    "OLSS (teacher fit, OLSS times)": ("olss", {"fit": "teacher"}),
    "OLSS (student fit, quadratic)": ("olss", {"times": "quadratic"}),
    "DP, DPM-Solver++(2M)": ("dp", {"solver": "dpmpp_2m"}),
    "DP, DPM-Solver++(3M)": ("dp", {"solver": "dpmpp_3m"}),
    "solver-schedule search": ("search", {}),
}


def benchmark(json_path: str, *, nfes=(4, 5, 6, 8, 10), calibration: int = 1024, evaluation: int = 4096,
              teacher_steps: int = 200, budget: int = 600, fixed: dict | None = None, learned: dict | None = None,
              command: str = "") -> dict:
    """Every fixed pair and learned sampler at every NFE; the table printed and written beside the JSON.

    Args:
      json_path: the JSON file (meta and rows); the markdown goes to the same path with .md.
      nfes: the NFE budgets.
      calibration, evaluation: the sizes of the calibration and the held-out batch.
      teacher_steps: the learned samplers' teacher grid.
      budget: the candidates the solver-schedule search may score.
      fixed, learned: the rows ({label: (solver, options)}, {label: (method, options)}; default FIXED, LEARNED).
      command: the command line, recorded.

    Returns:
      The record written: {"meta", "rows"}.
    """
    fixed = dict(FIXED if fixed is None else fixed)
    learned = dict(LEARNED if learned is None else learned)
    for name, options in fixed.values():  # every solver and method name, before any compute
        samplers.get_solver(name, **options)
    for method, _ in learned.values():
        METHODS.check(method)
    nfes = [int(n) for n in nfes]
    p, model, x_cal, x_eval, rmse = problem(calibration, evaluation)
    rows = fixed_rows(p, model, x_eval, rmse, nfes, fixed)
    for label, (method, options) in learned.items():
        options = dict(options, budget=budget) if method == "search" else options
        for nfe in nfes:
            start = time.perf_counter()
            solver, ts, info = schedules.learn(method, model, p, x_cal, nfe, return_info=True,
                                               teacher_steps=teacher_steps, **options)
            seconds = time.perf_counter() - start
            x, out = samplers.sample(model, solver, p, x_eval, ts)
            if out["nfe"] != nfe:
                raise RuntimeError(f"{label}: the learned sampler made {out['nfe']} model calls, not NFE {nfe}")
            rows.append(dict(kind="learned", label=label, method=method, nfe=nfe, rmse=rmse(x), seconds=seconds,
                             model_calls=int(info["model_calls"]), ts=np.asarray(ts).tolist(),
                             strategies=info.get("strategies")))
            print(f"{label:34s} NFE {nfe:2d}  rmse {rows[-1]['rmse']:.4f}  {seconds:6.1f} s  "
                  f"{info['model_calls']} calls", flush=True)
    table = markdown(rows, nfes)
    print(table)
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.platform(), jax=jax.__version__, cpu_count=os.cpu_count(),
                settings=dict(nfes=nfes, calibration=calibration, evaluation=evaluation, teacher_steps=teacher_steps,
                              budget=budget))
    record = dict(meta=meta, rows=rows)
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return record


def problem(calibration: int, evaluation: int) -> tuple:
    """(process, model, calibration batch, held-out batch, the RMSE of a held-out result against the exact map)."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
    x_cal = gm.marginal_sample(jax.random.PRNGKey(1), calibration, p.t_max, p)
    x_eval = gm.marginal_sample(jax.random.PRNGKey(2), evaluation, p.t_max, p)
    exact = samplers.exact_flow_map(gm, p, x_eval, p.t_max, p.t_min)
    return p, gm.model_fn(p), x_cal, x_eval, lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))


def fixed_rows(p, model, x_eval, rmse, nfes, fixed: dict | None = None) -> list:
    """The rows of every fixed solver of `fixed` (default FIXED) on every grid of GRIDS at every NFE."""
    rows = []
    for label, (name, options) in (FIXED if fixed is None else fixed).items():
        solver = samplers.get_solver(name, **options)
        for grid in GRIDS:
            for nfe in nfes:
                ts = schedules.get_timesteps(grid, p, solver.steps_for_nfe(nfe))
                x, _ = samplers.sample(model, solver, p, x_eval, ts, check_finite=False)
                rows.append(dict(kind="fixed", label=label, grid=grid, nfe=nfe, rmse=rmse(x)))
    return rows


def best_fixed(rows: list, nfes) -> tuple[dict, list]:
    """The lowest-RMSE fixed row per NFE, and the table line that shows them."""
    fixed = [r for r in rows if r["kind"] == "fixed"]
    best = {n: min((r for r in fixed if r["nfe"] == n), key=lambda r: r["rmse"]) for n in nfes}
    return best, ["best fixed pair"] + [f"{best[n]['rmse']:.4f} ({best[n]['label']}, {best[n]['grid']})" for n in nfes]


def markdown(rows: list, nfes) -> str:
    """One line for the best fixed pair per NFE, one per learned sampler (RMSE, ratio to the best, time, calls)."""
    best, line = best_fixed(rows, nfes)
    lines = [line]
    learned = [r for r in rows if r["kind"] == "learned"]
    for label in dict.fromkeys(r["label"] for r in learned):
        cells = {r["nfe"]: r for r in learned if r["label"] == label}
        lines.append([label] + [f"{cells[n]['rmse']:.4f} ({cells[n]['rmse'] / best[n]['rmse']:.2f}x; "
                                f"{cells[n]['seconds']:.0f} s, {cells[n]['model_calls']} calls)" for n in nfes])
    return render_table(["RMSE vs exact (ratio to best fixed; learn time, calls per calibration sample)"]
                        + [f"NFE {n}" for n in nfes], lines)
