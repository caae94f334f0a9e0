"""TarFlow: a normalizing flow of autoregressive transformer blocks on image patches (Zhai et al. 2024,
"Normalizing Flows are Capable Generative Models").

An image (B, H, W, C) is cut into T = (H/p)(W/p) patch tokens of size D = p*p*C. Block k works on the tokens in its
own order (odd blocks reverse the sequence) and maps x -> z affinely, token by token:

    z_t = (x_t - b_t) * exp(-a_t),   (a_t, b_t) = the transformer's outputs from the tokens x_<t,

so the Jacobian is triangular and log|det| = -sum_t a_t. The causal transformer reads the tokens shifted right by
one position: its input at position t is x_{t-1}, with a zero token at position 0 (that position carries the
positional and class embeddings), and its output at position t is (a_t, b_t). Token 0 passes unchanged
(a_0 = b_0 = 0), as in the paper. The output projection is zero-initialised, so every block starts as the identity.

Class conditioning adds a learned class embedding to every token; index `num_classes` is the "no label" embedding
that label dropout trains, used as the unconditional branch of guidance.

The transformer is written with an explicit key/value cache (`Cache`), so that one function serves the forward
pass (all tokens, no cache) and every inverse: token by token, all tokens at once (Jacobi) and segment by segment
(GS-Jacobi), in `samplers/causal.py`. `TarFlow.block_outputs(k, u, start, y, cache)` is that function for block k:
the transformer inputs `u` of positions start..start+L-1, attending to the cached keys of positions < start.

Example:
    >>> import jax, jax.numpy as jnp
    >>> flow = TarFlow(image_size=8, channels=1, patch_size=2, num_blocks=2, layers_per_block=1, hidden=16,
    ...                num_heads=2)
    >>> params = jax.jit(flow.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    >>> z, logdet = jax.jit(flow.apply)(params, jnp.ones((3, 8, 8, 1)))
    >>> z.shape, logdet.shape
    ((3, 8, 8, 1), (3,))
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike, DTypeLike, PyTree
from fastsamplers.models.conditioning import class_labels

_init = nn.initializers.normal(0.02)


class Cache(NamedTuple):
    """Keys and values of every layer of one block: (layers, batch, T, heads, head_dim) each."""

    keys: jax.Array
    values: jax.Array


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, T, p*p*C) tokens, row-major over patches, each patch row-major over its pixels."""
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h // p, p, w // p, p, c))
    return jnp.reshape(jnp.transpose(x, (0, 1, 3, 2, 4, 5)), (b, (h // p) * (w // p), p * p * c))


def unpatchify(tokens: jax.Array, p: int, height: int, width: int) -> jax.Array:
    """The inverse of `patchify`: (B, T, p*p*C) -> (B, H, W, C)."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = jnp.reshape(tokens, (b, height // p, width // p, p, p, c))
    return jnp.reshape(jnp.transpose(x, (0, 1, 3, 2, 4, 5)), (b, height, width, c))


class CausalAttention(nn.Module):
    """Multi-head self-attention where position i sees positions <= i; with a cache, the new keys and values of
    positions start..start+L-1 are written into it and the queries attend to the whole (masked) cache."""

    hidden: int
    num_heads: int

    @nn.compact
    def __call__(self, h: jax.Array, start: int | jax.Array,
                 cache_kv: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        b, length, _ = h.shape
        head_dim = self.hidden // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), kernel_init=_init, name="qkv")(h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q_pos = start + jnp.arange(length)
        if cache_kv is None:
            keys, values, k_pos = k, v, q_pos
        else:
            cached_k, cached_v = cache_kv
            keys = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), start, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), start, axis=1)
            k_pos = jnp.arange(keys.shape[1])
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, keys) / jnp.sqrt(head_dim).astype(q.dtype)
        mask = k_pos[None, :] <= q_pos[:, None]
        logits = jnp.where(mask[None, None], logits, jnp.finfo(logits.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), values)
        out = nn.DenseGeneral(self.hidden, axis=(-2, -1), kernel_init=_init, name="out")(out)
        return out, (keys, values)


class FlowBlock(nn.Module):
    """One autoregressive flow block: a pre-LN causal transformer (MLP x`mlp_ratio`) from shifted tokens to
    per-token (log-scale a, shift b)."""

    num_tokens: int
    token_dim: int
    hidden: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_classes: int

    @nn.compact
    def __call__(self, u: jax.Array, start: int | jax.Array, y: jax.Array,
                 cache: Cache | None) -> tuple[jax.Array, jax.Array, Cache | None]:
        """u (B, L, D): the inputs of positions start..start+L-1 (x shifted right). Returns (a, b, cache)."""
        length = u.shape[1]
        h = nn.Dense(self.hidden, kernel_init=_init, name="proj_in")(u)
        pos = self.param("pos_embed", _init, (self.num_tokens, self.hidden))
        h = h + jax.lax.dynamic_slice_in_dim(pos, start, length, axis=0)[None].astype(h.dtype)
        if self.num_classes:
            h = h + nn.Embed(self.num_classes + 1, self.hidden, embedding_init=_init, name="class_embed")(y)[:, None]
        new_k, new_v = [], []
        for i in range(self.depth):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            att, (k, v) = CausalAttention(self.hidden, self.num_heads, name=f"attn_{i}")(
                nn.LayerNorm(name=f"ln_attn_{i}")(h), start, layer_cache)
            h = h + att
            m = nn.Dense(int(self.mlp_ratio * self.hidden), kernel_init=_init, name=f"mlp_in_{i}")(
                nn.LayerNorm(name=f"ln_mlp_{i}")(h))
            h = h + nn.Dense(self.hidden, kernel_init=_init, name=f"mlp_out_{i}")(nn.gelu(m))
            new_k.append(k)
            new_v.append(v)
        out = nn.Dense(2 * self.token_dim, kernel_init=nn.initializers.zeros, name="proj_out")(
            nn.LayerNorm(name="ln_out")(h))
        first = (start + jnp.arange(length)) == 0  # token 0 passes unchanged
        out = jnp.where(first[None, :, None], 0.0, out).astype(u.dtype)
        a, b = jnp.split(out, 2, axis=-1)
        new_cache = None if cache is None else Cache(jnp.stack(new_k), jnp.stack(new_v))
        return a, b, new_cache


class TarFlow(nn.Module):
    """x (B, H, W, C) [, labels y (B,)] -> (z (B, H, W, C), log|det dz/dx| (B,)); see the module docstring.

    Fields: image_size and channels of the images it models; patch_size p; num_blocks flow blocks of
    layers_per_block transformer layers each, width `hidden`, `num_heads` heads; num_classes > 0 for class
    conditioning (labels 0..num_classes-1; label num_classes means "no label").
    """

    image_size: int = 16
    channels: int = 1
    patch_size: int = 2
    num_blocks: int = 4
    layers_per_block: int = 2
    hidden: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"TarFlow: image_size={self.image_size} is not divisible by patch_size="
                             f"{self.patch_size}")
        if self.hidden % self.num_heads:
            raise ValueError(f"TarFlow: num_heads={self.num_heads} must divide hidden={self.hidden}")
        if self.num_blocks < 1 or self.layers_per_block < 1:
            raise ValueError("TarFlow: num_blocks and layers_per_block must be >= 1")
        super().__post_init__()

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def token_dim(self) -> int:
        return self.patch_size**2 * self.channels

    def setup(self) -> None:
        self.blocks = [FlowBlock(self.num_tokens, self.token_dim, self.hidden, self.layers_per_block,
                                 self.num_heads, self.mlp_ratio, self.num_classes, name=f"block_{k}")
                       for k in range(self.num_blocks)]

    def labels(self, y: ArrayLike | None, batch: int) -> jax.Array:
        """The labels a block sees: y, or "no label" (index num_classes) when y is None; (batch,) int32."""
        if not self.num_classes:
            return jnp.zeros((batch,), jnp.int32)
        return class_labels(y, self.num_classes, batch)

    def check_images(self, x: jax.Array) -> None:
        expected = (self.image_size, self.image_size, self.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"TarFlow expects images (B, {', '.join(map(str, expected))}); got shape {x.shape}")

    def to_tokens(self, x: jax.Array) -> jax.Array:
        self.check_images(x)
        return patchify(x, self.patch_size)

    def to_images(self, tokens: jax.Array) -> jax.Array:
        return unpatchify(tokens, self.patch_size, self.image_size, self.image_size)

    def block_outputs(self, k: int, u: jax.Array, start: int | jax.Array, y: jax.Array,
                      cache: Cache | None) -> tuple[jax.Array, jax.Array, Cache | None]:
        """Block k's (a, b, cache) for the transformer inputs u (B, L, D) at positions start.. (block order)."""
        return self.blocks[k](u, start, y, cache)

    def block_forward(self, k: int, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Block k on tokens in its own order: (z, a, b) with z = (x - b) exp(-a)."""
        u = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        a, b, _ = self.blocks[k](u, 0, y, None)
        return (x - b) * jnp.exp(-a), a, b

    def __call__(self, x: jax.Array, y: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
        tokens = self.to_tokens(x)
        y = self.labels(y, x.shape[0])
        logdet = jnp.zeros((x.shape[0],), jnp.promote_types(x.dtype, jnp.float32))
        for k in range(self.num_blocks):
            tokens = block_order(k, tokens)
            tokens, a, _ = self.block_forward(k, tokens, y)
            tokens = block_order(k, tokens)  # the order is its own inverse
            logdet = logdet - jnp.sum(a.astype(logdet.dtype), axis=(1, 2))
        return self.to_images(tokens), logdet

    def forward_trace(self, x: jax.Array,
                      y: ArrayLike | None = None) -> list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
        """Every block's (input tokens, z, a, b) in the block's own order, for diagnostics (CRM / IGM)."""
        tokens = self.to_tokens(x)
        y = self.labels(y, x.shape[0])
        trace = []
        for k in range(self.num_blocks):
            inputs = block_order(k, tokens)
            z, a, b = self.block_forward(k, inputs, y)
            trace.append((inputs, z, a, b))
            tokens = block_order(k, z)
        return trace


def block_order(k: int, tokens: jax.Array) -> jax.Array:
    """Block k's token order: odd blocks reverse the sequence (an involution)."""
    return tokens[:, ::-1] if k % 2 else tokens


def empty_cache(flow: TarFlow, batch: int, dtype: DTypeLike = jnp.float32) -> Cache:
    """A zero cache for one block of `flow` and `batch` sequences."""
    shape = (flow.layers_per_block, batch, flow.num_tokens, flow.num_heads, flow.hidden // flow.num_heads)
    return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def nll(flow: TarFlow, params: PyTree, x: jax.Array, y: ArrayLike | None = None) -> jax.Array:
    """The negative log-likelihood per dimension (nats) of images x under the flow, (B,): a standard normal
    prior on z and the change of variables."""
    z, logdet = flow.apply(params, x, y)
    dim = z[0].size
    z = z.astype(logdet.dtype)  # type: ignore[union-attr]  # apply returns (out, state) only when mutable
    log_prior = -0.5 * jnp.sum(jnp.square(z), axis=(1, 2, 3)) - 0.5 * dim * jnp.log(2 * jnp.pi)
    return -(log_prior + logdet) / dim


def denoise(flow: TarFlow, params: PyTree, x: jax.Array, sigma: ArrayLike, y: ArrayLike | None = None) -> jax.Array:
    """TarFlow's denoising step after sampling (Tweedie): x + sigma^2 grad_x log p(x), with the flow's own
    likelihood, for a model trained on data noised with standard deviation sigma."""
    grad = jax.grad(lambda v: -jnp.sum(nll(flow, params, v, y)) * x[0].size)(x)
    return x + sigma**2 * grad
