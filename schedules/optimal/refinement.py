"""Gradient refinement of a time grid for the solver that will actually run on it.

The dynamic programmes of OSS (Pei et al. 2025) and Bellman/BOSS (Nguyen et al. 2023) pick each step's end from a
fixed fine grid, costing every step as a single step from the teacher (or student) state; a multistep solver's
history (DEIS tAB, DPM-Solver++ 2M, iPNDM) is invisible to that cost, and the result is limited to the grid's points.
`refine` starts from any schedule (a standard grid or a distilled one) and optimises its interior times continuously,
by Adam on the gradient of the sampler's endpoint error through `samplers.sample` itself, with the solver's real
warm-up, history and coefficients:

    objective(ts) = mean((sample(model_fn, solver, process, x_init, ts) - target) ** 2),

with `target` the teacher's endpoint from the same x_init (by default a fine `teacher_steps`-step solve on the
`teacher_grid` between the same ends, or any target the caller gives, e.g. `samplers.exact_flow_map`).

Parametrisation (strictly decreasing, exact endpoints, by construction). With u = log gamma(t) = -log_snr(t)
(gamma = sigma / alpha) and K = hi - lo steps in the free segment ts[lo..hi]:

    u_{lo+j} = u_lo + (u_hi - u_lo) * cumsum(softmax(theta))_{j-1},   j = 1..K-1,   t = process.t_of_log_snr(-u)

(that is, t = process.t_of_gamma(exp(u)), without the exp/log round trip),

so every interior point lies strictly between its neighbours; theta (K logits of the gaps in u) starts at the log
of the initial grid's gaps, which reproduces the initial ts (to rounding). The ends ts[lo], ts[hi] and everything
outside the segment are copied from the input unchanged. Normally lo = 0 and hi = N; where the grid ends at
gamma = 0 (ts[-1] is the clean-data time, sigma = 0, e.g. `get_timesteps(..., append_zero=True)`) the last point
is kept fixed and ts[0..N-1] is parametrised instead (hi = N - 1); likewise a start at gamma = inf (alpha = 0, the
OT path at t = 1) keeps ts[0] fixed and parametrises ts[1..N] (lo = 1).

The whole optimisation runs as one compiled `lax.while_loop` (one `jax.jit` per model, solver, process, prediction,
grid length, batch size and power-of-two bucket of num_iters; the grid, data, learning rate and iteration count are
traced arguments, so a new grid or learning rate reuses the compiled program). With `batch_size`, each
iteration uses a fresh minibatch of x_init (rows drawn without replacement, key `fold_in(key, iteration)`).
The result is never worse than the input: the full-batch objective is evaluated at the initial grid, at the final
iterate and (full-batch mode, where every iteration's loss is the full objective) at the best iterate seen, and the
best valid grid is returned. A non-finite loss or gradient stops the loop; the best grid so far is returned and
`info["stopped_reason"]` says "non_finite".

Example:
    >>> import jax
    >>> from fastsamplers import schedules, samplers
    >>> from fastsamplers.models import GaussianMixture
    >>> from fastsamplers.schedules.optimal.refinement import refine
    >>> process = schedules.get_process("vp_linear")
    >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3)
    >>> x_init = gm.marginal_sample(jax.random.PRNGKey(1), 64, process.t_max, process)
    >>> ts = schedules.get_timesteps("logsnr", process, 5)
    >>> ts_opt, info = refine(ts, gm.model_fn(process), "dpmpp_2m", process, x_init, num_iters=20,
    ...                       return_info=True)
    >>> bool(ts_opt[0] == ts[0] and ts_opt[-1] == ts[-1]), info["loss_final"] <= info["loss_initial"]
    (True, True)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastsamplers.core.typing import ArrayLike, HostArrayLike, ModelFn, PyTree
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.driver import check_ts, resolve_inputs, sample
from fastsamplers.samplers.pytrees import merge, split
from fastsamplers.samplers.solvers import get_solver
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.optimal.distillation import SolverSpec
from fastsamplers.schedules.processes import Process, as_float


def refine(ts: HostArrayLike, model_fn: ModelFn, solver: Solver | str, process: Process | str, x_init: ArrayLike, *,
           prediction: str = "eps", target: ArrayLike | None = None, teacher_steps: int = 200,
           teacher_grid: str = "logsnr", teacher_solver: SolverSpec | Solver = ("deis_tab", {"order": 3}),
           num_iters: int = 100, learning_rate: float = 0.05, batch_size: int | None = None,
           key: jax.Array | None = None, return_info: bool = False,
           args: PyTree = None) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """Refine the interior times of `ts` by gradient descent on the sampler's endpoint error.

    Args:
      ts: the starting grid, num_steps + 1 strictly decreasing times (e.g. `schedules.get_timesteps` or a distilled
        schedule).
      model_fn: a pure function (x, t) -> prediction, or (x, t, args) -> prediction when `args` is given, as for
        `samplers.sample`.
      solver: a `samplers.Solver` or a registered name; the solver the grid is refined for.
      process: a `schedules.Process` or a registered name.
      x_init: the states at ts[0] the objective averages over (leading axis = batch axis when batch_size is set).
      prediction: what model_fn predicts ("eps", "x0", "v", "velocity", "score").
      target: the endpoints to match, same shape as x_init; None computes the teacher's.
      teacher_steps, teacher_grid, teacher_solver: the teacher used when target is None: `teacher_steps` steps of
        `teacher_solver` ((name, options), a name, or a Solver) on `get_timesteps(teacher_grid, ...)` between ts[0]
        and ts[-1] (a grid ending at sigma = 0 gets the teacher grid down to ts[-2] plus the same final step to 0).
      num_iters: Adam iterations (>= 0).
      learning_rate: Adam's step size on the logits of the gaps in log gamma (> 0).
      batch_size: rows of x_init per iteration (None: the whole batch every iteration).
      key: PRNG key for the minibatches (default PRNGKey(0)).
      args: any pytree passed to the model as its third argument (network parameters, labels); a traced argument
        of the teacher's and the compiled loop's programs, so new values of the same shapes never recompile.
      return_info: also return a dict with "loss_initial", "loss_final" (the returned grid's objective),
        "history" (the loss at each iteration; minibatch losses when batch_size is set), "iterations",
        "stopped_reason" ("completed", "non_finite" or "no_free_points"), and "selected" ("initial",
        "best_iterate" or "final_iterate").

    Returns:
      ts_refined (an array of the default float type, same length, strictly decreasing, the same endpoints
      exactly), or (ts_refined, info).

    Defaults, measured on the 8-d, 6-component oracle (vp_linear, 1024 samples, exact target; ddim, deis_tab order 4,
    dpmpp_2m at NFE 5 and 10): Adam at 0.05 for 100 iterations reaches the converged grid in every case (0.01 needs
    200+; 0.02-0.2 all converge); RMSE falls to 0.72-0.87x of the best standard grid's on a held-out batch, as much
    as on the training batch. Start from the best standard grid: from a poor one (uniform) the NFE-10 multistep
    refinements stop in a worse local optimum. With only 16-64 samples the few free times overfit (at NFE 10 the
    held-out error can end above the start grid's): use a few hundred samples or more.
    """

    # ---- validation, before any compute ----------------------------------------------------------------------
    if isinstance(ts, jax.core.Tracer):
        raise TypeError("refine runs its own compiled loop on the host: pass a concrete ts, not a traced value")
    ts_np = np.asarray(ts, np.float64)
    if isinstance(num_iters, bool) or not isinstance(num_iters, (int, np.integer)) or num_iters < 0:
        raise ValueError(f"num_iters must be an integer >= 0, got {num_iters!r}")
    if not (isinstance(learning_rate, (int, float, np.floating, np.integer)) and math.isfinite(learning_rate)
            and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    solver, process, x_init = resolve_inputs(model_fn, solver, process, prediction, x_init)
    check_ts(ts_np, process, solver, prediction)  # the sampler's checks: shape, order, domain, sigma = 0 end
    num_rows = x_init.shape[0] if x_init.ndim >= 1 else 0
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        if x_init.ndim < 1:
            raise ValueError("batch_size needs x_init with a leading batch axis")
        if batch_size >= num_rows:
            batch_size = None  # the whole batch: exact objective at every iteration
    if target is not None:
        target = jnp.asarray(target)
        if target.shape != x_init.shape:
            raise ValueError(f"target must have the shape of x_init {x_init.shape}, got {target.shape}")
        if not bool(jnp.all(jnp.isfinite(target))):
            raise ValueError("target must be finite")
    else:
        teacher = _teacher_solver(teacher_solver)
        if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, (int, np.integer)) or teacher_steps < 1:
            raise ValueError(f"teacher_steps must be an integer >= 1, got {teacher_steps!r}")

    ts_in = as_float(ts_np)  # the returned endpoints are these values, bit for bit
    theta0, u_ends, lo, hi = initial_logits(ts_np, process)

    # ---- the teacher --------------------------------------------------------------------------------------------
    if target is None:
        if hi == ts_np.shape[0] - 2:  # ends at sigma = 0: the same final step to 0 as the student's
            teacher_ts = get_timesteps(teacher_grid, process, teacher_steps, t_min=ts_np[-2], t_max=ts_np[0],
                                       append_zero=True)
        else:
            teacher_ts = get_timesteps(teacher_grid, process, teacher_steps, t_min=ts_np[-1], t_max=ts_np[0])
        target, _ = sample(model_fn, teacher, process, x_init, teacher_ts, prediction=prediction, args=args)
    target = target.astype(x_init.dtype)

    # ---- the compiled loop ---------------------------------------------------------------------------------------
    num_free = hi - lo - 1
    if num_free < 1 or num_iters == 0:  # nothing to optimise: one plain evaluation, no loop to compile
        x_out, _ = sample(model_fn, solver, process, x_init, ts_in, prediction=prediction, check_finite=False,
                          args=args)
        loss0 = float(jnp.mean((x_out - target).astype(ts_in.dtype) ** 2))
        info = {"loss_initial": loss0, "loss_final": loss0, "history": np.zeros(0), "iterations": 0,
                "stopped_reason": "no_free_points" if num_free < 1 else "completed", "selected": "initial"}
        return (ts_in, info) if return_info else ts_in

    if key is None:
        key = jax.random.PRNGKey(0)
    history_size = 1 << max(int(num_iters) - 1, 0).bit_length()  # a power of two >= num_iters: few recompiles
    parts_key, parts = split((model_fn, solver))  # their numbers (eta, a guidance scale) are traced
    run = _compiled_refiner(parts_key, process, prediction, history_size, batch_size, lo, hi, args is not None)
    out = jax.device_get(run(theta0, ts_in, u_ends, x_init, target, key, as_float(learning_rate),
                             jnp.asarray(int(num_iters)), args, parts))

    loss_initial = float(out["loss_initial"])
    if not math.isfinite(loss_initial):
        raise FloatingPointError(
            f"the objective at the initial grid is not finite ({loss_initial}): the model or the target produced "
            f"NaN/Inf, or the initial grid is unstable for {solver.name!r}"
        )
    iterations = int(out["iterations"])
    history = np.asarray(out["history"])[:iterations]
    stopped = "non_finite" if bool(out["stopped"]) else "completed"

    # ---- never worse than the input: the best valid candidate by the full-batch objective ------------------------
    candidates = [(loss_initial, 0, "initial", ts_in)]
    for name in ("best_iterate", "final_iterate"):
        loss = float(out[f"loss_{name}"])
        grid = out[f"ts_{name}"]
        if math.isfinite(loss) and np.all(np.isfinite(grid)) and np.all(np.diff(grid) < 0):
            candidates.append((loss, 1 if name == "best_iterate" else 2, name, grid))
    loss_final, _, selected, ts_out = min(candidates, key=lambda c: (c[0], c[1]))
    if selected != "initial":
        # The fixed entries are copies of the input already; assert that, then return a fresh default-float array.
        ts_out = as_float(ts_out)
        assert np.array_equal(np.asarray(ts_out[: lo + 1]), np.asarray(ts_in[: lo + 1]))
        assert np.array_equal(np.asarray(ts_out[hi:]), np.asarray(ts_in[hi:]))
    if not return_info:
        return ts_out
    info = {"loss_initial": loss_initial, "loss_final": float(loss_final), "history": history,
            "iterations": iterations, "stopped_reason": stopped, "selected": selected}
    return ts_out, info


def grid_from_logits(theta: jax.Array, ts_fixed: jax.Array, u_ends: jax.Array, process: Process, lo: int,
                     hi: int) -> jax.Array:
    """The grid for logits theta: ts_fixed with ts[lo+1 .. hi-1] replaced by the points at
    u = u_lo + (u_hi - u_lo) * cumsum(softmax(theta)) (u = log gamma), mapped back to t."""
    frac = jnp.cumsum(jax.nn.softmax(theta))[:-1]
    u = u_ends[0] + (u_ends[1] - u_ends[0]) * frac
    return ts_fixed.at[lo + 1:hi].set(process.t_of_log_snr(-u).astype(ts_fixed.dtype))


def initial_logits(ts: HostArrayLike, process: Process) -> tuple[jax.Array, jax.Array, int, int]:
    """(theta, u_ends, lo, hi) for a concrete grid: `grid_from_logits(theta, ts, u_ends, process, lo, hi)`
    reproduces ts (to rounding)."""
    ts_np = np.asarray(ts, np.float64)
    lo, hi, log_gamma = _free_segment(process, ts_np)
    theta = as_float(np.log(-np.diff(log_gamma[lo:hi + 1])))
    return theta, as_float(np.array([log_gamma[lo], log_gamma[hi]])), lo, hi


def _free_segment(process, ts_np):
    """lo, hi and u = log gamma(ts) (float64, host): ts[lo..hi] is the segment whose interior is optimised. An end
    where gamma is 0 (sigma = 0) or infinite (alpha = 0) has no finite u: that point stays fixed and the segment
    ends one point earlier."""
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        log_gamma = -np.asarray(process.log_snr(ts_np), np.float64)
    n = ts_np.shape[0] - 1
    lo = 0 if np.isfinite(log_gamma[0]) else 1
    hi = n if np.isfinite(log_gamma[n]) else n - 1
    if not np.all(np.isfinite(log_gamma[lo:hi + 1])) or (hi > lo and not np.all(np.diff(log_gamma[lo:hi + 1]) < 0)):
        raise ValueError(
            f"log gamma = -log_snr must be finite and strictly decreasing along ts (but at a sigma = 0 end or an "
            f"alpha = 0 start) for process {process.name!r}; got {log_gamma}"
        )
    return lo, hi, log_gamma


def _teacher_solver(spec):
    if isinstance(spec, Solver):
        return spec
    if isinstance(spec, str):
        return get_solver(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return get_solver(spec[0], **spec[1])
    raise TypeError(f"teacher_solver must be a Solver, a registered name or (name, options), got {spec!r}")


@functools.lru_cache(maxsize=16)
def _compiled_refiner(parts_key, process, prediction, history_size, batch_size, lo, hi, has_args):
    """One compiled optimisation per (structure of the model and the solver, `samplers.pytrees.split`; process,
    prediction, history size, batch_size, segment, whether the model takes args): theta0, the fixed grid, the data,
    the key, the learning rate, the iteration count (<= history_size), the model's args and the numeric leaves of
    the model and the solver are traced arguments."""

    def objective(theta, ts_fixed, u_ends, x, target, args, parts):
        model_fn, solver = merge(parts_key, parts)
        ts = grid_from_logits(theta, ts_fixed, u_ends, process, lo, hi)
        out, _ = sample(model_fn, solver, process, x, ts, prediction=prediction, args=args if has_args else None)
        return jnp.mean((out - target).astype(ts.dtype) ** 2)

    value_and_grad = jax.value_and_grad(objective)

    def run(theta0, ts_fixed, u_ends, x, target, key, learning_rate, num_iters, args, parts):
        optimizer = optax.adam(learning_rate)
        dtype = theta0.dtype
        full = functools.partial(objective, ts_fixed=ts_fixed, u_ends=u_ends, x=x, target=target, args=args,
                                 parts=parts)

        def cond(carry):
            return (carry["k"] < num_iters) & ~carry["stopped"]

        def body(carry):
            k, theta = carry["k"], carry["theta"]
            if batch_size is None:
                xb, tb = x, target
            else:
                rows = jax.random.choice(jax.random.fold_in(key, k), x.shape[0], (batch_size,), replace=False)
                xb, tb = x[rows], target[rows]
            loss, grad = value_and_grad(theta, ts_fixed, u_ends, xb, tb, args, parts)
            finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
            updates, opt_state = optimizer.update(jnp.where(finite, grad, 0.0), carry["opt_state"], theta)
            new = dict(
                k=k + 1,
                theta=jnp.where(finite, optax.apply_updates(theta, updates), theta),
                opt_state=jax.tree.map(lambda a, b: jnp.where(finite, a, b), opt_state, carry["opt_state"]),
                history=carry["history"].at[k].set(loss),
                stopped=~finite,
                best_theta=carry["best_theta"],
                best_loss=carry["best_loss"],
            )
            if batch_size is None:  # the loss is the full objective at theta: keep the best iterate seen
                better = finite & (loss < carry["best_loss"])
                new["best_theta"] = jnp.where(better, theta, carry["best_theta"])
                new["best_loss"] = jnp.where(better, loss, carry["best_loss"])
            return new

        carry = dict(
            k=jnp.asarray(0), theta=theta0, opt_state=optimizer.init(theta0),
            history=jnp.full((history_size,), jnp.nan, dtype), stopped=jnp.asarray(False),
            best_theta=theta0, best_loss=jnp.asarray(jnp.inf, dtype),
        )
        carry = jax.lax.while_loop(cond, body, carry)
        # Both full-batch evaluations through one copy of the sampler in the program (less to compile).
        loss_initial, loss_final_iterate = jax.lax.map(full, jnp.stack([theta0, carry["theta"]]))
        return {
            "loss_initial": loss_initial,
            "history": carry["history"],
            "iterations": carry["k"],
            "stopped": carry["stopped"],
            "ts_best_iterate": grid_from_logits(carry["best_theta"], ts_fixed, u_ends, process, lo, hi),
            "loss_best_iterate": carry["best_loss"],
            "ts_final_iterate": grid_from_logits(carry["theta"], ts_fixed, u_ends, process, lo, hi),
            "loss_final_iterate": loss_final_iterate,
        }

    return jax.jit(run)
