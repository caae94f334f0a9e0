"""Benchmark the stochastic samplers against the ODE samplers by distribution, and count compilations with args.

Command (from the repository root):

    python scripts/benchmark_stochastic.py --json outputs/bench/stochastic.json

On a 2-dimensional, 3-component Gaussian-mixture oracle (vp_linear, t_min 0.02; --seed picks it), from exact draws
of the marginal at t_max, for each solver and NFE in 10 .. 1000 (logSNR grid): the two-sample energy distance between
N samples (default 2000) and N exact draws of the marginal at t_min, beside the noise floor (the mean and max energy
distance between two independent exact samples of the same size, over 10 pairs). The ODE samplers' samples are a
deterministic map of exact draws, so they too should reach the floor as NFE grows.

Then the compilation count: 100 `samplers.sample` calls of an MLP whose parameters are passed as `args`, each with
new parameter values, counted by the Python-side traces of the model function.

Writes the JSON and prints the tables (markdown).
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


def energy_distance(x, y):
    """2 E|x - y| - E|x - x'| - E|y - y'| (V-statistic)."""
    d = jax.jit(lambda a, b: jnp.mean(jnp.sqrt(jnp.sum((a[:, None] - b[None]) ** 2, -1) + 1e-30)))
    return float(2 * d(x, y) - d(x, x) - d(y, y))


def distribution_rows(seed, n):
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=2, num_components=3, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear", t_min=0.02)
    x_init = gm.marginal_sample(jax.random.PRNGKey(seed + 1), n, p.t_max, p)
    exact = gm.marginal_sample(jax.random.PRNGKey(seed + 2), n, p.t_min, p)
    floor = [energy_distance(gm.marginal_sample(jax.random.PRNGKey(1000 + 2 * k), n, p.t_min, p),
                             gm.marginal_sample(jax.random.PRNGKey(1001 + 2 * k), n, p.t_min, p)) for k in range(10)]
    rows = []
    for label, name, options in SOLVERS:
        solver = samplers.get_solver(name, **options)
        for nfe in NFES:
            num_steps = solver.steps_for_nfe(nfe)
            ts = schedules.get_timesteps("logsnr", p, num_steps)
            start = time.perf_counter()
            x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(seed + 3))
            x.block_until_ready()
            rows.append({"solver": label, "name": name, "options": options, "nfe": int(info["nfe"]),
                         "energy_distance": energy_distance(x, exact), "time_s": time.perf_counter() - start})
            print(f"  {label:20s} nfe={rows[-1]['nfe']:5d} ED={rows[-1]['energy_distance']:.2e}", flush=True)
    return rows, {"mean": float(np.mean(floor)), "max": float(np.max(floor)), "n": n}


def compilation_count(calls=100):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per cell (and exact draws)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the oracle and the draws")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rows, floor = distribution_rows(args.seed, args.num_samples)
    compiles = compilation_count()
    labels = [label for label, _, _ in SOLVERS]
    by = {(r["solver"], r["nfe"]): r for r in rows}
    nfes = sorted({r["nfe"] for r in rows})
    table = render_table(["solver"] + [f"NFE {n}" for n in nfes],
                         [[label] + [f"{by[(label, n)]['energy_distance']:.2e}" if (label, n) in by else "-"
                                     for n in nfes] for label in labels])
    print(f"\n## Energy distance to the exact marginal at t_min ({floor['n']} samples; noise floor: mean "
          f"{floor['mean']:.2e}, max {floor['max']:.2e} over 10 exact pairs)\n\n{table}\n")
    print(f"## Compilations: {compiles['calls']} sample calls with new parameter values as args -> "
          f"{compiles['traces']} trace(s) of the model function ({compiles['wall_s']:.2f} s in all)")
    core.write_json(args.json, {"rows": rows, "floor": floor, "compilations": compiles, "versions": versions()},
                    indent=1)


if __name__ == "__main__":
    main()
