"""Benchmark classifier-free guidance on the exact conditional oracle: RMSE against the exact guided map.

Command (from the repository root):

    python scripts/benchmark_guidance.py --json outputs/bench/guidance.json

The 8-dimensional, 6-component Gaussian mixture with the component index as the label (null label = 6), vp_linear,
1024 samples from the prior at t_max with random labels. For every deterministic fixed-step solver in the registry
(default options) at NFE 10 (the most steps that fit) on the logSNR grid, and guidance scales 1, 2 and 4: the RMSE of
`samplers.sample(samplers.guided(model_fn, scale, null_labels), ...)` against `samplers.exact_flow_map` of the
guided oracle (float64). Writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    gm = GaussianMixture.random(jax.random.PRNGKey(args.seed), dim=8, num_components=6)
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(args.seed + 1), (args.batch, 8))
    labels = jax.random.randint(jax.random.PRNGKey(args.seed + 2), (args.batch,), 0, gm.null_label)
    null = jnp.full((args.batch,), gm.null_label)
    exact = {s: samplers.exact_flow_map(gm.guided(labels, s), p, x_init, p.t_max, p.t_min) for s in SCALES}
    rows = []
    for name in samplers.SOLVERS:
        solver = samplers.get_solver(name)
        if solver.stochastic or not solver.static_nfe:
            continue
        num_steps = solver.steps_for_nfe(args.nfe)
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
    print(f"\n## Guided sampling on the exact conditional oracle: RMSE vs the exact guided map, NFE <= {args.nfe}, "
          f"logSNR grid\n")
    print(render_table(["solver", "NFE"] + [f"scale {s:g}" for s in SCALES],
                       [[n, by[(n, SCALES[0])]["nfe"]] + [f"{by[(n, s)]['rmse']:.3e}" for s in SCALES]
                        for n in names]))
    core.write_json(args.json, {"rows": rows, "versions": versions(), "nfe": args.nfe, "batch": args.batch}, indent=1)


if __name__ == "__main__":
    main()
