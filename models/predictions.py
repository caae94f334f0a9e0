"""Exact conversions between the kinds of model prediction, for any process.

With x = alpha x0 + sigma eps, the kinds are
  "eps"      the noise eps,
  "x0"       the clean data x0,
  "v"        alpha eps - sigma x0 (Salimans & Ho 2022),
  "velocity" dx/dt = alpha'(t) x0 + sigma'(t) eps (flow matching, in our t = 0 data convention),
  "score"    grad log p_t(x) = -eps / sigma.
Each kind, together with x, determines the pair (x0, eps) by a 2x2 linear solve; conversions go through that pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, ModelFn
from fastsamplers.schedules.processes import Process, as_float

KINDS = Registry.of_names("prediction", ("eps", "x0", "v", "velocity", "score"), ordered=True,
                          unknown="unknown {kind} {name!r}; valid predictions: {valid}")


# A flow map (`models.flow_map`) returns f(x, t, s), the state at another time s, from model(x, jnp.stack([t, s])):
# it is no prediction at (x, t), converts to no kind of KINDS, and only the flow-map solver consumes it
# (`samplers.get_solver("flow_map")`). The kinds a model may be sampled with are KINDS and it.
FLOW_MAP = "flow_map"
MODEL_KINDS = Registry.of_names("prediction", (*KINDS, FLOW_MAP), ordered=True,
                                unknown="unknown {kind} {name!r}; valid predictions: {valid}")


def check_kind(kind: str) -> str:
    """`kind` if it is one of `KINDS`; ValueError listing them otherwise."""
    return KINDS.check(kind)


def check_model_kind(kind: str) -> str:
    """`kind` if a model may predict it (`MODEL_KINDS`: `KINDS` or "flow_map"); ValueError listing them otherwise."""
    return MODEL_KINDS.check(kind)


def _coefficients(process, t):
    t = as_float(t)
    return process.alpha(t), process.sigma(t), t


def to_x0_eps(kind: str, pred: jax.Array, x: jax.Array, t: ArrayLike,
              process: Process) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) from a prediction of the given kind at state x and time t."""
    check_kind(kind)
    alpha, sigma, t = _coefficients(process, t)
    if kind == "eps":
        return (x - sigma * pred) / alpha, pred
    if kind == "x0":
        return pred, (x - alpha * pred) / sigma
    if kind == "score":
        eps = -sigma * pred
        return (x - sigma * eps) / alpha, eps
    if kind == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * pred) / norm, (sigma * x + alpha * pred) / norm
    # velocity: [alpha sigma; alpha' sigma'] [x0; eps] = [x; u], det = alpha sigma' - sigma alpha' = alpha^2 gamma' > 0
    d_alpha, d_sigma = process.d_alpha(t), process.d_sigma(t)
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x - sigma * pred) / det, (alpha * pred - d_alpha * x) / det


def from_x0_eps(kind: str, x0: jax.Array, eps: jax.Array, t: ArrayLike, process: Process) -> jax.Array:
    """The prediction of the given kind from the pair (x0, eps) at time t."""
    check_kind(kind)
    alpha, sigma, t = _coefficients(process, t)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return -eps / sigma
    if kind == "v":
        return alpha * eps - sigma * x0
    return process.d_alpha(t) * x0 + process.d_sigma(t) * eps


def convert(pred: jax.Array, from_kind: str, to_kind: str, x: jax.Array, t: ArrayLike,
            process: Process) -> jax.Array:
    """Convert `pred` (of kind `from_kind`, at state x and time t) to `to_kind`. Identity when the kinds agree.

    Args:
      pred: the prediction, x's shape.
      from_kind, to_kind: kinds of `KINDS`.
      x: the state the prediction was made at.
      t: its time (scalar or broadcastable to x).
      process: the `schedules.Process` that relates x, x0 and eps.

    Returns:
      The prediction of kind `to_kind`, in pred's dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from fastsamplers import schedules
        >>> p = schedules.get_process("vp_linear")
        >>> x, eps = jnp.ones(3), jnp.full(3, 0.5)
        >>> x0 = convert(eps, "eps", "x0", x, 0.5, p)
    """
    check_kind(from_kind)
    check_kind(to_kind)
    if from_kind == to_kind:
        return pred
    x0, eps = to_x0_eps(from_kind, pred, x, t, process)
    out = from_x0_eps(to_kind, x0, eps, t, process)
    return out.astype(jnp.result_type(pred))


def converted(model_fn: ModelFn, from_kind: str, to_kind: str, process: Process) -> ModelFn:
    """`model_fn(x, t)` (predicting `from_kind`) wrapped to predict `to_kind`; model_fn itself when they agree (a
    flow map, "flow_map", converts only to itself)."""
    check_model_kind(from_kind)
    check_model_kind(to_kind)
    if from_kind == to_kind:
        return model_fn
    if FLOW_MAP in (from_kind, to_kind):
        raise ValueError(f"a flow map's output is a state at another time, not a prediction at (x, t): it does not "
                         f"convert from {from_kind!r} to {to_kind!r}")

    def wrapped(x, t):
        return convert(model_fn(x, t), from_kind, to_kind, x, t, process)

    return wrapped
