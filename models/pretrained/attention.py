"""Multi-head self-attention over the H*W positions of NHWC images, with a fused qkv projection whose channel order
is one of the published layouts (`QKV_LAYOUTS`), so that one block serves every network that fuses q, k and v.

A fused projection gives 3C channels per position; with `heads` heads of width d = C / heads, the channel of
(q/k/v index j, head h, feature c) is:
  "edm":        h * 3d + 3c + j   (EDM's UNetBlock: reshape (heads, d, 3))
  "adm_legacy": h * 3d + j d + c  (guided-diffusion's QKVAttentionLegacy: per head [q | k | v])
  "adm":        j C + h d + c     (guided-diffusion's QKVAttention, use_new_attention_order: [q_all | k_all | v_all])
The output channel of (head h, feature c) is h d + c in all three. Logits q.k / sqrt(d) and the softmax are computed
in float32 whatever the input dtype (as all three references do), then cast back.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry

# layout -> the (heads, d) split of the 3C channels as a reshape target and the axis that indexes q/k/v in it.
QKV_LAYOUTS = Registry("qkv layout", {"edm": (lambda heads, d: (heads, d, 3), 4),
                                      "adm_legacy": (lambda heads, d: (heads, 3, d), 3),
                                      "adm": (lambda heads, d: (3, heads, d), 2)},
                       ordered=True, unknown="unknown {kind} {name!r}; valid: {valid}")


def split_qkv(qkv: jax.Array, heads: int, layout: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """qkv (B, L, 3C) in the channel order of `layout` -> q, k, v, each (B, L, heads, d)."""
    shape, axis = QKV_LAYOUTS.lookup(layout)
    b, length, channels = qkv.shape
    if channels % (3 * heads):
        raise ValueError(f"a fused qkv of {channels} channels does not split into q, k, v of {heads} heads")
    parts = jnp.reshape(qkv, (b, length) + shape(heads, channels // (3 * heads)))
    q, k, v = (jnp.take(parts, j, axis=axis) for j in range(3))
    return q, k, v


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over the L positions; q, k, v (B, L, heads, d) -> (B, L, heads * d)."""
    b, length, heads, d = q.shape
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / math.sqrt(d)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.reshape(jnp.einsum("bhqk,bkhd->bqhd", weights, v), (b, length, heads * d))


def self_attention(h: jax.Array, qkv: Callable[[jax.Array], jax.Array], proj: Callable[[jax.Array], jax.Array],
                   heads: int, layout: str) -> jax.Array:
    """proj(attention(split_qkv(qkv(h)))) over the H*W positions of NHWC h (already normalised), as NHWC.

    `qkv` maps C -> 3C channels in the `layout` order and `proj` C -> C, on (B, L, C): the caller's Dense layers (a
    1x1 conv's or a Conv1d's kernel, squeezed, is a Dense kernel), created in its own scope so that their parameter
    names are its own. The residual and any output scale are the caller's."""
    b, height, width, c = h.shape
    q, k, v = split_qkv(qkv(jnp.reshape(h, (b, height * width, c))), heads, layout)
    return jnp.reshape(proj(dot_product_attention(q, k, v)), h.shape)
