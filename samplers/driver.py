"""The `sample` driver: checks the inputs before any compute, converts the model's prediction to what the solver
consumes, runs the solver's compiled loop once per (model, solver, process, prediction) and reports non-finite
samples."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models import predictions
from samplers.base import Solver
from samplers.solvers import get_solver
from schedules.processes import Process, as_float, get_process


def _is_tracer(value):
    return isinstance(value, jax.core.Tracer)


def resolve_inputs(model_fn: Callable, solver: Solver | str, process: Process | str, prediction: str,
                   x_init) -> tuple[Solver, Process, jax.Array]:
    """(solver, process, x_init as an array) from names or objects, checked before any compute is spent."""
    solver = get_solver(solver) if isinstance(solver, str) else solver
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a samplers.Solver or a registered name, got {type(solver).__name__}")
    process = get_process(process) if isinstance(process, str) else process
    if not isinstance(process, Process):
        raise TypeError(f"process must be a schedules.Process or a registered name, got {type(process).__name__}")
    predictions.check_kind(prediction)
    if not callable(model_fn):
        raise TypeError("model_fn must be a callable (x, t) -> prediction")
    x_init = jnp.asarray(x_init)
    if not jnp.issubdtype(x_init.dtype, jnp.floating):
        raise TypeError(f"x_init must be a floating-point array, got dtype {x_init.dtype}")
    return solver, process, x_init


def check_ts(ts, process: Process, solver: Solver, prediction: str) -> None:
    """Validate a time grid before any compute is spent (only what can be seen on concrete values)."""
    if _is_tracer(ts):
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(f"ts must be 1-D with at least 2 entries, got shape {ts.shape}")
        return
    ts_np = np.asarray(ts, np.float64)
    if ts_np.ndim != 1 or ts_np.shape[0] < 2:
        raise ValueError(f"ts must be 1-D with at least 2 entries (num_steps >= 1), got shape {ts_np.shape}")
    if not np.all(np.isfinite(ts_np)):
        raise ValueError(f"ts must be finite, got {ts_np}")
    if not np.all(np.diff(ts_np) < 0):
        raise ValueError(f"ts must be strictly decreasing (from noise t_max to data t_min), got {ts_np}")
    if ts_np[-1] < 0:
        raise ValueError(f"ts must end at t >= 0, got {ts_np[-1]}")
    solver.check_grid(ts_np.shape[0] - 1)
    with jax.enable_x64(True), jax.ensure_compile_time_eval():  # host-side check, even inside an outer jit
        alpha = np.asarray(process.alpha(ts_np))
        sigma = np.asarray(process.sigma(ts_np))
    if np.any(sigma < 0) or np.any(alpha < 0) or np.any(~np.isfinite(alpha * sigma)):
        raise ValueError(f"ts leaves the domain of process {process.name!r}: alpha={alpha}, sigma={sigma}")
    if sigma[-1] == 0 and solver.evaluates_end:
        raise ValueError(
            f"solver {solver.name!r} evaluates the model at the end of each step, and ts ends at sigma = 0 where no "
            f"prediction is defined; end at t_min > 0 or use a solver that steps to sigma = 0 (e.g. ddim, dpmpp_2m)"
        )
    if alpha[0] == 0:
        if solver.native != "velocity" or prediction != "velocity":
            raise ValueError(
                f"ts starts at t={ts_np[0]} where alpha = 0 (infinite noise level): only a velocity-space solver "
                f"(euler, heun) fed a 'velocity' model can start there; got solver {solver.name!r} with prediction "
                f"{prediction!r}. Start at t_max < {ts_np[0]} instead."
            )


def sample(model_fn: Callable, solver: Solver | str, process: Process | str, x_init: jax.Array, ts: jax.Array,
           prediction: str = "eps", key: jax.Array | None = None, check_finite: bool = True,
           save_trajectory: bool = False) -> tuple[jax.Array, dict]:
    """Integrate the probability-flow ODE from x_init at ts[0] down to ts[-1].

    Args:
      model_fn: a pure function (x, t) -> prediction, with t a scalar array (broadcast it to the batch yourself if
        the network wants a vector of times).
      solver: a solver object or a registered name (`samplers.SOLVERS`).
      process: a `schedules.Process` or a registered name.
      x_init: the state at ts[0], of any shape (leading axes are batch axes for the model).
      ts: strictly decreasing times, num_steps + 1 of them (`schedules.get_timesteps`).
      prediction: what model_fn predicts: "eps", "x0", "v", "velocity" or "score".
      key: reserved for stochastic solvers; the deterministic solvers ignore it.
      check_finite: on concrete (non-traced) results, raise FloatingPointError if the sample is not finite. Under an
        outer `jax.jit` the count is reported in `info["num_nonfinite"]` instead.
      save_trajectory: also return the state at every grid point, info["trajectory"] of shape
        (num_steps + 1, *x_init.shape) (fixed-step solvers only).

    Returns:
      (x, info): x the sample at ts[-1] (dtype of x_init); info["nfe"] the model calls made,
      info["num_nonfinite"] the number of non-finite entries of x (and info["trajectory"] when asked for).

    Example:
        >>> import jax, schedules, samplers
        >>> from models.oracle import GaussianMixture
        >>> process = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> x_init = process.prior(jax.random.PRNGKey(1), (16, 2))
        >>> ts = schedules.get_timesteps("logsnr", process, 10)
        >>> solver = samplers.get_solver("deis_tab", order=3)
        >>> x, info = samplers.sample(gm.model_fn(process), solver, process, x_init, ts)
        >>> info["nfe"]
        10
    """
    solver, process, x_init = resolve_inputs(model_fn, solver, process, prediction, x_init)
    if not _is_tracer(ts):
        ts = np.asarray(ts)
    check_ts(ts, process, solver, prediction)
    ts = as_float(ts)
    args = (model_fn, solver, process, prediction, bool(save_trajectory))
    if _is_tracer(x_init) or _is_tracer(ts):  # already inside a trace (jit, grad, vmap): no cache of its own
        x, nfe, num_nonfinite, trajectory = _sample_fn(*args)(x_init, ts)
    else:
        x, nfe, num_nonfinite, trajectory = _sample_compiled(*args)(x_init, ts)
    if check_finite and not _is_tracer(num_nonfinite) and int(num_nonfinite) > 0:
        raise FloatingPointError(
            f"sampling with {solver.name!r} produced {int(num_nonfinite)} non-finite values out of {x.size}; the "
            f"model returned NaN/Inf or the step sizes are unstable (pass check_finite=False to get them anyway)"
        )
    if solver.static_nfe:  # a plain int, not the traced count
        nfe = solver.nfe(ts.shape[0] - 1)
    info = {"nfe": nfe, "num_nonfinite": num_nonfinite}
    if save_trajectory:
        info["trajectory"] = trajectory
    return x, info


def checked_model(model_fn):
    """model_fn with its output checked at trace time (free at run time): a prediction has x's shape and a floating
    dtype, and anything else is a sentence naming what was expected, not an error deep inside a solver."""

    def model(x, t):
        out = model_fn(x, t)
        shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
        if shape != x.shape or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            got = f"shape {shape} and dtype {dtype}" if shape is not None else f"a {type(out).__name__}"
            raise ValueError(f"model_fn(x, t) must return one floating-point array of x's shape {x.shape} "
                             f"(x has dtype {x.dtype}); it returned {got}")
        return out

    return model


def _sample_fn(model_fn, solver, process, prediction, save_trajectory):
    model = predictions.converted(checked_model(model_fn), prediction, solver.native, process)

    def run(x_init, ts):
        x, nfe, trajectory = solver.integrate(model, process, x_init, ts, save_trajectory=save_trajectory)
        x = x.astype(x_init.dtype)
        return x, nfe, jnp.sum(~jnp.isfinite(x)), trajectory

    return run


@functools.lru_cache(maxsize=64)
def _sample_compiled(model_fn, solver, process, prediction, save_trajectory):
    """One compiled program per (model, solver, process, prediction); ts and x_init are traced arguments, so a new
    grid of the same length or a new batch of the same shape reuses it."""
    return jax.jit(_sample_fn(model_fn, solver, process, prediction, save_trajectory))
