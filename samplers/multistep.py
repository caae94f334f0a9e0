"""Linear multistep samplers: x_{i+1} = a_i x_i + sum_j b_ij p_{i-j}.

p is the solver's native prediction at past grid points (newest first, a fixed-shape history of `order` entries).
Every solver here differs only in its coefficient table (a, b), computed once per time grid, outside the loop:

- ddim        first-order exponential integrator (DDIM, Song et al. 2021).
- deis_tab    tAB-DEIS (Zhang & Chen 2022): eps extrapolated by a Lagrange polynomial in t, integrated exactly
              against the exponential-integrator kernel. The paper's tAB-r uses r + 1 points: order = r + 1.
- deis_rhoab  rhoAB-DEIS: the same in the DEIS time rho = gamma = sigma / alpha, where the ODE is dy/dgamma = eps
              and the integrals are polynomial (exact by Gauss-Legendre quadrature).
- ipndm       iPNDM: fixed Adams-Bashforth weights on eps, then a DDIM step (DEIS paper, section 4).
- dpmpp_2m / dpmpp_3m
              DPM-Solver++ multistep with data prediction (Lu et al. 2022), lower-order final steps below 15 steps.
              The 3M update as published (DPM-Solver's code, diffusers, k-diffusion) weights its second difference
              D2 = h^2 x0''/2 by -alpha phi3, half of what the Taylor expansion of the exact integral needs
              (-alpha phi3 h^2 x0''); its local error is then O(h^3) and it converges with order 2, not 3 (measured
              in tests/test_order.py). `variant="published"` (default) reproduces it coefficient for coefficient;
              `variant="third_order"` doubles that weight and converges with order 3.

Warm-up and final steps, one rule for every multistep solver (these, `unipc` and `sa_solver`): step i uses order
min(i + 1, order) (warm-up), and `lower_order_final` says whether the last steps drop to orders ..., 2, 1 (step i
then uses at most num_steps - i):

  False      never;
  True       on grids of fewer than 15 steps (`LOWER_ORDER_FINAL_BELOW`; DPM-Solver's rule);
  "always"   on every grid (the rule of UniPC's and SA-Solver's published codes and of diffusers'); the final
             first-order step then caps the convergence order at 2.

Defaults follow each paper: True for DPM-Solver++, "always" for UniPC and SA-Solver, False for DEIS and iPNDM. A final
step to sigma = 0 (ts[-1] = 0) is first order for DPM-Solver++ (it returns x0_hat exactly); the eps-based solvers
integrate to gamma = 0 with their usual weights.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers import dualfast as _dualfast
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

LOWER_ORDER_FINAL_BELOW = 15
# DPM-Solver++'s named options; their sentences name the solver (`where`).
SECOND_ORDER_RULES = Registry.of_names("solver_type", ("midpoint", "heun"), ordered=True,
                                       unknown="{where}: {kind} must be {alternatives}, got {name!r}")
DPM_VARIANTS = Registry.of_names("variant", ("published", "third_order"), ordered=True,
                                 unknown="{where} {kind} must be {alternatives}, got {name!r}")


def check_lower_order_final(name: str, value: Any) -> None:
    """Raise ValueError unless `value` is one of lower_order_final's values (module docstring)."""
    if not (isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and value == "always")):
        raise ValueError(f"{name} option lower_order_final must be True or False, or 'always' (True: lower orders on "
                         f"the final steps of grids below {LOWER_ORDER_FINAL_BELOW} steps, DPM-Solver's rule; "
                         f"'always': on every grid; False: never); valid values: True, 'always' or False; got "
                         f"{value!r}")


def lowers_final_orders(lower_order_final: bool | str, num_steps: int) -> bool:
    """Whether the last steps of a grid of num_steps steps drop their orders, by lower_order_final's rule."""
    if isinstance(lower_order_final, str):  # "always"
        return True
    return bool(lower_order_final) and num_steps < LOWER_ORDER_FINAL_BELOW


def step_orders(order: int, num_steps: int, lower_order_final: bool | str) -> np.ndarray:
    """The order of each step of a grid, (num_steps,) numpy ints: min(i + 1, order) (warm-up), and at most
    num_steps - i where lower_order_final lowers the final orders."""
    orders = np.minimum(np.arange(1, num_steps + 1), order)
    if lowers_final_orders(lower_order_final, num_steps):
        orders = np.minimum(orders, np.arange(num_steps, 0, -1))
    return orders


class MultistepCoefficients(NamedTuple):
    """x_{i+1} = a_i x_i + sum_j b_ij p_{i-j} (+ c_i z_i): a (num_steps,), b (num_steps, order), and for a
    stochastic solver c (num_steps,), the weight of the step's standard normal noise z_i."""

    a: jax.Array
    b: jax.Array
    c: jax.Array | None = None
    dualfast: jax.Array | None = None  # (num_steps,): the weight of DualFast's eps_s - eps_tau (samplers.dualfast)


@dataclasses.dataclass(frozen=True)
class Multistep(Solver):
    """A solver that carries past predictions: its order, its warm-up and its lower-order final steps (the rule of
    the module docstring), and its update's coefficient `table`."""

    order: int = 1
    lower_order_final: bool | str = False
    allowed_orders: ClassVar[tuple[int, ...]] = (1,)

    def check(self) -> None:
        super().check()
        if isinstance(self.order, bool) or self.order not in self.allowed_orders:
            raise ValueError(f"{self.name} supports order in {list(self.allowed_orders)}, got {self.order!r}")
        check_lower_order_final(self.name, self.lower_order_final)

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return tuple(dict(order=k) for k in cls.allowed_orders)

    @property
    def method_order(self) -> int:
        """The global order of the update itself, with exact starting values and no lower-order final steps."""
        return self.order

    @property
    def convergence_order(self) -> int:
        # "always" ends every grid with a first-order step (local error O(h^2)): global order at most 2. True drops
        # the order below 15 steps only, so it leaves the asymptotic order alone.
        return min(self.method_order, 2) if self.lower_order_final == "always" else self.method_order

    def check_grid(self, num_steps: int) -> None:
        if num_steps < self.order:
            raise ValueError(
                f"{self.name} of order {self.order} needs a grid of at least {self.order} steps to reach its order, "
                f"got {num_steps}; use more steps or a lower order"
            )

    def at_order(self, order: int) -> Multistep:
        return dataclasses.replace(self, order=order)  # `check` refuses an order the method does not have

    def step_orders(self, num_steps: int) -> np.ndarray:
        """The order of each step's update (`step_orders`), static."""
        return step_orders(self.order, num_steps, self.lower_order_final)

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, ...]:
        """(a (N,), b (N, order)) of the update x_{i+1} = a_i x_i + sum_j b_ij p_{i-j} on the grid ts with the step
        orders `orders` (numpy, (N,)), and c (N,), the weight of the step's noise, for a stochastic solver."""
        raise NotImplementedError(f"{type(self).__name__} does not define its coefficient table")


@dataclasses.dataclass(frozen=True)
class LinearMultistep(_dualfast.DualFastOptions, Multistep):
    """x_{i+1} = a_i x_i + sum_j b_ij p_{i-j} (+ c_i z_i), with a history of the last `order` predictions.

    DualFast (`samplers.dualfast.DualFastOptions`, deterministic solvers): `dualfast`, `dualfast_ref` and
    `dualfast_ramp` add DualFast's correction to the first-order term at no extra model call."""

    def check(self) -> None:
        super().check()
        self.check_dualfast()
        if self.uses_dualfast and self.stochastic:
            raise ValueError(f"{self.name}: dualfast corrects the deterministic first-order term; use it with eta = 0")

    def coefficients(self, process: Process, ts: jax.Array) -> MultistepCoefficients:
        coef = MultistepCoefficients(*self.table(process, ts, self.step_orders(ts.shape[0] - 1)))
        if not self.uses_dualfast:
            return coef
        return coef._replace(dualfast=_dualfast.weights(self.dualfast, self.dualfast_ramp, process, ts))

    def init(self, x: jax.Array) -> Any:
        history = jnp.zeros((self.order,) + x.shape, x.dtype)
        return (history, jnp.zeros_like(x)) if self.uses_dualfast else history

    def step(self, model: Model, process: Process, x: jax.Array, state: Any,
             inp: StepInputs) -> tuple[jax.Array, Any]:
        history = state[0] if self.uses_dualfast else state
        pred = model(x, inp.s).astype(x.dtype)
        history = jnp.concatenate([pred[None], history[:-1]], axis=0)
        x_next = inp.coef.a * x + jnp.tensordot(inp.coef.b, history, axes=1)
        if inp.coef.c is not None:
            x_next = x_next + inp.coef.c * inp.normal(x)
        if not self.uses_dualfast:
            return cast_like(x_next, x), history
        increment, eps_ref = _dualfast.correction(self.native, pred, x, inp.s, state[1], inp.i == 0,
                                                  inp.coef.dualfast, self.dualfast_ref, process)
        return cast_like(x_next + increment, x), (history, cast_like(eps_ref, x))


def _past(values, order):
    """(N, order) matrix whose row i holds values[i], values[i-1], ... (clamped at 0 where the history is short)."""
    n = values.shape[0] - 1
    idx = np.clip(np.arange(n)[:, None] - np.arange(order)[None, :], 0, None)
    return values[idx]


def lagrange_basis(u: jax.Array, nodes: jax.Array, orders: np.ndarray) -> jax.Array:
    """Lagrange basis polynomials through the first orders[i] nodes of each row, evaluated at u.

    u: (N, Q) evaluation points; nodes: (N, K); orders: (N,) ints. Returns (N, Q, K), zero for j >= orders[i].
    """
    k = nodes.shape[1]
    j = np.arange(k)
    active = j[None, :] < jnp.asarray(orders)[:, None]  # (N, K)
    use = active[:, :, None] & active[:, None, :] & (j[:, None] != j[None, :])[None]  # (N, Kj, Km)
    den = jnp.where(use, nodes[:, :, None] - nodes[:, None, :], 1.0)
    num = u[:, :, None, None] - nodes[:, None, None, :]  # (N, Q, 1, Km)
    factors = jnp.where(use[:, None], num / den[:, None], 1.0)
    return jnp.prod(factors, axis=-1) * active[:, None, :]


def integrate_lagrange_in_gamma(process: Process, ts: jax.Array, orders: np.ndarray, nodes: jax.Array,
                                u_of_gamma: Callable[[jax.Array], jax.Array], num_quad: int) -> jax.Array:
    """w_ij = integral over gamma from gamma(s_i) to gamma(t_i) of L_ij(u(gamma)), by Gauss-Legendre in gamma.

    The integrand is smooth in gamma for every process here (t(gamma) has no singularity on a step), so a fixed rule
    converges fast; for rhoAB (u = gamma) it is exact.
    """
    x_q, w_q = np.polynomial.legendre.leggauss(num_quad)
    gamma = process.gamma(ts)
    mid, half = 0.5 * (gamma[1:] + gamma[:-1]), 0.5 * (gamma[1:] - gamma[:-1])
    u = u_of_gamma(mid[:, None] + half[:, None] * jnp.asarray(x_q, mid.dtype)[None, :])
    basis = lagrange_basis(u, nodes, orders)
    return jnp.einsum("nqk,q->nk", basis, jnp.asarray(w_q, mid.dtype)) * half[:, None]


@dataclasses.dataclass(frozen=True)
class _EpsMultistep(LinearMultistep):
    """x_t = (alpha_t / alpha_s) x_s + alpha_t sum_j w_ij eps_{i-j}: the exact solution of dy/dgamma = eps with eps
    replaced by its interpolant, for whatever weights w the subclass gives."""

    native = "eps"

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, ...]:
        alpha = process.alpha(ts)
        w = self.weights(process, ts, orders)
        return alpha[1:] / alpha[:-1], alpha[1:, None] * w

    def weights(self, process: Process, ts: jax.Array, orders: np.ndarray) -> jax.Array:
        """w (N, order): the weights of the past noise predictions in each step (module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its weights")


@dataclasses.dataclass(frozen=True)
class DDIM(_EpsMultistep):
    """DDIM; with `eta` > 0 the stochastic DDIM of Song et al. (2021, eq. 12): the step's noise has std
    sigma_eta = eta sigma_t sqrt(1 - e^{-2h}) (h = lambda_t - lambda_s; in alphas_cumprod terms
    eta sqrt((1 - a_t)/(1 - a_s)) sqrt(1 - a_s/a_t)), and x_t = alpha_t x0_hat + sqrt(sigma_t^2 - sigma_eta^2) eps_hat
    + sigma_eta z. eta = 1 is DDPM's ancestral sampler; eta = 0 is the deterministic DDIM, bit for bit."""

    name = "ddim"
    eta: float = 0.0
    traced = switches = ("eta", "dualfast")

    def check(self) -> None:
        super().check()
        _check_eta(self.name, self.eta, upper=1.0)

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return super().variants() + (dict(eta=1.0),)

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, ...]:
        if not self.stochastic:
            return super().table(process, ts, orders)
        alpha, sigma, lam = process.alpha(ts), process.sigma(ts), process.log_snr(ts)
        h = lam[1:] - lam[:-1]
        sigma_eta = self.eta * sigma[1:] * jnp.sqrt(-jnp.expm1(-2.0 * h))
        a = alpha[1:] / alpha[:-1]
        b = jnp.sqrt(jnp.maximum(sigma[1:] ** 2 - sigma_eta**2, 0.0)) - a * sigma[:-1]
        return a, b[:, None], sigma_eta

    def weights(self, process: Process, ts: jax.Array, orders: np.ndarray) -> jax.Array:
        gamma = process.gamma(ts)
        return (gamma[1:] - gamma[:-1])[:, None]


@dataclasses.dataclass(frozen=True)
class EulerAncestral(_EpsMultistep):
    """k-diffusion's ancestral Euler sampler in the process-free noise level gamma = sigma / alpha: step down to
    gamma_down = sqrt(gamma_t^2 - gamma_up^2) with the noise prediction, then add gamma_up z, with
    gamma_up = min(gamma_t, eta gamma_t sqrt(1 - gamma_t^2 / gamma_s^2)) (the posterior std at eta = 1).
    eta = 0 is DDIM."""

    name = "euler_ancestral"
    eta: float = 1.0
    traced = switches = ("eta", "dualfast")

    def check(self) -> None:
        super().check()
        _check_eta(self.name, self.eta)

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, ...]:
        alpha, gamma = process.alpha(ts), process.gamma(ts)
        g_s, g_t = gamma[:-1], gamma[1:]
        up = jnp.minimum(g_t, self.eta * g_t * jnp.sqrt(jnp.maximum(1.0 - (g_t / g_s) ** 2, 0.0)))
        down = jnp.sqrt(jnp.maximum(g_t**2 - up**2, 0.0))
        a, b = alpha[1:] / alpha[:-1], (alpha[1:] * (down - g_s))[:, None]
        return (a, b, alpha[1:] * up) if self.stochastic else (a, b)


def _check_eta(name, eta, upper=None):
    values = known(eta)
    if values is not None and not (is_real(values) and np.all(np.isfinite(values)) and np.all(values >= 0) and (
            upper is None or np.all(values <= upper))):
        bound = f" and at most {upper}" if upper is not None else ""
        raise ValueError(f"{name}: eta must be a finite number >= 0{bound}, got {eta!r}")


@dataclasses.dataclass(frozen=True)
class DEISTab(_EpsMultistep):
    """tAB-DEIS; `num_quad` Gauss-Legendre nodes per step for the coefficient integrals."""

    name = "deis_tab"
    order: int = 3
    num_quad: int = 64
    allowed_orders = (1, 2, 3, 4)

    def weights(self, process: Process, ts: jax.Array, orders: np.ndarray) -> jax.Array:
        return integrate_lagrange_in_gamma(process, ts, orders, _past(ts, self.order), process.t_of_gamma,
                                           self.num_quad)


@dataclasses.dataclass(frozen=True)
class DEISRhoAB(_EpsMultistep):
    name = "deis_rhoab"
    order: int = 3
    allowed_orders = (1, 2, 3, 4)

    def weights(self, process: Process, ts: jax.Array, orders: np.ndarray) -> jax.Array:
        gamma = process.gamma(ts)
        # The interpolant is a polynomial of degree < 4 in gamma: 4 Gauss-Legendre nodes integrate it exactly.
        return integrate_lagrange_in_gamma(process, ts, orders, _past(gamma, self.order), lambda g: g, 4)


IPNDM_WEIGHTS = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [3.0 / 2, -1.0 / 2, 0.0, 0.0],
    [23.0 / 12, -16.0 / 12, 5.0 / 12, 0.0],
    [55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24],
])


@dataclasses.dataclass(frozen=True)
class IPNDM(_EpsMultistep):
    """iPNDM: its fixed weights assume equal steps; on other grids it is a (good) heuristic."""

    name = "ipndm"
    order: int = 4
    allowed_orders = (1, 2, 3, 4)

    def weights(self, process: Process, ts: jax.Array, orders: np.ndarray) -> jax.Array:
        gamma = process.gamma(ts)
        fixed = jnp.asarray(IPNDM_WEIGHTS[orders - 1, : self.order], gamma.dtype)
        return (gamma[1:] - gamma[:-1])[:, None] * fixed


def _phi(h):
    """phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2, with series for small h (no cancellation) and
    the limits at h = inf (a step to sigma = 0)."""
    finite = jnp.isfinite(h)
    h_safe = jnp.where(finite & (h != 0), h, 1.0)
    phi1 = jnp.where(finite, jnp.expm1(-h_safe), -1.0)
    small = jnp.abs(h) < 1e-2
    phi2 = jnp.where(small, h / 2 - h**2 / 6 + h**3 / 24, phi1 / h_safe + 1.0)
    phi3 = jnp.where(small, -h / 6 + h**2 / 24 - h**3 / 120, phi2 / h_safe - 0.5)
    return phi1, jnp.where(finite, phi2, 1.0), jnp.where(finite, phi3, 0.0)


def dpmpp_weights(h: jax.Array, h_prev: jax.Array, h_prev2: jax.Array, step_order: jax.Array, width: int,
                  h_phi: jax.Array | None = None, second_order_rule: str = "midpoint",
                  variant: str = "published") -> jax.Array:
    """b (..., width): the weights of the x0 predictions (m0, m1, m2) at lambda_i, lambda_i - h_prev,
    lambda_i - h_prev - h_prev2 in a DPM-Solver++ step of size h in lambda and order step_order (1-3), so that
    x_t = (sigma_t / sigma_s) x_s + alpha_t b . m (Lu et al. 2022, Alg. 2 and its 3M form). h_phi is the step the phi
    functions see (the SDE's (1 + eta) h; default h), possibly inf (a step to sigma = 0); h, h_prev, h_prev2 finite
    and nonzero where the order uses them. Shared by `_DPMSolverPP.table` and AMED's plugin (samplers/amed.py),
    whose points are per-sample."""
    phi1, phi2, phi3 = (p[..., None] for p in _phi(h if h_phi is None else h_phi))
    e0, e1, e2 = (jnp.asarray(np.eye(3)[k], h.dtype).reshape((1,) * jnp.ndim(h) + (3,)) for k in range(3))
    r0 = jnp.where(step_order >= 2, h_prev / h, 1.0)[..., None]
    r1 = jnp.where(step_order >= 3, h_prev2 / h, 1.0)[..., None]
    # Coefficient vectors on (m0, m1, m2), the x0 predictions at t_i, t_{i-1}, t_{i-2}.
    first = -phi1 * e0
    if second_order_rule == "midpoint":
        second = -phi1 * (e0 + 0.5 * (e0 - e1) / r0)
    else:
        second = -phi1 * e0 + phi2 * (e0 - e1) / r0
    d1_0, d1_1 = (e0 - e1) / r0, (e1 - e2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    d2_weight = 2.0 if variant == "third_order" else 1.0
    third = -phi1 * e0 + phi2 * d1 - d2_weight * phi3 * d2
    o = jnp.asarray(step_order)[..., None]
    return jnp.where(o == 1, first, jnp.where(o == 2, second, third))[..., :width]


@dataclasses.dataclass(frozen=True)
class _DPMSolverPP(LinearMultistep):
    """DPM-Solver++ multistep. With `corrector=True` the registry wraps it in UniC (`samplers.unic`): its 2M update is
    UniP-2 bh2, so dpmpp_2m with UniC is UniPC-2 bh2 (under the same lower_order_final rule)."""

    native = "x0"
    lower_order_final: bool | str = True
    variant: str = "published"
    eta = 0.0  # the SDE variants' field: 0 is the probability-flow ODE
    traced = switches = ("eta", "dualfast")

    def check(self) -> None:
        super().check()
        _check_eta(self.name, self.eta)
        SECOND_ORDER_RULES.check(self.second_order_rule, where=self.name)
        DPM_VARIANTS.check(self.variant, where=self.name)
        if self.variant == "third_order" and self.order < 3:
            raise ValueError("variant='third_order' changes only the 3M update; use it with dpmpp_3m")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        orders = super().variants()
        return orders + tuple(dict(o, variant="third_order") for o in orders if o["order"] == 3)

    @property
    def second_order_rule(self) -> str:
        """The order-2 update: DPM-Solver's midpoint form ("midpoint"), or "heun" (the phi2 weight)."""
        return "midpoint"

    @property
    def method_order(self) -> int:
        return 2 if self.order == 3 and self.variant == "published" else self.order  # the published 3M: module doc

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, ...]:
        lam, alpha, sigma = process.log_snr(ts), process.alpha(ts), process.sigma(ts)
        n = ts.shape[0] - 1
        h = lam[1:] - lam[:-1]
        # A step to sigma = 0 (h = inf) must be first order: it then returns x0_hat exactly.
        step_order = jnp.where(jnp.isinf(h), 1, jnp.asarray(orders))
        h_safe = jnp.where(jnp.isfinite(h), h, 1.0)
        h_prev = jnp.concatenate([jnp.ones(1, h.dtype), h_safe[:-1]])
        h_prev2 = jnp.concatenate([jnp.ones(2, h.dtype), h_safe[:-2]])[:n]
        # The SDE (Lu et al. 2022, k-diffusion's dpmpp_*_sde) integrates the x0 terms over (1 + eta) h and damps x by
        # e^{-eta h}. eta given as 0 is static (samplers.pytrees.TracedOptions): the ODE's coefficients, bit for bit.
        b = dpmpp_weights(h_safe, h_prev, h_prev2, step_order, self.order,
                          h * (1.0 + self.eta) if self.stochastic else h, self.second_order_rule, self.variant)
        a = sigma[1:] / sigma[:-1]
        if not self.stochastic:
            return a, alpha[1:, None] * b
        return (a * jnp.exp(-self.eta * h), alpha[1:, None] * b,
                sigma[1:] * jnp.sqrt(-jnp.expm1(-2.0 * self.eta * h)))


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M(_DPMSolverPP):
    name = "dpmpp_2m"
    order: int = 2
    allowed_orders = (2,)


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3M(_DPMSolverPP):
    name = "dpmpp_3m"
    order: int = 3
    allowed_orders = (3,)


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2MSDE(_DPMSolverPP):
    """DPM-Solver++(2M) SDE: x_t = (sigma_t / sigma_s) e^{-eta h} x + alpha_t (1 - e^{-(1+eta) h}) D
    + sigma_t sqrt(1 - e^{-2 eta h}) z, D the 2M combination of the x0 predictions (`solver_type` "midpoint", the
    default of k-diffusion and diffusers, or "heun"). eta = 0 is DPM-Solver++(2M) (midpoint)."""

    name = "dpmpp_2m_sde"
    order: int = 2
    allowed_orders = (2,)
    eta: float = 1.0
    solver_type: str = "midpoint"

    @property
    def second_order_rule(self) -> str:
        return self.solver_type

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return (dict(order=2), dict(order=2, solver_type="heun"), dict(order=2, eta=0.0),
                dict(order=2, eta=0.0, solver_type="heun"))


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3MSDE(_DPMSolverPP):
    """DPM-Solver++(3M) SDE as k-diffusion's `sample_dpmpp_3m_sde`: the 3M update with (1 + eta) h in its phi
    functions, x damped by e^{-eta h}, noise sigma_t sqrt(1 - e^{-2 eta h}) z, and the "heun" (phi2) rule on its
    order-2 warm-up and final steps. Like the published 3M ODE its second difference has half the Taylor weight
    (`variant="third_order"` restores it); eta = 0 is then a deterministic 3M."""

    name = "dpmpp_3m_sde"
    order: int = 3
    allowed_orders = (3,)
    eta: float = 1.0

    @property
    def second_order_rule(self) -> str:
        return "heun"  # k-diffusion's sample_dpmpp_3m_sde

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return (dict(order=3), dict(order=3, eta=0.0), dict(order=3, eta=0.0, variant="third_order"))
