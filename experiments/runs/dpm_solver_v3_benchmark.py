"""DPM-Solver-v3 with estimated statistics against DPM-Solver++(2M), (3M) and UniPC-3 on the same grids (the uniform
log-SNR grid by default; `grids` adds others, every one snapped to the statistics grid)
(`scripts/benchmark_dpm_solver_v3.py`, issue 27 item 1).

Oracle (default): the problem of `learned_benchmark` (GaussianMixture.random(PRNGKey(0)), 8-d, 6 components,
vp_linear from t = 1 to 0.001; calibration noise key 1, held-out noise key 2), RMSE of x(t_min) against
`samplers.exact_flow_map`. The statistics are estimated once by `schedules.learn("dpm_solver_v3", ...)` on the
teacher's samples of the calibration noise (200 tAB-DEIS-3 steps; on the oracle these are samples of an exact model)
on a 121-point grid, which holds every NFE's uniform log-SNR grid (120 is a multiple of 4, 5, 6, 8, 10), so every row
runs on the same times. Calibration cost: model evaluations and JVPs per calibration sample, teacher calls, seconds.

Digits (`digits=...`): a trained VP eps run (experiments/configs/digits_vp.py) from its checkpoint; statistics from
the model's own samples of `calibration` noises; FD-digits of `num_samples` samples at NFE 5 and 10 per row.
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

BASELINES = {"DPM-Solver++(2M)": ("dpmpp_2m", {}), "DPM-Solver++(3M)": ("dpmpp_3m", {}), "UniPC-3": ("unipc", {})}
VARIANTS = {  # label: the DPM-Solver-v3 options (the statistics come from the calibration)
    "DPM-Solver-v3 (3)": {},
    "DPM-Solver-v3 (3) + corrector": {"corrector": True},
    "DPM-Solver-v3 (3, pseudo) + pseudo corrector": {"predictor_pseudo": True, "corrector": True,
                                                     "corrector_pseudo": True},
}


def grid_times(process, learned, grid: str, nfe: int) -> np.ndarray:
    """`nfe` + 1 times of `grid` (a `schedules.GRIDS` name) between the times of the statistics grid's ends, snapped to
    its points; "logsnr" lands on them exactly when `nfe` divides its cells."""
    ends = np.asarray(process.t_of_log_snr(jnp.asarray(learned.lambdas[[0, -1]])), np.float64)
    ts = schedules.get_timesteps(grid, process, nfe, t_min=float(ends[1]), t_max=float(ends[0]))
    return learned.grid_times(process, np.asarray(ts, np.float64))


def _rows(model, process, x_eval, score, learned, nfes, prediction="eps", args=None, grids=("logsnr",)):
    """Every baseline and variant at every NFE on every grid, the times snapped to the statistics grid."""
    rows = []
    for nfe in nfes:
        for grid in grids:
            ts = grid_times(process, learned, grid, nfe)
            runs = {label: samplers.get_solver(name, **options) for label, (name, options) in BASELINES.items()}
            runs.update({label: samplers.get_solver("dpm_solver_v3", **{**learned.spec()["options"], **options})
                         for label, options in VARIANTS.items()})
            for label, solver in runs.items():
                start = time.perf_counter()
                x, info = samplers.sample(model, solver, process, x_eval, ts, prediction=prediction, args=args)
                rows.append(dict(label=label, grid=grid, nfe=nfe, score=score(x), seconds=time.perf_counter() - start,
                                 model_calls=int(info["nfe"])))
                print(f"{label:46s} {grid:9s} NFE {nfe:2d}  {rows[-1]['score']:.4f}", flush=True)
    return rows


def benchmark(json_path: str, *, nfes=(4, 5, 6, 8, 10), calibration: int = 1024, evaluation: int = 4096,
              num_points: int = 121, teacher_steps: int = 200, digits: str | None = None, num_samples: int = 2000,
              grids=("logsnr",), command: str = "") -> dict:
    """The table (printed and written beside the JSON as .md) and the JSON of every cell.

    Args:
      json_path: the JSON file; the markdown goes to the same path with .md.
      nfes: the NFE budgets (each a divisor of num_points - 1 keeps the grids exact).
      calibration, evaluation: calibration samples and held-out samples (oracle).
      num_points: the statistics grid.
      teacher_steps: the teacher solve that makes the calibration samples.
      digits: None (the oracle) or "CONFIG.py[:arg]=CHECKPOINT_DIR", a trained run (FD-digits of num_samples).
      grids: the time grids (`grid_times`), each snapped to the statistics grid; every row runs on each.
      command: the command line, recorded.

    Returns:
      {"meta", "calibration", "rows"}.
    """
    nfes, grids = [int(n) for n in nfes], tuple(grids)
    for grid in grids:  # every name before any compute
        schedules.GRIDS.check(grid)
    if digits is None:
        p = schedules.get_process("vp_linear")
        gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
        model, prediction, args = gm.model_fn(p), "eps", None
        x_cal = gm.marginal_sample(jax.random.PRNGKey(1), calibration, p.t_max, p)
        x_eval = gm.marginal_sample(jax.random.PRNGKey(2), evaluation, p.t_max, p)
        exact = samplers.exact_flow_map(gm, p, x_eval, p.t_max, p.t_min)
        score = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))  # noqa: E731
        metric = "RMSE vs exact"
    else:
        from fastsamplers.experiments.metrics import fd_digits
        from fastsamplers.experiments.train import checkpoint_target

        config, _, checkpoint_dir = digits.rpartition("=")  # the config's arg may hold "="
        target = checkpoint_target(config, checkpoint_dir)
        p, model, prediction, args = target.process, target.model_fn, target.prediction, target.args
        x_cal = p.prior(jax.random.PRNGKey(1), (calibration, *target.shape), dtype=jnp.float32)
        x_eval = p.prior(jax.random.PRNGKey(2), (num_samples, *target.shape), dtype=jnp.float32)
        score = lambda x: float(fd_digits.fd_digits(np.asarray(x, np.float64)))  # noqa: E731
        metric = "FD-digits"
    learned, _, cost = schedules.learn("dpm_solver_v3", model, p, x_cal, max(nfes), prediction=prediction,
                                       args=args, teacher_steps=teacher_steps, num_points=num_points,
                                       chunk_size=min(256, calibration), return_info=True)
    print(f"calibration: {cost}", flush=True)
    rows = _rows(model, p, x_eval, score, learned, nfes, prediction, args, grids)
    table = markdown(rows, nfes, metric, cost)
    print(table)
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.platform(), jax=jax.__version__, cpu_count=os.cpu_count(),
                settings=dict(nfes=nfes, calibration=calibration, evaluation=evaluation, num_points=num_points,
                              teacher_steps=teacher_steps, digits=digits, num_samples=num_samples, grids=grids))
    record = dict(meta=meta, calibration=cost, rows=rows)
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return record


def markdown(rows: list, nfes, metric: str, cost: dict) -> str:
    """One line per sampler and grid: the score per NFE and, for DPM-Solver-v3, its ratio to the best baseline on any
    grid."""
    best = {n: min(r["score"] for r in rows if r["nfe"] == n and r["label"] in BASELINES) for n in nfes}
    lines = []
    for label, grid in dict.fromkeys((r["label"], r.get("grid", "logsnr")) for r in rows):
        cells = {r["nfe"]: r["score"] for r in rows if (r["label"], r.get("grid", "logsnr")) == (label, grid)}
        ratio = (lambda n: "") if label in BASELINES else (lambda n: f" ({cells[n] / best[n]:.2f}x)")
        lines.append([label, grid] + [f"{cells[n]:.4f}{ratio(n)}" for n in nfes])
    note = (f"calibration: {cost['calibration_samples']} samples x {cost['num_points']} grid points, "
            f"{cost['model_evaluations_per_sample']:.0f} evaluations + {cost['jvps_per_sample']:.0f} JVPs and "
            f"{cost['teacher_calls_per_sample']} teacher calls per sample, {cost['seconds']:.0f} s")
    return render_table([f"{metric} (ratio to the best baseline)", "grid"] + [f"NFE {n}" for n in nfes],
                        lines) + "\n\n" + note
