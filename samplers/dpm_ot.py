"""DPM-OT sampling (Li et al. 2023, "DPM-OT: a new diffusion probabilistic model based on optimal transport",
ICCV; reference sheet, section 7): a semi-discrete OT map replaces the first part of the trajectory, then any solver
runs the rest.

What the map is a map from, and to: from the whitened prior eps ~ N(0, I) (x_{t_max} / sigma(t_max), the noise
every sampler here starts from, before its scale) to the empirical measure of N noisy data points at an
intermediate level t_k, y_i = alpha(t_k) x0_i + sigma(t_k) eps_i (`Process.marginal`; DPM-OT's targets are test
images plus sigma noise, ncsn_runner 571, 590). Fit it once with `SemiDiscreteOT.fit(key, y)` (its default source
is that N(0, I)). Sampling draws eps, replaces it by x_{t_k} = T(eps), the target of its cell, and integrates the
probability-flow ODE (or the solver's SDE) from t_k down the grid `ts`, whose first time is t_k: the NFE are those of
the steps after t_k, and the map costs one N-way argmax a sample. (Whitening changes nothing but h's scale: the
cells of x_{t_max} = sigma eps under weights sigma h are those of eps under h, argmax being invariant to a positive
factor on <x, y_i> + h_i.)

Because T takes at most N values and an ODE solver is deterministic, the samples of a deterministic solver are at
most N distinct points, each a denoised training point: at small t_k DPM-OT approaches the training set itself
(the benchmark reports the samples' nearest-neighbour distances to it). A stochastic solver (ddim with eta > 0,
SA-Solver, ...) gives each sample its own path from the shared start.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree, Shape
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.driver import resolve_inputs, sample
from fastsamplers.samplers.semi_discrete_ot import SemiDiscreteOT
from fastsamplers.schedules.processes import Process


def dpm_ot_sample(model_fn: ModelFn, solver: Solver | str, process: Process | str, ot: SemiDiscreteOT | None,
                  key: jax.Array, shape: Shape, ts: ArrayLike, prediction: str = "eps", args: PyTree = None,
                  **options: Any) -> tuple[jax.Array, dict]:
    """Sample by the OT map to level ts[0] = t_k, then `solver` from t_k down `ts` (module docstring).

    Args:
      model_fn: the model, as for `samplers.sample`.
      solver: a solver object or a registered name.
      process: a `schedules.Process` or a registered name.
      ot: the map from N(0, I) to points at time ts[0] (`SemiDiscreteOT.fit` on `process.marginal(key, x0,
        ts[0])`); None: no map, the start is the plain prior sigma(ts[0]) * eps (`Process.prior`), so with
        ts[0] = t_max this is `samplers.sample` from the prior.
      key: one PRNG key: eps from split(key)[0], a stochastic solver's noise from split(key)[1].
      shape: the batch's shape (batch, *example shape), the example shape that of the map's targets.
      ts: the grid from t_k down to t_min (strictly decreasing, `schedules.get_timesteps` or any other).
      prediction: what model_fn predicts.
      args: the model's `args`, as for `samplers.sample`.
      **options: further keywords of `samplers.sample` (check_finite, save_trajectory, noise).

    Returns:
      (x, info) of `samplers.sample`, with info["nfe"] the model calls after t_k and info["cells"] the cell of each
      sample (None without a map).

    Raises:
      ValueError: the shape does not fit the map's targets (before any compute), or as `samplers.sample`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fastsamplers import samplers, schedules
        >>> from fastsamplers.models.oracle import GaussianMixture
        >>> p = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> x0 = gm.sample(jax.random.PRNGKey(1), 32)
        >>> ts = schedules.get_timesteps("logsnr", p, 3, t_max=0.5)
        >>> ot, _ = samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(2), p.marginal(jax.random.PRNGKey(3), x0, 0.5),
        ...                                     max_iter=100)
        >>> x, info = samplers.dpm_ot_sample(gm.model_fn(p), "dpmpp_2m", p, ot, jax.random.PRNGKey(4), (8, 2), ts)
        >>> x.shape, info["nfe"]
        ((8, 2), 3)
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 1:
        raise ValueError(f"shape must be (batch, *example shape), got {shape}")
    if ot is not None and not isinstance(ot, SemiDiscreteOT):
        raise TypeError(f"ot must be a samplers.SemiDiscreteOT or None, got {type(ot).__name__}")
    if ot is not None and shape[1:] != ot.shape:
        raise ValueError(f"shape {shape} does not fit the map: its targets are of shape {ot.shape}, so shape must be "
                         f"(batch, {', '.join(map(str, ot.shape))})")
    solver, process, _ = resolve_inputs(model_fn, solver, process, prediction, jnp.zeros((), jnp.result_type(float)))
    noise_key, solver_key = jax.random.split(key)
    ts = jnp.asarray(ts) if isinstance(ts, jax.Array) else ts
    if ot is None:
        x_init, cells = process.prior(noise_key, shape, t=ts[0]), None
    else:
        eps = jax.random.normal(noise_key, shape, ot.targets.dtype)  # the whitened prior at t_max
        cells = ot.assign(eps)
        x_init = ot.targets[cells]  # T(eps): a point at t_k
    x, info = sample(model_fn, solver, process, x_init, ts, prediction=prediction, key=solver_key, args=args,
                     **options)
    info["cells"] = cells
    return x, info
