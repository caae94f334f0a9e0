"""Where a stochastic solver's noise comes from: a key folded with the step index, or a Brownian tree.

`sample(..., key=key, noise="fold_in")` (the default) draws step i's standard normal noise from
`fold_in(key, i)`. `noise="brownian"` reads it off one Brownian path W(t) over the process's whole time range
(diffrax's `VirtualBrownianTree`): step i gets (W(s_i) - W(t_i)) / sqrt(s_i - t_i), an exact standard normal whose
value depends on the interval, not on the step count, so a finer grid of the same key sees nearly the same path and
gives nearly the same sample (as torchsde's Brownian tree does for k-diffusion).

`key` is one PRNG key for the whole batch, or one key per sample (a leading axis of the batch's size, e.g.
`jax.random.split(key, n)`): then sample b's noise depends only on its own key, so any split of the batch into
pieces (with the matching slices of the keys) gives the same samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from fastsamplers.core import Registry

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

KINDS = Registry.of_names("noise", ("fold_in", "brownian"), ordered=True)
_STREAM_SALT = 0x5EED  # keys of extra draws within a step (stream > 0) are folded with it, apart from the path


def num_keys(key: jax.Array) -> int | None:
    """None for a single key, else the number of per-sample keys along the leading axis."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    single_ndim = 0 if typed else 1
    if key.ndim == single_ndim:
        return None
    if key.ndim == single_ndim + 1:
        return key.shape[0]
    raise ValueError(f"key must be one PRNG key or a 1-D batch of keys, got shape {key.shape}")


class Noise(NamedTuple):
    """A noise source (a pytree: the key is traced, the kind and the Brownian range are data).

    kind: "fold_in" or "brownian"; key: one key or per-sample keys; t0, t1: the Brownian path's time range;
    tol: its resolution in t.
    """

    kind: str
    key: jax.Array
    t0: float
    t1: float
    tol: float

    def normal(self, i: jax.Array, s: jax.Array, t: jax.Array, like: jax.Array, stream: int = 0) -> jax.Array:
        """Standard normal noise shaped like `like` for the step i from s to t (t < s). Further independent draws
        within the same step take stream = 1, 2, ... (they come from the key, never from the Brownian path)."""
        if num_keys(self.key) is None:
            return self._draw(self.key, i, s, t, like, stream)
        return jax.vmap(lambda k, x: self._draw(k, i, s, t, x, stream))(self.key, like)

    def _draw(self, key, i, s, t, like, stream):
        if self.kind == "fold_in" or stream > 0:
            step_key = jax.random.fold_in(key, i)
            if stream > 0:
                step_key = jax.random.fold_in(jax.random.fold_in(step_key, _STREAM_SALT), stream)
            return jax.random.normal(step_key, like.shape, like.dtype)
        tree = diffrax.VirtualBrownianTree(self.t0, self.t1, tol=self.tol,
                                           shape=jax.ShapeDtypeStruct(like.shape, like.dtype), key=key)
        increment = tree.evaluate(jnp.clip(t, self.t0, self.t1), jnp.clip(s, self.t0, self.t1))
        return (increment / jnp.sqrt(jnp.maximum(s - t, jnp.finfo(like.dtype).tiny))).astype(like.dtype)


def check_key(kind: str, key: jax.Array, batch_size: int | None) -> None:
    """Raise ValueError for an unknown noise kind or a key that fits neither one key nor one per sample."""
    KINDS.check(kind)
    count = num_keys(key)
    if count is not None and count != batch_size:
        raise ValueError(f"got {count} per-sample keys for a batch of {batch_size}: give one key, or one per sample "
                         f"along x_init's leading axis")


def make_noise(kind: str, key: jax.Array, process: Process, batch_size: int | None, tol: float = 1e-5) -> Noise:
    """The noise source of one solve.

    Args:
      kind: "fold_in" or "brownian".
      key: one PRNG key, or one per sample (leading axis of size batch_size).
      process: the process being sampled (the Brownian path spans [0, process.t_max]).
      batch_size: the size of x_init's leading axis (None for an unbatched x_init).
      tol: the Brownian tree's resolution in t.
    """
    check_key(kind, key, batch_size)
    return Noise(kind=kind, key=key, t0=0.0, t1=float(process.t_max), tol=float(tol))
