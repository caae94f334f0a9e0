"""The exact probability-flow map of the Gaussian-mixture oracle, to float64 precision.

In y = x / alpha and gamma = sigma / alpha the probability-flow ODE is dy/dgamma = E[eps | y], the same for every
process (DEIS, section 3); the oracle gives E[eps | y] in closed form, and an 8th-order adaptive solver in float64
with tight tolerances integrates it. The result is the ground truth against which the samplers' errors are measured.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.samplers.adaptive import solve_log_gamma

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.models.oracle import GaussianMixture
    from fastsamplers.schedules.processes import Process


def exact_flow_map(oracle: GaussianMixture, process: Process, x: HostArrayLike, t_start: float, t_end: float,
                   rtol: float = 1e-11, atol: float = 1e-11, max_steps: int = 100_000) -> np.ndarray:
    """Map x at time t_start to the probability-flow ODE solution at t_end, to float64 precision.

    Args:
      oracle: a `models.GaussianMixture` (its E[eps | y] is exact).
      process: the `schedules.Process` of the ODE.
      x: states at t_start, (..., dim).
      t_start, t_end: the times to map between (either direction).
      rtol, atol, max_steps: the float64 dopri8 solver's tolerances and step budget.

    Returns:
      The states at t_end, a float64 numpy array of x's shape.
    """
    with jax.enable_x64(True):
        t0, t1 = jnp.float64(t_start), jnp.float64(t_end)
        oracle = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), oracle)
        y0 = jnp.asarray(np.asarray(x), jnp.float64) / process.alpha(t0)
        y1 = _flow_y(oracle, y0, process.gamma(t0), process.gamma(t1), rtol, atol, max_steps)
        return np.asarray(process.alpha(t1) * y1)


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def _flow_y(oracle, y0, gamma0, gamma1, rtol, atol, max_steps):
    def field(u, y):
        gamma = jnp.exp(u)
        return gamma * oracle.eps_y(y, gamma)

    return solve_log_gamma(field, y0, gamma0, gamma1, "dopri8", rtol, atol, max_steps, 1e-10)[0]
