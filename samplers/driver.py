"""The `sample` driver: checks the inputs before any compute, converts the model's prediction to what the solver
consumes, runs the solver's compiled loop and reports non-finite samples.

One compiled program per (model function, solver structure, process, prediction kind, whether `args` is given, noise
kind): x_init, ts, `args`, `key` and the numeric leaves of the solver and of a model wrapper (a solver's eta, tau or
S_churn, `samplers.guided`'s scale; `samplers.pytrees.split`) are its traced arguments, so new values of any of them
(a new batch, another grid of the same length, new network parameters, other labels, another seed, another eta or
guidance scale) reuse it, and no weight is compiled in as a constant.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers import noise as noises
from fastsamplers.samplers.pytrees import is_traced, merge, split
from fastsamplers.samplers.solvers import get_solver
from fastsamplers.schedules.processes import Process, as_float, get_process


def resolve_inputs(model_fn: ModelFn, solver: Solver | str, process: Process | str, prediction: str,
                   x_init: ArrayLike) -> tuple[Solver, Process, jax.Array]:
    """(solver, process, x_init as an array) from names or objects, checked before any compute is spent."""
    solver = get_solver(solver) if isinstance(solver, str) else solver
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a samplers.Solver or a registered name, got {type(solver).__name__}")
    process = get_process(process) if isinstance(process, str) else process
    if not isinstance(process, Process):
        raise TypeError(f"process must be a schedules.Process or a registered name, got {type(process).__name__}")
    predictions.check_model_kind(prediction)
    if not callable(model_fn):
        raise TypeError("model_fn must be a callable (x, t) -> prediction")
    x_init = jnp.asarray(x_init)
    if not jnp.issubdtype(x_init.dtype, jnp.floating):
        raise TypeError(f"x_init must be a floating-point array, got dtype {x_init.dtype}")
    return solver, process, x_init


def check_ts(ts: ArrayLike, process: Process, solver: Solver, prediction: str) -> None:
    """Validate a time grid before any compute is spent (only what can be seen on concrete values)."""
    if is_traced(ts):
        if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 2:
            raise ValueError(f"ts must be 1-D with at least 2 entries, got shape {jnp.shape(ts)}")
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
    flow_map = predictions.FLOW_MAP
    if (solver.native == flow_map) != (prediction == flow_map):
        raise ValueError(f"a flow map (prediction {flow_map!r}) is sampled only by the flow_map solver, which samples "
                         f"only flow maps; got solver {solver.name!r} with prediction {prediction!r}")
    solver.check_grid(ts_np.shape[0] - 1)
    solver.check_times(process, ts_np)
    with jax.enable_x64(True), jax.ensure_compile_time_eval():  # host-side check, even inside an outer jit
        alpha = np.asarray(process.alpha(ts_np))
        sigma = np.asarray(process.sigma(ts_np))
    if np.any(sigma < 0) or np.any(alpha < 0) or np.any(~np.isfinite(alpha * sigma)):
        raise ValueError(f"ts leaves the domain of process {process.name!r}: alpha={alpha}, sigma={sigma}")
    if sigma[-1] == 0 and solver.denoise_to_zero:
        raise ValueError(f"ts already ends at sigma = 0 (t = {ts_np[-1]}): denoise_to_zero would call the model "
                         f"there, where no prediction is defined; end at t_min > 0 or drop denoise_to_zero")
    if sigma[-1] == 0 and solver.evaluates_end:
        raise ValueError(
            f"solver {solver.name!r} evaluates the model at the end of each step, and ts ends at sigma = 0 where no "
            f"prediction is defined; end at t_min > 0 or use a solver that steps to sigma = 0 (e.g. ddim, dpmpp_2m)"
        )
    if alpha[0] == 0 and solver.native != flow_map:  # a flow map never divides by alpha
        if solver.native != "velocity" or prediction != "velocity":
            raise ValueError(
                f"ts starts at t={ts_np[0]} where alpha = 0 (infinite noise level): only a velocity-space solver "
                f"(euler, heun) fed a 'velocity' model can start there; got solver {solver.name!r} with prediction "
                f"{prediction!r}. Start at t_max < {ts_np[0]} instead."
            )


def sample(model_fn: ModelFn, solver: Solver | str, process: Process | str, x_init: ArrayLike, ts: ArrayLike,
           prediction: str = "eps", key: jax.Array | None = None, args: PyTree = None, check_finite: bool = True,
           save_trajectory: bool = False, noise: str = "fold_in") -> tuple[jax.Array, dict]:
    """Integrate the probability-flow ODE (or, for a stochastic solver, its SDE) from x_init at ts[0] to ts[-1].

    Args:
      model_fn: a pure function (x, t) -> prediction, or (x, t, args) -> prediction when `args` is given; t is a
        scalar array (broadcast it to the batch yourself if the network wants a vector of times).
      solver: a solver object or a registered name (`samplers.SOLVERS`). Its numeric options are traced: solvers
        that differ only in them share one compiled program, and `jax.vmap` over them (e.g. over eta, building the
        solver inside the mapped function) is one program.
      process: a `schedules.Process` or a registered name.
      x_init: the state at ts[0], of any shape (leading axes are batch axes for the model).
      ts: strictly decreasing times, num_steps + 1 of them (`schedules.get_timesteps`).
      prediction: what model_fn predicts: "eps", "x0", "v", "velocity" or "score"; or "flow_map", a flow map
        called as model_fn(x, jnp.stack([t, s])[, args]) returning the state at s (the "flow_map" solver only:
        `samplers.flow_map_solver`).
      key: the PRNG key of a stochastic solver (required there): one key, or one per sample along x_init's leading
        axis (then any split of the batch gives the same samples). Deterministic solvers ignore it.
      args: any pytree passed to the model as its third argument (parameters, labels, embeddings); traced, so new
        values never recompile. None: the model is called as model_fn(x, t).
      check_finite: on concrete (non-traced) results, raise FloatingPointError if the sample is not finite. Under an
        outer `jax.jit` the count is reported in `info["num_nonfinite"]` instead.
      save_trajectory: also return the state at every grid point, info["trajectory"] of shape
        (num_steps + 1, *x_init.shape) (fixed-step solvers only).
      noise: where a stochastic solver's noise comes from: "fold_in" (step i from fold_in(key, i)) or "brownian"
        (increments of one Brownian path, nearly the same sample at another step count; `samplers.noise`).

    Returns:
      (x, info): x the sample at ts[-1] (dtype of x_init); info["nfe"] the model calls made,
      info["num_nonfinite"] the number of non-finite entries of x (and info["trajectory"] when asked for).

    Example:
        >>> import jax
        >>> from fastsamplers import schedules, samplers
        >>> from fastsamplers.models.oracle import GaussianMixture
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
    if not is_traced(ts):
        ts = np.asarray(ts)
    check_ts(ts, process, solver, prediction)
    if not is_traced(ts):
        solver = solver.on_grid(process, ts)
    key = check_key(solver, key, noise, x_init)
    ts = as_float(ts)
    (model_key, model_leaves), (solver_key, solver_leaves) = split(model_fn), split(solver)
    static = (model_key, solver_key, process, prediction, bool(save_trajectory), args is not None,
              noise if solver.stochastic else None)
    traced = (model_leaves, solver_leaves, x_init, ts, args, key)
    if is_traced(traced):  # inside a trace (jit, grad, vmap): no own cache
        x, nfe, num_nonfinite, trajectory = _sample_fn(*static)(*traced)
    else:
        x, nfe, num_nonfinite, trajectory = _sample_compiled(*static)(*traced)
    if check_finite and not is_traced(num_nonfinite) and int(num_nonfinite) > 0:
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


def check_key(solver: Solver, key: jax.Array | None, noise: str, x_init: jax.Array) -> jax.Array | None:
    """The key a stochastic solver needs (checked against the batch), or None for a deterministic one."""
    noises.KINDS.check(noise)  # also where the solver is deterministic and draws none
    if not solver.stochastic:
        return None  # documented: deterministic solvers ignore a key
    if key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass key=jax.random.PRNGKey(seed) (one key, or one "
                         f"per sample along x_init's leading axis)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    noises.check_key(noise, key, x_init.shape[0] if x_init.ndim else None)
    return key


def describe_args(args: PyTree, max_leaves: int = 4) -> str:
    """`args` in a few words for an error message: a small pytree as its leaves' shapes and dtypes, a larger one (a
    network's parameters) by its type and size, a tuple or list element by element; never the whole tree.

    Example:
        >>> import numpy as np
        >>> params = {f"w{i}": np.zeros((2, 3), np.float32) for i in range(6)}
        >>> describe_args((params, np.zeros(2, np.int32)))
        '(a dict of 6 arrays (36 numbers), ShapeDtypeStruct(shape=(2,), dtype=int32))'
    """
    leaves = jax.tree.leaves(args)
    if len(leaves) <= max_leaves:
        return str(jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)), args))
    if isinstance(args, (tuple, list)) and len(args) <= max_leaves:
        return "(" + ", ".join(describe_args(item, max_leaves) for item in args) + ")"
    size = sum(int(np.prod(jnp.shape(leaf))) for leaf in leaves)
    return f"a {type(args).__name__} of {len(leaves)} arrays ({size:,} numbers)"


def checked_model(model_fn: ModelFn, has_args: bool,
                  count: int = 1, learned_variance: bool = False
                  ) -> Callable[[jax.Array, jax.Array, PyTree], jax.Array | tuple[jax.Array, ...]]:
    """model_fn as model(x, t, args), its output checked at trace time (free at run time): a prediction has x's shape
    and a floating dtype, and anything else is a sentence naming what was expected, not an error deep inside a
    solver. With count > 1 (`Solver.predictions_per_call`) the model returns a tuple of `count` such predictions;
    with `learned_variance` one array of twice x's channels, [prediction | variance]."""
    signature = "model_fn(x, t, args)" if has_args else "model_fn(x, t)"

    def is_prediction(out, shape):
        dtype = getattr(out, "dtype", None)
        return getattr(out, "shape", None) == shape and dtype is not None and jnp.issubdtype(dtype, jnp.floating)

    def model(x, t, args):
        try:
            out = model_fn(x, t, args) if has_args else model_fn(x, t)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
            given = f" and args {describe_args(args)}" if has_args else ""
            raise ValueError(f"{signature} failed for x of shape {x.shape} ({x.dtype}){given}: {err}") from err
        if count > 1:
            if not (isinstance(out, tuple) and len(out) == count and all(is_prediction(p, x.shape) for p in out)):
                raise ValueError(f"this solver consumes {count} predictions per call ((guided, unconditional) from "
                                 f"samplers.cfg_pp): {signature} must return a tuple of {count} floating-point arrays "
                                 f"of x's shape {x.shape}; it returned {_described(out)}")
            return out
        expected = x.shape[:-1] + (2 * x.shape[-1],) if learned_variance else x.shape
        if not is_prediction(out, expected):
            hint = (" (a tuple of predictions, as samplers.cfg_pp's model returns, needs a solver that consumes it: "
                    "samplers.cfg_pp_solver)" if isinstance(out, tuple) else "")
            what = (f"of shape {expected}, [prediction | learned variance] along the last axis (the solver's "
                    f"variance='learned'; a checkpoint's m.variance_model_fn)" if learned_variance
                    else f"of x's shape {x.shape}")
            raise ValueError(f"{signature} must return one floating-point array {what} (x has dtype {x.dtype}); it "
                             f"returned {_described(out)}{hint}")
        return out

    return model


def _described(out: Any) -> str:
    """A model's output in a few words, for an error message."""
    if isinstance(out, tuple):
        return "a tuple of " + ", ".join(_described(p) for p in out)
    shape = getattr(out, "shape", None)
    return f"shape {shape} and dtype {getattr(out, 'dtype', None)}" if shape is not None else f"a {type(out).__name__}"


def _sample_fn(model_key, solver_key, process, prediction, save_trajectory, has_args, noise_kind):
    def run(model_leaves, solver_leaves, x_init, ts, args, key):
        solver = merge(solver_key, solver_leaves)
        checked = checked_model(merge(model_key, model_leaves), has_args, solver.predictions_per_call,
                                solver.learned_variance)
        model = _native_model(lambda x, t: checked(x, t, args), prediction, solver, process)
        noise = None
        if noise_kind is not None:
            noise = noises.make_noise(noise_kind, key, process, x_init.shape[0] if x_init.ndim else None)
        x, nfe, trajectory = solver.integrate(model, process, x_init, ts, save_trajectory=save_trajectory,
                                              noise=noise)
        if solver.denoise_to_zero:  # one more call at ts[-1]: its data prediction, the jump to sigma = 0
            out = model(x, ts[-1])  # the prediction the sample follows: CFG++'s guided one; not a learned variance
            first = out[0] if isinstance(out, tuple) else out[..., :x.shape[-1]]
            x = predictions.convert(first, solver.native, "x0", x, ts[-1], process)
            nfe = nfe + 1
        x = x.astype(x_init.dtype)
        return x, nfe, jnp.sum(~jnp.isfinite(x)), trajectory

    return run


def _native_model(model: Callable, prediction: str, solver: Solver, process: Process) -> Callable:
    """model(x, t) converted to the solver's native prediction: each member of a tuple alike
    (`solver.predictions_per_call` > 1); with `solver.learned_variance`, the first half of the channels is the
    prediction (converted) and the second the variance (passed through)."""
    if solver.predictions_per_call > 1:
        return lambda x, t: tuple(predictions.convert(p, prediction, solver.native, x, t, process) for p in model(x, t))
    if not solver.learned_variance:
        return predictions.converted(model, prediction, solver.native, process)

    def split_converted(x, t):
        out = model(x, t)
        channels = x.shape[-1]
        native = predictions.convert(out[..., :channels], prediction, solver.native, x, t, process)
        return jnp.concatenate([native, out[..., channels:]], axis=-1)

    return split_converted


@functools.lru_cache(maxsize=64)
def _sample_compiled(model_key, solver_key, process, prediction, save_trajectory, has_args, noise_kind):
    """One compiled program per static configuration (the structures of the model function and the solver, from
    `split`); their leaves, x_init, ts, args and key are traced arguments."""
    return jax.jit(_sample_fn(model_key, solver_key, process, prediction, save_trajectory, has_args, noise_kind))
