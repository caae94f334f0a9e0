"""Classifier-free guidance (Ho & Salimans 2022) as a model-function wrapper, so every solver gets it.

guided(x, t, args) = uncond + scale (cond - uncond), cond = model_fn(x, t, args), uncond = model_fn(x, t,
uncond_args). At a fixed (x, t) every prediction kind is an affine function of every other with the same
coefficients for both calls (`models.predictions`), so combining eps's, x0's, v's or velocities gives the same
guided model: the sample does not depend on the space the guidance is applied in. scale = 1 is the conditional model,
scale = 0 the unconditional one.

`interval=(t_lo, t_hi)` guides only for t_lo <= t <= t_hi and uses the conditional model elsewhere (Kynkäänniemi et
al. 2024, "Applying guidance in a limited interval"); outside it the unconditional call is skipped.

The wrapper is a pytree (`Guided`, `samplers.pytrees`): scale, interval and uncond_args are its traced leaves, so a
sweep over the guidance scale is one compiled program, or one `jax.vmap` (scripts/benchmark_guidance.py measures it).

One call or two: with `batch_axes` (a prefix of the args pytree, like `jax.vmap`'s `in_axes`: 0 for a leaf with a
leading batch axis, such as labels, None for a shared one, such as parameters) the two predictions come from one
model call on the batch doubled along its leading axis. Without it they are two calls: which leaves of `args` may be
concatenated cannot be told from their shapes alone (a parameter can have a leading axis of the batch's size), and
two calls are always right.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.samplers.pytrees import TracedOptions, is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process


def guided(model_fn: ModelFn, scale: ArrayLike, uncond_args: Any, *, interval: tuple[float, float] | None = None,
           batch_axes: Any = None, process: Process | None = None,
           channel_mask: tuple[bool, ...] | None = None) -> Guided:
    """The classifier-free guided model function.

    Args:
      model_fn: model_fn(x, t, args) -> prediction (any kind).
      scale: the guidance scale w (1: conditional, 0: unconditional); a finite number, an array, or a tracer (a
        `jax.vmap` over it is one program).
      uncond_args: the args of the unconditional call (e.g. the same parameters with the null label).
      interval: (t_lo, t_hi): guide only for t in it (the conditional model elsewhere); None guides everywhere. Its
        ends may be traced too.
      batch_axes: None (two model calls), or a prefix pytree of args with 0 for leaves to concatenate along their
        leading axis and None for leaves shared by both calls (taken from args): one call on the doubled batch.
      process: optionally, the process the model will be sampled on, to check that the interval meets its times.
      channel_mask: None guides every channel; a tuple of bools, one per channel (the last axis), guides only the
        True ones and gives the conditional prediction in the others: DiT's and SiT's forward_with_cfg guide latent
        channels 0-2 of 4 (DiT/models.py:257-262), `Pretrained.guidance_mask` of those layouts.

    Returns:
      A `Guided` model function (x, t, args) -> the guided prediction, of the same kind as model_fn's. It is a
      pytree whose leaves are scale, interval and uncond_args, so `samplers.sample` traces them: a new scale reuses
      the compiled program.

    Raises:
      ValueError: a known scale that is not finite, or an interval that is not a pair, or whose known ends are empty,
        not finite, below t = 0, or (with process) outside [process.t_min, process.t_max]; a channel_mask that is
        not a non-empty tuple of bools.

    Example:
        >>> import jax.numpy as jnp
        >>> model = lambda x, t, label: x * label
        >>> g = guided(model, scale=3.0, uncond_args=jnp.float32(0.0))
        >>> float(g(jnp.ones(()), 0.5, jnp.float32(1.0)))
        3.0
    """
    values = known(scale)
    if values is not None and not (is_real(values) and np.all(np.isfinite(values))):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
    if values is not None and values.ndim == 0:
        scale = float(values)  # a number stays weakly typed: it takes the prediction's dtype
    if interval is not None:
        interval = _check_interval(interval, process)
    if channel_mask is not None:
        if not (isinstance(channel_mask, (tuple, list)) and channel_mask
                and all(isinstance(c, (bool, np.bool_)) for c in channel_mask)):
            raise ValueError(f"channel_mask must be a non-empty tuple of bools, one per channel, got {channel_mask!r}")
        channel_mask = tuple(bool(c) for c in channel_mask)
    axes = None if batch_axes is None else tuple(jax.tree.flatten(batch_axes, is_leaf=lambda leaf: leaf is None))
    return Guided(model_fn=model_fn, scale=scale, uncond_args=uncond_args, interval=interval,
                  batch_axes=(tuple(axes[0]), axes[1]) if axes else None, channel_mask=channel_mask)


@dataclasses.dataclass(frozen=True, eq=False)
class Guided(TracedOptions):
    """The model function `guided` returns. Its pytree children are `scale`, `uncond_args` and `interval` (traced
    under jit and vmap); `model_fn`, `batch_axes` (held as (leaves, treedef), hashable) and `channel_mask` are
    static."""

    model_fn: ModelFn
    scale: Any
    uncond_args: Any
    interval: tuple | None = None
    batch_axes: tuple | None = None
    channel_mask: tuple[bool, ...] | None = None
    traced = ("scale", "uncond_args", "interval")

    def __call__(self, x: jax.Array, t: ArrayLike, args: PyTree) -> jax.Array:
        if self.interval is None:
            return self._combine(*self._both(x, t, args))
        t_lo, t_hi = self.interval
        t_arr = jnp.asarray(t)
        inside = (t_arr >= t_lo) & (t_arr <= t_hi)
        if t_arr.ndim == 0:  # one time for the batch: skip the unconditional call outside the interval
            return jax.lax.cond(inside, lambda: self._combine(*self._both(x, t, args)),
                                lambda: self.model_fn(x, t, args))
        cond, uncond = self._both(x, t, args)
        return jnp.where(jnp.reshape(inside, inside.shape + (1,) * (x.ndim - inside.ndim)),
                         self._combine(cond, uncond), cond)

    def _combine(self, cond, uncond):
        guided = uncond + self.scale * (cond - uncond)
        if self.channel_mask is None:
            return guided
        if len(self.channel_mask) != cond.shape[-1]:
            raise ValueError(f"channel_mask has {len(self.channel_mask)} entries for predictions of "
                             f"{cond.shape[-1]} channels")
        return jnp.where(np.asarray(self.channel_mask), guided, cond)

    def _both(self, x, t, args):
        """(cond, uncond): two calls, or one on the doubled batch with `batch_axes`."""
        if self.batch_axes is None:
            return self.model_fn(x, t, args), self.model_fn(x, t, self.uncond_args)
        leaves, treedef = self.batch_axes
        n = x.shape[0]
        doubled = jax.tree.map(
            lambda axis, a, u: a if axis is None else jax.tree.map(lambda p, q: jnp.concatenate([p, q], 0), a, u),
            treedef.unflatten(leaves), args, self.uncond_args, is_leaf=lambda leaf: leaf is None)
        out = self.model_fn(jnp.concatenate([x, x], axis=0), t, doubled)
        return out[:n], out[n:]


def _check_interval(interval, process):
    """The interval as a pair, its known ends checked (and made floats)."""
    try:
        pair = tuple(interval)
    except TypeError:
        pair = ()
    values = known(pair)
    if len(pair) != 2 or values is not None and not is_real(values):
        raise ValueError(f"interval must be a pair (t_lo, t_hi) of numbers, got {interval!r}") from None
    if values is None:  # traced ends: checked where they were numbers
        return pair
    t_lo, t_hi = (float(v) for v in values)
    if not (math.isfinite(t_lo) and math.isfinite(t_hi) and 0.0 <= t_lo < t_hi):
        raise ValueError(f"interval must satisfy 0 <= t_lo < t_hi (finite), got {interval!r}")
    if process is not None and (t_hi < process.t_min or t_lo > process.t_max):
        raise ValueError(f"interval {interval!r} lies outside the times of process {process.name!r} "
                         f"([{process.t_min}, {process.t_max}]): guidance would never apply")
    return t_lo, t_hi
