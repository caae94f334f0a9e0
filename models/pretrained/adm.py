"""guided-diffusion's (ADM, Dhariwal & Nichol 2021) `UNetModel` and its noisy classifier `EncoderUNetModel` in Flax,
for NHWC images, from the facts of openai/guided-diffusion's guided_diffusion/unet.py and nn.py:

  - Time: sinusoidal [cos | sin] embedding of the (fractional) DDPM step index over `model_channels` (nn.py:103-121),
    then Linear(C, 4C) - SiLU - Linear(4C, 4C) (unet.py:470-474), plus `label_emb` rows for class labels (652-654).
  - ResBlock (unet.py:143-256): [GroupNorm32, SiLU, (nearest x2 | 2x2 average of h and x, resblock_updown), conv3]; the
    embedding's SiLU - Linear adds to h, or with use_scale_shift_norm gives (scale, shift), scale first, for
    GroupNorm(h) (1 + scale) + shift; then SiLU, conv3; skip identity or 1x1 conv; no rescaling.
  - AttentionBlock (unet.py:259-305): GroupNorm32, a fused qkv 1x1 Conv1d, attention with the channel order of
    QKVAttentionLegacy ("adm_legacy") or QKVAttention (use_new_attention_order: "adm"), proj_out, plus the input.
    Heads: channels // num_head_channels when that is set, else num_heads (num_heads_upsample in the decoder).
  - Downsample / Upsample without a ResBlock (unet.py:66-140): conv3 of stride 2 or 2x2 average; nearest x2, then
    conv3 when conv_resample.
  - GroupNorm32: 32 groups, eps 1e-5, computed in float32 (nn.py:17-19, 93-100); all of this network computes in
    float32 here (the reference's use_fp16 runs its torso in float16; the published weights are float32).
  - EncoderUNetModel (unet.py:683-894): the UNet's encoder and middle block, then GroupNorm32, SiLU and a pooling head:
    "attention" (AttentionPool2d, unet.py:22-52: a mean token prepended, a learned positional embedding (C, HW + 1),
    QKVAttention with num_head_channels-wide heads, c_proj, token 0) or "adaptive" (mean over positions, 1x1 conv).

Submodule names are the state-dict paths with "." before an index written "_" (`input_blocks_1_0/in_layers_2`), so
the weight mapping is mechanical (`models.pretrained.guided_diffusion`). Parameters: conv kernels HWIO, dense kernels
(in, out) (a 1x1 Conv1d's too), GroupNorm scale/bias, Embed embedding, AttentionPool2d's `positional_embedding` as
torch holds it, (C, HW + 1).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike
from fastsamplers.models.pretrained.attention import self_attention
from fastsamplers.models.pretrained.unet2d import (conv_layer, group_norm_layer, average_downsample, nearest_upsample,
                                                   timestep_embedding)

GROUPS, EPS = 32, 1e-5  # GroupNorm32 (nn.py:93-100): 32 groups, torch's default eps
# EncoderUNetModel's pooling heads (unet.py:836-872); None is the full UNetModel. The "spatial" heads of the same code
# are refused: no released classifier uses them.
POOLS = Registry.of_names("classifier pool", ("attention", "adaptive"), ordered=True,
                          unknown="unknown {kind} {name!r}; valid: {valid}")
_UNBUILT_POOLS = ("spatial", "spatial_v2")


@dataclasses.dataclass(frozen=True)
class ADMConfig:
    """The constructor arguments of guided-diffusion's `UNetModel` (and, with `pool`, its `EncoderUNetModel`), after
    script_util's create_model / create_classifier resolved the flags: `attention_resolutions` are downsampling
    factors ds (image_size // resolution), `channel_mult` numbers (0.5 in the 512x512 default). `dropout`, `dims`,
    `use_checkpoint` and `use_fp16` are not kept (inference in float32, 2-D only)."""

    image_size: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...] = (1, 2, 4, 8)
    in_channels: int = 3
    conv_resample: bool = True
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    pool: str | None = None  # None: UNetModel; a `POOLS` name: EncoderUNetModel with that head

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(int(d) for d in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if self.pool in _UNBUILT_POOLS:
            raise NotImplementedError(f"pool={self.pool!r} is not built here (no released guided-diffusion "
                                      f"classifier uses it); supported: {POOLS.valid()}")
        if self.pool is not None:
            POOLS.check(self.pool)
        if self.pool == "attention" and self.num_head_channels == -1:
            raise ValueError("pool='attention' needs num_head_channels (AttentionPool2d's head width)")
        if self.pool is not None and self.num_classes is not None:
            raise ValueError("a classifier (pool set) takes no class labels: num_classes must be None")
        if self.num_res_blocks < 1 or not self.channel_mult:
            raise ValueError(f"num_res_blocks ({self.num_res_blocks}) must be >= 1 and channel_mult non-empty")
        for c in sorted({self.channel(m) for m in self.channel_mult}):
            if c % GROUPS or c < GROUPS:
                raise ValueError(f"channel count {c} (channel_mult x model_channels) is not a multiple of "
                                 f"GroupNorm32's {GROUPS} groups")
        for c, num_heads in self._attention_widths():
            heads = self.heads(c, num_heads)
            if heads < 1 or c % heads:
                raise ValueError(f"{c} channels do not split into attention heads (num_heads={num_heads}, "
                                 f"num_head_channels={self.num_head_channels})")
        divisor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % divisor:
            raise ValueError(f"image_size {self.image_size} is not divisible by {divisor} "
                             f"(2 ** (len(channel_mult) - 1))")

    @property
    def conditional(self) -> bool:
        """Whether the network takes class labels (a `label_emb` of `num_classes` rows)."""
        return self.num_classes is not None

    def channel(self, mult: float) -> int:
        """A level's width, int(mult * model_channels) as unet.py:479 and 491 round it."""
        return int(mult * self.model_channels)

    def heads(self, channels: int, num_heads: int) -> int:
        """An AttentionBlock's head count (unet.py:275-283): channels // num_head_channels if set, else num_heads."""
        return num_heads if self.num_head_channels == -1 else channels // self.num_head_channels

    def _attention_widths(self):
        """(channels, num_heads) of every attention the network holds (the middle block's and the pool's included)."""
        last = self.channel(self.channel_mult[-1])
        widths = {(last, self.num_heads)}
        for level, mult in enumerate(self.channel_mult):
            if 2 ** level in self.attention_resolutions:
                widths.add((self.channel(mult), self.num_heads))
                if self.pool is None:
                    widths.add((self.channel(mult), self.upsample_heads))
        return sorted(widths)

    @property
    def upsample_heads(self) -> int:
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample  # unet.py:451-452


class ResBlock(nn.Module):
    """guided-diffusion's ResBlock (see the module docstring); `resample` None, "up" or "down"."""

    out_channels: int
    scale_shift: bool
    resample: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = nn.silu(group_norm_layer(GROUPS, EPS, "in_layers_0")(x))
        if self.resample is not None:  # unet.py:238-243: resample after the norm and SiLU, before the conv
            resample = nearest_upsample if self.resample == "up" else average_downsample
            h, x = resample(h), resample(x)
        h = conv_layer(self.out_channels, 3, "in_layers_2")(h)
        emb_out = nn.Dense(2 * self.out_channels if self.scale_shift else self.out_channels,
                           name="emb_layers_1")(nn.silu(emb))[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(emb_out, 2, axis=-1)  # th.chunk: scale first (unet.py:250)
            h = group_norm_layer(GROUPS, EPS, "out_layers_0")(h) * (1.0 + scale) + shift
        else:
            h = group_norm_layer(GROUPS, EPS, "out_layers_0")(h + emb_out)
        h = conv_layer(self.out_channels, 3, "out_layers_3")(nn.silu(h))
        if x.shape[-1] != self.out_channels:  # unet.py:219-226 (use_conv is never set by UNetModel: a 1x1 conv)
            x = conv_layer(self.out_channels, 1, "skip_connection")(x)
        return x + h


class AttentionBlock(nn.Module):
    """guided-diffusion's AttentionBlock: x + proj_out(attention(qkv(GroupNorm32(x)))); `layout` "adm_legacy"
    (QKVAttentionLegacy) or "adm" (QKVAttention, use_new_attention_order)."""

    heads: int
    layout: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = group_norm_layer(GROUPS, EPS, "norm")(x)
        return x + self_attention(h, nn.Dense(3 * c, name="qkv"), nn.Dense(c, name="proj_out"), self.heads,
                                  self.layout)


class _Resample(nn.Module):
    """Downsample / Upsample (unet.py:66-140) where they hold a conv: stride-2 conv3 `op`, or nearest x2 then `conv`."""

    direction: str

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        if self.direction == "down":
            return conv_layer(h.shape[-1], 3, "op", strides=2)(h)
        return conv_layer(h.shape[-1], 3, "conv")(nearest_upsample(h))


def _resample(cfg: ADMConfig, h: jax.Array, emb: jax.Array, direction: str, name: str) -> jax.Array:
    """A level change: a resampling ResBlock (resblock_updown), a conv resampler (conv_resample) or a plain one."""
    if cfg.resblock_updown:
        return ResBlock(h.shape[-1], cfg.use_scale_shift_norm, direction, name=name)(h, emb)
    if cfg.conv_resample:
        return _Resample(direction, name=name)(h)
    return average_downsample(h) if direction == "down" else nearest_upsample(h)


def _attention(cfg: ADMConfig, channels: int, num_heads: int, name: str) -> AttentionBlock:
    return AttentionBlock(cfg.heads(channels, num_heads), "adm" if cfg.use_new_attention_order else "adm_legacy",
                          name=name)


def _time_embedding(cfg: ADMConfig, timesteps: jax.Array, dtype: jnp.dtype) -> jax.Array:
    emb = timestep_embedding(timesteps, cfg.model_channels, flip_sin_to_cos=True, freq_shift=0.0)  # nn.py:103-121
    dim = 4 * cfg.model_channels
    return nn.Dense(dim, name="time_embed_2")(nn.silu(nn.Dense(dim, name="time_embed_0")(emb.astype(dtype))))


def _encoder(cfg: ADMConfig, x: jax.Array, emb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """input_blocks and middle_block (unet.py:476-556, 754-826), created in the calling module's scope. Returns the
    middle block's output and every input block's output (the decoder's skips)."""
    h = conv_layer(cfg.channel(cfg.channel_mult[0]), 3, "input_blocks_0_0")(x)
    saved, ds, index = [h], 1, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            ch = cfg.channel(mult)
            h = ResBlock(ch, cfg.use_scale_shift_norm, name=f"input_blocks_{index}_0")(h, emb)
            if ds in cfg.attention_resolutions:
                h = _attention(cfg, ch, cfg.num_heads, f"input_blocks_{index}_1")(h)
            saved.append(h)
            index += 1
        if level != len(cfg.channel_mult) - 1:
            h = _resample(cfg, h, emb, "down", f"input_blocks_{index}_0")
            saved.append(h)
            index += 1
            ds *= 2
    h = ResBlock(h.shape[-1], cfg.use_scale_shift_norm, name="middle_block_0")(h, emb)
    h = _attention(cfg, h.shape[-1], cfg.num_heads, "middle_block_1")(h)
    h = ResBlock(h.shape[-1], cfg.use_scale_shift_norm, name="middle_block_2")(h, emb)
    return h, saved


def _check_input(cfg: ADMConfig, x: jax.Array, what: str) -> None:
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
        raise ValueError(f"{what} expects NHWC images with {cfg.in_channels} channels, got shape {x.shape}")
    divisor = 2 ** (len(cfg.channel_mult) - 1)
    if x.shape[1] % divisor or x.shape[2] % divisor:
        raise ValueError(f"{what}: image size {x.shape[1]}x{x.shape[2]} is not divisible by {divisor}")


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel: (x (B, H, W, C_in), timestep (scalar or (B,)), class_labels (B,) int or None)
    -> (B, H, W, out_channels). `timestep` is the (possibly fractional) DDPM step index; with learn_sigma the
    output is [eps (C) | v (C)] (guided_diffusion.log_variance reads v). Labels are required exactly when
    `config.num_classes` is set.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cfg = ADMConfig(image_size=8, model_channels=32, out_channels=6, num_res_blocks=1,
        ...                 attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32)
        >>> x = jnp.zeros((2, 8, 8, 3))
        >>> params = jax.eval_shape(ADMUNet(cfg).init, jax.random.PRNGKey(0), x, 10.0)
        >>> jax.eval_shape(ADMUNet(cfg).apply, params, x, 10.0).shape
        (2, 8, 8, 6)
    """

    config: ADMConfig

    @nn.compact
    def __call__(self, x: jax.Array, timestep: ArrayLike, class_labels: ArrayLike | None = None) -> jax.Array:
        cfg = self.config
        _check_input(cfg, x, "ADMUNet")
        batch = x.shape[0]
        emb = _time_embedding(cfg, jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (batch,)), x.dtype)
        if cfg.conditional:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional ({cfg.num_classes} classes): pass class_labels")
            labels = jnp.broadcast_to(jnp.asarray(class_labels, jnp.int32), (batch,))
            emb = emb + nn.Embed(cfg.num_classes, emb.shape[-1], name="label_emb")(labels).astype(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional network (num_classes is None)")

        h, saved = _encoder(cfg, x, emb)
        ds, index = 2 ** (len(cfg.channel_mult) - 1), 0
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:  # unet.py:558-601
            for i in range(cfg.num_res_blocks + 1):
                ch = cfg.channel(mult)
                h = jnp.concatenate([h, saved.pop()], axis=-1)
                h = ResBlock(ch, cfg.use_scale_shift_norm, name=f"output_blocks_{index}_0")(h, emb)
                part = 1
                if ds in cfg.attention_resolutions:
                    h = _attention(cfg, ch, cfg.upsample_heads, f"output_blocks_{index}_1")(h)
                    part = 2
                if level and i == cfg.num_res_blocks:
                    h = _resample(cfg, h, emb, "up", f"output_blocks_{index}_{part}")
                    ds //= 2
                index += 1
        h = nn.silu(group_norm_layer(GROUPS, EPS, "out_0")(h))
        return conv_layer(cfg.out_channels, 3, "out_2")(h)


class ADMEncoder(nn.Module):
    """guided-diffusion's EncoderUNetModel (the noisy ImageNet classifier): (x (B, H, W, C_in), timestep (scalar or
    (B,))) -> logits (B, out_channels). `class_labels` exists for the common network signature and must be None."""

    config: ADMConfig

    @nn.compact
    def __call__(self, x: jax.Array, timestep: ArrayLike, class_labels: ArrayLike | None = None) -> jax.Array:
        cfg = self.config
        if cfg.pool is None:
            raise ValueError("ADMEncoder needs a config with a pool (the classifier head); pool=None is ADMUNet")
        if class_labels is not None:
            raise ValueError("the classifier takes no class labels (it returns logits over them)")
        _check_input(cfg, x, "ADMEncoder")
        emb = _time_embedding(cfg, jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (x.shape[0],)), x.dtype)
        h, _ = _encoder(cfg, x, emb)
        h = nn.silu(group_norm_layer(GROUPS, EPS, "out_0")(h))
        if cfg.pool == "adaptive":  # unet.py:837-843: mean over positions, then a 1x1 conv
            return conv_layer(cfg.out_channels, 1, "out_3")(jnp.mean(h, axis=(1, 2), keepdims=True))[:, 0, 0]
        return AttentionPool2d(cfg.num_head_channels, cfg.out_channels, name="out_2")(h)


class AttentionPool2d(nn.Module):
    """AttentionPool2d (unet.py:22-52): the mean token prepended to the H*W positions, a learned positional embedding
    added, QKVAttention ("adm" order) of heads `head_channels` wide, c_proj of token 0."""

    head_channels: int
    out_channels: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        b, height, width, c = h.shape
        tokens = jnp.reshape(h, (b, height * width, c))
        tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
        position = self.param("positional_embedding", nn.initializers.normal(c ** -0.5), (c, height * width + 1))
        tokens = tokens + position.T[None].astype(tokens.dtype)
        # c_proj is a per-token 1x1 conv and only token 0 is kept, so it is applied to that token alone.
        pooled = self_attention(tokens[:, None], nn.Dense(3 * c, name="qkv_proj"), lambda a: a, c // self.head_channels,
                                "adm")
        return nn.Dense(self.out_channels, name="c_proj")(pooled[:, 0, 0])
