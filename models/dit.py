"""A Diffusion Transformer with adaLN-Zero blocks for NHWC images (Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def sincos_2d(grid_h: int, grid_w: int, dim: int, columns_first: bool = False,
              base_size: int | None = None) -> jax.Array:
    """Fixed 2D positional embedding (grid_h * grid_w, dim), row-major over patches (MAE, He et al. 2022): one half
    of the channels encodes the row index, the other the column index, each as `sincos_1d`.

    Rows first by default; `columns_first` puts the column half first, as DiT's get_2d_sincos_pos_embed does
    (np.meshgrid(grid_w, grid_h) and grid[0] first, DiT/models.py:279-300; diffusers' embeddings.py likewise).
    `base_size` (diffusers' PatchEmbed) divides the positions by grid / base_size, so that a grid of another size
    spans the same range; None leaves them integers (DiT recomputes integer positions for any grid). Computed in
    float64 on the host (both references build it in float64 numpy or torch) and returned as float32.
    """
    rows, cols = np.arange(grid_h, dtype=np.float32), np.arange(grid_w, dtype=np.float32)
    if base_size is not None:  # diffusers: arange(g) / (g / base_size), in float32
        rows, cols = rows / np.float32(grid_h / base_size), cols / np.float32(grid_w / base_size)
    omega = 1.0 / 10_000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def embed(positions):
        args = positions.astype(np.float64)[:, None] * omega[None, :]
        return np.concatenate([np.sin(args), np.cos(args)], axis=-1)

    row_emb, col_emb = embed(np.repeat(rows, grid_w)), embed(np.tile(cols, grid_h))
    halves = [col_emb, row_emb] if columns_first else [row_emb, col_emb]
    return jnp.asarray(np.concatenate(halves, axis=-1).astype(np.float32))


def _layer_norm(eps: float) -> nn.LayerNorm:
    # No affine (DiT/models.py:110-112); use_fast_variance=False: E[(x - mean)^2], as torch computes it.
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, use_fast_variance=False)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x (B, N, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: the conditioning regresses shift/scale/gate of both sublayers; the zero-init
    gates make the block the identity at init."""

    hidden: int
    num_heads: int
    mlp_ratio: float
    mlp_norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        mod = nn.Dense(6 * self.hidden, kernel_init=nn.initializers.zeros)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = modulate(_layer_norm(1e-6)(x), shift_msa, scale_msa)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, kernel_init=_dense_init,
                                            out_kernel_init=_dense_init)(h)
        x = x + gate_msa[:, None, :] * h
        h = modulate(_layer_norm(self.mlp_norm_eps)(x), shift_mlp, scale_mlp)
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

    The published networks' options (`models.pretrained.latent` sets them): `out_channels` (DiT's learn_sigma: 2C, the
    eps and the variance halves), `columns_first` and `pos_base_size` (see `sincos_2d`), `flip_sin_to_cos` and
    `freq_shift` of the time embedding (`models.mlp.time_embedding`; DiT: [cos, sin], shift 0; diffusers' DiT
    shift 1), and `mlp_norm_eps`, the epsilon of the LayerNorm before the MLP (DiT: 1e-6; diffusers' norm3 uses its
    config's norm_eps, 1e-5 by default). The attention is flax's MultiHeadDotProductAttention (query/key/value/out
    kernels (D, heads, d) / (heads, d, D)): a fused qkv of the references splits into it at load time.

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
    out_channels: int | None = None
    columns_first: bool = False
    pos_base_size: int | None = None
    flip_sin_to_cos: bool = False
    freq_shift: float = 0.0
    mlp_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.hidden % 4:
            raise ValueError(f"DiT: hidden={self.hidden} must be divisible by 4 (2D sin-cos positional embedding)")
        if self.hidden % self.num_heads:
            raise ValueError(f"DiT: num_heads={self.num_heads} must divide hidden={self.hidden}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"DiT: out_channels={self.out_channels} must be positive (or None: the input's)")
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
        h = h + sincos_2d(grid_h, grid_w, self.hidden, self.columns_first, self.pos_base_size).astype(h.dtype)[None]

        # DiT's TimestepEmbedder: 256 sinusoidal frequencies -> Dense -> SiLU -> Dense.
        c = time_embedding(self.time_scale * t, 256, flip_sin_to_cos=self.flip_sin_to_cos,
                           freq_shift=self.freq_shift).astype(x.dtype)
        init = nn.initializers.normal(0.02)
        c = nn.Dense(self.hidden, kernel_init=init, name="time_embed_0")(c)
        c = nn.Dense(self.hidden, kernel_init=init, name="time_embed_1")(nn.silu(c))
        c = add_label_embedding(self, c, labels, self.num_classes, embedding_init=init)

        for i in range(self.depth):
            h = DiTBlock(self.hidden, self.num_heads, self.mlp_ratio, self.mlp_norm_eps, name=f"block_{i}")(h, c)

        shift, scale = jnp.split(nn.Dense(2 * self.hidden, kernel_init=nn.initializers.zeros,
                                          name="final_modulation")(nn.silu(c)), 2, axis=-1)
        h = modulate(_layer_norm(1e-6)(h), shift, scale)
        out = channels if self.out_channels is None else self.out_channels
        h = nn.Dense(p * p * out, kernel_init=nn.initializers.zeros, name="final_linear")(h)
        # Unpatchify: token (i, j) holds its p x p x C pixels in row-major order, channels fastest (DiT's unpatchify,
        # DiT/models.py:218-231).
        h = jnp.reshape(h, (b, grid_h, grid_w, p, p, out))
        h = jnp.transpose(h, (0, 1, 3, 2, 4, 5))
        return jnp.reshape(h, (b, height, width, out)).astype(x.dtype)
