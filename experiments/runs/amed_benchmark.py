"""AMED against the best fixed (solver, grid) pair on the Gaussian-mixture oracle (`scripts/benchmark_amed.py`, issue
27 item 2).

The problem, the batches, the error and the fixed pairs are `learned_benchmark`'s (8-d, 6-component oracle,
vp_linear from t_max to t_min, calibration key 1, held-out key 2, RMSE against `samplers.exact_flow_map`; FIXED x
GRIDS, `learned_benchmark.fixed_rows`). Each AMED row is fitted by `schedules.learn("amed", ...)` for each NFE:
an even NFE is NFE / 2
steps, an odd one (NFE + 1) / 2 steps with AFS. Output: the markdown table (printed, and beside the JSON), with the
learn time and the model calls per calibration sample (teacher and training), and the JSON of every cell.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.runs.learned_benchmark import best_fixed, fixed_rows, problem

ROWS = {  # label: options of schedules.learn("amed", ...)
    "AMED-Solver": {"base": "euler"},
    "AMED-Plugin iPNDM": {"base": "ipndm"},
    "AMED-Plugin DPM-Solver++(3M)": {"base": "dpmpp"},
    # the student unrolled with gradients through its trajectory, trained on its last state (not published)
    # with the published plugin's ranges (README: --scale_dir=0.01 --scale_time=0.2)
    "AMED-Plugin iPNDM, unrolled": {"base": "ipndm", "students": "unrolled", "loss": "final", "scale_dir": 0.01,
                                    "scale_time": 0.2},
    "AMED-Plugin DPM-Solver++(3M), unrolled": {"base": "dpmpp", "students": "unrolled", "loss": "final",
                                               "scale_dir": 0.01, "scale_time": 0.2},
}


def steps_and_afs(nfe: int) -> tuple[int, bool]:
    """AMED's steps and AFS for a budget: 2N calls, 2N - 1 with AFS."""
    return (nfe + 1) // 2, nfe % 2 == 1


def benchmark(json_path: str, *, nfes=(4, 5, 6, 8, 10), calibration: int = 512, evaluation: int = 2048,
              teacher_steps: int = 200, iterations: int = 400, grid: str = "quadratic", rows: dict | None = None,
              command: str = "") -> dict:
    """Every fixed pair and AMED row at every NFE; the table printed and written beside the JSON.

    Args:
      json_path: the JSON file; the markdown goes to the same path with .md.
      nfes, calibration, evaluation: the budgets and batch sizes.
      teacher_steps: about this many teacher steps (tAB-DEIS order 3, learn's default) over the student's grid.
      iterations: Adam iterations per fit.
      grid: the student's grid.
      rows: {label: learn options} (default ROWS).
      command: the command line, recorded.

    Returns:
      The record written: {"meta", "rows"}.
    """
    rows_spec = dict(ROWS if rows is None else rows)
    p, model, x_cal, x_eval, rmse = problem(calibration, evaluation)
    out = fixed_rows(p, model, x_eval, rmse, nfes)
    for label, options in rows_spec.items():
        for nfe in nfes:
            n, afs = steps_and_afs(nfe)
            start = time.perf_counter()
            solver, ts, info = schedules.learn("amed", model, p, x_cal, n, return_info=True, afs=afs, grid=grid,
                                               teacher_kind="given", insert=max(teacher_steps // n - 1, 1),
                                               iterations=iterations, **options)
            seconds = time.perf_counter() - start
            x, res = samplers.sample(model, solver, p, x_eval, ts)
            untrained, _ = samplers.sample(model, solver.__class__(**{**solver.spec()["options"], "params": None}),
                                           p, x_eval, ts)
            if res["nfe"] != nfe:
                raise RuntimeError(f"{label}: {res['nfe']} model calls, not NFE {nfe}")
            calls = info["model_calls"]
            out.append(dict(kind="learned", label=label, nfe=nfe, rmse=rmse(x), rmse_untrained=rmse(untrained),
                            seconds=seconds, model_calls=int(round(calls["teacher"] + calls["training"])),
                            teacher_calls=calls["teacher"], r=info["r"], c=info["c"], a=info["a"],
                            loss=[info["loss_initial"], info["loss"]], ts=np.asarray(ts).tolist()))
            print(f"{label:30s} NFE {nfe:2d}  rmse {out[-1]['rmse']:.4f} (r = 1/2: {out[-1]['rmse_untrained']:.4f})"
                  f"  {seconds:6.1f} s", flush=True)
    table = markdown(out, nfes)
    print(table)
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.platform(), jax=jax.__version__, cpu_count=os.cpu_count(),
                settings=dict(nfes=list(nfes), calibration=calibration, evaluation=evaluation,
                              teacher_steps=teacher_steps, iterations=iterations, grid=grid))
    record = dict(meta=meta, rows=out)
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return record


def markdown(rows: list, nfes) -> str:
    """The best fixed pair per NFE, then each AMED row (RMSE, ratio to the best, the untrained step, time, calls)."""
    best, line = best_fixed(rows, nfes)
    lines = [line]
    learned = [r for r in rows if r["kind"] == "learned"]
    for label in dict.fromkeys(r["label"] for r in learned):
        cells = {r["nfe"]: r for r in learned if r["label"] == label}
        lines.append([label] + [f"{cells[n]['rmse']:.4f} ({cells[n]['rmse'] / best[n]['rmse']:.2f}x; r=1/2: "
                                f"{cells[n]['rmse_untrained']:.4f}; {cells[n]['seconds']:.0f} s, "
                                f"{cells[n]['model_calls']} calls)" for n in nfes])
    return render_table(["RMSE vs exact (ratio to best fixed; untrained; learn time, calls per calibration sample)"]
                        + [f"NFE {n}" for n in nfes], lines)


DIGITS_FIXED = {"DEIS tAB2, uniform": ("deis_tab", {"order": 3}, "uniform"),
                "DPM-Solver++(2M), logsnr": ("dpmpp_2m", {}, "logsnr")}


def digits_rows(train_config: str, checkpoint_dir: str, *, nfe: int = 5, num_samples: int = 2000,
                calibration: int = 512, teacher_steps: int = 200, iterations: int = 400, grid: str = "quadratic",
                rows: dict | None = None, seed: int = 0) -> list[dict]:
    """FD-digits of AMED rows against the fixed cells of `DIGITS_FIXED` on a trained digits model at one NFE, all
    from the same `num_samples` starting noises (the calibration batch is other noise).

    Args:
      train_config, checkpoint_dir: the run (`experiments.train.checkpoint_target`).
      nfe, num_samples, calibration, teacher_steps, iterations, grid: as `benchmark`.
      rows: {label: learn options} (default ROWS).
      seed: the noises' seed.

    Returns:
      [{"kind", "label", "nfe", "fd_digits", "seconds", ...}] (AMED rows with the learn info's loss and (r, c, a)).
    """
    from fastsamplers.experiments.metrics import fd_digits
    from fastsamplers.experiments.train import checkpoint_target

    target = checkpoint_target(train_config, checkpoint_dir)
    process = target.process
    x_init = process.prior(jax.random.PRNGKey(seed), (num_samples, *target.shape), dtype=np.float32)
    x_cal = process.prior(jax.random.PRNGKey(seed + 1), (calibration, *target.shape), dtype=np.float32)
    common = dict(prediction=target.prediction, args=target.args)
    out = []
    for label, (name, options, grid_name) in DIGITS_FIXED.items():
        solver = samplers.get_solver(name, **options)
        start = time.perf_counter()
        ts = schedules.get_timesteps(grid_name, process, solver.steps_for_nfe(nfe))
        x, _ = samplers.sample(target.model_fn, solver, process, x_init, ts, **common)
        out.append(dict(kind="fixed", label=label, grid=grid_name, nfe=nfe, fd_digits=fd_digits.fd_digits(
            np.asarray(x, np.float64)), seconds=time.perf_counter() - start))
        print(f"  {out[-1]}", flush=True)
    n, afs = steps_and_afs(nfe)
    for label, options in dict(ROWS if rows is None else rows).items():
        start = time.perf_counter()
        solver, ts, info = schedules.learn("amed", target.model_fn, process, x_cal, n, return_info=True, afs=afs,
                                           grid=grid, teacher_kind="given", insert=max(teacher_steps // n - 1, 1),
                                           iterations=iterations, **common, **options)
        x, res = samplers.sample(target.model_fn, solver, process, x_init, ts, **common)
        if res["nfe"] != nfe:
            raise RuntimeError(f"{label}: {res['nfe']} model calls, not NFE {nfe}")
        out.append(dict(kind="learned", label=label, nfe=nfe, fd_digits=fd_digits.fd_digits(np.asarray(x, np.float64)),
                        seconds=time.perf_counter() - start, loss=[info["loss_initial"], info["loss"]], r=info["r"],
                        c=info["c"], a=info["a"]))
        print(f"  {out[-1]}", flush=True)
    print(render_table([f"digits FD at NFE {nfe} ({num_samples} samples)", "FD-digits", "seconds"],
                       [[r["label"], f"{r['fd_digits']:.3f}", f"{r['seconds']:.0f}"] for r in out]))
    return out
