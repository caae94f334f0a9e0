"""Resampling of weighted particles: the effective sample size and ancestor indices, shared by every particle method
(`samplers.fk`'s Feynman-Kac correctors, `samplers.scaling`'s sequential Monte Carlo).

Weights are given as unnormalised log-weights along the last axis; leading axes are independent populations (groups
of particles that share their conditioning), each resampled within itself. Everything is jit- and vmap-compatible.

>>> import jax, jax.numpy as jnp
>>> log_w = jnp.log(jnp.array([0.0, 1.0, 0.0, 1.0]) + 1e-30)
>>> [int(i) for i in resample(jax.random.PRNGKey(0), log_w, "systematic")]
[1, 1, 3, 3]
>>> round(float(ess(log_w)), 6)
2.0
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.core.typing import PyTree


def ess(log_w: jax.Array) -> jax.Array:
    """The effective sample size (sum w)^2 / sum w^2 along the last axis, in [1, K] for K particles; invariant to a
    constant shift of the log-weights."""
    log_w = log_w - jax.lax.stop_gradient(jnp.max(log_w, axis=-1, keepdims=True))
    return jnp.exp(2 * jax.nn.logsumexp(log_w, axis=-1) - jax.nn.logsumexp(2 * log_w, axis=-1))


_DENSE_MAX = 64  # populations up to this size count their K^2 comparisons at once: faster than K binary searches


def _from_uniforms(log_w: jax.Array, u: jax.Array) -> jax.Array:
    """Ancestors for sorted positions u in [0, 1) (..., K): the inverse of the weights' cumulative distribution, the
    number of cdf entries below each position (`jnp.searchsorted`'s left side)."""
    w = jax.nn.softmax(log_w, axis=-1)
    cdf = jnp.cumsum(w, axis=-1)
    cdf = cdf / cdf[..., -1:]  # the last bin ends at exactly 1 whatever the rounding of the sum
    k = log_w.shape[-1]
    if k <= _DENSE_MAX:
        index = jnp.sum(cdf[..., None, :] < u[..., :, None], axis=-1)
    else:
        index = jax.vmap(jnp.searchsorted)(cdf.reshape(-1, k), u.reshape(-1, k)).reshape(log_w.shape)
    return jnp.minimum(index, k - 1)


def systematic(key: jax.Array, log_w: jax.Array) -> jax.Array:
    """Systematic resampling: one uniform u per population, positions (u + k) / K; the lowest-variance of the
    standard schemes (each particle is copied floor(K w) or ceil(K w) times)."""
    k = log_w.shape[-1]
    u = jax.random.uniform(key, log_w.shape[:-1] + (1,), dtype=log_w.dtype)
    offsets = jnp.arange(k, dtype=log_w.dtype).reshape((1,) * (log_w.ndim - 1) + (k,))
    return _from_uniforms(log_w, (u + offsets) / k)


def multinomial(key: jax.Array, log_w: jax.Array) -> jax.Array:
    """Multinomial resampling: K independent draws from the weights."""
    u = jnp.sort(jax.random.uniform(key, log_w.shape, dtype=log_w.dtype), axis=-1)
    return _from_uniforms(log_w, u)


METHODS = Registry("resampling method", {"systematic": systematic, "multinomial": multinomial})


def resample(key: jax.Array, log_w: jax.Array, method: str = "systematic") -> jax.Array:
    """Ancestor indices (..., K), int, into the last axis of `log_w` (..., K), drawn with probabilities
    softmax(log_w) by `method` ("systematic" or "multinomial").

    Args:
      key: a PRNG key.
      log_w: unnormalised log-weights; leading axes are independent populations.
      method: a name in `METHODS`.

    Returns:
      The ancestor of each new particle, in each population.
    """
    fn: Callable = METHODS.lookup(method)
    return fn(key, log_w)


def gather(tree: PyTree, index: jax.Array, axis: int = 0) -> PyTree:
    """Each leaf of `tree` (a pytree of arrays with a particle axis at `axis` of length K) indexed by the ancestors
    `index` (K,) along that axis; for G populations of K particles laid out as G * K along `axis`, pass index of
    shape (G, K) (indices within each population)."""
    if index.ndim > 1:  # populations laid out consecutively: offset each group's indices into the flat axis
        groups, k = index.shape[-2], index.shape[-1]
        index = (index + k * jnp.arange(groups).reshape(groups, 1)).reshape(-1)
    return jax.tree.map(lambda leaf: jnp.take(leaf, index, axis=axis), tree)
