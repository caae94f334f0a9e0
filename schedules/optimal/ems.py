"""DPM-Solver-v3's empirical model statistics (EMS) l, s, b of any model, on a uniform log-SNR grid (reference sheet,
section C; the authors' estimation code is not public, so this follows the paper's definitions):

  l   = E[diag(sigma d eps/dx)]                    (App. C.1.1: the Rademacher estimator E_v[(sigma J v) * v])
  s, b = argmin E|f^(1) - s f - b|^2 per dimension  (s = Cov(f, f^(1)) / Var(f), b = E f^(1) - s E f)

with f = (sigma eps - l x) / alpha = e^{-lambda} eps - l y (y = x / alpha) and its derivative along the
probability-flow ODE dx/dlambda = (d log alpha / dlambda) x - sigma eps, for which dy/dlambda = -e^{-lambda} eps:

  f^(1) = e^{-lambda} ((l - 1) eps + eps^(1)) - l' y,   eps^(1) = d eps/dlambda + J dx/dlambda (one JVP).

(The sheet writes the last term e^{-lambda} l' x / alpha; differentiating f gives l' x / alpha, which is the paper's
e^{-lambda} l' x / sigma. tests/test_dpm_solver_v3.py checks it against the closed form of a Gaussian.)

f and f^(1) are linear in (eps, y, eps^(1)) with coefficients that depend on l and l' only, so one pass over the
grid collects per dimension the first and second moments of (eps, y, eps^(1)) and the Rademacher sums; l' then comes
from finite differences of l on the grid (second order, the ends included: `np.gradient` with edge_order=2), and s,
b from the moments: one model evaluation and 1 + num_probes JVPs per calibration point and grid point, no second
pass.

The calibration batch is drawn from the forward marginals x_t = alpha x0 + sigma z of the given x0 (data, or the
model's own samples: `schedules.learn("dpm_solver_v3", ...)` solves its x_init to t_min with the teacher), with the
same noise z and the same Rademacher probes at every grid point (common random numbers). The estimate's error is
then a smooth function of lambda, as the statistics themselves are, which the solver needs: it extrapolates g by a
polynomial through several grid points, and L, S, B integrate l, s, b. With fresh noise per point, l's error is
white noise across the grid, l' (its finite difference) that noise over the spacing, and DPM-Solver-v3 stops
converging under refinement (the error plateaued near 2e-2 on the 8-d oracle where it now falls at third order:
tests/test_dpm_solver_v3.py). Compiled as one `lax.map` over the grid of a `lax.scan` over the batch in chunks,
so that memory stays that of one chunk's JVPs.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import samplers
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.schedules.optimal.distillation import _with_args
from fastsamplers.schedules.optimal.teacher import Teacher
from fastsamplers.schedules.processes import Process


def estimate_statistics(model_fn: ModelFn, process: Process, x0: ArrayLike, num_points: int, *,
                        key: jax.Array, prediction: str = "eps", args: PyTree = None, t_min: float | None = None,
                        t_max: float | None = None, num_probes: int = 1,
                        chunk_size: int = 256) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The statistics l, s, b of `model_fn` on a uniform log-SNR grid of `num_points` points (module docstring).

    Args:
      model_fn: (x, t[, args]) -> `prediction` (converted to eps exactly, `models.predictions`).
      process: the `schedules.Process`.
      x0: (K, *shape) data samples (or the model's own samples): the calibration batch.
      num_points: N + 1, the grid's points, from log_snr(t_max) up to log_snr(t_min).
      key: the PRNG key of the forward noise and the Rademacher probes.
      num_probes: Rademacher vectors per calibration point (exact for a diagonal Jacobian with 1).
      chunk_size: calibration points per JVP batch (memory).

    Returns:
      ({"lambdas": (N+1,), "l", "s", "b": (N+1, *shape)} as float64 numpy, info with the model evaluations and JVPs
      made and the seconds taken).

    Example:
        >>> import jax
        >>> from fastsamplers import schedules
        >>> from fastsamplers.models import GaussianMixture
        >>> p = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=2)
        >>> x0 = gm.sample(jax.random.PRNGKey(1), 64)
        >>> stats, info = estimate_statistics(gm.model_fn(p), p, x0, 16, key=jax.random.PRNGKey(2))
        >>> stats["l"].shape, info["model_evaluations"]
        ((16, 2), 1024)
    """
    predictions.check_kind(prediction)
    x0 = jnp.asarray(x0)
    if x0.ndim < 2 or x0.shape[0] < 2:
        raise ValueError(f"x0 must be a batch (K, *shape) of K >= 2 calibration samples, got shape {x0.shape}")
    for name, value, low in (("num_points", num_points, 3), ("num_probes", num_probes, 1),
                             ("chunk_size", chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    t_lo = process.t_min if t_min is None else t_min
    t_hi = process.t_max if t_max is None else t_max
    lam_ends = np.asarray(process.log_snr(np.asarray([t_hi, t_lo], np.float64)), np.float64)
    if not (np.all(np.isfinite(lam_ends)) and lam_ends[0] < lam_ends[1]):
        raise ValueError(f"the statistics grid needs a finite log-SNR at t_max={t_hi} and t_min={t_lo}, increasing "
                         f"towards t_min; {process.name} gives {lam_ends.tolist()}")
    lambdas = np.linspace(lam_ends[0], lam_ends[1], int(num_points))
    k = x0.shape[0]
    chunk = min(int(chunk_size), k)
    if k % chunk:
        raise ValueError(f"the calibration batch ({k}) must be a whole number of chunks of {chunk}: choose chunk_size "
                         f"dividing it")
    eps_model = predictions.converted(_with_args(model_fn, args), prediction, "eps", process)
    start = time.perf_counter()
    sums = _moments(eps_model, process, x0.reshape((k // chunk, chunk) + x0.shape[1:]),
                    jnp.asarray(lambdas, x0.dtype), key, int(num_probes))
    sums = jax.tree.map(lambda v: np.asarray(v, np.float64) / k, sums)
    jax.block_until_ready(sums)
    seconds = time.perf_counter() - start
    stats = statistics_from_moments(lambdas, **sums, rtol=64 * float(jnp.finfo(x0.dtype).eps))
    for name, value in stats.items():
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f"DPM-Solver-v3 statistics: {name} is not finite at "
                                     f"{int(np.sum(~np.isfinite(value)))} places (a model output that is not finite?)")
    n = lambdas.size
    return stats, {"model_evaluations": k * n, "jvps": k * n * (1 + int(num_probes)), "seconds": seconds,
                   "num_points": n, "calibration_samples": k}


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _moments(model, process, x0_chunks, lambdas, key, num_probes):
    """Per grid point: sum over the batch of sigma (J v) v (averaged over probes), of (eps, y, eps^(1)) and of their
    six products, each (*shape)."""

    def at_point(lam):
        t = process.t_of_log_snr(lam)
        alpha, sigma = process.alpha(t), process.sigma(t)
        # d log alpha / dlambda along t(lambda), for the ODE's drift (any process: by forward-mode autodiff).
        dlog_alpha = jax.jvp(lambda u: jnp.log(process.alpha(process.t_of_log_snr(u))), (lam,),
                             (jnp.ones_like(lam),))[1]

        def chunk_sums(carry, inputs):
            x0, j = inputs
            # Common random numbers: the chunk's noise and probes do not depend on the grid point (docstring).
            noise_key, probe_key = jax.random.split(jax.random.fold_in(key, j))
            x = alpha * x0 + sigma * jax.random.normal(noise_key, x0.shape, x0.dtype)
            eps, linear = jax.linearize(lambda x_, u: model(x_, process.t_of_log_snr(u)), x, lam)
            dx = dlog_alpha * x - sigma * eps
            eps1 = linear(dx, jnp.ones_like(lam))  # eps^(1) = d eps/dlambda + J dx/dlambda
            probes = jax.random.rademacher(probe_key, (num_probes,) + x.shape, x.dtype)
            jv = jax.vmap(lambda v: linear(v, jnp.zeros_like(lam)))(probes)
            l_sum = sigma * jnp.mean(jv * probes, axis=0)
            y = x / alpha
            v = (eps, y, eps1)
            products = tuple(v[a] * v[b] for a, b in PAIRS)
            new = (l_sum,) + v + products
            return jax.tree.map(lambda c, n: c + jnp.sum(n, axis=0), carry, new), None

        zeros = tuple(jnp.zeros(x0_chunks.shape[2:], x0_chunks.dtype) for _ in range(4 + len(PAIRS)))
        total, _ = jax.lax.scan(chunk_sums, zeros, (x0_chunks, jnp.arange(x0_chunks.shape[0])))
        return total

    total = jax.lax.map(at_point, lambdas)
    names = ("l", "eps", "y", "eps1") + tuple("_".join(("eps", "y", "eps1")[a] for a in p) for p in PAIRS)
    return dict(zip(names, total))


PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def statistics_from_moments(lambdas: np.ndarray, l: np.ndarray, eps: np.ndarray, y: np.ndarray, eps1: np.ndarray,
                            rtol: float = 1e-12, **products: np.ndarray) -> dict[str, np.ndarray]:
    """l, s, b from the per-point means (module docstring): l' by second-order finite differences on the grid; f =
    c . (eps, y, eps1) and f^(1) = d . (eps, y, eps1), so Cov(f, f^(1)) = c^T Sigma d, Var f = c^T Sigma c.

    Where Var f is below rtol times the scale of its terms (f constant: a constant pixel, or a model whose eps is
    affine with diagonal Jacobian, where N = sigma eps - l x removes all dependence on x) the slope is undetermined
    and s = 0 (then b = E f^(1))."""
    shape = (-1,) + (1,) * (l.ndim - 1)
    lam = lambdas.reshape(shape)
    e = np.exp(-lam)
    l_dot = np.gradient(l, lambdas, axis=0, edge_order=2)
    zero = np.zeros_like(l)
    c = (e + zero, -l, zero)  # f = e^{-lambda} eps - l y
    d = (e * (l - 1.0), -l_dot, e + zero)  # f^(1) = e^{-lambda} ((l - 1) eps + eps1) - l' y
    means = (eps, y, eps1)
    second = {}
    for a, b in PAIRS:
        second[a, b] = second[b, a] = products["_".join(("eps", "y", "eps1")[q] for q in (a, b))]
    cov = lambda u, w: sum(u[a] * w[b] * (second[a, b] - means[a] * means[b]) for a in range(3) for b in range(3))
    var_f, cov_ff1 = cov(c, c), cov(c, d)
    mean_f = sum(ci * m for ci, m in zip(c, means))
    mean_f1 = sum(di * m for di, m in zip(d, means))
    # The moments carry the model's precision: Var f from raw moments is rounding below rtol times their scale.
    tiny = rtol * np.maximum(sum(ci**2 * second[a, a] for a, ci in enumerate(c)), 1e-300)
    s = np.where(var_f > tiny, cov_ff1 / np.where(var_f > tiny, var_f, 1.0), 0.0)
    b = mean_f1 - s * mean_f
    return {"lambdas": np.asarray(lambdas, np.float64), "l": l, "s": s, "b": b}


def learn_dpm_solver_v3(teacher: Teacher, x_init: jax.Array, num_steps: int, *, num_points: int = 121,
                        order: int = 3, predictor_pseudo: bool = False, corrector: bool = False,
                        corrector_pseudo: bool = False, quadrature: str = "exponential", x0: ArrayLike | None = None,
                        num_probes: int = 1, chunk_size: int = 256,
                        seed: int = 0) -> tuple[samplers.Solver, jax.Array, dict[str, Any]]:
    """DPM-Solver-v3 with the statistics of the teacher's model: `schedules.learn("dpm_solver_v3", model_fn, process,
    x_init, num_steps, ...)`.

    The calibration data are `x0` where given (data samples), else the model's own samples: the teacher's solve of
    x_init (noise at t_max) down to t_min. The statistics grid runs over the teacher's [t_min, t_max] in log-SNR;
    the M-step grid is uniform in log-SNR, snapped to it (exactly on it where num_points - 1 is a multiple of M).

    Args:
      teacher: the `teacher.Teacher` (model, process, grid ends, the solver that makes the calibration samples).
      num_points: the statistics grid's points (the paper: 120-1200; K matters more than N, its Table 8).
      order, predictor_pseudo, corrector, corrector_pseudo, quadrature: the solver's (`samplers.dpm_solver_v3`).
      x0: calibration data (K, *shape) instead of the teacher's samples.
      num_probes, chunk_size: as `estimate_statistics`; seed: its key.

    Returns:
      (the solver, ts (M + 1,), info: the calibration's model evaluations and JVPs per calibration sample, the
      teacher's model calls per sample, seconds).
    """
    process = teacher.process
    start = time.perf_counter()
    teacher_calls = 0
    if x0 is None:
        x0 = teacher.states(x_init, teacher.grid())[-1]
        teacher_calls = teacher.model_calls(teacher.num_steps)
    x0 = jnp.asarray(x0)
    grid = np.asarray(teacher.grid(1), np.float64)  # the teacher's ends: (t_max, t_min)
    stats, info = estimate_statistics(teacher.model_fn, process, x0, num_points, key=jax.random.PRNGKey(seed),
                                      prediction=teacher.prediction, args=teacher.args, t_min=float(grid[-1]),
                                      t_max=float(grid[0]), num_probes=num_probes, chunk_size=chunk_size)
    solver = samplers.get_solver("dpm_solver_v3", order=order, predictor_pseudo=predictor_pseudo,
                                 corrector=corrector, corrector_pseudo=corrector_pseudo, quadrature=quadrature,
                                 **stats)
    lam = np.linspace(stats["lambdas"][0], stats["lambdas"][-1], int(num_steps) + 1)
    ts = solver.grid_times(process, np.asarray(process.t_of_log_snr(jnp.asarray(lam)), np.float64))
    k = x0.shape[0]
    cost = {"model_evaluations_per_sample": info["model_evaluations"] / k, "jvps_per_sample": info["jvps"] / k,
            "teacher_calls_per_sample": teacher_calls, "calibration_samples": k, "num_points": int(num_points),
            "statistics_seconds": info["seconds"], "seconds": time.perf_counter() - start,
            "roughness": roughness(stats)}
    return solver, jnp.asarray(ts), cost


def roughness(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """How rough each statistic is along the grid: per dimension mean |second difference| / mean |first difference|,
    the median over dimensions. A smooth curve scores about the grid spacing times |v''| / |v'| (well below 1 on a
    fine grid); independent noise scores about 1.7 (sqrt(6) / sqrt(2)). DPM-Solver-v3 extrapolates g through grid
    points, so rough s, b (above ~0.5) make it worse than DPM-Solver++: a model whose output is not smooth in t
    (module docstring; README). A constant dimension (no first difference) is left out."""
    out = {}
    for name in ("l", "s", "b"):
        v = np.asarray(stats[name], np.float64).reshape(np.shape(stats[name])[0], -1)
        d1, d2 = np.abs(np.diff(v, axis=0)).mean(axis=0), np.abs(np.diff(v, 2, axis=0)).mean(axis=0)
        moving = d1 > 0
        out[name] = float(np.median(d2[moving] / d1[moving])) if np.any(moving) else 0.0
    return out
