"""Solver schedules and their search: `schedules.learn("search", ...)`, after USF / S3 ("A Unified Sampling Framework
for Solver Searching", 2023), where the sampler's strategy may change at every step.

A solver schedule gives every step i a strategy (prediction, order, corrector) and the grid its times:
- prediction "eps": the tAB-DEIS step (eps extrapolated by a Lagrange polynomial in t, integrated exactly against the
  exponential-integrator kernel); "x0": the DPM-Solver++ multistep step (data prediction; order 3 is the published
  3M);
- order K in 1..3: the number of predictions the step uses (capped at i + 1 during the warm-up);
- corrector: UniC (Zhao et al. 2023, B(h) = e^{-h} - 1) corrects the point x_{i+1} the step made, of the step's order
  plus one, with the prediction at x_{i+1}, which the next step evaluates anyway (no model call; the last step has
  none after it, so its flag is ignored).
Each step's weights are the last row of that solver's own coefficient table on the step's local grid
(`multistep_dp.local_row`, which tests show equal the full-grid rows) and UniC's row of `samplers.unipc`; the schedule
compiles to one linear table (`samplers.linear_table`) that `samplers.sample` runs as one compiled loop. A schedule of
one strategy everywhere is that fixed solver: ("eps", K) deis_tab of order K, ("x0", 2, UniC) dpmpp_2m with its
corrector, ... (tests/test_solver_search.py checks their tables).

The search (a local search scored by whole samples, in place of S3's learned predictor of the score):
1. Start: every fixed solver (each strategy everywhere, with and without the lower-order final steps of the published
   codes) on every grid of `grids`; each is run on the calibration batch and scored by its mean squared error against
   the teacher's sample from the same noise. The best is the incumbent.
2. Coordinate descent: for step i = 0..M-1 in turn, every other strategy for step i, and moves of the time point
   t_{i+1} (interior points only) to `moves` fractions of the way toward either neighbour in log-SNR, are scored; the
   best replaces the incumbent when it lowers the error. Sweeps repeat until one changes nothing or the budget is
   spent.
Every candidate is one sample of the calibration batch (M model calls per calibration sample); candidates are run
`chunk` at a time under `jax.vmap`, with the tables as traced arguments (one compilation). The cost reported is the
teacher's solve plus M calls per candidate, per calibration sample. The result is never worse on the calibration
batch than the best fixed solver it started from: the incumbent only changes for a lower error.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import samplers
from fastsamplers.core.typing import HostArrayLike
from fastsamplers.samplers.linear_table import LinearTable, run_table
from fastsamplers.samplers.unipc import corrector_rows, unipc_terms
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.optimal.multistep_dp import local_row
from fastsamplers.schedules.optimal.teacher import Teacher
from fastsamplers.schedules.processes import Process

PREDICTIONS = ("eps", "x0")
ORDERS = (1, 2, 3)
DEFAULT_GRIDS = ("logsnr", "quadratic", "uniform", "edm")
DEFAULT_MOVES = (0.1, 0.25, 0.5)


class Strategy(NamedTuple):
    """What step i does: its prediction ("eps" or "x0"), order (1-3) and whether UniC corrects the point it makes."""

    prediction: str
    order: int
    corrector: bool = False


@functools.lru_cache(maxsize=None)
def _family(prediction, order):
    if prediction == "eps":
        return samplers.get_solver("deis_tab", order=order)
    return samplers.get_solver("dpmpp_2m" if order <= 2 else "dpmpp_3m")


@functools.lru_cache(maxsize=None)
def _row_fn(prediction, order, process):
    """(a, b) of an order-`order` step on a local grid of order + 1 times, compiled once per kind."""
    return jax.jit(lambda local: local_row(_family(prediction, order), process, local))


@functools.lru_cache(maxsize=None)
def _corrector_fn(order, process):
    """UniC's weights for the point an order-`order` step made, on its local grid, compiled once per order."""
    def row(local):
        return corrector_rows(process, local, unipc_terms(process, local, np.arange(1, order + 1), order, "bh2"))[-1]

    return jax.jit(row)


def check_strategies(strategies: Iterable[Sequence[Any]], num_steps: int) -> tuple[Strategy, ...]:
    """The strategies as a tuple of `Strategy`, checked (one per step, known predictions and orders)."""
    checked = tuple(Strategy(*s) for s in strategies)
    if len(checked) != num_steps:
        raise ValueError(f"a solver schedule needs one strategy per step: {num_steps}, got {len(checked)}")
    for s in checked:
        if s.prediction not in PREDICTIONS or s.order not in ORDERS or not isinstance(s.corrector, (bool, np.bool_)):
            raise ValueError(f"a strategy is (prediction in {list(PREDICTIONS)}, order in {list(ORDERS)}, corrector "
                             f"True/False); got {tuple(s)}")
    return checked


def strategy_table(process: Process, ts: HostArrayLike, strategies: Iterable[Sequence[Any]]) -> np.ndarray:
    """The linear table (M, M + 1) of a solver schedule on the grid ts (module docstring)."""
    ts = np.asarray(ts, np.float64)
    m = ts.shape[0] - 1
    strategies = check_strategies(strategies, m)
    with jax.enable_x64(True):
        alpha = np.asarray(process.alpha(jnp.asarray(ts)))
        sigma = np.asarray(process.sigma(jnp.asarray(ts)))
        unit = np.eye(m + 1)
        # evaluation points x_j (x_T = alpha_0 d_0 + sigma_0 e_0), corrected points, effective orders
        points = [alpha[0] * unit[0] + sigma[0] * unit[1]]
        corrected: list[np.ndarray] = []
        orders: list[int] = []

        def pred(kind, j):
            return unit[j + 1] if kind == "eps" else (points[j] - sigma[j] * unit[j + 1]) / alpha[j]

        for i, s in enumerate(strategies):
            if i >= 1 and strategies[i - 1].corrector:
                k = orders[i - 1]
                row = np.asarray(_corrector_fn(k, process)(jnp.asarray(ts[i - k: i + 1])))
                base = sigma[i] / sigma[i - 1] * corrected[i - 1]
                corrected.append(base + sum(row[j] * pred("x0", i - j) for j in range(k + 1)))
            else:
                corrected.append(points[i])
            k = min(s.order, i + 1)
            orders.append(k)
            a, b = (np.asarray(v) for v in _row_fn(s.prediction, k, process)(jnp.asarray(ts[i - k + 1: i + 2])))
            points.append(a * corrected[i] + sum(b[j] * pred(s.prediction, i - j) for j in range(k)))
    return np.stack(points[1:])


def fixed_schedules(num_steps: int, orders: Iterable[int] = ORDERS,
                    predictions: Iterable[str] = PREDICTIONS) -> dict[str, tuple[Strategy, ...]]:
    """The solver schedules of one strategy everywhere, with and without the published lower-order final steps:
    {label: strategies}."""
    out = {}
    for kind, order, corr in itertools.product(predictions, orders, (False, True)):
        plain = tuple(Strategy(kind, order, corr) for _ in range(num_steps))
        lof = tuple(Strategy(kind, min(order, num_steps - i), corr) for i in range(num_steps))
        label = f"{kind}{order}{'+unic' if corr else ''}"
        out[label] = plain
        if lof != plain:
            out[label + "+lof"] = lof
    return out


def _moved(process, ts, j, fraction):
    """ts with point j moved `fraction` of the way toward a neighbour in log-SNR (fraction < 0: toward j - 1)."""
    with jax.enable_x64(True):
        lam = np.asarray(process.log_snr(jnp.asarray(ts)))
        other = lam[j + 1] if fraction > 0 else lam[j - 1]
        new = lam[j] + abs(fraction) * (other - lam[j])
        out = np.array(ts, np.float64)
        out[j] = float(process.t_of_log_snr(jnp.asarray(new)))
    return out if np.all(np.diff(out) < 0) else None


class _Scorer:
    """Mean squared error against the teacher's sample of candidate (table, grid) pairs, `chunk` at a time (padded,
    so one compilation), counting the candidates scored."""

    def __init__(self, model, process, x_init, target, chunk):
        self.chunk, self.count = chunk, 0

        def score(weights, ts):
            x = run_table(model, process, weights, ts, x_init)
            return jnp.mean((x.astype(target.dtype) - target) ** 2)

        self._fn = jax.jit(jax.vmap(score))

    def __call__(self, tables, grids):
        out = []
        for s in range(0, len(tables), self.chunk):
            w, g = np.stack(tables[s: s + self.chunk]), np.stack(grids[s: s + self.chunk])
            pad = self.chunk - w.shape[0]
            w = np.concatenate([w, np.repeat(w[-1:], pad, 0)])
            g = np.concatenate([g, np.repeat(g[-1:], pad, 0)])
            out.append(np.asarray(self._fn(jnp.asarray(w), jnp.asarray(g)))[: self.chunk - pad])
        self.count += len(tables)
        return np.concatenate(out)


def learn_search(teacher: Teacher, x_init: jax.Array, num_steps: int, *, grids: Iterable[str] = DEFAULT_GRIDS,
                 budget: int = 600, moves: Iterable[float] = DEFAULT_MOVES, orders: Iterable[int] = ORDERS,
                 predictions: Iterable[str] = PREDICTIONS,
                 chunk: int = 16) -> tuple[LinearTable, jax.Array, dict[str, Any]]:
    """The solver schedule of `num_steps` steps found by the search (module docstring).

    Args:
      teacher: the `teacher.Teacher`; its sample from x_init is the target.
      grids: the grid names the start set runs on.
      budget: the most candidates scored (each M model calls per calibration sample), the start set included.
      moves: the fractions of a time move toward a neighbour in log-SNR.
      orders, predictions: the strategies searched (every combination, with and without UniC).
      chunk: candidates run at once (memory: chunk x the calibration batch).

    Returns:
      (LinearTable, ts, info: strategies, start (the best fixed solver: label, grid, mse), mse, candidates scored,
      model calls per calibration sample).
    """
    m = int(num_steps)
    orders, predictions = tuple(orders), tuple(predictions)
    if not set(orders) <= set(ORDERS) or not orders or not set(predictions) <= set(PREDICTIONS) or not predictions:
        raise ValueError(f"orders must be a subset of {list(ORDERS)} and predictions of {list(PREDICTIONS)}; got "
                         f"{list(orders)}, {list(predictions)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive number of candidates, got {budget!r}")
    process = teacher.process
    target = teacher.states(x_init, teacher.grid())[-1]
    scorer = _Scorer(teacher.model("eps"), process, x_init, target, int(chunk))
    start_grids = {name: np.asarray(get_timesteps(name, process, m, t_min=teacher.t_min, t_max=teacher.t_max),
                                    np.float64) for name in grids}
    starts = [(label, g, strategies) for label, strategies in fixed_schedules(m, orders, predictions).items()
              for g in start_grids]
    errors = scorer([strategy_table(process, start_grids[g], s) for _, g, s in starts],
                    [start_grids[g] for _, g, _ in starts])
    best = int(np.argmin(errors))
    start = dict(label=starts[best][0], grid=starts[best][1], mse=float(errors[best]))
    ts, strategies, error = start_grids[starts[best][1]], starts[best][2], float(errors[best])
    options = [Strategy(*c) for c in itertools.product(predictions, orders, (False, True))]
    sweeps, changed = 0, True
    while changed and scorer.count < budget:
        changed, sweeps = False, sweeps + 1
        for i in range(m):
            candidates = [(ts, strategies[:i] + (o,) + strategies[i + 1:]) for o in options if o != strategies[i]]
            if i + 1 < m:
                for f in moves:
                    for moved in (_moved(process, ts, i + 1, f), _moved(process, ts, i + 1, -f)):
                        if moved is not None:
                            candidates.append((moved, strategies))
            candidates = candidates[: max(budget - scorer.count, 0)]
            if not candidates:
                break
            scores = scorer([strategy_table(process, g, s) for g, s in candidates], [g for g, _ in candidates])
            k = int(np.argmin(scores))
            if scores[k] < error:
                (ts, strategies), error, changed = candidates[k], float(scores[k]), True
    table = LinearTable.from_array(strategy_table(process, ts, strategies), ts, process, method="search")
    info = dict(strategies=[list(s) for s in strategies], start=start, mse=error, sweeps=sweeps,
                candidates=scorer.count, model_calls=teacher.model_calls(teacher.num_steps) + scorer.count * m,
                fixed={f"{label}@{g}": float(e) for (label, g, _), e in zip(starts, errors)})
    return table, jnp.asarray(ts), info
