"""OLSS, Optimal Linear Subspace Search (Duan et al. 2023): a sampler whose every step is the least-squares
combination of what the sampling has produced so far: `schedules.learn("olss", ...)`.

The sampler is a linear table (`samplers.linear_table`): x_{r+1} = W[r, 0] d_0 + sum_{j <= r} W[r, 1 + j] e_j, with
e_j the model's noise prediction at the sampler's own point x_j and d_0 = (x_T - sigma_0 e_0) / alpha_0 (the paper
weighs x_T; the span is the same). Row r is fitted by least squares to the teacher's state at t_{r+1} over every
element of every calibration sample (one weight per basis vector, shared by all of them), in float64 through the
Gram matrix of the basis (d_0, e_0, ..., e_r):

- fit="student" (default): e_j are the predictions at the student's own points, made by the rows already fitted (one
  batched model call per step, M per calibration sample), so each row is fitted on the inputs it will see and
  corrects the error the earlier rows left.
- fit="teacher": e_j are the predictions at the teacher's states at t_j, as the authors' released code fits them
  (no model call after the teacher); the student then runs on points it was not fitted on.
- rank: the least squares in the principal subspace of the basis: only the `rank` eigenvectors of its Gram matrix
  with the largest eigenvalues are used (None: all above rcond * the largest), which regularises nearly collinear
  predictions at close times.

The time points (`times`):
- "olss", the paper's search, on the teacher grid and the Gram matrix of the teacher's states and predictions (no
  model call): for a bound b, a greedy path goes from each chosen point to the furthest teacher index whose state the
  least-squares fit on (x_T, the teacher's predictions at the points chosen so far) reaches within mean squared error
  b (at least one index on); bisection on b finds the smallest bound whose path reaches t_min in at most M steps, and
  a shorter path is filled up by halving its longest steps.
- a grid name ("logsnr", "quadratic", ...): that grid of M steps; the teacher then runs on it refined into equal
  log-SNR substeps (about teacher_steps in all), so that its states fall on the student's times.
Then (`refine` fits, default 100) a coordinate search moves each interior time point by +-1, 2, 4, ... teacher
intervals and keeps a move when the refitted sampler's final error on the calibration batch falls. The paper's bound
is a minimax of one-step errors from the teacher's points, blind to how the student carries its errors: on digits_vp
it put the first of 4 steps from t = 1 to 0.15 (a one-step mean squared error of 0.33) and then three short ones, 2.2x
worse than tAB-DEIS on the quadratic grid; the search scores what the sampler will do.

With M equal to the teacher's own steps and the teacher a linear sampler, the fit reproduces the teacher's table
exactly; on a one-component isotropic Gaussian every flow map is affine in x_T, so two basis vectors fit it exactly
(tests/test_olss.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ModelFn
from fastsamplers.samplers.linear_table import LinearTable, run_table
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.optimal.teacher import Teacher, gram_matrix
from fastsamplers.schedules.processes import Process, as_float

# What each row's least squares fits: the student's own earlier predictions, or the teacher's (`learn_olss`).
FITS = Registry.of_names("OLSS fit", ("student", "teacher"), ordered=True,
                         unknown="unknown {kind} {name!r}; valid fits: {valid}")
RCOND = 1e-12  # eigenvalues of the basis Gram matrix below RCOND * the largest are dropped
BISECTION_STEPS = 60


def least_squares(gram_basis: np.ndarray, cross: np.ndarray, rank: int | None = None) -> np.ndarray:
    """w minimising mean ||w . V - y||^2 from G = mean V V^T (K, K) and c = mean V y (K, ...): the solution in the
    span of G's leading eigenvectors (the `rank` largest, and none below RCOND * the largest eigenvalue)."""
    eigval, eigvec = np.linalg.eigh(gram_basis)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    keep = eigval > RCOND * max(eigval[0], 0.0)
    if rank is not None:
        keep &= np.arange(eigval.size) < rank
    inv = np.where(keep, 1.0 / np.where(keep, eigval, 1.0), 0.0).reshape((-1,) + (1,) * (cross.ndim - 1))
    return eigvec @ (inv * (eigvec.T @ cross))


def residuals(gram: np.ndarray, basis: list[int], targets: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Mean squared error of the least-squares fit of each target vector (indices into gram) on the basis vectors."""
    g_b = gram[np.ix_(basis, basis)]  # type: ignore[arg-type]  # numpy's stubs: ix_ takes lists of ints too
    cross = gram[np.ix_(basis, targets)]  # type: ignore[arg-type]  # (K, J)
    w = least_squares(g_b, cross, rank)
    return np.diag(gram)[targets] - 2 * np.sum(w * cross, axis=0) + np.einsum("kj,kl,lj->j", w, g_b, w)


def greedy_path(gram: np.ndarray, n: int, num_steps: int, bound: float,
                rank: int | None = None) -> list[int] | None:
    """The paper's greedy path under `bound` on the Gram matrix of (T[0..n], e[0..n]): from each chosen point, the
    furthest teacher index whose state the least-squares fit on (T[0], e at the chosen points) reaches within mean
    squared error `bound` (at least one index on). The path (a list), or None when it needs more than num_steps."""
    states, preds = np.arange(n + 1), n + 1 + np.arange(n + 1)
    path = [0]
    while path[-1] < n and len(path) <= num_steps:
        candidates = states[path[-1] + 1:]
        err = residuals(gram, [0] + [int(preds[i]) for i in path], candidates, rank)
        within = np.flatnonzero(err <= bound)
        path.append(int(candidates[within[-1]]) if within.size else path[-1] + 1)
    return path if path[-1] == n else None


def olss_path(gram: np.ndarray, n: int, num_steps: int, rank: int | None = None) -> tuple[np.ndarray, float]:
    """The paper's time search (module docstring): (indices (M + 1,), the smallest bound b, to bisection precision,
    whose greedy path takes at most M steps)."""
    lo, hi = 0.0, float(np.max(np.diag(gram)[: n + 1])) + 1.0
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if greedy_path(gram, n, num_steps, mid, rank) is not None else (mid, hi)
    path = greedy_path(gram, n, num_steps, hi, rank)
    assert path is not None  # hi starts above every error (a path of one step fits) and bisection keeps it a fit
    while len(path) < num_steps + 1:  # fewer steps than asked: halve the longest
        k = int(np.argmax(np.diff(path)))
        path.insert(k + 1, (path[k] + path[k + 1]) // 2)
    return np.asarray(path), hi


def refined_grid(process: Process, ts: np.ndarray, per_step: int) -> np.ndarray:
    """ts with every interval split into `per_step` substeps equal in log-SNR: ts are its points 0, per_step, ..."""
    with jax.enable_x64(True):
        lam = np.asarray(process.log_snr(jnp.asarray(ts, jnp.float64)))
        frac = np.arange(per_step) / per_step
        inner = (lam[:-1, None] + frac[None, :] * (lam[1:] - lam[:-1])[:, None]).reshape(-1)
        fine = np.array(process.t_of_log_snr(jnp.asarray(inner)), np.float64)
    fine[::per_step] = ts[:-1]  # the student's times exactly, not through log-SNR and back
    return np.concatenate([fine, ts[-1:]])


def fit_rows(basis_rows: np.ndarray, targets: np.ndarray, rank: int | None = None) -> tuple[np.ndarray, float]:
    """Row weights by least squares: basis (K, n) float64, targets (n,). Returns (w (K,), mean squared residual)."""
    g = basis_rows @ basis_rows.T / basis_rows.shape[1]
    c = basis_rows @ targets / basis_rows.shape[1]
    w = least_squares(g, c, rank)
    return w, float(np.mean((w @ basis_rows - targets) ** 2))


def fit_table(eps_model: ModelFn, process: Process, x_init: jax.Array, states: jax.Array, ts_teacher: jax.Array,
              indices: Sequence[int] | np.ndarray, preds: jax.Array | None = None, rank: int | None = None,
              run: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None
              ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Fit the table on the teacher indices `indices` (module docstring): with `preds` (the teacher's predictions at
    its states) the "teacher" fit, scored by `run(weights, ts, x_init)` (a compiled `run_table`), else the "student"
    fit (one model call per step). Returns (weights (M, M + 1), mse per row, the calibration sample's final mean
    squared error against the teacher, model calls made)."""
    m = len(indices) - 1
    ts = np.asarray(ts_teacher, np.float64)[np.asarray(indices)]
    flat = lambda a: np.asarray(a, np.float64).reshape(-1)
    with jax.enable_x64(True):
        alpha0, sigma0 = float(process.alpha(ts[0])), float(process.sigma(ts[0]))
    basis, weights, mse = [], np.zeros((m, m + 1)), []
    x = jnp.asarray(x_init)
    for r in range(m):
        e = eps_model(x, ts[r]) if preds is None else preds[indices[r]]
        if r == 0:
            basis.append((flat(x_init) - sigma0 * flat(e)) / alpha0)  # d_0
        basis.append(flat(e))
        w, err = fit_rows(np.stack(basis), flat(states[indices[r + 1]]), rank)
        weights[r, : r + 2] = w
        mse.append(err)
        if preds is None:
            x = jnp.asarray((w @ np.stack(basis)).reshape(x.shape), x.dtype)
    if preds is None:  # the last row's residual is the student's own final error
        return weights, np.asarray(mse), mse[-1], m
    table = LinearTable.from_array(weights, ts, process)
    run = run or functools.partial(run_table, eps_model, process)
    final = run(jnp.asarray(table.coefficients(process, ts)), jnp.asarray(ts), jnp.asarray(x_init))
    return weights, np.asarray(mse), float(np.mean((np.asarray(final, np.float64) - flat(states[-1]).reshape(
        final.shape)) ** 2)), m


def refine_indices(evaluate: Callable[[Sequence[int] | np.ndarray], float], indices: Sequence[int] | np.ndarray,
                   budget: int) -> tuple[np.ndarray, float, int]:
    """Coordinate search over the interior indices: each moved by +-1, 2, 4, ... teacher intervals (kept strictly
    increasing), a move kept when it lowers `evaluate(indices)`; sweeps until none does or `budget` evaluations are
    spent. Returns (indices, value, evaluations)."""
    best, value, spent = list(indices), evaluate(indices), 0
    improved = True
    while improved and spent < budget:
        improved = False
        for k in range(1, len(best) - 1):
            span = best[k + 1] - best[k - 1]
            for d in [s * 2**j for j in range(int(np.log2(max(span, 1))) + 1) for s in (1, -1)]:
                cand = list(best)
                cand[k] += d
                if not cand[k - 1] < cand[k] < cand[k + 1] or spent >= budget:
                    continue
                v, spent = evaluate(cand), spent + 1
                if v < value:
                    best, value, improved = cand, v, True
    return np.asarray(best), value, spent


def learn_olss(teacher: Teacher, x_init: jax.Array, num_steps: int, *, times: str = "olss", fit: str = "student",
               rank: int | None = None, refine: int = 100) -> tuple[LinearTable, jax.Array, dict[str, Any]]:
    """The OLSS sampler of `num_steps` steps (module docstring).

    Args:
      teacher: the `teacher.Teacher` (model, process, teacher grid and solver).
      times: "olss" (the paper's search on the teacher grid) or a grid name of `schedules.GRIDS`.
      fit: "student" or "teacher" (whose predictions form the least-squares basis).
      rank: keep this many principal directions of the basis (None: all that are numerically nonzero).
      refine: at most this many more fits, of a coordinate search over the time points' teacher indices scored by
        the fitted sampler's final error on the calibration batch (M model calls each); 0 keeps the times found.

    Returns:
      (LinearTable, ts (M + 1,), info: indices on the teacher grid, fit_mse per row, calibration mse, bound, fits,
      model calls per sample).
    """
    FITS.check(fit)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1):
        raise ValueError(f"rank must be None or an integer >= 1, got {rank!r}")
    if not isinstance(times, str):
        raise ValueError(f"times must be 'olss' or the name of a grid, got {times!r}")
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"refine must be a number of fits >= 0, got {refine!r}")
    m = int(num_steps)
    process = teacher.process
    info: dict[str, Any] = {"times": times, "fit": fit, "rank": rank}
    if times == "olss":
        ts_teacher = teacher.grid()
        states, preds, _ = teacher.states_and_predictions(x_init, ts_teacher, "eps")
        indices, bound = olss_path(gram_matrix(states, preds), teacher.num_steps, m, rank)
        info.update(bound=bound)
        calls = teacher.model_calls(teacher.num_steps) + teacher.num_steps + 1
    else:
        per_step = max(1, math.ceil(teacher.num_steps / m))
        ts_student = np.asarray(get_timesteps(times, process, m, t_min=teacher.t_min, t_max=teacher.t_max),
                                np.float64)
        ts_teacher = as_float(refined_grid(process, ts_student, per_step))
        indices = np.arange(m + 1) * per_step
        if fit == "teacher":
            states, preds, _ = teacher.states_and_predictions(x_init, ts_teacher, "eps")
        else:
            states, preds = teacher.states(x_init, ts_teacher), None
        calls = teacher.model_calls(m * per_step) + (m * per_step + 1 if fit == "teacher" else 0)
    eps_model = jax.jit(teacher.model("eps"))
    run = jax.jit(functools.partial(run_table, eps_model, process))  # compiled once: every refit's tables are traced
    fit_on = lambda idx: fit_table(eps_model, process, x_init, states, ts_teacher, idx,
                                   preds if fit == "teacher" else None, rank, run)
    indices, _, fits = refine_indices(lambda idx: fit_on(idx)[2], indices, refine)
    weights, mse, final, last_calls = fit_on(indices)
    ts = np.asarray(ts_teacher, np.float64)[indices]
    info.update(indices=np.asarray(indices), fit_mse=mse, mse=final, fits=fits + 2, teacher_ts=np.asarray(ts_teacher),
                model_calls=int(calls + (fits + 2) * last_calls))
    table = LinearTable.from_array(weights, ts, process, method="olss")
    return table, as_float(ts), info
