"""Linear samplers as tables.

Every deterministic sampler whose step is linear in the state and in the model's outputs (DDIM, DEIS, iPNDM,
DPM-Solver++, UniPC, ...) is, on a fixed grid t_0 > ... > t_M, a lower-triangular table of weights on what the
sampling has produced: the model's noise predictions e_j = eps(x_j, t_j) at the points x_j where it calls the model,
and the initial noise x_T = x_0, which enters through d_0 = (x_T - sigma_0 e_0) / alpha_0, the data prediction at
the first point:

    x_{i+1} = W[i, 0] d_0 + sum_{j <= i} W[i, 1 + j] e_j,      i = 0..M-1   (x_M is the sample)

This is the form in which OLSS (Duan et al. 2023, "Optimal Linear Subspace Search") learns a sampler (the paper
weighs x_T itself: the span is the same, as x_T = alpha_0 d_0 + sigma_0 e_0), and the form to which a solver schedule
(a per-step choice of method, `schedules.optimal.solver_search`) compiles. `LinearTable` runs any such table as one
`lax.scan` whose carried state is d_0 and a fixed-shape buffer of the M predictions.

Why d_0 and not x_T: near t_max, x_T is almost sigma_0 e_0 (alpha_0 = 0.0066 at t = 1 of vp_linear), so rows on
(x_T, e_0) carry weights of about sigma_0 / alpha_0 = 150 that cancel in every row; a solver pays that cancellation
once, in its first step, and so does a table on d_0 (computed once, as the solvers compute x0_hat). In float32 a table
is then as accurate as the solver it was taken from (tests/test_linear_table.py).

`table_of(solver, process, ts)` gives the exact table of a registered solver: it runs the solver's own `step` on
coefficient vectors over the basis (d_0, e_0, ..., e_{M-1}), from x_T = alpha_0 d_0 + sigma_0 e_0, with a model
that returns the basis vector of e_i (converted to the solver's native prediction, which is linear in x and e_i). The
solver's arithmetic is linear, so it maps these vectors exactly as it maps samples; no coefficient formula is
restated here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.models import predictions
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like, step_inputs
from fastsamplers.samplers.pytrees import merge, split

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process

GRID_RTOL = 1e-6  # how closely a grid handed to a table must match the grid it was made for


@dataclasses.dataclass(frozen=True)
class LinearTable(Solver):
    """A sampler given by its table of weights (module docstring), valid on the one grid it was made for.

    Args:
      weights: (M, M + 1) nested tuples, row i the weights of x_{i+1} on (d_0, e_0, ..., e_{M-1}); entries right of
        column i + 1 must be 0 (a step cannot use a prediction not yet made).
      grid: the M + 1 times t_0 > ... > t_M the table belongs to; `sample` refuses another grid.
      process: the name of the process the table was made for (`sample` refuses another one).
      method: where the table came from ("olss", "search", or a solver's name), for provenance and messages.
    """

    weights: tuple = ()
    grid: tuple = ()
    process: str = ""
    method: str = "table"
    name = "linear_table"
    native = "eps"

    def check(self) -> None:
        super().check()
        w = np.asarray(self.weights, np.float64)
        m = len(self.grid) - 1
        if m < 1 or w.shape != (m, m + 1):
            raise ValueError(f"a linear table on a grid of {m + 1} times needs weights of shape ({m}, {m + 1}), got "
                             f"{w.shape}")
        if not np.all(np.isfinite(w)) or not np.all(np.isfinite(self.grid)) or not np.all(np.diff(self.grid) < 0):
            raise ValueError("a linear table needs finite weights and a strictly decreasing grid of finite times")
        if np.any(np.triu(w, 2) != 0):
            raise ValueError("linear table row i may weigh d_0 and e_0..e_i only (the table must be lower triangular)")
        if not isinstance(self.process, str) or not self.process:
            raise ValueError("a linear table needs the name of the process it was made for")

    @classmethod
    def from_array(cls, weights: HostArrayLike, grid: HostArrayLike, process: Process | str, method: str = "table",
                   **options: Any) -> LinearTable:
        """A table from arrays (weights (M, M + 1), grid (M + 1,)) and a process (object or name)."""
        w = np.asarray(weights, np.float64)
        return cls(weights=tuple(map(tuple, w.tolist())), grid=tuple(np.asarray(grid, np.float64).tolist()),
                   process=process if isinstance(process, str) else process.name, method=method, **options)

    @property
    def num_steps(self) -> int:
        return len(self.grid) - 1

    @property
    def order(self) -> int:
        """Every row may weigh every prediction made so far: the history is the whole trajectory."""
        return self.num_steps

    def check_grid(self, num_steps: int) -> None:
        if num_steps != self.num_steps:
            raise ValueError(f"this {self.method} table was made for {self.num_steps} steps on its own grid, got a "
                             f"grid of {num_steps} steps; sample it on solver.grid")

    def check_times(self, process: Process, ts: HostArrayLike) -> None:
        if getattr(process, "name", None) != self.process:
            raise ValueError(f"this {self.method} table was made for process {self.process!r}, not "
                             f"{getattr(process, 'name', process)!r}")
        given = np.asarray(ts, np.float64)
        if not np.allclose(given, self.grid, rtol=GRID_RTOL, atol=0.0):
            raise ValueError(f"this {self.method} table was made for the grid {list(self.grid)}, got "
                             f"{given.tolist()}; sample it on solver.grid")

    def coefficients(self, process: Process, ts: jax.Array) -> jax.Array:
        return jnp.asarray(self.weights, dtype=jnp.result_type(float))

    def init(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return table_init(x, self.num_steps)

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple[jax.Array, jax.Array],
             inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return table_step(model, process, x, state, inp)


def table_init(x: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """(d_0, set at step 0; the prediction buffer (num_steps, *x.shape)), zeros."""
    return jnp.zeros_like(x), jnp.zeros((num_steps,) + x.shape, x.dtype)


def table_step(model: Model, process: Process, x: jax.Array, state: tuple[jax.Array, jax.Array],
               inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Step i: e_i = eps(x_i, t_i) into the buffer (and d_0 at step 0), then x_{i+1} from row i (`inp.coef`)."""
    d0, buffer = state
    e = model(x, inp.s).astype(x.dtype)
    d0 = jnp.where(inp.i == 0, predictions.convert(e, "eps", "x0", x, inp.s, process).astype(x.dtype), d0)
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, e, inp.i, 0)
    x_next = inp.coef[0] * d0 + jnp.tensordot(inp.coef[1:], buffer, axes=1)
    return cast_like(x_next, x), (d0, buffer)


def run_table(model: Model, process: Process, weights: jax.Array, ts: jax.Array, x_init: jax.Array) -> jax.Array:
    """x_M of the table `weights` (M, M + 1) on the grid ts, with model(x, t) -> eps; weights and ts may be traced
    (what a search evaluates: new tables never recompile, and `jax.vmap` runs many at once)."""
    m = weights.shape[0]
    inputs = StepInputs(i=jnp.arange(m), s=ts[:-1], t=ts[1:], last=jnp.arange(m) == m - 1, coef=weights)

    def body(carry, inp):
        x, state = carry
        return table_step(model, process, x, state, inp), None

    (x, _), _ = jax.lax.scan(body, (x_init, table_init(x_init, m)), inputs)
    return x


def table_of(solver: Solver, process: Process, ts: HostArrayLike) -> np.ndarray:
    """The exact table (M, M + 1) of a deterministic single-evaluation solver on the grid ts (module docstring).

    The solver must call the model once per step, at the step's start time (every multistep and predictor-corrector
    solver here); anything else (Heun's second stage, noise, an adaptive step) raises ValueError."""
    if solver.stochastic or solver.stages != 1 or not solver.static_nfe or solver.evaluates_end:
        raise ValueError(f"{solver.name} is not a deterministic sampler with one model call per step at its start; "
                         f"it has no table on (d_0, e_0, ...)")
    with jax.enable_x64(True):
        ts = jnp.asarray(np.asarray(ts, np.float64))
        solver_key, solver_leaves = split(solver)
        rows, called = _symbolic_run(solver_key, process, ts.shape[0] - 1)(ts, solver_leaves)
        if not np.array_equal(np.asarray(called), np.asarray(ts[:-1])):
            raise ValueError(f"{solver.name} calls the model at t = {np.asarray(called).tolist()}, not at its steps' "
                             f"starts {np.asarray(ts[:-1]).tolist()}; a table needs one call per step at its start")
        return np.asarray(rows)


@functools.lru_cache(maxsize=64)
def _symbolic_run(solver_key, process, m):
    """The solver's own steps on coefficient vectors, unrolled over the m steps and compiled once per solver
    structure (`samplers.pytrees.split`): (ts, the solver's leaves) -> (rows, the times at which the model was
    called)."""

    def run(ts, solver_leaves):
        solver = merge(solver_key, solver_leaves)
        basis = jnp.eye(m + 1, dtype=ts.dtype)
        calls = []  # the call times, filled while tracing: the unrolled loop traces every step's model call once

        def model(x, t):
            calls.append(jnp.asarray(t, ts.dtype))
            return predictions.convert(basis[min(len(calls), m)], "eps", solver.native, x, t, process)

        inputs = step_inputs(solver, process, ts)
        x = process.alpha(ts[0]) * basis[0] + process.sigma(ts[0]) * basis[1]  # x_T = alpha_0 d_0 + sigma_0 e_0
        state, rows = solver.init(x), []
        for i in range(m):
            x, state = solver.step(model, process, x, state, jax.tree.map(lambda leaf: leaf[i], inputs))
            if len(calls) != i + 1:
                raise ValueError(f"{solver.name} made {len(calls)} model calls in {i + 1} steps; a table needs one "
                                 f"per step")
            rows.append(x)
        return jnp.stack(rows), jnp.stack(calls)

    return jax.jit(run)


__all__ = ["LinearTable", "run_table", "table_of"]
