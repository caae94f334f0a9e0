"""SA-Solver: the stochastic Adams predictor-corrector of Xue et al. 2023 ("SA-Solver: Stochastic Adams Solver for Fast
Sampling of Diffusion Models", NeurIPS 2023), in its data-prediction form (diffusers' `SASolverScheduler`,
`algorithm_type="data_prediction"`).

The SDE family dx = [f x - (1 + tau^2) g^2 / 2 score] dt + tau g dw has the marginals of the data process for every
tau >= 0 (tau = 0: the probability-flow ODE; tau = 1: the reverse-time SDE). With tau constant on a step from s to t
(lambda = log(alpha / sigma), h = lambda_t - lambda_s, c = 1 + tau^2) its solution is

    x_t = e^{-tau^2 h} (sigma_t / sigma_s) x_s + c alpha_t integral_{lambda_s}^{lambda_t} e^{-c (lambda_t - l)} x0(l) dl
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) z.

SA-Predictor of order K replaces x0 by its Lagrange interpolant in lambda through the last K grid points
(m_i, ..., m_{i-K+1}); SA-Corrector of order K through the new point and K - 1 past ones (m_{i+1} evaluated at the
predicted x_{i+1}, m_i, ...), from the corrected x_i and with the *same* noise z as the predictor of that step. In
the normalised variable u = (l - lambda_s) / h the weights w_m of the nodes u_m solve the moment conditions

    sum_m w_m u_m^k = k! phi_{k+1}(-c h),  k < K,   and the weight of m_m is c alpha_t h w_m,

exact integrals of the interpolant (`samplers.exponential`). The corrector costs no model call: m_{i+1} is also the
next predictor's newest output, so NFE = num_steps (samplers.exponential.pc_step, the step UniPC uses).

`variant="published"` (default) adds the order-2 modification of the paper's code and diffusers' (their comment: an
O(h^3) change that empirically helps at few steps): on an order-2 step the first difference (m_new - m_old) /
(lambda_new - lambda_old) is weighted by c alpha_t h^2 / 2 instead of its exact integral c alpha_t h^2 phi_2(-c h),
in the predictor and in the corrector. `variant="exact"` keeps the exact integrals.

Orders (diffusers' rule): the predictor of step i has order min(p, i + 1) (warm-up) and, where the final orders are
lowered, min(p, num_steps - i); the corrector of the point x_j has order min(q, j + 1) and, where they are lowered,
min(q, num_steps - j + 2). `lower_order_final` follows the one rule of `samplers.multistep`; the default is
"always", diffusers' rule (at every number of steps), whose final first-order step caps the convergence order at 2.
With tau = 0 the method is a deterministic linear multistep method of order min(q, p + 1) (p without a corrector),
measured in tests/test_order.py.

tau(t) is `tau` on the steps whose start time lies in `tau_interval` = (t_lo, t_hi) (all steps when None) and 0
elsewhere. diffusers' default is tau = 1 for discrete timesteps 200..800 of 1000, which on `vp_discrete` (timestep n
at t = (n + 1) / 1000) is tau_interval = (0.201, 0.801). Both are traced (`samplers.pytrees`): tau given as 0 is the
deterministic method; any other tau, an array or a tracer included, is the stochastic one.

A step to sigma = 0 (ts[-1] = 0) is first order and returns x0_hat (the limit of the update; its noise weight is 0).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver, StepInputs
from fastsamplers.samplers.exponential import PCCoefficients, g_functions, pc_init, pc_past_state, pc_step, solve_moments
from fastsamplers.samplers.multistep import check_lower_order_final, lowers_final_orders, step_orders
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

ALLOWED_ORDERS = (1, 2, 3, 4)
VARIANTS = Registry.of_names("variant", ("published", "exact"), ordered=True,
                            unknown="{where} {kind} must be one of {valid}, got {name!r}")


def _moments(z: jax.Array, count: int) -> jax.Array:
    """k! phi_{k+1}(z) for k = 0..count-1, (N, count): phi_1 = (e^z - 1) / z and g_k / z; z < 0 finite."""
    out = [jnp.expm1(z) / z] + [g / z for g in g_functions(z, count - 1)]
    return jnp.stack(out[:count], axis=1)


@dataclasses.dataclass(frozen=True)
class SASolver(Solver):
    """SA-Solver (Xue et al. 2023): SA-Predictor of order p and SA-Corrector of order q, data prediction.

    Args:
      predictor_order: p in 1..4 (default 2, diffusers' default and its recommendation for guided sampling; 3 for
        unconditional sampling).
      corrector_order: q in 1..4, or 0 for the predictor alone (default 2; diffusers recommends 3 unconditionally).
      tau: the stochasticity (>= 0): 0 is the probability-flow ODE (deterministic), 1 the reverse SDE (default).
      tau_interval: (t_lo, t_hi), the start times of the steps that get tau (0 elsewhere); None: every step.
      variant: "published" (the order-2 modification of the published codes) or "exact".
      lower_order_final: `samplers.multistep`'s rule; default "always" (diffusers' rule, at every step count).

    Returns (from `samplers.sample`, which needs a key when tau > 0): the sample at ts[-1], num_steps model calls.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules, samplers
        >>> from fastsamplers.models.oracle import GaussianMixture
        >>> process = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> x_init = process.prior(jax.random.PRNGKey(1), (16, 2))
        >>> ts = schedules.get_timesteps("logsnr", process, 10, append_zero=True)
        >>> x, info = samplers.sample(gm.model_fn(process, "x0"), "sa_solver", process, x_init, ts, prediction="x0",
        ...                           key=jax.random.PRNGKey(2))
        >>> info["nfe"]
        10
    """

    name = "sa_solver"
    native = "x0"
    predictor_order: int = 2
    corrector_order: int = 2
    tau: float = 1.0
    tau_interval: tuple | None = None
    variant: str = "published"
    lower_order_final: bool | str = "always"
    traced = ("tau", "tau_interval")
    switches = ("tau",)

    def check(self) -> None:
        super().check()
        for option, allowed in (("predictor_order", ALLOWED_ORDERS), ("corrector_order", (0,) + ALLOWED_ORDERS)):
            value = getattr(self, option)
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(f"{self.name} supports {option} in {list(allowed)}, got {value!r}")
        tau = known(self.tau)
        if tau is not None and not (is_real(tau) and np.all(np.isfinite(tau)) and np.all(tau >= 0)):
            raise ValueError(f"{self.name}: tau must be a finite number >= 0, got {self.tau!r}")
        if self.tau_interval is not None:
            try:
                interval = tuple(self.tau_interval)
            except TypeError:
                interval = ()
            values = known(interval)
            if len(interval) != 2 or values is not None and not (
                    is_real(values) and np.all(np.isfinite(values)) and values[0] <= values[1]):
                raise ValueError(f"{self.name}: tau_interval must be (t_lo, t_hi) with t_lo <= t_hi, finite, "
                                 f"got {self.tau_interval!r}")
            object.__setattr__(self, "tau_interval", interval if values is None else tuple(map(float, values)))
        VARIANTS.check(self.variant, where=self.name)
        check_lower_order_final(self.name, self.lower_order_final)

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        # The deterministic (tau = 0) methods, whose order tests/test_order.py measures; lower_order_final off where
        # it would hide the formula's order. Then the stochastic default, checked in distribution.
        # (The predictor alone at order 2 with variant "exact" is DPM-Solver++(2M), tested in tests/test_sa_solver.py.)
        ode = dict(tau=0.0, lower_order_final=False)
        return (dict(predictor_order=2, corrector_order=2, **ode), dict(predictor_order=3, corrector_order=3, **ode),
                {})

    @property
    def order(self) -> int:
        return self.predictor_order

    @property
    def width(self) -> int:
        """The predictions a step combines: m_i and the past ones either the predictor or the corrector needs."""
        return max(self.predictor_order, self.corrector_order, 1)

    @property
    def convergence_order(self) -> int:
        nominal = min(self.corrector_order, self.predictor_order + 1) if self.corrector_order else self.predictor_order
        return min(nominal, 2) if self.lower_order_final == "always" else nominal  # samplers.multistep

    def check_grid(self, num_steps: int) -> None:
        if num_steps < self.predictor_order:
            raise ValueError(
                f"{self.name} of predictor order {self.predictor_order} needs a grid of at least "
                f"{self.predictor_order} steps to reach its order, got {num_steps}; use more steps or a lower order")

    def at_order(self, order: int) -> SASolver:
        return dataclasses.replace(self, predictor_order=order)

    def step_orders(self, num_steps: int) -> np.ndarray:
        """The predictor order of each step, (num_steps,) numpy ints (static)."""
        return step_orders(self.predictor_order, num_steps, self.lower_order_final)

    def corrector_orders(self, num_steps: int) -> np.ndarray:
        """The corrector order of the point x_{i+1} that step i makes, (num_steps,) numpy ints (static)."""
        i = np.arange(num_steps)
        orders = np.minimum(i + 2, self.corrector_order)
        if lowers_final_orders(self.lower_order_final, num_steps):
            orders = np.minimum(orders, num_steps - (i + 1) + 2)
        return orders

    def taus(self, ts: jax.Array) -> jax.Array:
        """tau of every step, from its start time."""
        s = ts[:-1]
        if self.tau_interval is None:
            return jnp.full_like(s, self.tau)
        lo, hi = self.tau_interval
        return jnp.where((s >= lo) & (s <= hi), self.tau, 0.0).astype(s.dtype)

    def _weights(self, nodes, orders, ch, alpha_t, new, old):
        """c alpha_t h w on the nodes (N, W) for the given orders (N,), with the published order-2 modification
        between the columns `new` and `old` (the two nodes of an order-2 row)."""
        width = nodes.shape[1]
        w = solve_moments(nodes, _moments(-ch, width), orders)
        if self.variant == "published":
            u_new = jnp.take_along_axis(nodes, jnp.full((nodes.shape[0], 1), new), axis=1)[:, 0]
            u_old = jnp.take_along_axis(nodes, jnp.full((nodes.shape[0], 1), old), axis=1)[:, 0]
            phi2 = _moments(-ch, 2)[:, 1]  # 1! phi_2(-c h)
            delta = jnp.where(orders == 2, (0.5 - phi2) / (u_new - u_old), 0.0)
            w = w.at[:, new].add(delta).at[:, old].add(-delta)
        return w * (ch * alpha_t)[:, None]

    def coefficients(self, process: Process, ts: jax.Array) -> PCCoefficients:
        n = ts.shape[0] - 1
        width = self.width
        lam, alpha, sigma = process.log_snr(ts), process.alpha(ts), process.sigma(ts)
        h = lam[1:] - lam[:-1]
        finite = jnp.isfinite(h)
        h_safe = jnp.where(finite, h, 1.0)
        tau2 = self.taus(ts) ** 2
        ch = (1.0 + tau2) * h_safe
        pred_orders, corr_orders = jnp.asarray(self.step_orders(n)), jnp.asarray(self.corrector_orders(n))
        pred_orders = jnp.where(finite, pred_orders, 1)
        # Normalised nodes of step i: u_m = (lambda_{i-m} - lambda_i) / h_i, m = 0..width-1 (clamped at the start,
        # unused there); the corrector's nodes are 1 (the new point) followed by the same u_0..u_{width-2}.
        m = np.arange(width)
        index = np.arange(n)[:, None] - m[None, :]
        valid = index >= 0  # the warm-up orders use valid nodes only; solve_moments ignores the others
        u = jnp.where(valid, (lam[np.clip(index, 0, None)] - lam[:-1, None]) / h_safe[:, None],
                      -1.0 - jnp.asarray(m, h.dtype)[None, :])
        b = self._weights(u, pred_orders, ch, alpha[1:], 0, 1)
        # A step to sigma = 0: x0_hat (the limit of the first-order update).
        b = jnp.where(finite[:, None], b, jnp.where(m == 0, alpha[1:, None], 0.0))
        a = jnp.where(finite, jnp.exp(-tau2 * h_safe) * sigma[1:] / sigma[:-1], 0.0)
        noise = sigma[1:] * jnp.sqrt(-jnp.expm1(-2.0 * tau2 * h_safe))
        dtype = h.dtype
        keep, prev = jnp.ones(n, dtype), jnp.zeros(n, dtype)
        c, prev_noise = jnp.zeros_like(b), jnp.zeros(n, dtype)
        if self.corrector_order:
            corr_orders = jnp.maximum(corr_orders, 1)
            u_corr = jnp.concatenate([jnp.ones_like(h)[:, None], u[:, : width - 1]], axis=1)
            corrected = self._weights(u_corr, corr_orders, ch, alpha[1:], 0, 1)
            # Row j corrects the point x_j of step j - 1, with that step's a, noise and weights; row 0 has none.
            keep = (jnp.arange(n) == 0).astype(dtype)
            prev = jnp.concatenate([jnp.zeros(1, dtype), a[:-1]])
            c = jnp.concatenate([jnp.zeros((1, width), dtype), corrected[:-1]], axis=0)
            prev_noise = jnp.concatenate([jnp.zeros(1, dtype), noise[:-1]])
        if not self.stochastic:
            return PCCoefficients(a=a, b=b, keep=keep, prev=prev, c=c)
        return PCCoefficients(a=a, b=b, keep=keep, prev=prev, c=c, noise=noise, prev_noise=prev_noise)

    def init(self, x: jax.Array) -> tuple[jax.Array, ...]:
        return pc_init(x, self.width - 1, self.stochastic)

    def past_state(self, xs: list[jax.Array], preds: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        return pc_past_state(xs, preds, self.width - 1)

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple[jax.Array, ...],
             inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        return pc_step(model, x, state, inp)
