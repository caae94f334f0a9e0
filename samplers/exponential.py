"""Building blocks of the exponential integrators in lambda = log(alpha / sigma): the phi functions, the small
moment (Vandermonde) solves behind their order conditions, and the one step of a linear predictor-corrector
multistep method, shared by UniP and the UniC wrapper (samplers/unipc.py) and SA-Solver (samplers/sa_solver.py).

phi_{k+1}(z) = integral_0^1 e^{(1 - v) z} v^k / k! dv, so that integral_0^h e^{-c (h - u)} u^k du = k! h^{k+1}
phi_{k+1}(-c h); g_k(z) = k! z phi_{k+1}(z).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from fastsamplers.samplers import dualfast
from fastsamplers.samplers.base import Model, StepInputs, cast_like

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process


class PCCoefficients(NamedTuple):
    """One step of a linear predictor-corrector multistep method, on the predictions m = (m_i, m_{i-1}, ...,
    m_{i-W+1}) (newest first; m_i evaluated at the *predicted* x_i):

    x_i^c = keep_i x_i + prev_i x_{i-1}^c + c_i . m (+ prev_noise_i z_{i-1})
                          (the corrector of the point x_i that step i - 1 predicted, with that step's noise z_{i-1};
                           at step 0, or without a corrector, keep = 1, prev = c = 0 and x_i^c = x_i)
    x_{i+1} = a_i x_i^c + b_i . m (+ noise_i z_i)    (the predictor)

    a, keep, prev: (N,); b, c: (N, W); noise, prev_noise: (N,) for a stochastic method, None otherwise.
    """

    a: jax.Array
    b: jax.Array
    keep: jax.Array
    prev: jax.Array
    c: jax.Array
    noise: jax.Array | None = None
    prev_noise: jax.Array | None = None
    dualfast: jax.Array | None = None  # (N,): the weight of DualFast's eps_i - eps_tau (samplers.dualfast)


def g_functions(z: jax.Array, count: int) -> list[jax.Array]:
    """g_k(z) = k! z phi_{k+1}(z) = k! sum_{j>=1} z^j / (j + k)! for k = 1..count: by its series where |z| < 1 (no
    cancellation), by the recursion g_k / k! = (g_{k-1} / (k-1)!) / z - 1 / k! (with g_0 = e^z - 1) elsewhere."""
    small = jnp.abs(z) < 1.0
    z_series = jnp.where(small, z, 0.0)
    z_closed = jnp.where(small, -1.0, z)
    out, u = [], jnp.expm1(z_closed)  # u_k = z phi_{k+1}(z); u_0 = e^z - 1
    for k in range(1, count + 1):
        u = u / z_closed - 1.0 / math.factorial(k)
        series = jnp.zeros_like(z_series)
        for j in range(20, 0, -1):  # Horner: z (1/(1+k)! + z (1/(2+k)! + ...))
            series = z_series * (1.0 / math.factorial(j + k) + series)
        out.append(math.factorial(k) * jnp.where(small, series, u))
    return out



def phi_functions(z: jax.Array, count: int) -> list[jax.Array]:
    """phi_1(z), ..., phi_count(z), phi_{k+1}(z) = sum_{j>=0} z^j / (j + k)! (module docstring): by the series where
    |z| < 1 (no cancellation), by the recursion phi_{k+1} = (phi_k - 1/k!) / z (phi_0 = e^z) elsewhere."""
    small = jnp.abs(z) < 1.0
    z_series = jnp.where(small, z, 0.0)
    z_closed = jnp.where(small, 1.0, z)
    out, phi = [], jnp.exp(z_closed)
    for k in range(count):
        phi = (phi - 1.0 / math.factorial(k)) / z_closed
        series = jnp.zeros_like(z_series)
        for j in range(20, 0, -1):  # Horner: 1/k'! + z (1/(k'+1)! + ...), k' = k + 1
            series = z_series * (1.0 / math.factorial(j + k + 1) + series)
        out.append(jnp.where(small, series + 1.0 / math.factorial(k + 1), phi))
    return out


def solve_moments(nodes: jax.Array, moments: jax.Array, size: jax.Array) -> jax.Array:
    """rho with sum_m rho_m nodes_m^k = moments_k, k = 0..size-1, over the first `size` nodes of each row (a
    Vandermonde system, padded with the identity to the fixed width of the table; 0 beyond `size`).

    nodes, moments: (N, W); size: (N,) ints in 0..W. Returns (N, W).
    """
    width = nodes.shape[1]
    if width == 0:
        return nodes
    k = jnp.arange(width)
    powers = jnp.stack([nodes**j for j in range(width)], axis=1)  # (N, k, m): nodes_m^k
    active = k[None, :] < size[:, None]
    mask = active[:, :, None] & active[:, None, :]
    matrix = jnp.where(mask, powers, jnp.eye(width, dtype=nodes.dtype)[None])
    rhs = jnp.where(active, moments, 0.0)
    return jnp.linalg.solve(matrix, rhs[:, :, None])[:, :, 0]



def phi1(h: jax.Array) -> jax.Array:
    """e^{-h} - 1 (= -h phi_1(-h)), and its limit -1 at h = inf (a step to sigma = 0)."""
    finite = jnp.isfinite(h)
    return jnp.where(finite, jnp.expm1(-jnp.where(finite, h, 1.0)), -1.0)


def pc_init(x: jax.Array, width: int, stochastic: bool = False) -> tuple[jax.Array, ...]:
    """(x_{i-1}^c, the predictions m_{i-1}, ..., m_{i-width}[, z_{i-1}]): zeros before the first step."""
    state = (jnp.zeros_like(x), jnp.zeros((width,) + x.shape, x.dtype))
    return state + (jnp.zeros_like(x),) if stochastic else state


def pc_past_state(xs: list[jax.Array], preds: list[jax.Array], width: int) -> tuple[jax.Array, jax.Array]:
    """The (deterministic) state carried into grid point k = len(xs) - 1: the exact x_{k-1} and m_{k-1}, ..., m_0."""
    x_prev = xs[-2] if len(xs) > 1 else jnp.zeros_like(xs[-1])
    pad = [jnp.zeros_like(xs[-1])] * (width - len(preds))
    history = list(reversed(preds))[:width] + pad
    return x_prev, jnp.stack(history) if history else jnp.zeros((0,) + xs[-1].shape, xs[-1].dtype)


class _Ordered(Protocol):
    """What `PCSteps` needs of the solver it is mixed into."""

    @property
    def order(self) -> int: ...


class PCSteps:
    """`init`, `past_state` and `step` of a deterministic solver that runs `pc_step` with a history of `order`
    predictions (UniP, UniC): mixed into a `Solver`.

    With DualFast on (`samplers.dualfast`; the options of `dualfast_owner`: the solver, or UniC's predictor) the
    state also carries the reference noise prediction eps_tau and the last step's increment: step i adds
    w_i (eps_i - eps_tau) to the predicted x_{i+1} (its first-order term alpha_{i+1} (1 - e^{-h}) m_i), and the
    corrector of x_{i+1}, whose first-order term holds the same m_i, adds the same increment again (it replaces
    the predicted point: keep = 0)."""

    def dualfast_owner(self) -> Any:
        """The solver whose DualFast options this one runs: itself (UniC: its predictor)."""
        return self

    def _dualfast(self) -> Any:
        owner = self.dualfast_owner()
        return owner if getattr(owner, "uses_dualfast", False) else None

    def init(self: _Ordered, x: jax.Array) -> tuple[jax.Array, ...]:
        state = pc_init(x, self.order)
        return state + (jnp.zeros_like(x), jnp.zeros_like(x)) if self._dualfast() is not None else state

    def past_state(self: _Ordered, xs: list[jax.Array], preds: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        if self._dualfast() is not None:
            raise NotImplementedError("past_state with DualFast on: its state holds an earlier step's increment and "
                                      "reference prediction, which exact past values do not define")
        return pc_past_state(xs, preds, self.order)

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple[jax.Array, ...],
             inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        owner = self._dualfast()
        if owner is None:
            return pc_step(model, x, state, inp)
        pred = model(x, inp.s).astype(x.dtype)
        increment, eps_ref = dualfast.correction("x0", pred, x, inp.s, state[2], inp.i == 0, inp.coef.dualfast,
                                                 owner.dualfast_ref, process)
        x_next, (x_corrected, history) = pc_update(pred, x, state[:2], inp, (1 - inp.coef.keep) * state[3],
                                                   increment)
        return x_next, (x_corrected, history, cast_like(eps_ref, x), cast_like(increment, x))


def pc_step(model: Model, x: jax.Array, state: tuple[jax.Array, ...],
            inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """One step of the scan on a `PCCoefficients` row: evaluate m_i at the predicted x_i, correct x_i, predict x_{i+1}
    from the corrected point (a stochastic method reuses the predictor's noise in the corrector, as SA-Solver does)."""
    return pc_update(model(x, inp.s).astype(x.dtype), x, state, inp)


def pc_update(pred: jax.Array, x: jax.Array, state: tuple[jax.Array, ...], inp: StepInputs,
              to_corrected: jax.Array | None = None,
              to_next: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """`pc_step` given the model's prediction m_i at x_i; to_corrected and to_next are added to x_i^c and x_{i+1}
    (DualFast's correction of the two first-order terms, `PCSteps`)."""
    coef = inp.coef
    x_prev, history = state[:2]
    full = jnp.concatenate([pred[None], history], axis=0)  # m_i, m_{i-1}, ..., m_{i-width}
    x_corrected = coef.keep * x + coef.prev * x_prev + jnp.tensordot(coef.c, full, axes=1)
    if to_corrected is not None:
        x_corrected = x_corrected + to_corrected
    if coef.noise is None:
        x_next = coef.a * x_corrected + jnp.tensordot(coef.b, full, axes=1)
        if to_next is not None:
            x_next = x_next + to_next
        return cast_like(x_next, x), (cast_like(x_corrected, x), full[:-1])
    x_corrected = x_corrected + coef.prev_noise * state[2]
    z = inp.normal(x)
    x_next = coef.a * x_corrected + jnp.tensordot(coef.b, full, axes=1) + coef.noise * z
    return cast_like(x_next, x), (cast_like(x_corrected, x), full[:-1], z)
