"""Evaluation metrics on sample sets: exact empirical W2, the two-sample energy distance and trajectory straightness.

>>> import numpy as np
>>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
>>> round(w2_exact(x, x + np.array([3.0, 4.0])), 12)
5.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def w2_exact(x: np.ndarray, y: np.ndarray) -> float:
    """Exact 2-Wasserstein distance between two empirical sets of equal size with uniform weights.

    With equal sizes and weights the optimal plan is a permutation (Birkhoff), found exactly by
    `scipy.optimize.linear_sum_assignment` on the squared-distance matrix: W2 = sqrt(mean_i ||x_i - y_perm(i)||^2).
    Cost O(n^3) time and O(n^2) memory: meant for n up to a few thousand.

    Args:
      x: (n, ...) samples; examples are flattened to vectors.
      y: (n, ...) samples with the same per-example size.

    Returns:
      The distance, a Python float.
    """
    x, y = _as_vectors(x, "x"), _as_vectors(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"w2_exact needs two sets of equal size and dimension, got {x.shape} and {y.shape}")
    cost = cdist(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(np.mean(cost[rows, cols])))


def energy_distance(x: ArrayLike, y: ArrayLike) -> float:
    """The two-sample energy distance 2 E|x - y| - E|x - x'| - E|y - y'| (Szekely & Rizzo; V-statistic), between
    (n, d) and (m, d) sample sets: 0 for equal sets, and its value between two independent draws of one distribution
    of the same sizes is the floor a sampler can reach (O(1/n)). One jitted pass per pair of shapes, O(n m) memory.

    Example:
        >>> round(energy_distance(np.zeros((2, 1)), np.ones((2, 1))), 6)
        2.0
    """
    return float(2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


@jax.jit
def _mean_distance(a, b):
    return jnp.mean(jnp.sqrt(jnp.sum((a[:, None] - b[None]) ** 2, -1) + 1e-30))


def straightness(trajectory: np.ndarray, ts: np.ndarray) -> float:
    """Straightness of discretised flow trajectories (Liu et al. 2022, "Flow straight and fast", arXiv:2209.03003).

    Liu et al. define S = int E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt over t in [0, 1]; on a grid t_0..t_N (either
    direction) with states x_0..x_N this is the time-weighted mean over the steps

        S = sum_k |t_{k+1} - t_k| * E_i ||v_k,i - v_i||^2 / sum_k |t_{k+1} - t_k|,
        v_k = (x_{k+1} - x_k) / (t_{k+1} - t_k),   v = (x_N - x_0) / (t_N - t_0),

    the squared norm summed over the dimensions and the mean E_i taken over the samples. S = 0 exactly when every
    trajectory moves along a straight line at constant speed.

    Args:
      trajectory: (N+1, n, ...) states at the times `ts`.
      ts: (N+1,) strictly monotone times.

    Returns:
      S, a Python float.

    >>> ts = np.array([0.0, 0.5, 1.0])
    >>> straightness(np.array([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]]), ts)
    4.0
    """
    trajectory = np.asarray(trajectory, np.float64)
    ts = np.asarray(ts, np.float64)
    if trajectory.ndim < 2 or ts.ndim != 1 or ts.shape[0] != trajectory.shape[0] or ts.shape[0] < 2:
        raise ValueError(f"straightness needs a trajectory (N+1, n, ...) and times (N+1,), N >= 1; got "
                         f"{trajectory.shape} and {ts.shape}")
    dt = np.diff(ts)
    if not (np.all(dt > 0) or np.all(dt < 0)):
        raise ValueError("straightness needs strictly monotone times ts")
    steps = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1)
    velocities = np.diff(steps, axis=0) / dt[:, None, None]  # (N, n, d)
    overall = (steps[-1] - steps[0]) / (ts[-1] - ts[0])  # (n, d)
    per_step = np.mean(np.sum((velocities - overall[None]) ** 2, axis=-1), axis=-1)  # (N,)
    return float(np.sum(np.abs(dt) * per_step) / np.sum(np.abs(dt)))


def _as_vectors(x, name):
    x = np.asarray(x, np.float64)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example along its first axis, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)
