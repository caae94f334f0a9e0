"""Learned samplers against the best fixed (solver, grid) pair on the Gaussian-mixture oracle (issue 17).

Command (the full run, from the repository root; about 15 minutes on a 2-core CPU):

    python scripts/benchmark_learned.py --json experiments/results/learned_oracle.json

Smoke run (NFE 4 and 5, small batches and budgets): add `--quick`.

Problem: the 8-dimensional, 6-component oracle of benchmark_solvers (GaussianMixture.random(PRNGKey(0))), vp_linear
from t = 1 to 0.001. The calibration batch (exact draws of the marginal at t = 1, key 1) and the evaluation batch
(key 2) are disjoint; the error is the RMSE of x(t_min) against `samplers.exact_flow_map` on the evaluation batch.
Every learned sampler is fitted to the same teacher (200 tAB-DEIS steps of order 3 on the logSNR grid) from the
calibration batch. Fixed pairs: every solver of FIXED on every grid of GRIDS at each NFE; the table shows the best.
For each method: the RMSE per NFE, the wall time to learn it, and the model calls per calibration sample (teacher
included). Output: the markdown table (printed, and beside the JSON) and the JSON of every cell.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fastsamplers import core  # noqa: E402
from fastsamplers import samplers  # noqa: E402
from fastsamplers import schedules  # noqa: E402
from fastsamplers.experiments.report.tables import render_table  # noqa: E402
from fastsamplers.models import GaussianMixture  # noqa: E402

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/learned_oracle.json")
    parser.add_argument("--nfes", default="4,5,6,8,10")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration samples")
    parser.add_argument("--evaluation", type=int, default=4096, help="held-out samples")
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--budget", type=int, default=600, help="candidates the search may score")
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    nfes = [int(n) for n in args.nfes.split(",")]
    if args.quick:
        nfes, args.calibration, args.evaluation, args.teacher_steps, args.budget = [4, 5], 128, 256, 60, 60
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
    model = gm.model_fn(p)
    x_cal = gm.marginal_sample(jax.random.PRNGKey(1), args.calibration, p.t_max, p)
    x_eval = gm.marginal_sample(jax.random.PRNGKey(2), args.evaluation, p.t_max, p)
    ts_any = schedules.get_timesteps("logsnr", p, 4)
    exact = samplers.exact_flow_map(gm, p, x_eval, ts_any[0], ts_any[-1])
    rmse = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))
    rows = []
    for label, (name, options) in FIXED.items():
        solver = samplers.get_solver(name, **options)
        for grid in GRIDS:
            for nfe in nfes:
                ts = schedules.get_timesteps(grid, p, solver.steps_for_nfe(nfe))
                x, _ = samplers.sample(model, solver, p, x_eval, ts, check_finite=False)
                rows.append(dict(kind="fixed", label=label, grid=grid, nfe=nfe, rmse=rmse(x)))
    teacher = dict(teacher_steps=args.teacher_steps)
    for label, (method, options) in LEARNED.items():
        options = dict(options, budget=args.budget) if method == "search" else options
        for nfe in nfes:
            start = time.perf_counter()
            solver, ts, info = schedules.learn(method, model, p, x_cal, nfe, return_info=True, **teacher, **options)
            seconds = time.perf_counter() - start
            x, out = samplers.sample(model, solver, p, x_eval, ts)
            assert out["nfe"] == nfe
            rows.append(dict(kind="learned", label=label, method=method, nfe=nfe, rmse=rmse(x), seconds=seconds,
                             model_calls=int(info["model_calls"]), ts=np.asarray(ts).tolist(),
                             strategies=info.get("strategies")))
            print(f"{label:34s} NFE {nfe:2d}  rmse {rows[-1]['rmse']:.4f}  {seconds:6.1f} s  "
                  f"{info['model_calls']} calls", flush=True)
    table = markdown(rows, nfes)
    print(table)
    meta = dict(command="python scripts/benchmark_learned.py " + " ".join(argv or []), date=datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), machine=platform.platform(), jax=jax.__version__,
                cpu_count=os.cpu_count(), args=vars(args))
    core.write_json(args.json, dict(meta=meta, rows=rows), indent=1)
    core.write_atomic(os.path.splitext(args.json)[0] + ".md", table + "\n")


def markdown(rows, nfes):
    fixed = [r for r in rows if r["kind"] == "fixed"]
    best = {n: min((r for r in fixed if r["nfe"] == n), key=lambda r: r["rmse"]) for n in nfes}
    lines = [["best fixed pair"] + [f"{best[n]['rmse']:.4f} ({best[n]['label']}, {best[n]['grid']})" for n in nfes]]
    learned = [r for r in rows if r["kind"] == "learned"]
    for label in dict.fromkeys(r["label"] for r in learned):
        cells = {r["nfe"]: r for r in learned if r["label"] == label}
        lines.append([label] + [f"{cells[n]['rmse']:.4f} ({cells[n]['rmse'] / best[n]['rmse']:.2f}x; "
                                f"{cells[n]['seconds']:.0f} s, {cells[n]['model_calls']} calls)" for n in nfes])
    return render_table(["RMSE vs exact (ratio to best fixed; learn time, calls per calibration sample)"]
                        + [f"NFE {n}" for n in nfes], lines)


if __name__ == "__main__":
    main()
