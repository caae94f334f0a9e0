"""Classifier-free guidance on the exact conditional oracle: RMSE against the exact guided map
(`scripts/benchmark_guidance.py`).

The 8-dimensional, 6-component Gaussian mixture with the component index as the label (null label = 6), vp_linear,
`batch` samples from the prior at t_max with random labels. For every deterministic fixed-step solver in the registry
(default options; or the given names) at NFE `nfe` (the most steps that fit) on the logSNR grid, and each guidance
scale of SCALES: the RMSE of `samplers.sample(samplers.guided(model_fn, scale, null_labels), ...)` against
`samplers.exact_flow_map` of the guided oracle (float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture

SCALES = (1.0, 2.0, 4.0)


def benchmark(json_path: str, *, nfe: int = 10, batch: int = 1024, seed: int = 0, scales=SCALES,
              solvers=None) -> dict:
    """The table of the module docstring, printed and written with its rows to json_path.

    Args:
      json_path: the JSON file.
      nfe: the budget of model evaluations per sample.
      batch: samples (one random label each).
      seed: the oracle's, the noise's and the labels' seed.
      scales: the guidance scales.
      solvers: solver names (default options); None: every deterministic fixed-step solver of `samplers.SOLVERS`.

    Returns:
      The record written: rows, versions, nfe, batch.
    """
    if solvers is None:
        solvers = [name for name in samplers.SOLVERS if not samplers.get_solver(name).stochastic
                   and samplers.get_solver(name).static_nfe]
    built = {name: samplers.get_solver(name) for name in solvers}  # every name, before any compute
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=8, num_components=6)
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(seed + 1), (batch, 8))
    labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (batch,), 0, gm.null_label)
    null = jnp.full((batch,), gm.null_label)
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
    record = {"rows": rows, "versions": versions(), "nfe": nfe, "batch": batch}
    core.write_json(json_path, record, indent=1)
    return record
