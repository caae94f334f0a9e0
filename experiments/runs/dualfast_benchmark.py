"""DualFast (`samplers.dualfast`) on DDIM, DPM-Solver++(2M) and UniPC-3: the oracle and the digits models
(`scripts/benchmark_dualfast.py`, issue 27 item 4).

Every cell is one solver on one grid at one NFE with DualFast's coefficient c (0: the base solver; the sweep
`COEFFICIENTS`), its reference tau ("previous" or "first") and its ramp over the steps (`RAMPS`: c_i = c times the
ramp's value at step i, linear in the step index from the first entry to the second).

- Oracle: the 8-dimensional, 6-component GaussianMixture.random(PRNGKey(0)) of `experiments.runs.learned_benchmark`,
  vp_linear; held-out noise at t = 1 (key 2); the RMSE of x(t_min) against `samplers.exact_flow_map`. The model is
  exact, so there is no approximation error for DualFast to remove: any change is its effect on the discretisation
  error alone.
- Digits: FD-digits (`experiments.metrics.fd_digits`, to the real digits) of samples of a trained checkpoint
  (`experiments.train.checkpoint_target`: the VP eps model and the flow-matching velocity model), the same starting
  noise for every cell.

Output: the markdown tables (printed, and beside the JSON) and the JSON of every cell, with the (ref, ramp, c) of
the lowest mean log ratio to the base solver over the digits cells.
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

SOLVERS = {"DDIM": ("ddim", {}), "DPM-Solver++(2M)": ("dpmpp_2m", {}), "UniPC-3": ("unipc", {})}
COEFFICIENTS = (0.25, 0.5, 1.0)
REFS = ("previous", "first")
RAMPS = ((0.0, 1.0), (1.0, 1.0))  # growing from 0 at the first step; constant
DIGITS = core.Registry("digits model", {  # label: (train config, default run directory, grids)
    "digits_vp": ("experiments/configs/digits_vp.py", "outputs/digits_vp", ("logsnr",)),
    "digits_fm": ("experiments/configs/digits_fm.py", "outputs/digits_fm", ("logsnr", "uniform")),
})


def variants():
    """(c, ref, ramp) of every cell: the base solver first, then the sweep."""
    return [(0.0, "previous", RAMPS[0])] + [(c, ref, ramp) for ref in REFS for ramp in RAMPS for c in COEFFICIENTS]


def sweep(name: str, model, process, x_init, ts, score, *, prediction: str = "eps", args=None,
          options: dict | None = None) -> list[dict]:
    """Every variant of solver `name` on the grid ts: [{c, ref, ramp, value, seconds}], value = score(x). The base
    solver is DualFast's concrete 0; the others run one compiled program per (ref, ramp), c traced."""
    rows = []
    for c, ref, ramp in variants():
        dualfast = 0.0 if c == 0 else jnp.asarray(c)
        solver = samplers.get_solver(name, dualfast=dualfast, dualfast_ref=ref, dualfast_ramp=ramp,
                                     **(options or {}))
        start = time.perf_counter()
        x, _ = samplers.sample(model, solver, process, x_init, ts, prediction=prediction, args=args)
        rows.append(dict(c=c, ref=ref, ramp=list(ramp), value=score(x), seconds=time.perf_counter() - start))
    return rows


def oracle_rows(nfes, evaluation: int) -> list[dict]:
    """The oracle's cells (module docstring): RMSE against the exact flow map."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
    x_eval = gm.marginal_sample(jax.random.PRNGKey(2), evaluation, p.t_max, p)
    exact = samplers.exact_flow_map(gm, p, x_eval, p.t_max, p.t_min)
    rmse = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))  # noqa: E731
    rows = []
    for label, (name, options) in SOLVERS.items():
        for nfe in nfes:
            ts = schedules.get_timesteps("logsnr", p, nfe)
            for r in sweep(name, gm.model_fn(p), p, x_eval, ts, rmse, options=options):
                rows.append(dict(r, model="oracle", metric="rmse", solver=label, grid="logsnr", nfe=nfe))
            print(f"oracle {label:18s} NFE {nfe:2d} done", flush=True)
    return rows


def digits_rows(label: str, train_config: str, checkpoint_dir: str, grids, nfes, num_samples: int,
                seed: int = 0) -> list[dict]:
    """One digits model's cells (module docstring): FD-digits of num_samples samples."""
    from fastsamplers.experiments.metrics import fd_digits
    from fastsamplers.experiments.train import checkpoint_target

    target = checkpoint_target(train_config, checkpoint_dir)
    process = target.process
    x_init = process.prior(jax.random.PRNGKey(seed), (num_samples, *target.shape), dtype=jnp.float32)
    score = lambda x: float(fd_digits.fd_digits(np.asarray(x, np.float64)))  # noqa: E731
    rows = []
    for solver_label, (name, options) in SOLVERS.items():
        for grid in grids:
            for nfe in nfes:
                ts = schedules.get_timesteps(grid, process, nfe)
                for r in sweep(name, target.model_fn, process, x_init, ts, score, prediction=target.prediction,
                               args=target.args, options=options):
                    rows.append(dict(r, model=label, metric="fd_digits", solver=solver_label, grid=grid, nfe=nfe,
                                     checkpoint=target.description))
                print(f"{label} {solver_label:18s} {grid:8s} NFE {nfe:2d}: base "
                      f"{rows[-len(variants())]['value']:.3f}", flush=True)
    return rows


def benchmark(json_path: str, *, nfes=(5, 10), evaluation: int = 1024, num_samples: int = 2000,
              digits: tuple[str, ...] | dict[str, str] = ("digits_vp", "digits_fm"), command: str = "") -> dict:
    """The oracle's and the digits models' cells; the tables printed and written beside the JSON.

    Args:
      json_path: the JSON file (meta, rows, best); the markdown goes to the same path with .md.
      nfes: the NFE budgets (= steps: every solver here makes one call a step).
      evaluation: the oracle's held-out batch; num_samples: the digits samples per cell.
      digits: the keys of `DIGITS` to run, or {key: run directory} (none: the oracle alone).
      command: the command line, recorded.

    Returns:
      The record written: {"meta", "rows", "best"}.
    """
    digits = {key: DIGITS.lookup(key)[1] for key in digits} if not isinstance(digits, dict) else dict(digits)
    nfes = sorted({int(n) for n in nfes})
    rows = oracle_rows(nfes, evaluation)
    for key in digits:
        config, _, grids = DIGITS.lookup(key)
        workdir = digits[key]
        rows += digits_rows(key, config, workdir, grids, nfes, num_samples)
    best = choose(rows)
    table = markdown(rows, best)
    print(table)
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.platform(), jax=jax.__version__, cpu_count=os.cpu_count(),
                settings=dict(nfes=nfes, evaluation=evaluation, num_samples=num_samples, digits=list(digits),
                              coefficients=list(COEFFICIENTS), refs=list(REFS), ramps=[list(r) for r in RAMPS]))
    record = dict(meta=meta, rows=rows, best=best)
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.splitext(json_path)[0] + ".md", table + "\n")
    return record


def _cells(rows):
    """{(model, solver, grid, nfe): {(c, ref, ramp): value}}."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["model"], r["solver"], r["grid"], r["nfe"]), {})[r["c"], r["ref"], tuple(r["ramp"])] = \
            r["value"]
    return cells


def choose(rows: list) -> dict | None:
    """The (ref, ramp, c) with the lowest mean log ratio to the base solver over the digits cells (None without
    digits), and that mean for each."""
    cells = {k: v for k, v in _cells(rows).items() if k[0] != "oracle"}
    if not cells:
        return None
    base = (0.0, "previous", RAMPS[0])
    means = {v: float(np.mean([np.log(cell[v] / cell[base]) for cell in cells.values()])) for v in variants()[1:]}
    c, ref, ramp = min(means, key=means.get)
    return dict(c=c, ref=ref, ramp=list(ramp), mean_log_ratio=means[c, ref, ramp],
                all={f"{r} {list(m)} c={v}": s for (v, r, m), s in means.items()})


def markdown(rows: list, best: dict | None) -> str:
    """Per model: one line per (solver, grid, NFE), the base value and the ratio to it of every variant."""
    sweep_variants = variants()[1:]
    head = ["model", "solver", "grid", "NFE", "base"] + [f"{ref[:4]} {ramp[0]:g}->{ramp[1]:g} c={c:g}"
                                                         for c, ref, ramp in sweep_variants]
    lines = []
    for (model, solver, grid, nfe), cell in _cells(rows).items():
        b = cell[0.0, "previous", RAMPS[0]]
        lines.append([model, solver, grid, nfe, f"{b:.4f}"] + [f"{cell[v] / b:.3f}" for v in sweep_variants])
    text = ("RMSE against the exact map (oracle) and FD-digits (digits): the base solver, and each DualFast variant's "
            "ratio to it (< 1: better)\n\n" + render_table(head, lines))
    if best is not None:
        text += (f"\n\nBest over the digits cells (mean log ratio {best['mean_log_ratio']:.3f}): ref "
                 f"{best['ref']!r}, ramp {best['ramp']}, c = {best['c']:g}")
    return text
