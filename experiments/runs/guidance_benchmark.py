"""Classifier-free guidance on the exact conditional oracle (`scripts/benchmark_guidance.py`): RMSE against the exact
guided map, and the cost of a sweep over the guidance scale.

The 8-dimensional, 6-component Gaussian mixture with the component index as the label (null label = 6), vp_linear,
`batch` samples from the prior at t_max with random labels.

"rmse": for every deterministic fixed-step solver in the registry (default options; or the given names) at NFE `nfe`
(the most steps that fit) on the logSNR grid, and each guidance scale of SCALES: the RMSE of
`samplers.sample(samplers.guided(model_fn, scale, null_labels), ...)` against `samplers.exact_flow_map` of the guided
oracle (float64).

"sweep": 16 guidance scales from 0 to 7.5 with dpmpp_2m at NFE `nfe`, run two ways. "loop": one `samplers.sample`
per scale, each with its own `samplers.guided` wrapper (the scale is a traced leaf, so the points share one program;
where it was a compile-time constant, before issue 23, every point compiled). "vmap": one `jax.jit(jax.vmap(...))`
over the 16 scales (one compilation; refused where the scale must be a number). For each: the compilations (the model
function's Python traces), the first pass's wall time (compilation included) and the time of a second pass over the
same wrappers (compiled: no trace).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture

SCALES = (1.0, 2.0, 4.0)
SWEEP_SCALES = tuple(np.linspace(0.0, 7.5, 16).tolist())
PARTS = core.Registry.of_names("part", ("rmse", "sweep"), ordered=True)


def benchmark(json_path: str, *, nfe: int = 10, batch: int = 1024, seed: int = 0, scales: tuple = SCALES,
              solvers: list[str] | None = None, parts: tuple[str, ...] = ("rmse", "sweep")) -> dict:
    """The tables of the module docstring, printed and written with their rows to json_path.

    Args:
      json_path: the JSON file.
      nfe: the budget of model evaluations per sample.
      batch: samples (one random label each).
      seed: the oracle's, the noise's and the labels' seed.
      scales: the guidance scales of "rmse".
      solvers: solver names of "rmse" (default options); None: every deterministic fixed-step solver of
        `samplers.SOLVERS`.
      parts: which of "rmse" and "sweep" to run.

    Returns:
      The record written: rows (rmse), sweep, versions, nfe, batch.
    """
    for part in parts:
        PARTS.check(part)
    if solvers is None:
        solvers = [name for name in samplers.SOLVERS if not samplers.get_solver(name).stochastic
                   and samplers.get_solver(name).static_nfe]
    built = {name: samplers.get_solver(name) for name in solvers}  # every name, before any compute
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=8, num_components=6)
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(seed + 1), (batch, 8))
    labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (batch,), 0, gm.null_label)
    null = jnp.full((batch,), gm.null_label)
    record = {"versions": versions(), "nfe": nfe, "batch": batch}
    if "rmse" in parts:
        record["rows"] = rmse_rows(gm, p, x_init, labels, null, nfe, scales, built)
    if "sweep" in parts:
        record["sweep"] = sweep_rows(gm, p, x_init, labels, null, nfe)
    core.write_json(json_path, record, indent=1)
    return record


def rmse_rows(gm, p, x_init, labels, null, nfe, scales, built):
    """The RMSE table (module docstring)."""
    exact = {s: samplers.exact_flow_map(gm.guided(labels, s), p, x_init, p.t_max, p.t_min) for s in scales}
    rows = []
    for name, solver in built.items():
        num_steps = solver.steps_for_nfe(nfe)
        ts = schedules.get_timesteps("logsnr", p, num_steps)
        for scale in scales:
            guided = samplers.guided(gm.conditional_model_fn(p), scale, null, batch_axes=0)
            x, info = samplers.sample(guided, solver, p, x_init, ts, args=labels, check_finite=False)
            rmse = float(np.sqrt(np.mean((np.asarray(x) - exact[scale]) ** 2)))
            rows.append({"solver": name, "scale": scale, "nfe": int(info["nfe"]), "num_steps": num_steps,
                         "rmse": rmse})
            print(f"  {name:12s} scale={scale} nfe={info['nfe']} rmse={rmse:.3e}", flush=True)
    by = {(r["solver"], r["scale"]): r for r in rows}
    print(f"\n## Guided sampling on the exact conditional oracle: RMSE vs the exact guided map, NFE <= {nfe}, "
          f"logSNR grid\n")
    print(render_table(["solver", "NFE"] + [f"scale {s:g}" for s in scales],
                       [[n, by[(n, scales[0])]["nfe"]] + [f"{by[(n, s)]['rmse']:.3e}" for s in scales]
                        for n in built]))
    return rows


def sweep_rows(gm, p, x_init, labels, null, nfe):
    """The 16-point sweep, as a loop of `sample` calls and as one vmapped program (module docstring)."""
    traces = []

    def model(x, t, args):
        traces.append(1)
        return gm.conditional_model_fn(p)(x, t, args)

    ts = schedules.get_timesteps("logsnr", p, samplers.get_solver("dpmpp_2m").steps_for_nfe(nfe))

    def one(guided):
        return samplers.sample(guided, "dpmpp_2m", p, x_init, ts, args=labels, check_finite=False)[0]

    wrappers = [samplers.guided(model, scale, null, batch_axes=0) for scale in SWEEP_SCALES]  # reused by pass 2
    vmapped = jax.jit(jax.vmap(lambda scale: one(samplers.guided(model, scale, null, batch_axes=0))))
    scales = jnp.asarray(SWEEP_SCALES)
    runs = {"loop": lambda: [one(g).block_until_ready() for g in wrappers],
            "vmap": lambda: vmapped(scales).block_until_ready()}
    rows = []
    for mode, run in runs.items():
        passes = []
        try:
            for _ in range(2):  # the first pass compiles, the second runs what the first compiled
                before, start = len(traces), time.perf_counter()
                run()
                passes.append((time.perf_counter() - start, len(traces) - before))
        except Exception as error:  # noqa: BLE001  (a version whose scale must be a number refuses: report it)
            rows.append({"mode": mode, "error": f"{type(error).__name__}: {error}"})
            print(f"  {mode}: {type(error).__name__}: {str(error)[:120]}", flush=True)
            continue
        (first, compilations), (second, recompilations) = passes
        rows.append({"mode": mode, "points": len(SWEEP_SCALES), "compilations": compilations,
                     "recompilations_in_pass_2": recompilations, "first_pass_s": first, "compiled_pass_s": second,
                     "compile_s": first - second, "compiled_s_per_point": second / len(SWEEP_SCALES)})
        print(f"  {mode}: {compilations} compilations, first pass {first:.2f} s, compiled pass {second:.3f} s",
              flush=True)
    print(f"\n## A {len(SWEEP_SCALES)}-point guidance sweep (dpmpp_2m, NFE {nfe}, batch {x_init.shape[0]})\n")
    print(render_table(
        ["mode", "compilations", "first pass (s)", "compiled pass (s)", "compile (s)", "compiled s / point"],
        [[r["mode"], r["compilations"], f"{r['first_pass_s']:.2f}", f"{r['compiled_pass_s']:.3f}",
          f"{r['compile_s']:.2f}", f"{r['compiled_s_per_point']:.4f}"] if "error" not in r
         else [r["mode"], "refused", "-", "-", "-", "-"] for r in rows]))
    return rows
