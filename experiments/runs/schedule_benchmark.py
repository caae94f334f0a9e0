"""The step schedules' benchmark: standard grids against OSS, Bellman/BOSS, GITS and gradient refinement
(`scripts/benchmark_schedules.py`).

On an 8-dimensional, 6-component Gaussian-mixture oracle (vp_linear; `seed` picks the mixture and the batches), for
each solver of `solvers` (default: ddim, deis_tab order 3, deis_tab order 4 = the paper's tAB3, dpmpp_2m) and NFE:
the RMSE against the exact flow map, on a held-out batch, of every standard grid (uniform, quadratic, logsnr, edm),
of the distilled schedules (OSS, Bellman, GITS: a DDIM student on a `teacher_steps`-step teacher, distilled on a
separate batch) and of `schedules.refine` (gradient descent towards the teacher's endpoint on the distillation batch)
applied to the OSS schedule and to the best standard grid, for the actual solver. Also the cost of each distillation:
model calls and wall time. `benchmark` writes the JSON, benchmark_schedules.md (printed too) and
benchmark_schedules.png beside it.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture
from fastsamplers.schedules.optimal import distillation

SOLVERS = {"ddim": ("ddim", {}), "deis_tab3": ("deis_tab", {"order": 3}), "deis_tab4": ("deis_tab", {"order": 4}),
           "dpmpp_2m": ("dpmpp_2m", {})}
GRIDS = ("uniform", "quadratic", "logsnr", "edm")
PLOTTED = "deis_tab3"  # the solver whose schedules the plot shows
# the methods distilled from a teacher solve of noise; "ays" fits to data and has its own runner (ays_benchmark)
TEACHER_METHODS = tuple(m for m in distillation.METHODS if m != "ays")


def benchmark(json_path: str, *, seed: int = 0, nfes=(5, 10), teacher_steps: int = 200, distill_batch: int = 256,
              eval_batch: int = 1024, solvers: dict | None = None) -> dict:
    """Run the module docstring's comparison and write its JSON, markdown and plot.

    Args:
      json_path: the JSON file; the markdown and the plot go beside it.
      seed: the oracle's and the batches' seed.
      nfes: the NFE budgets.
      teacher_steps, distill_batch: the distillations' teacher grid and batch.
      eval_batch: the held-out batch every schedule is scored on.
      solvers: {label: (solver name, options)} (default SOLVERS).

    Returns:
      The record written: rows, distillation_cost, versions, settings, runtime_s.
    """
    solvers = dict(SOLVERS if solvers is None else solvers)
    for name, options in solvers.values():  # every name, before any compute
        samplers.get_solver(name, **options)
    start = time.perf_counter()
    settings = dict(seed=seed, nfes=list(nfes), teacher_steps=teacher_steps, distill_batch=distill_batch,
                    eval_batch=eval_batch, solvers=solvers)
    results = run(seed, tuple(nfes), teacher_steps, distill_batch, eval_batch, solvers)
    results.update(settings=settings, runtime_s=time.perf_counter() - start)
    text = markdown(results)
    out_dir = os.path.dirname(os.path.abspath(json_path))
    core.write_json(json_path, results, indent=1)
    core.write_atomic(os.path.join(out_dir, "benchmark_schedules.md"), text)
    if any(r["solver"] == PLOTTED for r in results["rows"]):
        plot(results, os.path.join(out_dir, "benchmark_schedules.png"))
    print(text)
    return results


def rmse(x, exact) -> float:
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - exact) ** 2)))


def timed(fn):
    """(fn()'s output, waited for, and the seconds it took)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run(seed, nfes, teacher_steps, distill_batch, eval_batch, solvers) -> dict:
    """The rows (solver x NFE x schedule: RMSE, ratio to the best standard grid, ts) and the distillation costs."""
    process = schedules.get_process("vp_linear")
    root = jax.random.PRNGKey(seed)
    oracle = GaussianMixture.random(jax.random.fold_in(root, 0), dim=8, num_components=6)
    model = oracle.model_fn(process)
    x_train = oracle.marginal_sample(jax.random.fold_in(root, 1), distill_batch, process.t_max, process)
    x_eval = oracle.marginal_sample(jax.random.fold_in(root, 2), eval_batch, process.t_max, process)
    exact_eval = samplers.exact_flow_map(oracle, process, x_eval, process.t_max, process.t_min)

    def evaluate(solver, ts):
        x, _ = samplers.sample(model, solver, process, x_eval, ts)
        return rmse(x, exact_eval)

    distilled, costs = {}, []
    for nfe in nfes:
        for method in TEACHER_METHODS:
            (ts, info), seconds = timed(lambda: schedules.distill(
                method, model, "ddim", process, x_train, nfe, teacher_steps=teacher_steps, return_info=True))
            distilled[(method, nfe)] = np.asarray(ts)
            costs.append({"method": method, "nfe": nfe, "teacher_steps": teacher_steps, "batch": distill_batch,
                          "model_calls": info["model_calls"], "seconds": seconds, "indices": info["indices"].tolist()})
            print(f"distilled {method} nfe={nfe}: {seconds:.1f} s, {info['model_calls']} model calls", file=sys.stderr)

    rows = []
    for label, (name, options) in solvers.items():
        solver = samplers.get_solver(name, **options)
        for nfe in nfes:
            num_steps = solver.steps_for_nfe(nfe)
            cells = {grid: schedules.get_timesteps(grid, process, num_steps) for grid in GRIDS}
            cells.update({method: distilled[(method, nfe)] for method in TEACHER_METHODS})
            results = {key: evaluate(solver, ts) for key, ts in cells.items()}
            best_grid = min(GRIDS, key=results.get)
            for start in ("oss", best_grid):
                (ts, info), seconds = timed(lambda: schedules.refine(
                    cells[start], model, solver, process, x_train, return_info=True))
                key = f"refine({start})"
                cells[key], results[key] = np.asarray(ts), evaluate(solver, ts)
                print(f"{label} nfe={nfe} {key}: {results[key]:.3e} ({seconds:.1f} s, train loss "
                      f"{info['loss_initial']:.3e} -> {info['loss_final']:.3e})", file=sys.stderr)
            for key, value in results.items():
                rows.append({"solver": label, "nfe": nfe, "schedule": key, "rmse": value,
                             "ratio_to_best_grid": value / results[best_grid], "best_grid": best_grid,
                             "ts": np.asarray(cells[key], np.float64).tolist()})
    return {"rows": rows, "distillation_cost": costs, "versions": versions()}


def markdown(results: dict) -> str:
    """The RMSE table (ratio to the best standard grid), the distillation costs and the distilled schedules."""
    rows, nfes = results["rows"], sorted({r["nfe"] for r in results["rows"]})
    schedules_order = list(dict.fromkeys(r["schedule"] for r in rows))
    by = {(r["solver"], r["nfe"], r["schedule"]): r for r in rows}

    def cell(r):
        return "-" if r is None else f"{r['rmse']:.3e} ({r['ratio_to_best_grid']:.2f})"

    labels = list(dict.fromkeys(r["solver"] for r in rows))
    table = render_table(["solver", "schedule", *(f"NFE {n}: RMSE (x best grid)" for n in nfes)],
                         [[solver, sched, *(cell(by.get((solver, n, sched))) for n in nfes)]
                          for solver in labels for sched in schedules_order])
    cost_table = render_table(["method", "NFE", "teacher steps", "batch", "model calls", "wall time (s)"],
                              [[c["method"], c["nfe"], c["teacher_steps"], c["batch"], c["model_calls"],
                                f"{c['seconds']:.1f}"] for c in results["distillation_cost"]])
    ts_lines = [f"- {r['solver']} NFE {r['nfe']} {r['schedule']}: " + ", ".join(f"{t:.4g}" for t in r["ts"])
                for r in rows if r["schedule"] not in GRIDS]
    return "\n\n".join([
        "# Schedule benchmark (RMSE vs the exact flow map on a held-out batch; ratio to the best standard grid)",
        table, "## Distillation cost", cost_table, "## Distilled and refined schedules (t)",
        "\n".join(ts_lines)]) + "\n"


def plot(results: dict, path: str) -> str:
    """The PLOTTED solver's schedules in log-SNR, one panel per NFE, labelled with their held-out RMSE."""
    from matplotlib.figure import Figure

    process = schedules.get_process("vp_linear")
    rows = [r for r in results["rows"] if r["solver"] == PLOTTED]
    nfes = sorted({r["nfe"] for r in rows})
    fig = Figure(figsize=(11, 3.2 * len(nfes)), layout="constrained")
    for ax, nfe in zip(fig.subplots(len(nfes), 1, squeeze=False)[:, 0], nfes):
        sub = [r for r in rows if r["nfe"] == nfe]
        for y, r in enumerate(sub):
            lam = np.asarray(process.log_snr(np.asarray(r["ts"])))
            ax.plot(lam, np.full_like(lam, y), "o-", ms=4)
        ax.set_yticks(range(len(sub)), [f"{r['schedule']} ({r['rmse']:.2e})" for r in sub], fontsize=8)
        ax.set_title(f"deis_tab order 3, NFE {nfe}: chosen times in log-SNR (held-out RMSE)")
        ax.set_xlabel("log-SNR")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path
