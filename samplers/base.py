"""The solver contract and the `sample` driver.

A solver is an immutable, hashable object (a static pytree) in the shape of diffrax's solvers:

  coefficients(process, ts) -> pytree with a leading axis of num_steps; everything that depends only on the time
                               grid, computed once, outside the loop (and differentiable with respect to ts);
  init(x) -> state           the solver's carried state (e.g. a fixed-shape history of past predictions);
  step(model, process, x, state, inp) -> (x, state)
                               one step, pure; `inp` holds the step index `i`, its start `s`, end `t`, `last` flag
                               and its slice of the coefficients;
  integrate(model, process, x, ts, save_trajectory=False) -> (x, nfe, trajectory or None)
                               the whole trajectory; by default one `lax.scan` over `step`, which can also return
                               the state at every grid point.

Metadata: `order` (the method's nominal order: its name in the papers, and the number of past points a multistep
solver keeps), `convergence_order` (what the tests measure with exact starting values; equal to `order` except where
a published method falls short of its name), `stages` (model calls per step), `native`
(the prediction kind the solver consumes: the model's output is converted to it exactly), `evaluates_end` (whether a
step calls the model at its end time, which rules out a final step to sigma = 0).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from models import predictions
from schedules.processes import Process, as_float, get_process


@dataclasses.dataclass(frozen=True)
class Solver:
    name = "solver"
    native = "eps"
    evaluates_end = False
    static_nfe = True  # the model calls are known from the grid alone (False for adaptive step sizes)

    @property
    def order(self) -> int:
        raise NotImplementedError

    @property
    def convergence_order(self) -> int:
        return self.order

    @property
    def stages(self) -> int:
        return 1

    def nfe(self, num_steps: int) -> int:
        """Model calls made for a grid of num_steps steps."""
        return self.stages * num_steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose model calls fit in a budget of `nfe` evaluations."""
        if self.nfe(1) > nfe:
            raise ValueError(f"{self.name} needs at least {self.nfe(1)} model calls for one step, got nfe={nfe}")
        num_steps = 1
        while self.nfe(num_steps + 1) <= nfe:
            num_steps += 1
        return num_steps

    def check_grid(self, num_steps: int):
        """Raise ValueError when the solver cannot run on a grid of num_steps steps."""

    def coefficients(self, process, ts):
        return {}

    def init(self, x):
        return ()

    def step(self, model, process, x, state, inp):
        raise NotImplementedError

    def integrate(self, model, process, x, ts, save_trajectory=False):
        num_steps = ts.shape[0] - 1
        inputs = {
            "i": jnp.arange(num_steps),
            "s": ts[:-1],
            "t": ts[1:],
            "last": jnp.arange(num_steps) == num_steps - 1,
            "coef": self.coefficients(process, ts),
        }

        def body(carry, inp):
            x, state = self.step(model, process, *carry, inp)
            return (x, state), (x if save_trajectory else None)

        (x_end, _), states = jax.lax.scan(body, (x, self.init(x)), inputs)
        trajectory = jnp.concatenate([x[None], states], axis=0) if save_trajectory else None
        return x_end, self.nfe(num_steps), trajectory


def cast_like(value, x):
    return value.astype(x.dtype)


def _is_tracer(value):
    return isinstance(value, jax.core.Tracer)


def resolve_inputs(model_fn, solver, process, prediction, x_init):
    """(solver, process, x_init as an array) from names or objects, checked before any compute is spent."""
    from samplers.registry import get_solver

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


def check_ts(ts, process, solver, prediction):
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


def sample(model_fn, solver, process, x_init, ts, prediction="eps", key=None, check_finite=True,
           save_trajectory=False):
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


def _sample_fn(model_fn, solver, process, prediction, save_trajectory):
    model = predictions.converted(model_fn, prediction, solver.native, process)

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
