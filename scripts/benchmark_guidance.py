"""Benchmark classifier-free guidance on the exact conditional oracle: RMSE against the exact guided map, and the
cost of a sweep over the guidance scale.

Command (from the repository root):

    python scripts/benchmark_guidance.py --json outputs/bench/guidance.json

The 8-dimensional, 6-component Gaussian mixture with the component index as the label (null label = 6), vp_linear,
1024 samples from the prior at t_max with random labels. For every deterministic fixed-step solver in the registry
(default options) at NFE 10 (the most steps that fit) on the logSNR grid, and guidance scales 1, 2 and 4: the RMSE of
`samplers.sample(samplers.guided(model_fn, scale, null_labels), ...)` against `samplers.exact_flow_map` of the
guided oracle (float64).

The sweep (`--parts sweep`): 16 guidance scales from 0 to 7.5 with dpmpp_2m at NFE 10, run two ways. "loop": one
`samplers.sample` per scale, each with its own `samplers.guided` wrapper (where the scale is a compile-time constant,
as before issue 23, every point compiles; where it is a traced leaf, the points share one program). "vmap": one
`jax.jit(jax.vmap(...))` over the 16 scales (one compilation; refused where the scale must be a number). For each:
the compilations (the model function's Python traces), the first pass's wall time (compilation included) and the
time of a second pass over the same wrappers (compiled: no trace). Writes the JSON and prints the tables.
"""

from __future__ import annotations

import argparse
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture

SCALES = (1.0, 2.0, 4.0)


SWEEP_SCALES = tuple(np.linspace(0.0, 7.5, 16).tolist())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="rmse,sweep", help="comma-separated: rmse, sweep")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    gm = GaussianMixture.random(jax.random.PRNGKey(args.seed), dim=8, num_components=6)
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(args.seed + 1), (args.batch, 8))
    labels = jax.random.randint(jax.random.PRNGKey(args.seed + 2), (args.batch,), 0, gm.null_label)
    null = jnp.full((args.batch,), gm.null_label)
    record = {"versions": versions(), "nfe": args.nfe, "batch": args.batch}
    parts = args.parts.split(",")
    if "rmse" in parts:
        record["rows"] = rmse_rows(gm, p, x_init, labels, null, args.nfe)
    if "sweep" in parts:
        record["sweep"] = sweep_rows(gm, p, x_init, labels, null, args.nfe)
    core.write_json(args.json, record, indent=1)


def rmse_rows(gm, p, x_init, labels, null, nfe):
    exact = {s: samplers.exact_flow_map(gm.guided(labels, s), p, x_init, p.t_max, p.t_min) for s in SCALES}
    rows = []
    for name in samplers.SOLVERS:
        solver = samplers.get_solver(name)
        if solver.stochastic or not solver.static_nfe:
            continue
        num_steps = solver.steps_for_nfe(nfe)
        ts = schedules.get_timesteps("logsnr", p, num_steps)
        for scale in SCALES:
            guided = samplers.guided(gm.conditional_model_fn(p), scale, null, batch_axes=0)
            x, info = samplers.sample(guided, solver, p, x_init, ts, args=labels, check_finite=False)
            rmse = float(np.sqrt(np.mean((np.asarray(x) - exact[scale]) ** 2)))
            rows.append({"solver": name, "scale": scale, "nfe": int(info["nfe"]), "num_steps": num_steps,
                         "rmse": rmse})
            print(f"  {name:12s} scale={scale} nfe={info['nfe']} rmse={rmse:.3e}", flush=True)
    by = {(r["solver"], r["scale"]): r for r in rows}
    names = list(dict.fromkeys(r["solver"] for r in rows))
    print(f"\n## Guided sampling on the exact conditional oracle: RMSE vs the exact guided map, NFE <= {nfe}, "
          f"logSNR grid\n")
    print(render_table(["solver", "NFE"] + [f"scale {s:g}" for s in SCALES],
                       [[n, by[(n, SCALES[0])]["nfe"]] + [f"{by[(n, s)]['rmse']:.3e}" for s in SCALES]
                        for n in names]))
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
        except Exception as error:  # noqa: BLE001  (the base commit refuses a traced scale: report it)
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


if __name__ == "__main__":
    main()
