"""The stochastic samplers against the ODE samplers by distribution, and the compilation count with `args`
(`scripts/benchmark_stochastic.py`).

On a 2-dimensional, 3-component Gaussian-mixture oracle (vp_linear, t_min 0.02; `seed` picks it), from exact draws
of the marginal at t_max, for each solver of SOLVERS and NFE in 10 .. 1000 (logSNR grid): the two-sample energy
distance between N samples (default 2000) and N exact draws of the marginal at t_min, beside the noise floor (the mean
and max energy distance between two independent exact samples of the same size, over 10 pairs). The ODE samplers'
samples are a deterministic map of exact draws, so they too should reach the floor as NFE grows.

Then the compilation count: `calls` `samplers.sample` calls of an MLP whose parameters are passed as `args`, each
with new parameter values, counted by the Python-side traces of the model function.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import MLP, GaussianMixture

SOLVERS = (
    ("ddim eta=1 (DDPM)", "ddim", {"eta": 1.0}),
    ("euler_ancestral", "euler_ancestral", {}),
    ("edm_stochastic", "edm_stochastic", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
    ("sa_solver p2c2 tau=1", "sa_solver", {}),
    ("sa_solver p3c3 tau=1", "sa_solver", {"predictor_order": 3, "corrector_order": 3}),
    ("ddim (ODE)", "ddim", {}),
    ("dpmpp_2m (ODE)", "dpmpp_2m", {}),
    ("unipc (ODE)", "unipc", {}),
)
NFES = (10, 20, 50, 100, 200, 500, 1000)


def benchmark(json_path: str, *, num_samples: int = 2000, seed: int = 3, solvers=SOLVERS, nfes=NFES,
              floor_pairs: int = 10, calls: int = 100) -> dict:
    """The energy-distance table and the compilation count, printed (markdown) and written to json_path.

    Args:
      json_path: the JSON file (rows, floor, compilations, versions).
      num_samples: samples per cell (and exact draws).
      seed: the oracle's and the draws' seed.
      solvers: (label, solver name, options) rows; nfes: the NFE budgets.
      floor_pairs: the pairs of exact samples behind the noise floor.
      calls: the `sample` calls of the compilation count.

    Returns:
      The record written.
    """
    for _, name, options in solvers:  # every name, before any compute
        samplers.get_solver(name, **options)
    rows, floor = distribution_rows(seed, num_samples, solvers, nfes, floor_pairs)
    compiles = compilation_count(calls)
    labels = [label for label, _, _ in solvers]
    by = {(r["solver"], r["nfe"]): r for r in rows}
    measured = sorted({r["nfe"] for r in rows})
    table = render_table(["solver"] + [f"NFE {n}" for n in measured],
                         [[label] + [f"{by[(label, n)]['energy_distance']:.2e}" if (label, n) in by else "-"
                                     for n in measured] for label in labels])
    print(f"\n## Energy distance to the exact marginal at t_min ({floor['n']} samples; noise floor: mean "
          f"{floor['mean']:.2e}, max {floor['max']:.2e} over {floor_pairs} exact pairs)\n\n{table}\n")
    print(f"## Compilations: {compiles['calls']} sample calls with new parameter values as args -> "
          f"{compiles['traces']} trace(s) of the model function ({compiles['wall_s']:.2f} s in all)")
    record = {"rows": rows, "floor": floor, "compilations": compiles, "versions": versions()}
    core.write_json(json_path, record, indent=1)
    return record


def distribution_rows(seed, n, solvers=SOLVERS, nfes=NFES, floor_pairs=10):
    """(rows: solver x NFE energy distances and times, the noise floor {mean, max, n})."""
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=2, num_components=3, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear", t_min=0.02)
    x_init = gm.marginal_sample(jax.random.PRNGKey(seed + 1), n, p.t_max, p)
    exact = gm.marginal_sample(jax.random.PRNGKey(seed + 2), n, p.t_min, p)
    floor = [energy_distance(gm.marginal_sample(jax.random.PRNGKey(1000 + 2 * k), n, p.t_min, p),
                             gm.marginal_sample(jax.random.PRNGKey(1001 + 2 * k), n, p.t_min, p))
             for k in range(floor_pairs)]
    rows = []
    for label, name, options in solvers:
        solver = samplers.get_solver(name, **options)
        for nfe in nfes:
            num_steps = solver.steps_for_nfe(nfe)
            ts = schedules.get_timesteps("logsnr", p, num_steps)
            start = time.perf_counter()
            x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(seed + 3))
            x.block_until_ready()
            rows.append({"solver": label, "name": name, "options": options, "nfe": int(info["nfe"]),
                         "energy_distance": energy_distance(x, exact), "time_s": time.perf_counter() - start})
            print(f"  {label:20s} nfe={rows[-1]['nfe']:5d} ED={rows[-1]['energy_distance']:.2e}", flush=True)
    return rows, {"mean": float(np.mean(floor)), "max": float(np.max(floor)), "n": n}


def compilation_count(calls: int = 100) -> dict:
    """{calls, traces, wall_s}: `calls` sample calls of an MLP with new parameter values as args each time, and
    the traces of its model function they caused (1: the parameters are traced, never compiled in)."""
    net = MLP(hidden=64, depth=2)
    p = schedules.get_process("vp_linear")
    x_init = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    params = net.init(jax.random.PRNGKey(1), x_init, 0.5)
    ts = schedules.get_timesteps("logsnr", p, 10)
    traces = []

    def model_fn(x, t, params):
        traces.append(1)
        return net.apply(params, x, t)

    start = time.perf_counter()
    for k in range(calls):
        samplers.sample(model_fn, "deis_tab", p, x_init, ts, args=jax.tree.map(lambda a: a * (1 + 1e-3 * k), params))
    return {"calls": calls, "traces": len(traces), "wall_s": time.perf_counter() - start}
