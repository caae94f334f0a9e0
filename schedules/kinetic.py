"""Kinetic-optimal Gaussian paths (Shaul et al. 2023, "On kinetic optimal probability paths for generative models").

Among the affine Gaussian paths x = alpha x1 + sigma eps (here in the paper's time tau, tau = 0 noise, tau = 1 data;
the framework's t = 1 - tau), the one whose marginal velocity u has the least kinetic energy KE = int E||u||^2 dtau.
Derivation (reference sheet section 8, re-derived and checked here; the docstrings below say what the tests verify):

  u = (sigma'/sigma) x + sigma s' E[x1 | x],  s = alpha / sigma,
  KE = int d sigma'^2 + M alpha'^2 - v(s) sigma^2 s'^2 dtau,   M = E||x1||^2,  v(s) = E tr Cov[x1 | x],

since E||u||^2 = E||alpha' x1 + sigma' eps||^2 - E tr Cov[alpha' x1 + sigma' eps | x] and, given x, eps is affine in
x1 with alpha' x1 + sigma' eps = sigma s' x1 + const. For normalised data (x1 / c with c = sqrt(M / d), so M = d) the
data enter through the separation lambda(s) = 1 - v / d alone. Polar coordinates (sigma, c alpha) = r (cos, sin) theta,
s_norm = tan theta, give KE = d int r'^2 + r^2 w(theta) theta'^2 with

  w(theta) = (lambda(tan theta) - sin^2 theta) / cos^2 theta = 1 - (1 + s^2) v / d  in [0, 1]:

w <= 1 as v >= 0, and w >= 0 because the posterior variance is at most the best linear estimator's, sum_i c_i /
(1 + s^2 c_i) <= d / (1 + s^2) for eigenvalues c_i of E x1 x1^T summing to d (Jensen: c / (1 + s^2 c) is concave), with
equality only for N(0, I) data. With phi(theta) = int_0^theta sqrt(w) the metric is flat in polar coordinates
(r, phi): the geodesic from the noise end (r, phi) = (1, 0) to the data end (c, Phi), Phi = phi(pi / 2) <= pi / 2, is
the straight segment P(tau) = (1 - tau) (1, 0) + tau c (cos Phi, sin Phi), and KE_min = d |P(1) - P(0)|^2 =
d (1 - 2 c cos Phi + c^2). The sheet's ODE theta' = phi'(tau) / sqrt(w(theta)) is solved exactly by inverting the
monotone phi: theta(tau) = phi^{-1}(atan2 P(tau)). (The sheet writes the data end as (cos Phi, sin Phi): that is c = 1,
normalised data; un-normalised data only move the end point, since KE(sigma, alpha) on raw data equals KE(sigma,
c alpha) on normalised data.)

Limits checked by the tests: separated data (lambda = 1: w = 1, Phi = pi / 2) give sigma = 1 - tau, alpha = tau, the
conditional-OT path; N(0, I) data (w = 0) give a zero-energy path on the unit circle r = 1 (every variance-preserving
path has KE = 0 there; the floor `w_floor` selects theta = pi tau / 2, the cosine path, as w -> 0).

The Process is tabulated: theta as a monotone cubic (Fritsch-Carlson) of phi on `num_nodes` nodes, r and phi in
closed form, so alpha, sigma and their time derivatives are smooth and exact functions of the table; t_of_log_snr
inverts the cubic by Newton's method inside its cell (round trip to float64 precision).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike
from fastsamplers.schedules.processes import PROCESSES, Process, as_float


@dataclasses.dataclass(frozen=True)
class Separation:
    """The data separation function lambda(s) = E||E[x1 | x]||^2 / d of normalised data on a grid of s.

    s is the normalised signal-to-noise ratio alpha c / sigma (c = data_scale = sqrt(E||x1||^2 / d) of the raw data);
    lam[0] at s = 0 is |E x1|^2 / (c^2 d).

    Args (fields):
      s: (n,) increasing grid, s[0] = 0.
      lam: (n,) lambda at s.
      data_scale: c, the raw data's root mean square per coordinate.
      dim: d, the data dimension.
    """

    s: tuple[float, ...]
    lam: tuple[float, ...]
    data_scale: float = 1.0
    dim: int = 1

    def __post_init__(self) -> None:
        s, lam = np.asarray(self.s, np.float64), np.asarray(self.lam, np.float64)
        if s.ndim != 1 or s.shape != lam.shape or s.size < 2 or s[0] != 0.0 or np.any(np.diff(s) <= 0):
            raise ValueError(f"a separation needs increasing s from 0 and lam of the same shape, got s {s.shape} "
                             f"and lam {lam.shape}")
        if not (np.all(np.isfinite(lam)) and self.data_scale > 0 and self.dim >= 1):
            raise ValueError(f"a separation needs finite lam, data_scale > 0 and dim >= 1; got data_scale "
                             f"{self.data_scale} and dim {self.dim}")
        object.__setattr__(self, "s", tuple(s.tolist()))
        object.__setattr__(self, "lam", tuple(lam.tolist()))

    def w(self, theta: np.ndarray) -> np.ndarray:
        """w(theta) = (lambda(tan theta) - sin^2 theta) / cos^2 theta, linear in theta between the grid's angles and
        constant beyond its last, clipped to [0, 1] (the bounds the module docstring derives)."""
        s, lam = np.asarray(self.s), np.asarray(self.lam)
        # 1 - (1 + s^2)(1 - lam): the same w, without dividing two small numbers at large s
        nodes = 1.0 - (1.0 + s**2) * (1.0 - lam)
        return np.clip(np.interp(theta, np.arctan(s), nodes), 0.0, 1.0)


def _theta_grid(num: int) -> np.ndarray:
    """num angles uniform in [0, pi / 2): the estimators' grid of s = tan(theta) (normalised data), from 0 to about
    num / (pi / 2)."""
    return 0.5 * math.pi * np.arange(num) / num


def _normalised(samples: np.ndarray) -> tuple[np.ndarray, float]:
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    scale = float(np.sqrt(np.mean(np.sum(x**2, axis=-1)) / x.shape[1]))
    return x, scale


def _separation(s_norm, v_norm, scale, dim) -> Separation:
    return Separation(s=s_norm, lam=1.0 - np.asarray(v_norm) / dim, data_scale=scale, dim=dim)


def separation_from_data(key: jax.Array, data: ArrayLike, num_s: int = 64, num_queries: int = 1024,
                         chunk: int = 128) -> Separation:
    """lambda(s) of the empirical distribution of a data set, from its exact posterior (softmax weights over the set).

    v(s) = E tr Cov[x1 | y], y = s x1 + eps, x1 drawn from the set: each query's posterior covariance is exact (a
    softmax over the whole set), so v is the Rao-Blackwellised denoising error, accurate relative to its own size at
    large s where lambda -> 1. The same noise is used at every s (common random numbers: a smooth lambda).

    Args:
      key: PRNG key for the queries and their noise.
      data: (n, ...) samples, flattened to (n, d); not assumed normalised.
      num_s: grid size (angles uniform in [0, pi / 2)).
      num_queries: Monte Carlo queries per grid point.
      chunk: queries per posterior evaluation (memory chunk * n).

    Returns:
      The `Separation`.

    Example:
        >>> import jax, numpy as np
        >>> sep = separation_from_data(jax.random.PRNGKey(0), np.eye(4) * 2.0, num_s=8, num_queries=64)
        >>> round(sep.lam[0], 6), sep.data_scale  # four orthogonal points: lambda(0) = |mean|^2 / d = 1 / 4
        (0.25, 1.0)
    """
    x, scale = _normalised(data)
    n, dim = x.shape
    num_queries = -(-num_queries // chunk) * chunk
    s_norm = np.tan(_theta_grid(num_s))
    k_idx, k_eps = jax.random.split(key)
    xs = jnp.asarray(x / scale)
    queries = xs[jax.random.randint(k_idx, (num_queries,), 0, n)]
    eps = jax.random.normal(k_eps, queries.shape, xs.dtype)
    v = _posterior_variance(xs, queries.reshape(-1, chunk, dim), eps.reshape(-1, chunk, dim), jnp.asarray(s_norm))
    return _separation(s_norm, np.asarray(v), scale, dim)


@jax.jit
def _posterior_variance(xs, queries, eps, s_grid):
    sq = jnp.sum(xs**2, axis=-1)

    def at_s(s):
        def chunk_var(pair):
            q, e = pair
            y = s * q + e
            # log p(j | y) = s y . x_j - s^2 |x_j|^2 / 2 + const (Gaussian likelihood of y = s x_j + eps)
            weights = jax.nn.softmax(s * y @ xs.T - 0.5 * s**2 * sq[None], axis=-1)
            mean = weights @ xs
            return weights @ sq - jnp.sum(mean**2, axis=-1)

        return jnp.mean(jax.lax.map(chunk_var, (queries, eps)))

    return jax.lax.map(at_s, s_grid)


# How `separation_from_denoiser` estimates v(s) = E tr Cov[x1 | y].
DENOISER_ESTIMATORS = Registry.of_names("estimator", ("divergence", "error"))


def separation_from_denoiser(key: jax.Array, denoiser: Callable, samples: ArrayLike, num_s: int = 64,
                             estimator: str = "divergence") -> Separation:
    """lambda(s) from a denoiser D(y, gamma) = E[x1 | y], y = x1 + gamma eps, gamma = c / s_norm in raw units.

    Two estimators of v(s) = E tr Cov[x1 | y], both unbiased when D is the exact posterior mean:
      "divergence"  gamma^2 E div_y D(y, gamma) (Tweedie's second-order identity Cov[x1 | y] = gamma^2 dD/dy):
                    the posterior covariance itself, Rao-Blackwellised over x1 given y; exact trace by d forward-mode
                    passes (for low-dimensional data: the 2-D sets). Its error is small relative to w = 1 - (1 +
                    s^2) v / d even where w is a small difference of numbers near 1 (data near-Gaussian at low s).
      "error"       E||x1 - D(y, gamma)||^2, the denoising error: one call per sample, any dimension, but its
                    relative error sqrt(2 / (d n)) (chi-square) is of w's size at small s for near-Gaussian data,
                    where it clips w to 0 and the fitted path then crosses that range too fast (on 8gaussians with n
                    = 8192: Phi 0.368 instead of 0.43, and an energy above cond-OT's under the exact separation).

    Args:
      key: PRNG key for the noise (shared by every s).
      denoiser: D(y, gamma) -> E[x1 | y] for y = x1 + gamma eps, raw (un-normalised) data, y of the samples' shape
        (EDM's D(x; sigma); e.g. from `models.GaussianMixture.eps_y`: y - gamma eps_y(y, gamma)).
      samples: (n, ...) draws of x1 (raw); their second moment sets the normalisation.
      num_s: grid size (angles uniform in [0, pi / 2)); s = 0 uses the samples' variance, no denoiser call.
      estimator: "divergence" (default) or "error", as above.

    Returns:
      The `Separation`.
    """
    DENOISER_ESTIMATORS.check(estimator)
    x, scale = _normalised(samples)
    shape = np.shape(samples)
    dim = x.shape[1]
    s_norm = np.tan(_theta_grid(num_s))
    x1 = jnp.asarray(np.asarray(samples, np.float64).reshape(shape))
    eps = jax.random.normal(key, shape, x1.dtype)

    def error(gamma):
        err = x1 - denoiser(x1 + gamma * eps, gamma)
        return jnp.mean(jnp.sum(err.reshape(len(err), -1) ** 2, axis=-1))

    def divergence(gamma):
        y = (x1 + gamma * eps).reshape(len(x1), dim)
        flat = lambda y: denoiser(y.reshape(shape), gamma).reshape(len(x1), dim)  # noqa: E731
        # tr dD/dy summed over the batch: D's rows depend on their own y only, so one JVP per coordinate
        trace = sum(jnp.sum(jax.jvp(flat, (y,), (jnp.zeros_like(y).at[:, i].set(1.0),))[1][:, i])
                    for i in range(dim))
        return gamma**2 * trace / len(x1)

    v_raw = np.asarray(jax.lax.map(jax.jit(divergence if estimator == "divergence" else error),
                                   jnp.asarray(scale / s_norm[1:])))
    v0 = np.mean(np.sum((x - x.mean(0)) ** 2, axis=-1))  # s = 0: the prior's covariance
    return _separation(s_norm, np.concatenate([[v0], v_raw]) / scale**2, scale, dim)


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes of the monotone cubic through (x, y) (scipy's PchipInterpolator's, for increasing y):
    weighted harmonic means of the neighbouring secants inside, the three-point formula limited at the ends."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    m = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    m[1:-1] = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], delta[0], delta[1])), (-1, (h[-1], h[-2], delta[-1], delta[-2]))):
        slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        m[end] = min(max(slope, 0.0), 3 * d0)
    return m


@dataclasses.dataclass(frozen=True)
class KineticOptimal(Process):
    """The kinetic-optimal path of one data set as a `Process` (framework time: t = 0 data, alpha_f(t) = alpha(1 -
    t), sigma_f(t) = sigma(1 - t)); built by `kinetic_optimal_process`, whose docstring and the module's say what it
    is. Fields: the table (phi, theta, dtheta/dphi at the nodes), Phi and the data scale c."""

    name = "kinetic_optimal"
    phi_nodes: tuple[float, ...] = ()
    theta_nodes: tuple[float, ...] = ()
    slopes: tuple[float, ...] = ()
    big_phi: float = 0.5 * math.pi
    data_scale: float = 1.0
    t_min: float = 1e-3
    t_max: float = 0.999

    def __post_init__(self) -> None:
        if len(self.phi_nodes) < 3 or not len(self.phi_nodes) == len(self.theta_nodes) == len(self.slopes):
            raise ValueError("a KineticOptimal process is built from data: use "
                             "schedules.kinetic_optimal_process(separation=...)")

    def _table(self):
        return tuple(as_float(np.asarray(v)) for v in (self.phi_nodes, self.theta_nodes, self.slopes))

    def _segment(self):
        """P(tau) = A + tau D, A = (1, 0), D = c (cos Phi, sin Phi) - A: the geodesic in the flat plane."""
        c = self.data_scale
        return c * math.cos(self.big_phi) - 1.0, c * math.sin(self.big_phi)

    def _polar(self, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """(r, theta) at framework time t."""
        tau = 1.0 - as_float(t)
        dx, dy = self._segment()
        px, py = 1.0 + tau * dx, tau * dy
        phi = jnp.arctan2(py, px)
        x, y, m = self._table()
        k = jnp.clip(jnp.searchsorted(x, phi, side="right") - 1, 0, x.shape[0] - 2)
        h = x[k + 1] - x[k]
        u = (phi - x[k]) / h
        theta = (((2 * u - 3) * u**2 + 1) * y[k] + ((u - 2) * u + 1) * u * h * m[k] + (3 - 2 * u) * u**2 * y[k + 1]
                 + (u - 1) * u**2 * h * m[k + 1])
        return jnp.hypot(px, py), theta

    def alpha(self, t: ArrayLike) -> jax.Array:
        r, theta = self._polar(t)
        return r * jnp.sin(theta) / self.data_scale

    def sigma(self, t: ArrayLike) -> jax.Array:
        r, theta = self._polar(t)
        # the last node is pi / 2, which rounds above pi / 2 in float32: clamp so that sigma(0) = 0, never < 0
        return r * jnp.maximum(jnp.cos(theta), 0.0)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        _, theta = self._polar(t)
        return jnp.log(jnp.sin(theta)) - jnp.log(jnp.maximum(jnp.cos(theta), 0.0)) - math.log(self.data_scale)

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        theta = jnp.arctan(self.data_scale * jnp.exp(as_float(lam)))
        x, y, m = self._table()
        k = jnp.clip(jnp.searchsorted(y, theta, side="right") - 1, 0, y.shape[0] - 2)
        h, y0, y1, m0, m1 = x[k + 1] - x[k], y[k], y[k + 1], m[k], m[k + 1]
        u = jnp.clip((theta - y0) / (y1 - y0), 0.0, 1.0)
        for _ in range(8):  # Newton on the cell's cubic, monotone in u: quadratic convergence from the secant guess
            val = ((2 * u - 3) * u**2 + 1) * y0 + ((u - 2) * u + 1) * u * h * m0 + (3 - 2 * u) * u**2 * y1 \
                + (u - 1) * u**2 * h * m1
            der = 6 * u * (u - 1) * (y0 - y1) + (3 * u**2 - 4 * u + 1) * h * m0 + (3 * u**2 - 2 * u) * h * m1
            u = jnp.clip(u - (val - theta) / jnp.maximum(der, 1e-300), 0.0, 1.0)
        phi = x[k] + u * h
        dx, dy = self._segment()
        # the ray at angle phi meets P(tau) = A + tau D where (A + tau D) x (cos phi, sin phi) = 0
        tau = jnp.sin(phi) / (dy * jnp.cos(phi) - dx * jnp.sin(phi))
        return 1.0 - tau

    def kinetic_energy(self, dim: int) -> float:
        """KE_min = d |P(1) - P(0)|^2 = d (1 - 2 c cos Phi + c^2), the energy of this path on its data (an upper bound
        where `w_floor` lifted w; the floor's effect is below sqrt(w_floor) pi / 2 in Phi)."""
        c = self.data_scale
        # (1 - c)^2 + 4 c sin^2(Phi / 2): the same number without 1 - cos Phi's cancellation at small Phi
        return float(dim * ((1.0 - c) ** 2 + 4.0 * c * math.sin(0.5 * self.big_phi) ** 2))


def kinetic_optimal_process(separation: Separation | Callable, num_nodes: int = 2049, w_floor: float = 1e-8,
                            t_min: float = 1e-3, t_max: float = 0.999) -> KineticOptimal:
    """The kinetic-optimal Gaussian path of the data behind `separation`, as a `Process` (module docstring).

    Args:
      separation: a `Separation` (`separation_from_data`, `separation_from_denoiser`), or a callable lambda(s) of
        normalised data (numpy in, numpy out; data_scale 1), e.g. `lambda s: s**2 / (1 + s**2)` for N(0, I).
      num_nodes: table size (angles uniform in [0, pi / 2]).
      w_floor: w is raised to at least this (phi must increase strictly to be inverted; w = 0 only for Gaussian
        data, where the floor picks the cosine path among the zero-energy ones).
      t_min, t_max: the process's time range (alpha = 0 at t = 1: log-SNR -inf, so t_max < 1 by default, as "ot").

    Returns:
      A `KineticOptimal` process: alpha, sigma, log_snr, t_of_log_snr, derivatives, prior, for every solver and for
      flow-matching training (`experiments.train.losses.make_loss(..., process, "velocity")`).

    Example:
        >>> import numpy as np
        >>> ot_like = kinetic_optimal_process(lambda s: np.ones_like(s))  # separated data: cond-OT
        >>> round(float(ot_like.alpha(0.25)), 6), round(float(ot_like.sigma(0.25)), 6)
        (0.75, 0.25)
    """
    if num_nodes < 3 or not 0 < w_floor < 1:
        raise ValueError(f"need num_nodes >= 3 and 0 < w_floor < 1, got {num_nodes} and {w_floor}")
    theta = 0.5 * math.pi * np.linspace(0.0, 1.0, num_nodes)
    if isinstance(separation, Separation):
        w, scale = separation.w(theta), separation.data_scale
    elif callable(separation):
        s = np.tan(theta[:-1])
        w = np.clip(1.0 - (1.0 + s**2) * (1.0 - np.asarray(separation(s), np.float64)), 0.0, 1.0)
        w, scale = np.append(w, w[-1]), 1.0
    else:
        raise ValueError(f"separation must be a Separation or a callable lambda(s), got {type(separation).__name__}")
    if not np.all(np.isfinite(w)):
        raise ValueError("the separation function gave non-finite values")
    root = np.sqrt(np.maximum(w, w_floor))
    phi = np.concatenate([[0.0], np.cumsum(0.5 * (root[1:] + root[:-1]) * np.diff(theta))])  # trapezoid rule
    process = KineticOptimal(phi_nodes=tuple(phi.tolist()), theta_nodes=tuple(theta.tolist()),
                             slopes=tuple(_pchip_slopes(phi, theta).tolist()), big_phi=float(phi[-1]),
                             data_scale=float(scale), t_min=t_min, t_max=t_max)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    return process


@functools.partial(jax.jit, static_argnums=0)  # one compile per process (processes hash by value), not per call
def _path_and_speed(process: Process, t: jax.Array) -> tuple[jax.Array, ...]:
    """alpha, sigma and their time derivatives in one forward-mode pass."""
    (a, s), (da, ds) = jax.jvp(lambda t: (process.alpha(t), process.sigma(t)), (t,), (jnp.ones_like(t),))
    return a, s, da, ds


def kinetic_energy(separation: Separation, process: Process, t_start: float = 0.0, t_end: float = 1.0,
                   num: int = 512) -> float:
    """KE = int E||u||^2 dt of any affine path on the data behind `separation`, by the module's formula: per
    dimension, sigma'^2 + c^2 alpha'^2 - c^2 (alpha' sigma - alpha sigma')^2 (1 - w(theta)) / (sigma^2 + c^2 alpha^2)
    (= r'^2 + r^2 w theta'^2, tan theta = c alpha / sigma), integrated by Gauss-Legendre in t.

    Args:
      separation: the data's `Separation`.
      process: any `Process` whose alpha and sigma do not both vanish in [t_start, t_end].
      t_start, t_end: the time range (the paths here run from data at 0 to noise at 1).
      num: quadrature nodes.

    Returns:
      KE, a float (the data's full dimension d included).
    """
    nodes, weights = np.polynomial.legendre.leggauss(num)
    t = t_start + 0.5 * (t_end - t_start) * (nodes + 1.0)
    with jax.enable_x64(True):
        a, s, da, ds = (np.asarray(v, np.float64) for v in _path_and_speed(process, t))
    c = separation.data_scale
    w = separation.w(np.arctan2(c * a, s))
    density = ds**2 + c**2 * da**2 - c**2 * (da * s - a * ds) ** 2 * (1.0 - w) / (s**2 + c**2 * a**2)
    return float(separation.dim * 0.5 * (t_end - t_start) * np.sum(weights * density))


# get_process("kinetic_optimal") names its missing `separation`: the path exists only for a data set.
PROCESSES.register("kinetic_optimal")(kinetic_optimal_process)
