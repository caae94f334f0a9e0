"""A small DDPM++-style UNet for NHWC images (Ho et al. 2020; Song et al. 2021, "score_sde" DDPM++)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike
from fastsamplers.models.conditioning import add_label_embedding
from fastsamplers.models.mlp import interval_input, interval_embedding, time_embedding

# DDPM++ "skip_rescale": residual sums are divided by sqrt(2) so their variance stays ~1 through deep stacks.
_SKIP_SCALE = 1.0 / math.sqrt(2.0)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> Conv3x3 -> + Dense(emb) -> GroupNorm -> SiLU -> Conv3x3 (zero init), 1x1 skip."""

    out_channels: int
    num_groups: int

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = nn.Conv(self.out_channels, (3, 3))(nn.silu(nn.GroupNorm(self.num_groups)(x)))
        h = h + nn.Dense(self.out_channels)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(self.num_groups)(h))
        # Zero init (DDPM++'s init_scale=0): each block starts as its skip path, so a deep net starts shallow.
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1))(x)
        return (x + h) * _SKIP_SCALE


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions of each image, with a zero-initialised output projection."""

    num_heads: int
    num_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = jnp.reshape(nn.GroupNorm(self.num_groups)(x), (b, height * width, c))
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros)(h)
        return (x + jnp.reshape(h, x.shape)) * _SKIP_SCALE


class UNet(nn.Module):
    """x (B, H, W, C), t (scalar or (B,)) [, labels (B,)] -> prediction (B, H, W, C); a DDPM++-style UNet.

    Levels i = 0 .. len(channel_mult)-1 have `channels * channel_mult[i]` features and `num_res_blocks` residual
    blocks; each level but the last halves the size with a stride-2 conv. Self-attention follows the blocks whose
    feature map is `s` x `s` with `s` (the height) in `attention_resolutions`, and sits in the middle block.
    Placement follows the size seen at call time: params initialised at one size run at another only if that size
    asks for no attention layer the first did not create (flax raises a missing-parameter error otherwise); the
    layers it does not ask for are skipped.
    The decoder concatenates the encoder's activations (DDPM's skip connections); H and W must be divisible by
    2 ** (len(channel_mult) - 1). `time_scale` multiplies t before the sinusoidal embedding.
    `num_classes` > 0 makes it class-conditional: a learned embedding of the labels (0..num_classes-1; num_classes
    is the null label, also used when labels are None) is added to the time embedding (`models.conditioning`).
    `second_time=True` makes it a flow map's network F(x, t, s), called with s (`MLP`'s `second_time`): the
    interval t - s has an embedding of its own ("interval_embed_0/1", the last zero-initialised) added to the time
    embedding; every other parameter is the one-time UNet's.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1)
        >>> x = jnp.zeros((2, 16, 16, 3))
        >>> params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, 0.5)  # shapes only; net.init builds them
        >>> jax.eval_shape(net.apply, params, x, jnp.zeros(2)).shape
        (2, 16, 16, 3)
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 4
    num_groups: int = 8
    embed_dim: int | None = None
    time_scale: float = 1000.0
    num_classes: int = 0
    second_time: bool = False

    def __post_init__(self) -> None:
        if self.channels % self.num_groups:
            raise ValueError(f"UNet: num_groups={self.num_groups} must divide channels={self.channels}")
        widths = [self.channels * m for m in self.channel_mult]
        if any(w % self.num_heads for w in widths):
            raise ValueError(f"UNet: num_heads={self.num_heads} must divide every level's channels {widths}")
        super().__post_init__()

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images (B, H, W, C); got shape {x.shape}")
        divisor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % divisor or x.shape[2] % divisor:
            raise ValueError(
                f"UNet: image size {x.shape[1]}x{x.shape[2]} is not divisible by {divisor} "
                f"(2 ** (len(channel_mult) - 1) for channel_mult={self.channel_mult})"
            )

    @nn.compact
    def __call__(self, x: jax.Array, t: ArrayLike, labels: ArrayLike | None = None,
                 s: ArrayLike | None = None) -> jax.Array:
        self._check(x)
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        embed_dim = self.embed_dim or 4 * self.channels
        # DDPM: sinusoidal features of width `channels`, then a 2-layer MLP to the embedding width.
        emb = time_embedding(self.time_scale * t, self.channels).astype(x.dtype)
        emb = nn.Dense(embed_dim, name="time_embed_0")(emb)
        emb = nn.Dense(embed_dim, name="time_embed_1")(nn.silu(emb))
        interval = interval_input(self, t, s)
        if interval is not None:
            emb = emb + interval_embedding(self, interval, self.channels, embed_dim, self.time_scale).astype(x.dtype)
        emb = add_label_embedding(self, emb, labels, self.num_classes)

        def res(h, mult, name):
            return ResBlock(self.channels * mult, self.num_groups, name=name)(h, emb)

        def maybe_attend(h, name):
            if h.shape[1] in self.attention_resolutions:
                h = AttentionBlock(self.num_heads, self.num_groups, name=name)(h)
            return h

        h = nn.Conv(self.channels, (3, 3), name="conv_in")(x)
        skips = [h]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = maybe_attend(res(h, mult, f"down_{level}_res_{i}"), f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}_downsample")(h)
                skips.append(h)

        h = res(h, self.channel_mult[-1], "mid_res_0")
        h = AttentionBlock(self.num_heads, self.num_groups, name="mid_attn")(h)
        h = res(h, self.channel_mult[-1], "mid_res_1")

        for level in reversed(range(len(self.channel_mult))):
            mult = self.channel_mult[level]
            # One more block than the encoder: it also consumes the activation saved before the downsample.
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = maybe_attend(res(h, mult, f"up_{level}_res_{i}"), f"up_{level}_attn_{i}")
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
                h = nn.Conv(h.shape[-1], (3, 3), name=f"up_{level}_upsample")(h)

        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_out")(h))
        h = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, name="conv_out")(h)
        return h.astype(x.dtype)
