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

Options reproduce Apple's reference TarFlow (ml-tarflow transformer_flow.py, `Model`), whose published weights
`models.pretrained.ml_tarflow` loads; the defaults are this module's own design:
  patch_order  "hwc": a patch vector is row-major over its pixels, channel fastest; "chw": channel slowest, as
               torch's unfold orders it (transformer_flow.py:288-291).
  shift        "input": the transformer reads the tokens shifted right, a zero token at position 0 that it attends
               to; "output": it reads x_t at position t and its outputs are shifted down one token instead
               (transformer_flow.py:170-172), so no position attends to the zero token. Both are served by one
               function of the shifted inputs: under "output", position t (input x_{t-1}) takes the positional
               embedding t-1 and queries t >= 1 do not see position 0.
  null_class   "label": the "no label" embedding is row num_classes of the class table; "mean": the mean of the
               num_classes rows (labels < 0 or num_classes, and y=None; transformer_flow.py:158-167).
  final_norm   a LayerNorm before the output projection (the reference has none).
  ln_eps, exact_gelu   LayerNorm epsilon (torch's 1e-5) and erf GELU (torch's default) instead of tanh GELU.
  prior_variance       the reference's per-dimension prior variance `var` (T, p*p*C) (parameter prior_var/var):
               the flow ends with the fixed scaling z -> z / sqrt(var), so that its prior is a standard normal and
               the inverse starts from z * sqrt(var), as the reference's reverse does (transformer_flow.py:331).
Blocks alternate the identity and a flip of the token order in both designs. The reference's per-dimension logdet
(-mean a over tokens and dimensions, transformer_flow.py:177) is this module's log|det| (less the prior scaling's
-sum log sqrt(var)) divided by H W C, and its z is this module's z times sqrt(var). The attention of guidance's
unconditional branch may be tempered (logits / temperature: `attn_temperature` of
`samplers.causal.invert`, the reference's attn_temp, transformer_flow.py:54-56).

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

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, DTypeLike, PyTree
from fastsamplers.models.conditioning import class_labels

_init = nn.initializers.normal(0.02)
_UNKNOWN = "unknown {kind} {name!r}; valid: {valid}"
PATCH_ORDERS = Registry.of_names("patch order", ("hwc", "chw"), ordered=True, unknown=_UNKNOWN)
SHIFTS = Registry.of_names("token shift", ("input", "output"), ordered=True, unknown=_UNKNOWN)
NULL_CLASSES = Registry.of_names("null class", ("label", "mean"), ordered=True, unknown=_UNKNOWN)


class Cache(NamedTuple):
    """Keys and values of every layer of one block: (layers, batch, T, heads, head_dim) each."""

    keys: jax.Array
    values: jax.Array


# patch order -> the axes of (B, H/p, p, W/p, p, C) in token order: (B, H/p, W/p, then the patch vector's axes).
_PATCH_AXES = {"hwc": (0, 1, 3, 2, 4, 5), "chw": (0, 1, 3, 5, 2, 4)}


def patchify(x: jax.Array, p: int, order: str = "hwc") -> jax.Array:
    """(B, H, W, C) -> (B, T, p*p*C) tokens, row-major over patches; each patch vector row-major over its pixels
    with the channel fastest ("hwc") or channel slowest ("chw", torch's unfold on NCHW)."""
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h // p, p, w // p, p, c))
    return jnp.reshape(jnp.transpose(x, _PATCH_AXES[PATCH_ORDERS.check(order)]), (b, (h // p) * (w // p), p * p * c))


def unpatchify(tokens: jax.Array, p: int, height: int, width: int, order: str = "hwc") -> jax.Array:
    """The inverse of `patchify`: (B, T, p*p*C) -> (B, H, W, C)."""
    b, _, d = tokens.shape
    c = d // (p * p)
    axes = _PATCH_AXES[PATCH_ORDERS.check(order)]
    sizes = {2: p, 4: p, 5: c}  # the patch vector's axes of (B, H/p, p, W/p, p, C)
    x = jnp.reshape(tokens, (b, height // p, width // p) + tuple(sizes[a] for a in axes[3:]))
    return jnp.reshape(jnp.transpose(x, [axes.index(a) for a in range(6)]), (b, height, width, c))


class CausalAttention(nn.Module):
    """Multi-head self-attention where position i sees positions <= i (with `skip_first`, positions i >= 1 do not
    see position 0); with a cache, the new keys and values of positions start..start+L-1 are written into it and
    the queries attend to the whole (masked) cache. `temperature` (B,) divides each sequence's logits.

    The fused qkv kernel (hidden, 3, heads, d) is attention.py's "adm" layout [q_all | k_all | v_all] reshaped,
    the reference's too (transformer_flow.py:48)."""

    hidden: int
    num_heads: int
    skip_first: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, start: int | jax.Array, cache_kv: tuple[jax.Array, jax.Array] | None,
                 temperature: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
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
        if temperature is not None:
            logits = logits / temperature[:, None, None, None].astype(logits.dtype)
        mask = k_pos[None, :] <= q_pos[:, None]
        if self.skip_first:  # position 0 sees itself only, so that no softmax row is empty; its output is dropped
            mask = mask & ((k_pos[None, :] > 0) | (q_pos[:, None] == 0))
        logits = jnp.where(mask[None, None], logits, jnp.finfo(logits.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), values)
        out = nn.DenseGeneral(self.hidden, axis=(-2, -1), kernel_init=_init, name="out")(out)
        return out, (keys, values)


class FlowBlock(nn.Module):
    """One autoregressive flow block: a pre-LN causal transformer (MLP x`mlp_ratio`) from shifted tokens to
    per-token (log-scale a, shift b). The options are `TarFlow`'s (module docstring)."""

    num_tokens: int
    token_dim: int
    hidden: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_classes: int
    shift: str = "input"
    null_class: str = "label"
    final_norm: bool = True
    ln_eps: float = 1e-6
    exact_gelu: bool = False

    @nn.compact
    def __call__(self, u: jax.Array, start: int | jax.Array, y: jax.Array, cache: Cache | None,
                 temperature: jax.Array | None = None) -> tuple[jax.Array, jax.Array, Cache | None]:
        """u (B, L, D): the inputs of positions start..start+L-1 (x shifted right); temperature (B,) or None
        divides the attention logits. Returns (a, b, cache)."""
        length = u.shape[1]
        output_shift = self.shift == "output"
        h = nn.Dense(self.hidden, kernel_init=_init, name="proj_in")(u)
        pos = self.param("pos_embed", _init, (self.num_tokens, self.hidden))
        if output_shift:  # position t holds x_{t-1}, the reference's position t-1 (module docstring)
            pos = jnp.concatenate([pos[:1], pos[:-1]])
        h = h + jax.lax.dynamic_slice_in_dim(pos, start, length, axis=0)[None].astype(h.dtype)
        if self.num_classes:
            h = h + self._class_embedding(y)[:, None].astype(h.dtype)
        new_k, new_v = [], []
        for i in range(self.depth):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            att, (k, v) = CausalAttention(self.hidden, self.num_heads, output_shift, name=f"attn_{i}")(
                nn.LayerNorm(self.ln_eps, name=f"ln_attn_{i}")(h), start, layer_cache, temperature)
            h = h + att
            m = nn.Dense(int(self.mlp_ratio * self.hidden), kernel_init=_init, name=f"mlp_in_{i}")(
                nn.LayerNorm(self.ln_eps, name=f"ln_mlp_{i}")(h))
            h = h + nn.Dense(self.hidden, kernel_init=_init, name=f"mlp_out_{i}")(
                nn.gelu(m, approximate=not self.exact_gelu))
            new_k.append(k)
            new_v.append(v)
        if self.final_norm:
            h = nn.LayerNorm(self.ln_eps, name="ln_out")(h)
        out = nn.Dense(2 * self.token_dim, kernel_init=nn.initializers.zeros, name="proj_out")(h)
        first = (start + jnp.arange(length)) == 0  # token 0 passes unchanged
        out = jnp.where(first[None, :, None], 0.0, out).astype(u.dtype)
        a, b = jnp.split(out, 2, axis=-1)
        new_cache = None if cache is None else Cache(jnp.stack(new_k), jnp.stack(new_v))
        return a, b, new_cache

    def _class_embedding(self, y: jax.Array) -> jax.Array:
        """(B, hidden): the class embedding of labels y; under null_class "mean", labels outside 0..K-1 take the
        mean of the K rows (transformer_flow.py:158-167)."""
        if self.null_class == "label":
            return nn.Embed(self.num_classes + 1, self.hidden, embedding_init=_init, name="class_embed")(y)
        embed = nn.Embed(self.num_classes, self.hidden, embedding_init=_init, name="class_embed")
        given = embed(jnp.clip(y, 0, self.num_classes - 1))
        valid = (y >= 0) & (y < self.num_classes)
        return jnp.where(valid[:, None], given, jnp.mean(embed.embedding, axis=0)[None])


class PriorVariance(nn.Module):
    """The prior's variance per token dimension, `var` (T, D), initialised to ones (the reference's buffer, updated
    by its training, transformer_flow.py:286, 310-312, not by gradients)."""

    shape: tuple[int, int]

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("var", nn.initializers.ones, self.shape)


class TarFlow(nn.Module):
    """x (B, H, W, C) [, labels y (B,)] -> (z (B, H, W, C), log|det dz/dx| (B,)); see the module docstring.

    Fields: image_size and channels of the images it models; patch_size p; num_blocks flow blocks of
    layers_per_block transformer layers each, width `hidden`, `num_heads` heads; num_classes > 0 for class
    conditioning (labels 0..num_classes-1; label num_classes means "no label"); patch_order, shift, null_class,
    final_norm, ln_eps, exact_gelu, prior_variance: the reference's options (module docstring).
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
    patch_order: str = "hwc"
    shift: str = "input"
    null_class: str = "label"
    final_norm: bool = True
    ln_eps: float = 1e-6
    exact_gelu: bool = False
    prior_variance: bool = False

    def __post_init__(self) -> None:
        PATCH_ORDERS.check(self.patch_order)
        SHIFTS.check(self.shift)
        NULL_CLASSES.check(self.null_class)
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
                                 self.num_heads, self.mlp_ratio, self.num_classes, self.shift, self.null_class,
                                 self.final_norm, self.ln_eps, self.exact_gelu, name=f"block_{k}")
                       for k in range(self.num_blocks)]
        if self.prior_variance:  # a submodule, so that methods needing no parameters run without them
            self.prior_var = PriorVariance((self.num_tokens, self.token_dim), name="prior_var")

    def prior_std(self) -> jax.Array:
        """(H, W, C): the prior's standard deviation per pixel, sqrt(prior_var) (ones without prior_variance)."""
        if not self.prior_variance:
            return jnp.ones((self.image_size, self.image_size, self.channels))
        return self.to_images(jnp.sqrt(self.prior_var())[None])[0]

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
        return patchify(x, self.patch_size, self.patch_order)

    def to_images(self, tokens: jax.Array) -> jax.Array:
        return unpatchify(tokens, self.patch_size, self.image_size, self.image_size, self.patch_order)

    def block_outputs(self, k: int, u: jax.Array, start: int | jax.Array, y: jax.Array, cache: Cache | None,
                      temperature: jax.Array | None = None) -> tuple[jax.Array, jax.Array, Cache | None]:
        """Block k's (a, b, cache) for the transformer inputs u (B, L, D) at positions start.. (block order);
        temperature (B,) or None divides the attention logits of each sequence."""
        return self.blocks[k](u, start, y, cache, temperature)

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
        z = self.to_images(tokens)
        if self.prior_variance:  # the fixed last layer z / sqrt(var) (module docstring)
            std = self.prior_std()
            z = z / std[None].astype(z.dtype)
            logdet = logdet - jnp.sum(jnp.log(std)).astype(logdet.dtype)
        return z, logdet

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
