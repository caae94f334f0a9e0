"""Benchmark the step schedules: standard grids against OSS, Bellman/BOSS, GITS and gradient refinement.

Command (from the repository root):

    python scripts/benchmark_schedules.py --json outputs/bench/benchmark_schedules.json

On an 8-dimensional, 6-component Gaussian-mixture oracle (vp_linear; --seed picks the mixture and the batches), for
each solver (ddim, deis_tab order 3, deis_tab order 4 = the paper's tAB3, dpmpp_2m) and NFE (5, 10): the RMSE
against the exact flow map, on a held-out batch, of every standard grid (uniform, quadratic, logsnr, edm), of the
distilled schedules (OSS, Bellman, GITS: a DDIM student on a 200-step teacher, distilled on a separate batch of 256),
and of schedules.refine (gradient descent towards the 200-step teacher's endpoint on the distillation batch) applied
to the OSS schedule and to the best standard grid, for the actual solver. Also the cost of distilling a 10-step
schedule from the 200-step teacher with batch 256: model calls and wall time. Writes the JSON,
benchmark_schedules.md (printed too) and benchmark_schedules.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture

SOLVERS = {"ddim": ("ddim", {}), "deis_tab3": ("deis_tab", {"order": 3}), "deis_tab4": ("deis_tab", {"order": 4}),
           "dpmpp_2m": ("dpmpp_2m", {})}
GRIDS = ("uniform", "quadratic", "logsnr", "edm")
METHODS = ("oss", "bellman", "gits")


def rmse(x, exact):
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - exact) ** 2)))


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run(args):
    process = schedules.get_process("vp_linear")
    root = jax.random.PRNGKey(args.seed)
    oracle = GaussianMixture.random(jax.random.fold_in(root, 0), dim=8, num_components=6)
    model = oracle.model_fn(process)
    x_train = oracle.marginal_sample(jax.random.fold_in(root, 1), args.distill_batch, process.t_max, process)
    x_eval = oracle.marginal_sample(jax.random.fold_in(root, 2), args.eval_batch, process.t_max, process)
    exact_eval = samplers.exact_flow_map(oracle, process, x_eval, process.t_max, process.t_min)

    def evaluate(solver, ts):
        x, _ = samplers.sample(model, solver, process, x_eval, ts)
        return rmse(x, exact_eval)

    distilled, costs = {}, []
    for nfe in args.nfes:
        for method in METHODS:
            (ts, info), seconds = timed(lambda: schedules.distill(
                method, model, "ddim", process, x_train, nfe, teacher_steps=args.teacher_steps, return_info=True))
            distilled[(method, nfe)] = np.asarray(ts)
            costs.append({"method": method, "nfe": nfe, "teacher_steps": args.teacher_steps,
                          "batch": args.distill_batch, "model_calls": info["model_calls"], "seconds": seconds,
                          "indices": info["indices"].tolist()})
            print(f"distilled {method} nfe={nfe}: {seconds:.1f} s, {info['model_calls']} model calls", file=sys.stderr)

    rows = []
    for label, (name, options) in SOLVERS.items():
        solver = samplers.get_solver(name, **options)
        for nfe in args.nfes:
            num_steps = solver.steps_for_nfe(nfe)
            cells = {}
            for grid in GRIDS:
                cells[grid] = schedules.get_timesteps(grid, process, num_steps)
            for method in METHODS:
                cells[method] = distilled[(method, nfe)]
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
    return {"rows": rows, "distillation_cost": costs, "versions": versions(), "args": vars(args)}


def markdown(results):
    rows, nfes = results["rows"], sorted({r["nfe"] for r in results["rows"]})
    schedules_order = list(dict.fromkeys(r["schedule"] for r in rows))
    by = {(r["solver"], r["nfe"], r["schedule"]): r for r in rows}

    def cell(r):
        return "-" if r is None else f"{r['rmse']:.3e} ({r['ratio_to_best_grid']:.2f})"

    table = render_table(["solver", "schedule", *(f"NFE {n}: RMSE (x best grid)" for n in nfes)],
                         [[solver, sched, *(cell(by.get((solver, n, sched))) for n in nfes)]
                          for solver in SOLVERS for sched in schedules_order])
    cost_table = render_table(["method", "NFE", "teacher steps", "batch", "model calls", "wall time (s)"],
                              [[c["method"], c["nfe"], c["teacher_steps"], c["batch"], c["model_calls"],
                                f"{c['seconds']:.1f}"] for c in results["distillation_cost"]])
    ts_lines = [f"- {r['solver']} NFE {r['nfe']} {r['schedule']}: " + ", ".join(f"{t:.4g}" for t in r["ts"])
                for r in rows if r["schedule"] not in GRIDS]
    return "\n\n".join([
        "# Schedule benchmark (RMSE vs the exact flow map on a held-out batch; ratio to the best standard grid)",
        table, "## Distillation cost", cost_table, "## Distilled and refined schedules (t)",
        "\n".join(ts_lines)]) + "\n"


def plot(results, path):
    from matplotlib.figure import Figure

    process = schedules.get_process("vp_linear")
    rows = [r for r in results["rows"] if r["solver"] == "deis_tab3"]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nfes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--distill-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=1024)
    args = parser.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    results = run(args)
    results["runtime_s"] = time.perf_counter() - start
    text = markdown(results)
    core.write_json(args.json, results, indent=1)
    core.write_atomic(os.path.join(out_dir, "benchmark_schedules.md"), text)
    plot(results, os.path.join(out_dir, "benchmark_schedules.png"))
    print(text)


if __name__ == "__main__":
    main()
