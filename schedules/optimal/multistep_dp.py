"""The DP that prices a multistep solver itself: `schedules.learn("dp", ...)`.

It prices the real multistep update, history included, on a teacher trajectory, and finds the best schedule
of exactly M steps by dynamic programming (Bellman-style, as `distillation.cost_matrix`, but with history):

- Teacher: the fine trajectory T[0..N] of `distillation.teacher_trajectory` and the solver's native prediction
  m_k = pred(T[k], t_k) at every teacher point (N + 1 model calls in one batched call).
- A student schedule is a subsequence 0 = i_0 < i_1 < ... < i_M = N of teacher indices. Step k has the order
  K_k = solver.step_orders(M)[k] (warm-up and lower-order final steps as the solver would run M steps) and goes from
  the *teacher* state T[i_k], with the teacher predictions at i_k, i_{k-1}, ..., i_{k-K+1} as its history, to t of
  i_{k+1}. Its cost is mean ||a T[i_k] + sum_j b_j m[i_{k-j}] - T[i_{k+1}]||^2 (mean over the batch and every
  element, as cost_matrix), (a, b) the last row of the solver's own `table` on the local grid
  (t_{i_{k-K+1}}, ..., t_{i_k}, t_{i_{k+1}}) with order K: the row the full grid gives (tests/test_learned.py).
- The update is linear in the teacher vectors, so every cost is a quadratic form c^T G c in the Gram matrix G of
  {T[k], m[k]} averaged over the batch ((2N + 2)^2, float64, computed once): no model call after the teacher.
- The DP state is the last max(order, 2) chosen points (j, d_1, ..., d_{P-1}) with d the gaps between consecutive
  points (0: no such point yet). Order 2 costs O(N^3) per stage, order 3 O(N^4): every step and every history gap
  spans at most `window` teacher intervals. The default window is N for order <= 2 and otherwise the largest that
  keeps (N + 1) (window + 1)^order within about 4e7 table entries, never below ceil(N / M) + 1 (so that M steps can
  reach N); for N = 200, order 3 that is 57 (about 30 s on one CPU core, where the first step of an M = 5 or 10
  schedule is held at the window). Back-tracking runs on the host.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import samplers
from fastsamplers.core.typing import ArrayLike, HostArrayLike
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.multistep import LinearMultistep, Multistep
from fastsamplers.samplers.unipc import UniC
from fastsamplers.schedules.optimal.teacher import Teacher, gram_matrix
from fastsamplers.schedules.processes import Process, as_float

TABLE_BUDGET = 4e7  # entries of the largest cost table (N + 1) (window + 1)^order that the default window allows


def _resolve_solver(solver: str | Solver, solver_options: dict[str, Any]) -> LinearMultistep:
    if isinstance(solver, str):
        solver = samplers.get_solver(solver, **solver_options)
    elif solver_options:
        raise ValueError(f"solver options {sorted(solver_options)} are for a solver given by name; got a Solver")
    if isinstance(solver, UniC) or getattr(solver, "stochastic", False):
        raise ValueError(f"learn('dp') needs a deterministic multistep update without a corrector; {solver.name} "
                         f"is stochastic or corrected")
    if not isinstance(solver, LinearMultistep):
        raise ValueError(f"learn('dp') prices a linear multistep solver's own update (a solver with a coefficient "
                         f"`table`: ddim, deis_tab, deis_rhoab, ipndm, dpmpp_2m, dpmpp_3m); got {solver.name}")
    return solver


def default_window(n: int, num_steps: int, order: int) -> int:
    """The default step window (module docstring)."""
    if order <= 2:
        return n
    w = int(math.floor((TABLE_BUDGET / (n + 1)) ** (1.0 / order))) - 1
    return int(min(n, max(w, math.ceil(n / num_steps) + 1)))


def local_row(solver: Multistep, process: Process, local_ts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, b (order,)) of the last row of solver.table on a local grid of K + 1 times, the last row of order K."""
    k = local_ts.shape[0] - 1
    a, b = solver.table(process, local_ts, np.arange(1, k + 1))
    return a[-1], b[-1]


def _gap_grid(k, w):
    """All (e, d_1, ..., d_{k-1}) in [0, w]^k, flattened: (w + 1)^k rows, C-order."""
    return np.stack(np.meshgrid(*([np.arange(w + 1)] * k), indexing="ij"), axis=-1).reshape(-1, k)


def cost_table(solver: Multistep, process: Process, ts: np.ndarray, gram: np.ndarray, k: int, window: int,
               chunk: int = 1 << 16) -> np.ndarray:
    """C[i, e, d_1, ..., d_{k-1}] (shape (N+1,) + (window+1,)*k): the cost of an order-k step from teacher index i
    to i + e with history points i - d_1, i - d_1 - d_2, ...; inf where a gap is 0 or a point is off the grid."""
    n1 = ts.shape[0]
    gaps = _gap_grid(k, window)  # (R, k): e, d_1..d_{k-1}
    i = np.repeat(np.arange(n1), gaps.shape[0])
    gaps = np.tile(gaps, (n1, 1))
    e, d = gaps[:, 0], gaps[:, 1:]
    hist = i[:, None] - np.cumsum(d, axis=1) if k > 1 else np.zeros((i.shape[0], 0), np.int64)  # newest first
    valid = (e >= 1) & (i + e < n1) & np.all(d >= 1, axis=1) & np.all(hist >= 0, axis=1)
    sel = np.flatnonzero(valid)
    out = np.full(i.shape[0], np.inf)
    if sel.size == 0:
        return out.reshape((n1,) + (window + 1,) * k)
    pts = np.concatenate([hist[sel][:, ::-1], i[sel, None], (i + e)[sel, None]], axis=1)  # oldest first, (S, k+1)
    nn = n1
    # vector indices in the Gram matrix: x = T[i], m at i, i - d_1, ..., target T[i + e]
    vidx = np.concatenate([i[sel, None], nn + i[sel, None], nn + hist[sel], (i + e)[sel, None]], axis=1)
    g, times = jnp.asarray(gram), jnp.asarray(ts)

    @jax.jit
    def price(pts_c, vidx_c):
        a, b = jax.vmap(lambda p: local_row(solver, process, times[p]))(pts_c)
        c = jnp.concatenate([a[:, None], b[:, :k].astype(a.dtype),
                             -jnp.ones((a.shape[0], 1), a.dtype)], axis=1).astype(g.dtype)
        sub = g[vidx_c[:, :, None], vidx_c[:, None, :]]
        return jnp.einsum("sa,sab,sb->s", c, sub, c)

    pad = (-sel.size) % chunk if sel.size > chunk else 0
    pts_p = np.concatenate([pts, np.repeat(pts[:1], pad, axis=0)])
    vidx_p = np.concatenate([vidx, np.repeat(vidx[:1], pad, axis=0)])
    size = min(chunk, pts_p.shape[0])
    vals = [np.asarray(price(pts_p[s:s + size], vidx_p[s:s + size])) for s in range(0, pts_p.shape[0], size)]
    out[sel] = np.concatenate(vals)[: sel.size]
    return out.reshape((n1,) + (window + 1,) * k)


def dp_schedule(tables: Mapping[int, np.ndarray], step_orders: Sequence[int] | np.ndarray, n: int, window: int,
                state_order: int) -> tuple[np.ndarray, float]:
    """The best path 0 = i_0 < ... < i_M = n under per-step cost tables {K: cost_table(K)}.

    State after a step: (j, d_1, ..., d_{P-1}), P = state_order >= 2, d the gaps to the earlier points, 0 when the
    point does not exist. Returns (indices (M + 1,), total cost)."""
    p = state_order
    w1 = window + 1
    n1 = n + 1
    shape = (n1,) + (w1,) * (p - 1)
    f = np.full(shape, np.inf)
    f[(0,) + (0,) * (p - 1)] = 0.0
    pointers = []
    for k_order in step_orders:
        k_order = int(k_order)
        cost = tables[k_order]  # (n1, w1 [e], w1^(k-1) [d_1..d_{k-1}])
        new = np.full(shape, np.inf)
        ptr = np.zeros(shape, np.int64)
        for e in range(1, w1):
            c = cost[:, e]  # (n1, w1^(k-1)), broadcast over d_k..d_{p-1}
            c = c.reshape(c.shape + (1,) * (p - k_order))
            total = f + c  # (n1 [old j], d_1..d_{p-1})
            best = np.argmin(total, axis=-1)
            val = np.take_along_axis(total, best[..., None], axis=-1)[..., 0]  # (n1, d_1..d_{p-2})
            new[e:, e] = val[: n1 - e]
            ptr[e:, e] = best[: n1 - e]
        pointers.append(ptr)
        f = new
    final = f[n]
    flat = int(np.argmin(final))
    total = float(final.reshape(-1)[flat])
    if not np.isfinite(total):
        raise ValueError(f"no {len(step_orders)}-step schedule reaches the last teacher index with steps of at most "
                         f"window = {window} teacher intervals; raise the window")
    state = (n,) + np.unravel_index(flat, final.shape)
    path = [n]
    for ptr in reversed(pointers):
        j, gaps = state[0], state[1:]
        dropped = int(ptr[state])
        state = (j - gaps[0],) + tuple(gaps[1:]) + (dropped,)
        path.append(int(state[0]))
    return np.asarray(path[::-1]), total


def path_cost_direct(solver: Multistep, process: Process, ts: ArrayLike, teacher: jax.Array, preds: jax.Array,
                     path: Sequence[int], step_orders: Sequence[int] | np.ndarray) -> float:
    """The same objective, computed directly on the teacher vectors (no Gram matrix): for tests and checks."""
    total = 0.0
    for k, order in enumerate(step_orders):
        order = int(order)
        hist = path[k - order + 1: k + 1][::-1]  # newest first
        local = jnp.asarray(ts)[np.asarray(list(path[k - order + 1: k + 2]))]
        a, b = local_row(solver, process, local)
        y = a * teacher[path[k]] + sum(b[j] * preds[hist[j]] for j in range(order))
        total += float(jnp.mean((y - teacher[path[k + 1]]) ** 2))
    return total


def learn_dp(teacher: Teacher, x_init: jax.Array, num_steps: int, *, solver: str | Solver = "dpmpp_2m",
             window: int | None = None, **solver_options: Any) -> tuple[Solver, jax.Array, dict[str, Any]]:
    """The DP schedule of `num_steps` steps for a multistep solver (module docstring).

    Args:
      teacher: the `teacher.Teacher` (model, process, grid, teacher solver).
      solver: a linear multistep solver (name, with `solver_options`, or a Solver) whose own update the DP prices.
      window: the largest span, in teacher intervals, of a step and of each history gap (module docstring for the
        default).

    Returns:
      (solver, ts (M + 1,) teacher times, info: indices, cost, window, step orders, model calls).
    """
    solver = _resolve_solver(solver, solver_options)
    solver.check_grid(int(num_steps))
    n, m = teacher.num_steps, int(num_steps)
    if window is None:
        window = default_window(n, m, solver.order)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    window = int(min(window, n))
    ts = teacher.grid()
    trajectory, preds, _ = teacher.states_and_predictions(x_init, ts, solver.native)
    gram = gram_matrix(trajectory, preds)
    orders = solver.step_orders(m)
    tables = {int(k): cost_table(solver, teacher.process, np.asarray(ts), gram, int(k), window)
              for k in sorted(set(orders))}
    indices, cost = dp_schedule(tables, orders, n, window, max(solver.order, 2))
    info: dict[str, Any] = dict(indices=indices, cost=cost, window=window, teacher_ts=np.asarray(ts), step_orders=np.asarray(orders),
                model_calls=teacher.model_calls(n) + n + 1)
    return solver, as_float(np.asarray(ts)[indices]), info

