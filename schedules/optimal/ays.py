"""Align Your Steps (Sabour et al., ICML 2024): a step schedule fitted to a model by minimising a KL upper bound.

Everything here is in EDM units (reference sheet, section E): sigma = sigma_t / alpha_t (the process's `gamma`),
x_E = x / alpha, D(x_E, sigma) = x0_hat. The model is called on the process's own state and time: t = t_of_gamma(sigma),
x = alpha(t) x_E, its prediction converted to x0 (`models.predictions.converted`).

The objective (the paper's Eq. 8-11, stochastic DDIM, the denoiser frozen over each interval [sigma_lo, sigma_hi]):

  KLUB = sum_intervals  int_{lo}^{hi} sigma^-3 E ||D(x_sigma, sigma) - D(x_hi, hi)||^2 dsigma,
  x_sigma = x0 + sigma eps,   x_hi = x_sigma + sqrt(hi^2 - sigma^2) eps'.

Each interval's integral is estimated by importance sampling with the paper's density (c = 0.5)

  pi(sigma) = sigma^-3 g(sigma) / Z(lo, hi),   g(sigma) = 1 / (sigma^2 + c^2) - 1 / (hi^2 + c^2),

as Z(lo, hi) * mean(||Delta D||^2 / g(sigma)), Z in closed form (`interval_mass`; the sheet writes only the
average: the factor Z is needed because candidate schedules have different intervals). ||.||^2 is the mean over a
sample's coordinates, so a KLUB is per dimension.

Derived for this module (checked in tests/test_ays.py): for data N(0, c^2 I) the exact denoiser gives
E||Delta D||^2 / dim = c^4 g(sigma) exactly, so pi is the exact optimal proposal there (the ratio is c^4 chi^2_dim /
dim whatever sigma) and the KLUB is c^4 sum Z(lo, hi) in closed form (`gaussian_klub`). Its minimiser is *not*
arctan(sigma_i / c) linear in i: it is close to geometric near sigma_min (the sigma^-3 weight) with a long last
step. The arctan rule is the optimum of a different criterion, the deterministic DDIM's error on Gaussian data: one
DDIM step from sigma = c tan(theta) to c tan(theta') multiplies x by cos(theta) cos(theta - theta') / cos(theta') where
the exact flow multiplies it by cos(theta) / cos(theta'), so the N-step map shrinks by prod cos(Delta theta_i), largest
(log-concave, fixed sum of Delta theta) at equal Delta theta (`ddim_gaussian_shrink`). The paper uses that rule
to choose the proposal's c, not as the KLUB's optimum.

The fit (the paper's Alg. 1): from the EDM (rho = 7) grid of 10 steps, coordinate descent over the interior
points, each against 11 candidates (10 log-spaced inside (sigma_{i+1}, sigma_{i-1}) and the current one), keeping
the lowest KLUB, until a sweep changes nothing (early stop) or `max_sweeps`; then two subdivisions (10 -> 20 -> 40,
new points at geometric midpoints), tuning only the new points. Other step counts: `grids.interpolate_log_linear`
of log sigma from the next finer fitted level. Common random numbers: every interval k of a level has its own
fixed draws (uniforms for sigma, eps, eps'), shared by every candidate, so the descent compares like with like and
the estimated KLUB never increases. One compiled program scores a coordinate's 11 candidates (a vmap).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers.pytrees import merge, split
from fastsamplers.schedules.grids import get_timesteps, interpolate_log_linear
from fastsamplers.schedules.processes import Process, as_float

PROPOSAL_C = 0.5  # the paper's c, in EDM sigma units (sheet E)
BASE_STEPS = 10
SUBDIVISIONS = 2  # 10 -> 20 -> 40
NUM_CANDIDATES = 11  # including the current point
_BISECTIONS = 48  # of the proposal's CDF in log sigma: 2^-48 of the interval's log width


def interval_mass(lo: ArrayLike, sigma: ArrayLike, hi: ArrayLike, c: float = PROPOSAL_C) -> jax.Array:
    """int_lo^sigma s^-3 [1/(s^2 + c^2) - 1/(hi^2 + c^2)] ds in closed form (Z(lo, hi) at sigma = hi).

    With u = s^2: int du / (2 u^2 (u + c^2)) = [1/u - 1/b] / (2 c^2) ... by partial fractions, written with log
    ratios (no cancellation of large terms near lo -> 0).
    """
    a, b, h2, c2 = jnp.square(lo), jnp.square(sigma), jnp.square(hi), c * c
    inv = 0.5 * (1.0 / a - 1.0 / b)  # int s^-3 ds
    logs = jnp.log(b / a) - jnp.log((b + c2) / (a + c2))
    first = inv / c2 - 0.5 * logs / (c2 * c2)  # int s^-3 / (s^2 + c^2) ds
    return first - inv / (h2 + c2)


def gaussian_klub(sigmas: ArrayLike, c: float = PROPOSAL_C) -> jax.Array:
    """The exact KLUB per dimension of the schedule `sigmas` (decreasing EDM sigmas) for data N(0, c^2 I) and its
    exact denoiser: c^4 sum Z(sigma_{k+1}, sigma_k) (module docstring)."""
    sigmas = jnp.asarray(sigmas)
    return c**4 * jnp.sum(interval_mass(sigmas[1:], sigmas[:-1], sigmas[:-1], c))


def ddim_gaussian_shrink(sigmas: ArrayLike, c: float) -> jax.Array:
    """prod_i cos(theta_i - theta_{i+1}), theta = arctan(sigma / c): the factor by which deterministic DDIM on the
    schedule `sigmas` shrinks the exact flow map of data N(0, c^2 I) (module docstring); its maximum over schedules
    with fixed ends is arctan-linear (the paper's Gaussian result)."""
    theta = jnp.arctan(jnp.asarray(sigmas) / c)
    return jnp.prod(jnp.cos(theta[:-1] - theta[1:]))


def sample_sigma(u: jax.Array, lo: jax.Array, hi: jax.Array, c: float = PROPOSAL_C) -> jax.Array:
    """Draws of the proposal pi on (lo, hi) from uniforms u: its CDF inverted by bisection in log sigma (a fixed
    number of halvings, so it compiles to a loop without host round trips)."""
    total = interval_mass(lo, hi, hi, c)

    def halve(_, bounds):
        left, right = bounds
        mid = 0.5 * (left + right)
        below = interval_mass(lo, jnp.exp(mid), hi, c) < u * total
        return jnp.where(below, mid, left), jnp.where(below, right, mid)

    start = (jnp.full_like(u, jnp.log(lo)), jnp.full_like(u, jnp.log(hi)))
    left, right = jax.lax.fori_loop(0, _BISECTIONS, halve, start)
    return jnp.exp(0.5 * (left + right))


def interval_klub(denoiser: Callable[[jax.Array, jax.Array], jax.Array], lo: jax.Array, hi: jax.Array, x0: jax.Array,
                  u: jax.Array, eps: jax.Array,
                  eps2: jax.Array, c: float = PROPOSAL_C) -> jax.Array:
    """The importance-sampled KLUB of one interval [lo, hi]: Z(lo, hi) mean(||D(x_s, s) - D(x_hi, hi)||^2 / g(s)).

    Args:
      denoiser: (x_E, sigma (B,)) -> D, the data prediction in EDM units.
      x0: data (B, ...); u: uniforms (B,); eps, eps2: standard normals like x0 (the common random numbers).
    """
    s = sample_sigma(u, lo, hi, c)
    expand = lambda v: v.reshape((-1,) + (1,) * (x0.ndim - 1))
    x_s = x0 + expand(s) * eps
    x_hi = x_s + expand(jnp.sqrt(jnp.maximum(hi**2 - s**2, 0.0))) * eps2
    diff = denoiser(x_s, s) - denoiser(x_hi, jnp.broadcast_to(hi, s.shape))
    sq = jnp.mean(jnp.square(diff), axis=tuple(range(1, x0.ndim)))
    g = 1.0 / (s**2 + c * c) - 1.0 / (hi**2 + c * c)
    ratio = jnp.where(g > 0, sq / jnp.where(g > 0, g, 1.0), 0.0)  # s = hi (a draw at the edge): Delta D = 0 too
    return interval_mass(lo, hi, hi, c) * jnp.mean(ratio)


def edm_denoiser(model_fn: ModelFn, prediction: str, process: Process,
                 args: PyTree = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """D(x_E, sigma) from a model of the process: called at t = t_of_gamma(sigma) on x = alpha(t) x_E (sheet E's
    pitfall: AYS's sigmas are EDM's, not the process's times)."""
    model = model_fn if args is None else (lambda x, t: model_fn(x, t, args))
    to_x0 = predictions.converted(model, prediction, "x0", process)

    def one(x_e, sigma):  # one sample at its own sigma: a batch of one with a scalar time, as `sample` calls models
        t = process.t_of_gamma(sigma)
        return to_x0((process.alpha(t) * x_e).astype(x_e.dtype)[None], t)[0].astype(x_e.dtype)

    def denoiser(x_e, sigma):
        return jax.vmap(one)(x_e, sigma)

    return denoiser


class _Noise:
    """The common random numbers of one level of the fit: for interval k, uniforms u[k] (B,) and normals eps[k],
    eps2[k] (B, ...), drawn once from fold_in(key, level)."""

    def __init__(self, key, level, num_intervals, x0):
        k_u, k_e, k_e2 = jax.random.split(jax.random.fold_in(key, level), 3)
        shape = (num_intervals,) + x0.shape
        self.u = jax.random.uniform(k_u, shape[:2], x0.dtype)
        self.eps = jax.random.normal(k_e, shape, x0.dtype)
        self.eps2 = jax.random.normal(k_e2, shape, x0.dtype)

    def at(self, k):
        return self.u[k], self.eps[k], self.eps2[k]


@functools.lru_cache(maxsize=16)
def _compiled(model_key, prediction, process, has_args):
    """(candidates, all terms): compiled once per structure of the model function; the data, draws, schedule,
    `args` and the model's numeric leaves are traced."""

    def denoiser(leaves, args):
        return edm_denoiser(merge(model_key, leaves), prediction, process, args if has_args else None)

    def candidates(upper, cands, lower, x0, draws_up, draws_low, args, leaves):
        """KLUB of intervals [cand, upper] + [lower, cand] for every candidate (the two a point moves)."""
        d = denoiser(leaves, args)
        one = lambda s: (interval_klub(d, s, upper, x0, *draws_up) + interval_klub(d, lower, s, x0, *draws_low))
        return jax.vmap(one)(cands)

    def terms(sigmas, x0, u, eps, eps2, args, leaves):
        """KLUB of every interval of the schedule (decreasing sigmas)."""
        d = denoiser(leaves, args)
        return jax.lax.map(lambda z: interval_klub(d, z[0], z[1], x0, *z[2:]), (sigmas[1:], sigmas[:-1], u, eps, eps2))

    return jax.jit(candidates), jax.jit(terms)


def _candidates(upper, current, lower, window):
    """10 points log-spaced across `window` (a fraction) of (lower, upper) around the current point, kept strictly
    inside, and the current one last (kept on ties). window = 1 is the paper's whole interval."""
    lo, hi, cur = np.log(lower), np.log(upper), np.log(current)
    frac = np.arange(1, NUM_CANDIDATES) / NUM_CANDIDATES
    centre = lo + 0.5 * (hi - lo) if window >= 1 else cur
    inside = centre + (frac - 0.5) * window * (hi - lo)
    margin = 0.5 * (hi - lo) / NUM_CANDIDATES
    return np.exp(np.concatenate([np.clip(inside, lo + margin * window, hi - margin * window), [cur]]))


def _descend(score, level_terms, sigmas, movable, max_sweeps, min_window, history):
    """Coordinate descent over the points `movable` of the decreasing schedule `sigmas` (numpy, float64), in place.
    score(j, cands) -> the candidates' KLUB of the two intervals around point j. The first sweeps search the whole
    interval between the neighbours (the paper's 11 candidates); after a sweep in which no point moves, the
    candidates are spread over half the previous window around each point, until the window is below
    `min_window` (early stop: a fixed 11-point grid stalls far from the optimum when neighbours must move together).
    Returns the sweeps made."""
    window = 1.0
    for sweep in range(1, max_sweeps + 1):
        changed = False
        for j in movable:
            cands = _candidates(sigmas[j - 1], sigmas[j], sigmas[j + 1], window)
            values = np.asarray(score(j, cands))
            best = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
            if not np.isfinite(values[best]):
                raise FloatingPointError(f"AYS: the KLUB is not finite around sigma = {sigmas[j]:.4g} (the model "
                                         f"returned non-finite values)")
            if best != NUM_CANDIDATES - 1 and values[best] < values[-1]:
                sigmas[j] = cands[best]
                changed = True
        history.append(float(np.sum(level_terms(sigmas))))
        if not changed:
            window *= 0.5
            if window < min_window:
                return sweep
    return max_sweeps


def fit(model_fn: ModelFn, process: Process, x_data: ArrayLike, num_steps: int | tuple[int, ...], *,
        prediction: str = "eps", key: jax.Array | None = None, max_sweeps: int = 40, min_window: float = 0.05,
        t_min: float | None = None,
        t_max: float | None = None, args: PyTree = None) -> dict[int, tuple[jax.Array, dict[str, Any]]]:
    """Fit Align Your Steps schedules to a model (module docstring).

    Args:
      model_fn: model_fn(x, t) or model_fn(x, t, args), predicting `prediction` on the process's own x and t.
      process: the `schedules.Process`.
      x_data: calibration *data* (B, ...): samples of x0 (for a checkpoint, data or the model's own samples).
      num_steps: a step count or a tuple of them.
      key: the draws (sigma, eps, eps'); default PRNGKey(0).
      max_sweeps: the most coordinate-descent sweeps per level.
      min_window: early stop: the fraction of a point's interval its candidates span, halved after each sweep in
        which no point moved, below which the level ends (`_descend`).
      t_min, t_max: the schedule's ends (default: the process's).

    Returns:
      {k: (ts (k + 1,) decreasing process times, info)}; info holds the EDM sigmas of every fitted level, the KLUB
      after each sweep ("klub_history"), sweeps, model calls and seconds.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules
        >>> from fastsamplers.models.oracle import GaussianMixture
        >>> process = schedules.get_process("edm")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> data = gm.sample(jax.random.PRNGKey(1), 64)
        >>> ts, info = fit(gm.model_fn(process, "x0"), process, data, 10, prediction="x0", max_sweeps=2)[10]
        >>> ts.shape
        (11,)
    """
    counts = (num_steps,) if isinstance(num_steps, (int, np.integer)) else tuple(num_steps)
    x0 = jnp.asarray(x_data)
    key = jax.random.PRNGKey(0) if key is None else key
    start = time.perf_counter()
    model_key, leaves = split(model_fn)
    cand_fn, terms_fn = _compiled(model_key, prediction, process, args is not None)
    ts0 = np.asarray(get_timesteps("edm", process, BASE_STEPS, t_min=t_min, t_max=t_max), np.float64)
    with jax.enable_x64(True):
        sigmas = np.array(process.gamma(np.asarray(ts0, np.float64)), np.float64)
    levels = 1 + next((k for k in range(SUBDIVISIONS + 1) if BASE_STEPS * 2**k >= max(counts)), SUBDIVISIONS)
    fitted, history, sweeps, calls = {}, [], [], 0
    batch = x0.shape[0]
    for level in range(levels):
        n = sigmas.shape[0] - 1
        noise = _Noise(key, level, n, x0)
        dt = x0.dtype

        def score(j, cands):
            return cand_fn(jnp.asarray(sigmas[j - 1], dt), jnp.asarray(cands, dt), jnp.asarray(sigmas[j + 1], dt), x0,
                           noise.at(j - 1), noise.at(j), args, leaves)

        def level_terms(s):
            return terms_fn(jnp.asarray(s, dt), x0, noise.u, noise.eps, noise.eps2, args, leaves)

        history.append(float(np.sum(level_terms(sigmas))))
        movable = list(range(1, n)) if level == 0 else list(range(1, n, 2))  # the new points only
        made = _descend(score, level_terms, sigmas, movable, max_sweeps, min_window, history)
        sweeps.append(made)
        calls += 2 * batch * n * (made + 1) + made * len(movable) * NUM_CANDIDATES * 4 * batch
        fitted[n] = sigmas.copy()
        if level + 1 < levels:  # subdivide: geometric midpoints between the fitted points
            mids = np.sqrt(sigmas[:-1] * sigmas[1:])
            sigmas = np.stack([sigmas[:-1], mids], axis=1).reshape(-1)
            sigmas = np.append(sigmas, fitted[n][-1])
    info = dict(method="ays", fitted_sigmas=fitted, klub_history=history, sweeps=sweeps, model_calls=calls,
                seconds=time.perf_counter() - start, calibration_size=batch)
    results = {}
    for k in counts:
        source = min((n for n in fitted if n >= k), default=max(fitted))
        sig = interpolate_log_linear(fitted[source], k + 1)
        with jax.enable_x64(True):
            ts = np.array(process.t_of_gamma(np.asarray(sig, np.float64)), np.float64)
        ts[0], ts[-1] = ts0[0], ts0[-1]  # the ends exactly (t_of_gamma(gamma(t)) rounds)
        results[k] = (as_float(ts), dict(info, num_steps=k, sigmas=sig, source_level=source))
    return results
