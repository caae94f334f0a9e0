"""Adaptive reference solver: a diffrax embedded Runge-Kutta method with error control.

It integrates the probability-flow ODE in DEIS's process-free form y = x / alpha, dy/dgamma = eps, with log(gamma)
(= -log-SNR) as the independent variable, where the solution varies on a uniform scale from pure noise down to the
data: dy/du = gamma eps(alpha(t) y, t), u = log gamma, t = t(gamma). A step to gamma = 0 stops at `gamma_floor`
(the remaining change of y is O(gamma_floor^2) for a smooth data density). Error control is joint over the whole
batch (one step size for all samples), as in diffrax.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.core.typing import ArrayLike
    from fastsamplers.schedules.processes import Process

# name -> (diffrax solver class, order, model calls per step)
# FSAL methods (Tsit5, Dopri5, Dopri8, Bosh3) reuse the last stage: stages - 1 calls per step (accepted or
# rejected), plus one call at the start. Measured by counting calls at run time (tests/test_sample.py).
METHODS = Registry("adaptive method", {
    "tsit5": (diffrax.Tsit5, 5, 6),
    "dopri5": (diffrax.Dopri5, 5, 6),
    "dopri8": (diffrax.Dopri8, 8, 13),
    "bosh3": (diffrax.Bosh3, 3, 3),
}, unknown="{kind} must be one of {valid}, got {name!r}")


def solve_log_gamma(field: Callable[[ArrayLike, jax.Array], jax.Array], y0: jax.Array, gamma_start: jax.Array,
                    gamma_end: jax.Array, method: str, rtol: float | jax.Array, atol: float | jax.Array,
                    max_steps: int, gamma_floor: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Integrate dy/du = field(u, y), u = log gamma, from gamma_start to gamma_end. Returns (y_end, num_steps)."""
    solver_cls = METHODS[method][0]
    u0 = jnp.log(gamma_start)
    u1 = jnp.log(jnp.maximum(gamma_end, gamma_floor))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda u, y, args: field(u, y)),
        solver_cls(),
        t0=u0,
        t1=u1,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    return sol.ys[-1], sol.stats["num_steps"]


@dataclasses.dataclass(frozen=True)
class Adaptive(Solver):
    """Adaptive diffrax solver; `info["nfe"]` is its own count: calls per step x steps taken (accepted and rejected)
    + 1 start-up call."""

    name = "adaptive"
    native = "eps"
    static_nfe = False
    method: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096
    gamma_floor: float = 1e-6
    traced = ("rtol", "atol", "gamma_floor")  # a tolerance sweep is one program (samplers.pytrees)

    def check(self) -> None:
        super().check()
        METHODS.check(self.method)
        for option in ("rtol", "atol", "gamma_floor"):
            value = known(getattr(self, option))
            if value is not None and not (is_real(value) and np.all(value > 0)):
                raise ValueError(f"adaptive: {option} must be positive, got {getattr(self, option)!r}")

    @property
    def order(self) -> int:
        return METHODS[self.method][1]

    def loop_nfe(self, num_steps: Any) -> Any:  # a traced count of steps gives a traced count of calls
        return METHODS[self.method][2] * num_steps + 1

    def integrate(self, model: Model, process: Process, x: jax.Array, ts: jax.Array, save_trajectory: bool = False,
                  noise: Any = None) -> tuple[jax.Array, jax.Array, None]:
        if save_trajectory:
            raise NotImplementedError("the adaptive solver chooses its own steps: it has no trajectory on the grid "
                                      "ts; use a fixed-step solver for save_trajectory=True")
        alpha0, alpha1 = process.alpha(ts[0]), process.alpha(ts[-1])

        def field(u, y):
            gamma = jnp.exp(u)
            t = process.t_of_gamma(gamma)
            return gamma * model((process.alpha(t) * y).astype(x.dtype), t)

        y, num_steps = solve_log_gamma(field, x / alpha0, process.gamma(ts[0]), process.gamma(ts[-1]),
                                       self.method, self.rtol, self.atol, self.max_steps, self.gamma_floor)
        return (alpha1 * y).astype(x.dtype), self.loop_nfe(num_steps), None
