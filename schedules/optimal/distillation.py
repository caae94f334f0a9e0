"""Optimal step schedules by dynamic programming over a teacher trajectory: OSS, Bellman/BOSS and GITS.

All three start from one fine teacher trajectory T[0..N] from the same initial noise (its grid is the candidate set:
a student schedule is a subsequence of teacher indices from 0 to N) and a student step, one step of a single-step
solver (ddim, euler, or any first-order exponential integrator) from (x, t_i) to t_j.

- OSS (Optimal Stepsize Distillation, Pei et al. 2025): the student state is carried. Stage k holds, for every
  landing index j, the best state reachable in k student steps; from every stored state one batched model call,
  then every later index j is a candidate landing point whose cost is the deviation from the teacher,
  mean((y - T[j])^2). Model calls: N + M * (N + 1) per sample (teacher, then one batched call per stage).
- Bellman / BOSS (Nguyen et al. 2023): one step from the *teacher* state, C[i, j] = mean ||step(T[i], t_i -> t_j)
  - T[j]||^2 (or the l1 metric), then the shortest path of exactly M steps: V_k[i] = min_j C[i, j] + V_{k-1}[j].
- GITS (Chen et al. 2024): the same cost with an accumulation weight, V_k[i] = min_j C[i, j] + coeff V_{k-1}[j]
  (coeff ~ 1.15), as written in the reference facts: a path's cost is sum_m coeff^m C[i_m, i_m+1], so later
  steps weigh more. (Which direction GITS's own code accumulates in is unverified.)

The DP tables are `lax.scan`s over the number of steps with vectorised minima over the grid; only the final
back-tracking of M indices runs on the host. Stage k of every table is the same whatever the number of stages after
it, so `distill_many` serves several step counts from one teacher and one DP of the largest count.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import samplers
from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, HostArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers.base import Solver, step_inputs
from fastsamplers.samplers.pytrees import merge, split
from fastsamplers.schedules.optimal import ays
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.processes import Process, as_float, get_process

METHODS = Registry.of_names("distillation method", ("oss", "bellman", "gits", "ays"))
# OSS's cost over the batch: one DP on the batch-mean cost, or one per sample and the median of the index lists.
AGGREGATES = Registry.of_names("aggregate", ("mean", "median"), ordered=True,
                               unknown="{kind} must be {alternatives}, got {name!r}")
# The deviation of a student step from the teacher (Bellman / GITS costs).
METRICS = Registry.of_names("metric", ("l2", "l1"), ordered=True, unknown="{kind} must be {alternatives}, got {name!r}")
# A teacher grid: a name of `schedules.GRIDS`, or (name, options), e.g. ("file", {"path": ...}) for a schedule file
# resampled to the teacher's steps (as a teacher solver is a name or (name, options)).
TeacherGrid: TypeAlias = str | tuple[str, Mapping[str, Any]]
# A teacher solver: a registered name, or (name, options).
SolverSpec: TypeAlias = str | tuple[str, Mapping[str, Any]]
# One step of a single-step solver: (x, its native prediction, s, t) -> the state at t.
StudentStep: TypeAlias = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def teacher_timesteps(teacher_grid: TeacherGrid, process: Process, num_steps: int, t_min: float | None = None,
                      t_max: float | None = None) -> jax.Array:
    """The teacher grid of num_steps steps between t_min and t_max (`schedules.get_timesteps`; a grid with its own
    ends, such as a file's, keeps them)."""
    name, options = (teacher_grid, {}) if isinstance(teacher_grid, str) else (teacher_grid[0], dict(teacher_grid[1]))
    return get_timesteps(name, process, num_steps, t_min=t_min, t_max=t_max, **options)


def student_step_fn(solver: Solver, process: Process) -> StudentStep:
    """One step of a single-step solver as a function (x, pred, s, t) -> y, pred being its native prediction."""
    if solver.stages != 1 or solver.order != 1:
        raise ValueError(
            f"the student step of a schedule DP must be a single-step, single-evaluation solver (ddim, euler, or "
            f"deis_tab / deis_rhoab / ipndm with order=1); got {solver.name} of order {solver.order}"
        )

    def step(x, pred, s, t):
        inp = jax.tree.map(lambda leaf: leaf[0], step_inputs(solver, process, jnp.stack([s, t])))
        y, _ = solver.step(lambda *_: pred, process, x, solver.init(x), inp)
        return y

    return step


def default_student(solver: Solver) -> str:
    """The first-order step of a solver's family, which prices its steps in the DP: Euler for velocity-space
    solvers (euler, heun), DDIM (the first-order exponential integrator, every multistep solver's warm-up step) for
    the others."""
    return "euler" if solver.native == "velocity" else "ddim"


def teacher_trajectory(model_fn: ModelFn, process: Process | str, x_init: ArrayLike, ts: ArrayLike,
                       solver: Solver | str, prediction: str = "eps", args: PyTree = None) -> jax.Array:
    """The state at every point of the fine grid ts: shape (len(ts), *x_init.shape). With `args`, the model is
    called model_fn(x, t, args), args a traced argument of the sampler's compiled program."""
    _, info = samplers.sample(model_fn, solver, process, x_init, ts, prediction=prediction, save_trajectory=True,
                              args=args)
    return info["trajectory"]


def _with_args(model, args):
    """model(x, t) itself when args is None, else (x, t) -> model(x, t, args)."""
    return model if args is None else (lambda x, t: model(x, t, args))


def _per_sample_mse(y, target):
    axes = tuple(range(1, y.ndim))
    return jnp.mean((y - target) ** 2, axis=axes)


def _pair_times(ts):
    """(N+1, N+1) start and end times for every pair i < j; other pairs get a harmless valid pair (masked later)."""
    n1 = ts.shape[0]
    i, j = np.meshgrid(np.arange(n1), np.arange(n1), indexing="ij")
    forward = j > i
    s = jnp.where(forward, ts[i], ts[0])
    t = jnp.where(forward, ts[j], ts[-1])
    return s, t, jnp.asarray(forward)


def oss_tables(model: ModelFn, step: StudentStep, ts: jax.Array, teacher: jax.Array, x_start: jax.Array,
               num_steps: int, valid_start: jax.Array, aggregate: str,
               args: PyTree = None) -> tuple[jax.Array, jax.Array]:
    """The OSS dynamic program. model(x, t) -> native prediction (model(x, t, args) when args is given); teacher (N+1, B, ...); x_start (N+1, B, ...) the
    possible starting states with `valid_start` (N+1,) marking the usable ones.

    Returns (costs (M, N+1, B), back-pointers (M, N+1, B)): after k+1 student steps, the best deviation from the
    teacher at landing index j and the index it came from (per sample; equal across samples when aggregate is
    "mean", where the candidates are ranked by the batch-mean deviation).
    """
    model = _with_args(model, args)
    n1 = ts.shape[0]
    inf = jnp.asarray(jnp.inf, teacher.dtype)
    pair_s, pair_t, forward = _pair_times(ts)
    # y(i -> j) for all i, with the states and predictions of every start i: vmapped over i.
    step_from_all = jax.vmap(step, in_axes=(0, 0, 0, 0))

    def stage(carry, _):
        states, valid = carry  # (N+1, B, ...), (N+1,)
        preds = jax.vmap(model)(states, ts)  # one batched model call per stage

        def land(j):
            y = step_from_all(states, preds, pair_s[:, j], pair_t[:, j])  # (N+1, B, ...)
            cost = jax.vmap(_per_sample_mse, in_axes=(0, None))(y, teacher[j])  # (N+1, B)
            if aggregate == "mean":
                cost = jnp.broadcast_to(jnp.mean(cost, axis=1, keepdims=True), cost.shape)
            cost = jnp.where((valid & forward[:, j])[:, None], cost, inf)
            best = jnp.argmin(cost, axis=0)  # (B,)
            take = lambda a: jnp.take_along_axis(a, best.reshape((1, -1) + (1,) * (a.ndim - 2)), axis=0)[0]
            return take(y), jnp.take_along_axis(cost, best[None], axis=0)[0], best

        new_states, cost, pointer = jax.lax.map(land, jnp.arange(n1))
        new_valid = jnp.all(jnp.isfinite(cost), axis=1)
        return (new_states, new_valid), (cost, pointer)

    _, (costs, pointers) = jax.lax.scan(stage, (x_start, valid_start), None, length=num_steps)
    return costs, pointers


def bellman_tables(cost: jax.Array, num_steps: int, coeff: ArrayLike = 1.0) -> tuple[jax.Array, jax.Array]:
    """Shortest paths of exactly k = 1..M steps from every index to the last one, on the cost matrix C (N+1, N+1)
    (entries with j <= i are ignored): V_k[i] = min_{j > i} C[i, j] + coeff V_{k-1}[j], V_0 = 0 at the last index.

    Returns (V (M, N+1), back-pointers (M, N+1)); row k-1 is for k steps.
    """
    n1 = cost.shape[0]
    i, j = np.meshgrid(np.arange(n1), np.arange(n1), indexing="ij")
    cost = jnp.where(jnp.asarray(j > i), cost, jnp.inf)
    v0 = jnp.where(jnp.arange(n1) == n1 - 1, 0.0, jnp.inf).astype(cost.dtype)

    def stage(v_prev, _):
        total = cost + coeff * v_prev[None, :]
        return jnp.min(total, axis=1), (jnp.min(total, axis=1), jnp.argmin(total, axis=1))

    _, (values, pointers) = jax.lax.scan(stage, v0, None, length=num_steps)
    return values, pointers


def backtrack_forward(pointers: HostArrayLike, start: int, num_steps: int) -> list[int]:
    """Follow Bellman back-pointers (M, N+1) from `start` for num_steps steps: the visited indices."""
    pointers = np.asarray(pointers)
    path = [int(start)]
    for k in range(num_steps, 0, -1):
        path.append(int(pointers[k - 1, path[-1]]))
    return path


def backtrack_oss(pointers: HostArrayLike, end: int, num_steps: int) -> np.ndarray:
    """Follow OSS back-pointers (M, N+1, B) from index `end` after num_steps steps: (B, num_steps + 1) indices."""
    pointers = np.asarray(pointers)
    batch = pointers.shape[-1]
    paths = np.empty((batch, num_steps + 1), dtype=np.int64)
    paths[:, -1] = end
    for k in range(num_steps, 0, -1):
        paths[:, k - 1] = pointers[k - 1, paths[:, k], np.arange(batch)]
    return paths


def median_path(paths: np.ndarray, last: int) -> np.ndarray:
    """Element-wise median of index lists ("OSS-ave"), made strictly increasing with the ends kept."""
    med = np.round(np.median(paths, axis=0)).astype(np.int64)
    med[-1] = last
    for k in range(len(med) - 2, -1, -1):  # from the end: leave room for the later indices
        med[k] = min(med[k], med[k + 1] - 1)
    for k in range(1, len(med)):
        med[k] = max(med[k], med[k - 1] + 1)
    return med


def cost_matrix(model: ModelFn, step: StudentStep, ts: jax.Array, teacher: jax.Array, metric: str = "l2",
                args: PyTree = None) -> jax.Array:
    """C[i, j]: batch-mean deviation of one student step from the teacher state i to t_j against T[j] (model(x, t),
    or model(x, t, args) when args is given)."""
    METRICS.check(metric)
    preds = jax.vmap(_with_args(model, args))(teacher, ts)
    pair_s, pair_t, forward = _pair_times(ts)
    step_from_all = jax.vmap(step, in_axes=(0, 0, 0, 0))

    def column(j):
        y = step_from_all(teacher, preds, pair_s[:, j], pair_t[:, j])
        diff = y - teacher[j][None]
        axes = tuple(range(1, diff.ndim))
        return jnp.mean(diff**2 if metric == "l2" else jnp.abs(diff), axis=axes)

    cost = jax.lax.map(column, jnp.arange(ts.shape[0])).T  # (i, j)
    return jnp.where(forward, cost, jnp.inf)


DEFAULT_COEFF = {"bellman": 1.0, "gits": 1.15}


def _check_step_count(value, teacher_steps, name="num_steps"):
    """Raise ValueError unless `value` is an integer in [1, teacher_steps]; `name` is what the message calls it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value > teacher_steps:
        raise ValueError(f"{name} = {value} is more than the teacher's {teacher_steps} steps: the student "
                         f"picks its times among the teacher's")


def distill(method: str, model_fn: ModelFn, solver: Solver | str, process: Process | str, x_init: ArrayLike,
            num_steps: int, *, prediction: str = "eps", teacher_steps: int = 200,
            teacher_grid: TeacherGrid = "logsnr", teacher_solver: SolverSpec = ("deis_tab", {"order": 3}),
            student: Solver | str | None = None, exact_steps: bool = True, start_at_t_max: bool = True,
            aggregate: str = "mean", metric: str = "l2", coeff: float | None = None, t_min: float | None = None,
            t_max: float | None = None, return_info: bool = False, args: PyTree = None,
            key: jax.Array | None = None) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """Distil an optimal num_steps schedule from a teacher trajectory ("oss", "bellman" or "gits"), or fit Align
    Your Steps ("ays", no teacher: `schedules.optimal.ays`).

    Args:
      method: "oss" (carried student state), "bellman" (BOSS: one step from teacher states), "gits" (BOSS with
        the accumulation weight `coeff`, default 1.15) or "ays" (Align Your Steps: the KL upper bound of stochastic
        DDIM minimised by coordinate descent; it has no teacher and no student, and takes only model_fn, process,
        x_init, num_steps, prediction, t_min, t_max, args, key and return_info).
      model_fn, process, x_init, prediction: as for `samplers.sample`; x_init is the noise at t_max, except for
        "ays", where x_init is calibration *data* (samples of x0: a data set, or the model's own samples).
      key: "ays" only: the draws of its Monte Carlo estimate (default PRNGKey(0)).
      args: any pytree passed to the model as model_fn(x, t, args) (network parameters, labels); None: model_fn(x,
        t). It is a traced argument of the teacher's and the DP's compiled programs, so new values of the same
        shapes reuse them and no weight is compiled in as a constant.
      solver: the solver the schedule is for. A single-step, first-order solver (ddim, euler, first-order DEIS) is
        itself the student step; for any other the DP prices steps of `student` (default: `default_student`,
        DDIM or Euler), and `schedules.refine` then tunes the schedule for the solver itself.
      student: the single-step solver whose steps the DP prices (a name or a Solver), overriding the default.
      num_steps: M, the student's number of steps (1 <= M <= teacher_steps).
      teacher_steps, teacher_grid, teacher_solver: the fine grid (its points are the candidate times: a grid name,
        or (name, options) such as ("file", {"path": ...})) and the solver that follows it (a name, or (name,
        options)).
      exact_steps: OSS only: exactly M steps (True) or the best of at most M (False).
      start_at_t_max: OSS only: False lets the first step start lower, at any teacher time t_i, from the same noise
        rescaled to sigma(t_i) (the usual truncated start).
      aggregate: OSS only: "mean" (one DP on the batch-mean cost) or "median" (one DP per sample, then the
        element-wise median of the index lists: OSS-ave).
      metric: "l2" or "l1" (bellman, gits).
      return_info: also return a dict with the indices, the costs, the teacher grid and the model calls made.

    Returns:
      ts of shape (M + 1,): teacher times, strictly decreasing from t_max to t_min (and info, if asked).

    See `distill_many` for several step counts from one teacher and one dynamic program.
    """
    if method != "ays":
        _check_teacher_steps(teacher_steps)
        _check_step_count(num_steps, teacher_steps)  # named num_steps in the message; distill_many checks the rest
    ts_out, info = distill_many(
        method, model_fn, solver, process, x_init, (num_steps,), prediction=prediction,
        teacher_steps=teacher_steps, teacher_grid=teacher_grid, teacher_solver=teacher_solver, student=student,
        exact_steps=exact_steps, start_at_t_max=start_at_t_max, aggregate=aggregate, metric=metric, coeff=coeff,
        t_min=t_min, t_max=t_max, return_info=True, args=args, key=key,
    )[int(num_steps)]
    return (ts_out, info) if return_info else ts_out


def distill_many(method: str, model_fn: ModelFn, solver: Solver | str, process: Process | str, x_init: ArrayLike,
                 step_counts: Iterable[int], *, prediction: str = "eps", teacher_steps: int = 200,
                 teacher_grid: TeacherGrid = "logsnr", teacher_solver: SolverSpec = ("deis_tab", {"order": 3}),
                 student: Solver | str | None = None,
                 exact_steps: bool = True, start_at_t_max: bool = True, aggregate: str = "mean", metric: str = "l2",
                 coeff: float | None = None, t_min: float | None = None, t_max: float | None = None,
                 return_info: bool = False, args: PyTree = None, key: jax.Array | None = None) -> dict[int, Any]:
    """Distil schedules for several step counts at once: one teacher trajectory, one dynamic program.

    The DP tables of every method are built stage by stage, and stage k (OSS: the best state after k student steps
    at every landing index; Bellman / GITS: V_k, the best k-step cost from every index) does not depend on how many
    stages follow. So one DP of max(step_counts) stages holds the exact optimum for every smaller count, and each is
    read off by its own back-tracking: distill_many(..., step_counts)[k] equals distill(..., k) index for index,
    for the price of the teacher plus the longest DP (not one of each per count).

    Args:
      step_counts: a non-empty sequence of step counts, each an integer in [1, teacher_steps]; repeats are merged.
      method, model_fn, solver, process, x_init and every keyword: as for `distill`. exact_steps=False (the best of
        at most k steps) is allowed only with a single count, where it is `distill`'s option; with several counts
        each schedule has exactly its count of steps.

    Returns:
      A dict {k: ts} in increasing k, ts of shape (k + 1,) as `distill` returns it; with return_info=True,
      {k: (ts, info)}, info as `distill`'s ("model_calls" counts the shared run: the teacher and the longest DP).
    """
    METHODS.check(method)
    if method == "ays":
        return _fit_ays(model_fn, process, x_init, step_counts, prediction, t_min, t_max, args, key, return_info,
                        dict(teacher_steps=teacher_steps, teacher_grid=teacher_grid, teacher_solver=teacher_solver,
                             student=student, exact_steps=exact_steps, start_at_t_max=start_at_t_max,
                             aggregate=aggregate, metric=metric, coeff=coeff))
    if key is not None:
        raise ValueError(f"key is for method 'ays' (its Monte Carlo draws); {method} is deterministic")
    AGGREGATES.check(aggregate)
    _check_teacher_steps(teacher_steps)
    if isinstance(step_counts, (str, bytes)) or not hasattr(step_counts, "__iter__"):
        raise ValueError(f"step_counts must be a sequence of integers such as (4, 8), got {step_counts!r}; for a "
                         f"single count use distill(..., num_steps)")
    step_counts = tuple(step_counts)
    if not step_counts:
        raise ValueError("step_counts is empty: give at least one number of steps")
    for i, k in enumerate(step_counts):
        _check_step_count(k, teacher_steps, name=f"step_counts[{i}]")
    counts = tuple(sorted({int(k) for k in step_counts}))
    if not exact_steps and len(counts) > 1:
        raise ValueError(f"exact_steps=False picks the best of at most k steps for a single k; with several "
                         f"step_counts {list(counts)} every schedule has exactly its count (set exact_steps=True, or "
                         f"call distill for one count)")
    results = _distill_counts(
        method, model_fn, solver, process, x_init, counts, prediction=prediction, teacher_steps=teacher_steps,
        teacher_grid=teacher_grid, teacher_solver=teacher_solver, student=student, exact_steps=exact_steps,
        start_at_t_max=start_at_t_max, aggregate=aggregate, metric=metric, coeff=coeff, t_min=t_min, t_max=t_max,
        args=args,
    )
    return results if return_info else {k: ts for k, (ts, _) in results.items()}


# The options of the teacher methods and their defaults: "ays" refuses any other value (they mean nothing to it).
_TEACHER_DEFAULTS = dict(teacher_steps=200, teacher_grid="logsnr", teacher_solver=("deis_tab", {"order": 3}),
                         student=None, exact_steps=True, start_at_t_max=True, aggregate="mean", metric="l2",
                         coeff=None)


def _fit_ays(model_fn, process, x_init, step_counts, prediction, t_min, t_max, args, key, return_info, options):
    """distill_many for "ays": checks, then `ays.fit`. Returns {k: ts} or {k: (ts, info)}."""
    given = sorted(name for name, value in options.items() if value != _TEACHER_DEFAULTS[name])
    if given:
        raise ValueError(f"ays fits its schedule to the model alone, with no teacher or student: the options "
                         f"{given} mean nothing to it")
    if isinstance(step_counts, (str, bytes)) or not hasattr(step_counts, "__iter__") or not tuple(step_counts):
        raise ValueError(f"step_counts must be a non-empty sequence of integers such as (5, 10), got {step_counts!r}")
    counts = tuple(step_counts)
    for i, k in enumerate(counts):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"step_counts[{i}] must be an integer >= 2 (ays interpolates log sigma between fitted "
                             f"points), got {k!r}")
    predictions.check_kind(prediction)
    process = get_process(process) if isinstance(process, str) else process
    x_data = jnp.asarray(x_init)
    if x_data.ndim < 1 or x_data.shape[0] < 2:
        raise ValueError(f"x_init (for ays: calibration data) must have a leading batch axis of at least 2 samples, "
                         f"got shape {x_data.shape}")
    results = ays.fit(model_fn, process, x_data, tuple(sorted({int(k) for k in counts})), prediction=prediction,
                      key=key, t_min=t_min, t_max=t_max, args=args)
    return results if return_info else {k: ts for k, (ts, _) in results.items()}


def _check_teacher_steps(teacher_steps):
    if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, (int, np.integer)) or teacher_steps < 1:
        raise ValueError(f"teacher_steps must be an integer >= 1 (a non-empty teacher), got {teacher_steps!r}")


def _distill_counts(method, model_fn, solver, process, x_init, counts, *, prediction, teacher_steps, teacher_grid,
                    teacher_solver, student, exact_steps, start_at_t_max, aggregate, metric, coeff, t_min, t_max,
                    args=None):
    """The shared core of `distill` and `distill_many`: counts is a sorted tuple of validated step counts (method,
    aggregate and teacher_steps checked too). Builds the teacher once, runs one DP of max(counts) stages and
    back-tracks each count. Returns {k: (ts, info)}; with exact_steps=False (one count) the entry for k holds the
    best schedule of at most k steps."""
    if method != "oss":
        if aggregate != "mean" or not exact_steps or not start_at_t_max:
            raise ValueError(f"{method} takes exactly num_steps steps from t_max on the batch-mean cost; the "
                             f"options aggregate / exact_steps / start_at_t_max are for 'oss'")
        METRICS.check(metric)
    process = get_process(process) if isinstance(process, str) else process
    solver = samplers.get_solver(solver) if isinstance(solver, str) else solver
    if student is None:
        student = solver if (solver.stages == 1 and solver.order == 1) else default_student(solver)
    student_solver = samplers.get_solver(student) if isinstance(student, str) else student
    student_step_fn(student_solver, process)  # checks the student before any compute
    predictions.check_kind(prediction)
    x_init = jnp.asarray(x_init)
    if x_init.ndim < 1 or x_init.shape[0] < 1:
        raise ValueError(f"x_init must have a leading batch axis with at least one sample, got shape {x_init.shape}")
    if isinstance(teacher_solver, str):
        teacher_solver = (teacher_solver, {})
    teacher = samplers.get_solver(teacher_solver[0], **dict(teacher_solver[1]))
    ts = teacher_timesteps(teacher_grid, process, teacher_steps, t_min, t_max)
    trajectory = teacher_trajectory(model_fn, process, x_init, ts, teacher, prediction, args)
    if trajectory.shape[1:] != x_init.shape:
        raise ValueError(f"teacher trajectory of shape {trajectory.shape} does not match x_init {x_init.shape}")
    n = teacher_steps
    stages = max(counts)  # one DP this long serves every count: stage k's table ignores the stages after it
    base = {"method": method, "teacher_ts": np.asarray(ts), "teacher_solver": teacher.name,
            "student": student_solver.name}
    chosen = {}  # requested count -> (teacher indices, info entries)
    parts_key, parts = split((model_fn, student_solver))  # the compiled tables' key; their numbers are traced

    if method == "oss":
        if start_at_t_max:
            valid = jnp.arange(n + 1) == 0
            x_start = jnp.broadcast_to(x_init[None], (n + 1,) + x_init.shape)
        else:
            valid = jnp.arange(n + 1) < n
            scale = process.sigma(ts) / process.sigma(ts[0])
            x_start = scale.reshape((-1,) + (1,) * x_init.ndim) * x_init[None]
        costs, pointers = _compiled_tables("oss", parts_key, args is not None, prediction, process,
                                           (stages, aggregate))(ts, trajectory, x_start, valid, args, parts)
        final = np.asarray(jnp.mean(costs[:, n, :], axis=-1))  # (M,) batch-mean deviation at the end
        pointers = np.asarray(pointers)
        for m in counts:
            k = m if exact_steps else int(np.nanargmin(np.where(np.isfinite(final[:m]), final[:m], np.nan))) + 1
            if not np.isfinite(final[k - 1]):
                raise ValueError(f"no {k}-step student path reaches t_min on this teacher grid")
            paths = backtrack_oss(pointers, n, k)
            indices = median_path(paths, n) if aggregate == "median" else paths[0]
            chosen[m] = (indices, dict(cost=float(final[k - 1]), model_calls=n * teacher.stages + stages * (n + 1),
                                       num_steps=k))
    else:
        cost = _compiled_tables("cost", parts_key, args is not None, prediction, process,
                                (metric,))(ts, trajectory, args, parts)
        coeff = DEFAULT_COEFF[method] if coeff is None else float(coeff)
        # Row k-1 of the tables is V_k, the exact k-step optimum from every index: back-tracking from index 0 with
        # rows k-1 .. 0 gives the best k-step path whatever the number of rows.
        values, pointers = jax.jit(bellman_tables, static_argnums=1)(cost, stages, coeff)
        values, pointers = np.asarray(values), np.asarray(pointers)
        for m in counts:
            chosen[m] = (backtrack_forward(pointers, 0, m),
                         dict(cost=float(values[m - 1, 0]), model_calls=n * teacher.stages + (n + 1), num_steps=m,
                              coeff=coeff, metric=metric))
    results = {}
    for m, (indices, entries) in chosen.items():
        indices = np.asarray(indices)
        info = dict(base, **entries, indices=indices)
        results[m] = (as_float(np.asarray(ts)[indices]), info)
    return results


@functools.lru_cache(maxsize=32)
def _compiled_tables(kind, parts_key, has_args, prediction, process, options):
    """The compiled OSS tables (kind "oss", options (num_steps, aggregate)) or Bellman cost matrix (kind "cost",
    options (metric,)), one per structure of the model function and the student (`samplers.pytrees.split` of the
    pair), process and options: the grid, the teacher, the start states, `args` and the pair's numeric leaves are
    traced arguments (model_fn(x, t, args) when has_args, else model_fn(x, t))."""

    def parts(leaves, args):
        """(the student's step, the model converted to its native prediction)."""
        model_fn, student_solver = merge(parts_key, leaves)
        return student_step_fn(student_solver, process), predictions.converted(
            _with_args(model_fn, args if has_args else None), prediction, student_solver.native, process)

    if kind == "oss":
        num_steps, aggregate = options

        def oss(ts, teacher, x_start, valid, args, leaves):
            step, native = parts(leaves, args)
            return oss_tables(native, step, ts, teacher, x_start, num_steps, valid, aggregate)

        return jax.jit(oss)
    (metric,) = options

    def cost(ts, teacher, args, leaves):
        step, native = parts(leaves, args)
        return cost_matrix(native, step, ts, teacher, metric)

    return jax.jit(cost)
