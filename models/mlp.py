"""A small MLP with a sinusoidal time embedding, for low-dimensional data (2D sets, the oracle's dimensions)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def time_embedding(t, dim, max_period=10_000.0):
    """Sinusoidal embedding of t (any shape) into (..., dim) features (Vaswani et al. 2017; DDPM)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
    t = jnp.asarray(t, jnp.float32)
    args = t[..., None] * jnp.reshape(freqs, (1,) * t.ndim + (half,))
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, dim - 2 * half)])


class MLP(nn.Module):
    """x (..., d) and t (scalar or broadcastable to x.shape[:-1]) -> prediction (..., d).

    `time_scale` multiplies t before the embedding (1000 for t in [0, 1], so that the embedding resolves small steps).
    """

    hidden: int = 256
    depth: int = 3
    embed_dim: int = 64
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, x, t):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:-1])
        emb = time_embedding(self.time_scale * t, self.embed_dim)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
        h = nn.Dense(self.hidden)(x)
        for _ in range(self.depth):
            h = nn.silu(h + emb)
            h = nn.Dense(self.hidden)(h)
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(nn.silu(h)).astype(x.dtype)
