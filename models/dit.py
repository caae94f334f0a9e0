"""A Diffusion Transformer with adaLN-Zero blocks for NHWC images (Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike
from fastsamplers.models.conditioning import add_label_embedding
from fastsamplers.models.mlp import time_embedding

# DiT's Linear layers use Xavier-uniform init (Peebles & Xie 2023, sec. 3.2 and their initialize_weights).
_dense_init = nn.initializers.xavier_uniform()


def sincos_1d(positions: jax.Array, dim: int) -> jax.Array:
    """(n,) positions -> (n, dim) features [sin(p * w_k), cos(p * w_k)], w_k = 10000 ** (-k / (dim/2))."""
    omega = 1.0 / 10_000.0 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
    args = positions.astype(jnp.float32)[:, None] * omega[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> jax.Array:
    """Fixed 2D positional embedding (grid_h * grid_w, dim), row-major over patches (MAE, He et al. 2022):
    the first dim/2 channels encode the row index, the last dim/2 the column index."""
    rows = jnp.repeat(jnp.arange(grid_h), grid_w)
    cols = jnp.tile(jnp.arange(grid_w), grid_h)
    return jnp.concatenate([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x (B, N, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: the conditioning regresses shift/scale/gate of both sublayers; the zero-init
    gates make the block the identity at init."""

    hidden: int
    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        mod = nn.Dense(6 * self.hidden, kernel_init=nn.initializers.zeros)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = modulate(nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(x), shift_msa, scale_msa)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, kernel_init=_dense_init,
                                            out_kernel_init=_dense_init)(h)
        x = x + gate_msa[:, None, :] * h
        h = modulate(nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(x), shift_mlp, scale_mlp)
        h = nn.Dense(int(self.hidden * self.mlp_ratio), kernel_init=_dense_init)(h)
        h = nn.Dense(self.hidden, kernel_init=_dense_init)(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None, :] * h


class DiT(nn.Module):
    """x (B, H, W, C), t (scalar or (B,)) [, labels (B,)] -> prediction (B, H, W, C); a DiT (Peebles & Xie 2023).

    Patches of `patch_size` x `patch_size` are embedded by a strided conv; the fixed 2D sin-cos positional
    embedding is computed from the (H/p, W/p) grid at call time, so the same params run at any size divisible by
    `patch_size`. `time_scale` multiplies t before the sinusoidal time embedding (DiT embeds t in [0, 1000)).
    `num_classes` > 0 makes it class-conditional: DiT's LabelEmbedder, a learned table of num_classes + 1 rows (the
    last the null label, also used when labels are None), added to the time embedding (`models.conditioning`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = DiT(patch_size=2, hidden=32, depth=2)
        >>> params = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), 0.5)  # shapes only
        >>> jax.eval_shape(net.apply, params, jnp.zeros((2, 32, 32, 3)), jnp.zeros(2)).shape  # same params, 32 px
        (2, 32, 32, 3)
    """

    patch_size: int = 2
    hidden: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    time_scale: float = 1000.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.hidden % 4:
            raise ValueError(f"DiT: hidden={self.hidden} must be divisible by 4 (2D sin-cos positional embedding)")
        if self.hidden % self.num_heads:
            raise ValueError(f"DiT: num_heads={self.num_heads} must divide hidden={self.hidden}")
        super().__post_init__()

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"DiT expects NHWC images (B, H, W, C); got shape {x.shape}")
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"DiT: image size {x.shape[1]}x{x.shape[2]} is not divisible by patch_size={p}")

    @nn.compact
    def __call__(self, x: jax.Array, t: ArrayLike, labels: ArrayLike | None = None) -> jax.Array:
        self._check(x)
        b, height, width, channels = x.shape
        p = self.patch_size
        grid_h, grid_w = height // p, width // p
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))

        h = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID", kernel_init=_dense_init,
                    name="patch_embed")(x)
        h = jnp.reshape(h, (b, grid_h * grid_w, self.hidden))
        h = h + sincos_2d(grid_h, grid_w, self.hidden).astype(h.dtype)[None]

        # DiT's TimestepEmbedder: 256 sinusoidal frequencies -> Dense -> SiLU -> Dense.
        c = time_embedding(self.time_scale * t, 256).astype(x.dtype)
        init = nn.initializers.normal(0.02)
        c = nn.Dense(self.hidden, kernel_init=init, name="time_embed_0")(c)
        c = nn.Dense(self.hidden, kernel_init=init, name="time_embed_1")(nn.silu(c))
        c = add_label_embedding(self, c, labels, self.num_classes, embedding_init=init)

        for i in range(self.depth):
            h = DiTBlock(self.hidden, self.num_heads, self.mlp_ratio, name=f"block_{i}")(h, c)

        shift, scale = jnp.split(nn.Dense(2 * self.hidden, kernel_init=nn.initializers.zeros,
                                          name="final_modulation")(nn.silu(c)), 2, axis=-1)
        h = modulate(nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(h), shift, scale)
        h = nn.Dense(p * p * channels, kernel_init=nn.initializers.zeros, name="final_linear")(h)
        # Unpatchify: token (i, j) holds its p x p x C pixels in row-major order.
        h = jnp.reshape(h, (b, grid_h, grid_w, p, p, channels))
        h = jnp.transpose(h, (0, 1, 3, 2, 4, 5))
        return jnp.reshape(h, (b, height, width, channels)).astype(x.dtype)
