"""Explicit Runge-Kutta samplers, in one of two spaces.

- space "t": the probability-flow ODE dx/dt = velocity(x, t) in the process's own time (the model output is
  converted to the velocity exactly). `euler`, and `heun`, EDM's second-order sampler (Karras et al. 2022, Alg. 1),
  which takes a plain Euler step on the last interval: NFE = 2N - 1.
- space "gamma": DEIS's rhoRK (Zhang & Chen 2022): y = x / alpha, gamma = sigma / alpha, dy/dgamma = eps(x, t(gamma)),
  solved with a classical tableau ("2heun", "3kutta", "4rk"); NFE = stages x N.

Stage times are computed once per grid, outside the loop; the stage loop inside a step is unrolled (static).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

# Butcher tableaus: (c, a, b, order).
TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,), 1),
    "2heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5), 2),
    "3kutta": ((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 4 / 6, 1 / 6), 3),
    "4rk": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}


class RKCoefficients(NamedTuple):
    """Per step: h (the step in the solve's variable), tau (num_steps, stages) the stage times, scale (num_steps,
    stages) the factor from the solve's variable z back to x at each stage, z_in / z_out the maps x -> z at the start
    and z -> x at the end (z = x in space "t"; z = x / alpha in space "gamma")."""

    h: jax.Array
    tau: jax.Array
    scale: jax.Array
    z_in: jax.Array
    z_out: jax.Array


@dataclasses.dataclass(frozen=True)
class ExplicitRK(Solver):
    tableau = "euler"
    space = "t"
    final_euler = False

    @property
    def order(self) -> int:
        return TABLEAUS[self.tableau][3]

    @property
    def stages(self) -> int:
        return len(TABLEAUS[self.tableau][0])

    @property
    def evaluates_end(self) -> bool:  # type: ignore[override]  # the base's class constant, from the tableau here
        return TABLEAUS[self.tableau][0][-1] == 1.0 and not self.final_euler

    def loop_nfe(self, num_steps: int) -> int:
        return self.stages * num_steps - (self.stages - 1) * int(self.final_euler)

    def coefficients(self, process: Process, ts: jax.Array) -> RKCoefficients:
        c = jnp.asarray(TABLEAUS[self.tableau][0], ts.dtype)[None, :]  # (1, S) against the (N, 1) step axis
        s, t = ts[:-1, None], ts[1:, None]
        at_start, at_end = c == 0.0, c == 1.0
        if self.space == "t":
            tau = jnp.where(at_end, t, s + c * (t - s))
            ones = jnp.ones_like(ts[:-1])
            return RKCoefficients(h=ts[1:] - ts[:-1], tau=tau, scale=jnp.ones_like(tau), z_in=ones, z_out=ones)
        gamma, alpha = process.gamma(ts), process.alpha(ts)
        h = gamma[1:] - gamma[:-1]
        tau = process.t_of_gamma(gamma[:-1, None] + c * h[:, None])
        tau = jnp.where(at_start, s, jnp.where(at_end, t, tau))  # exact grid times, not round trips
        return RKCoefficients(h=h, tau=tau, scale=process.alpha(tau), z_in=1.0 / alpha[:-1], z_out=alpha[1:])

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple,
             inp: StepInputs) -> tuple[jax.Array, tuple]:
        c, a, b, _ = TABLEAUS[self.tableau]
        co = inp.coef
        z, h = x * co.z_in, co.h

        def derivative(k, z_k):
            return model(cast_like(z_k * co.scale[k], x), co.tau[k])

        k1 = derivative(0, z)

        def full(_):
            ks = [k1]
            for k in range(1, len(c)):
                z_k = z + h * sum(a_km * k_m for a_km, k_m in zip(a[k], ks) if a_km != 0.0)
                ks.append(derivative(k, z_k))
            return z + h * sum(b_k * k_k for b_k, k_k in zip(b, ks))

        if self.final_euler:
            z_next = jax.lax.cond(inp.last, lambda _: z + h * k1, full, None)
        else:
            z_next = full(None)
        return cast_like(z_next * co.z_out, x), state


@dataclasses.dataclass(frozen=True)
class Euler(ExplicitRK):
    name = "euler"
    native = "velocity"


@dataclasses.dataclass(frozen=True)
class Heun(ExplicitRK):
    name = "heun"
    native = "velocity"
    tableau = "2heun"
    final_euler = True


@dataclasses.dataclass(frozen=True)
class DEISRhoRK(ExplicitRK):
    name = "deis_rhork"
    native = "eps"
    space = "gamma"
    method: str = "3kutta"
    methods = Registry.of_names("deis_rhork method", ("2heun", "3kutta", "4rk"), ordered=True,
                                unknown="{kind} must be one of {valid}, got {name!r}")  # the tableaus it takes

    def check(self) -> None:
        super().check()
        self.methods.check(self.method)

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return tuple(dict(method=m) for m in cls.methods)

    @property
    def tableau(self) -> str:  # type: ignore[override]  # the base's class constant, the `method` option here
        return self.method


class ChurnCoefficients(NamedTuple):
    """Per step of EDM's stochastic sampler: y = x / alpha at the start; churned noise level gamma_hat and its time
    t_hat, alpha there; the std of the added noise (sqrt(gamma_hat^2 - gamma^2) S_noise); the end's gamma and
    alpha."""

    z_in: jax.Array
    gamma_hat: jax.Array
    t_hat: jax.Array
    alpha_hat: jax.Array
    noise_std: jax.Array
    gamma_next: jax.Array
    alpha_next: jax.Array


@dataclasses.dataclass(frozen=True)
class EDMStochastic(Solver):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), in y = x / alpha and gamma = sigma / alpha (EDM's
    x and sigma) for any process: raise the noise level of step i by gamma_i = min(S_churn / N, sqrt(2) - 1) when
    S_min <= gamma <= S_max, gamma_hat = gamma (1 + gamma_i), adding noise of std sqrt(gamma_hat^2 - gamma^2) S_noise,
    then a Heun step from gamma_hat to the next level (an Euler step on the last interval: NFE = 2N - 1, as `heun`).
    Defaults are EDM's ImageNet-64 settings (S_churn 40, S_min 0.05, S_max 50, S_noise 1.003); S_churn = 0 is EDM's
    deterministic Heun sampler (in gamma; `heun` integrates in the process's own time). All four are traced
    (`samplers.pytrees`); S_churn given as 0 is the deterministic sampler, any other S_churn the stochastic one."""

    name = "edm_stochastic"
    native = "eps"
    S_churn: float = 40.0
    S_min: float = 0.05
    S_max: float = 50.0
    S_noise: float = 1.003
    traced = ("S_churn", "S_min", "S_max", "S_noise")
    switches = ("S_churn",)

    def check(self) -> None:
        super().check()
        for field in ("S_churn", "S_min", "S_max", "S_noise"):
            value = known(getattr(self, field))
            if value is not None and not (is_real(value) and np.all(value >= 0)):  # NaN fails >= 0
                raise ValueError(f"edm_stochastic: {field} must be a number >= 0, got {getattr(self, field)!r}")
        s_min, s_max = known(self.S_min), known(self.S_max)
        if s_min is not None and s_max is not None and np.any(s_min > s_max):
            raise ValueError(f"edm_stochastic: need S_min <= S_max, got {self.S_min} > {self.S_max}")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return ({}, dict(S_churn=0.0))

    @property
    def order(self) -> int:
        return 2

    @property
    def stages(self) -> int:
        return 2

    def loop_nfe(self, num_steps: int) -> int:
        return 2 * num_steps - 1

    def coefficients(self, process: Process, ts: jax.Array) -> ChurnCoefficients:
        num_steps = ts.shape[0] - 1
        gamma, alpha = process.gamma(ts), process.alpha(ts)
        g = gamma[:-1]
        churn = jnp.where((g >= self.S_min) & (g <= self.S_max), jnp.minimum(self.S_churn / num_steps, 2**0.5 - 1),
                          0.0)
        g_hat = g * (1.0 + churn)
        t_hat = jnp.where(churn > 0, process.t_of_gamma(g_hat), ts[:-1])  # the grid time itself when not churned
        return ChurnCoefficients(z_in=1.0 / alpha[:-1], gamma_hat=g_hat, t_hat=t_hat, alpha_hat=process.alpha(t_hat),
                                 # sqrt(g_hat^2 - g^2), written so that no churn is exactly no noise
                                 noise_std=g * jnp.sqrt(churn * (2.0 + churn)) * self.S_noise, gamma_next=gamma[1:],
                                 alpha_next=alpha[1:])

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple,
             inp: StepInputs) -> tuple[jax.Array, tuple]:
        co = inp.coef
        y = x * co.z_in
        if self.stochastic:
            y = y + co.noise_std * inp.normal(x)
        h = co.gamma_next - co.gamma_hat
        d = model(cast_like(y * co.alpha_hat, x), co.t_hat)
        y_euler = y + h * d

        def heun(_):
            d_next = model(cast_like(y_euler * co.alpha_next, x), inp.t)
            return y + h * 0.5 * (d + d_next)

        y_next = jax.lax.cond(inp.last, lambda _: y_euler, heun, None)
        return cast_like(y_next * co.alpha_next, x), state
