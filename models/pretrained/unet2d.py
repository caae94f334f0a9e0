"""diffusers' `UNet2DModel` in Flax, for NHWC images: the network that published DDPM and NCSN++ checkpoints use.

The module reproduces diffusers' `UNet2DModel` (diffusers/models/unets/unet_2d.py and the blocks it builds) for the
block types in `DOWN_BLOCKS` / `UP_BLOCKS` and `UNetMidBlock2D`, from the facts of that code:

  - ResnetBlock2D: GroupNorm -> act -> [resample x and h] -> conv3x3 -> + Dense(act(temb)) ("default") or
    GroupNorm(h) * (1 + scale) + shift ("scale_shift") -> act -> conv3x3 -> (shortcut(x) + h) / output_scale_factor.
  - Attention (diffusers' `Attention` built with `_from_deprecated_attn_block`): optional GroupNorm, q/k/v Dense over
    the H*W positions, softmax(q k^T / sqrt(head_dim)) in float32, output Dense, + residual, / rescale_output_factor.
  - Skip blocks (NCSN++): resnets scale their sum by 1/sqrt(2), resample with the FIR kernel (1, 3, 3, 1) (StyleGAN2's
    upfirdn2d), and carry a 3-channel `skip_sample` pyramid: down, the FIR-downsampled input joins through a 1x1 conv;
    up, GroupNorm -> SiLU -> conv3x3 of each level is added to the FIR-upsampled pyramid, which the model adds to its
    output.
  - "fourier" time embedding: [sin, cos](2 pi log(t) W), and the output is divided by t (t is NCSN++'s sigma).

Group counts, epsilons and activations follow diffusers exactly, quirks included (the Skip blocks' attention norms
use 32 groups; AttnSkipUpBlock2D's first norm uses min(a + b // 4, 32) groups; TimestepEmbedding, the output head
and the Skip blocks' pyramid use SiLU whatever `act_fn` says).

`UNet2DConfig.flavor = "score_sde"` (not a diffusers option; `models.pretrained.score_sde` sets it) builds the blocks
as score_sde's NCSN++ / DDPM++ code does where it differs from diffusers: every GroupNorm has min(C // 4, 32) groups
(diffusers: 32 in the Skip blocks' attention, min(a + b // 4, 32) in AttnSkipUpBlock2D, norm_num_groups elsewhere;
the rules agree for C >= 128); the plain blocks divide residual sums by sqrt(2) (skip_rescale); AttnUpBlock2D
attends once, after its last resnet; the resampling resnets of ResnetDownsample/Upsample and Attn blocks always have
a shortcut conv; the positional embedding's frequencies are score_sde's exp(-i log(10000) / (dim // 2 - 1)).

Submodule names are diffusers' state-dict paths with "." before a list index written "_" (`down_blocks_0/resnets_1/
conv1`), so the weight mapping is mechanical (`models.pretrained.diffusers`). Parameters: Conv kernels HWIO, Dense
kernels (in, out), GroupNorm scale/bias, Embed embedding, and the Fourier weights as `time_proj/weight`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike
from fastsamplers.models.mlp import time_embedding

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D", "ResnetDownsampleBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "ResnetUpsampleBlock2D")
MID_BLOCKS = ("UNetMidBlock2D", None)
TIME_EMBEDDINGS = ("positional", "fourier")
TIME_SCALE_SHIFTS = ("default", "scale_shift")
RESAMPLE_TYPES = ("conv", "resnet")
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": nn.relu}
FLAVORS = ("diffusers", "score_sde")
FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)  # the one FIR kernel of diffusers' Skip blocks and ResnetBlock2D(kernel="fir")
_SKIP_SCALE = math.sqrt(2.0)  # Skip blocks' output_scale_factor


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """The architecture keys of diffusers' `UNet2DModel` config.json (same names, same defaults), validated.

    `sample_size` is (H, W) (diffusers allows an int: both). `dropout` is not kept (inference only).
    `flavor` is ours, not diffusers' (see the module docstring).
    """

    sample_size: tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: float = 0.0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int | None = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    flavor: str = "diffusers"

    def __post_init__(self) -> None:
        tuples = ("down_block_types", "up_block_types", "block_out_channels")
        for key in tuples:
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if isinstance(self.sample_size, int):
            object.__setattr__(self, "sample_size", (self.sample_size, self.sample_size))
        elif self.sample_size is not None:
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        self._validate()

    def _validate(self):
        def choice(key, valid, value=None, error=NotImplementedError):
            value = getattr(self, key) if value is None else value
            if value not in valid:
                raise error(f"{key}={value!r} is not supported; supported values: {list(valid)}")

        # "UNetRes" prefixes are aliases in diffusers' get_down_block / get_up_block.
        object.__setattr__(self, "down_block_types", tuple(_strip(t) for t in self.down_block_types))
        object.__setattr__(self, "up_block_types", tuple(_strip(t) for t in self.up_block_types))
        for t in self.down_block_types:
            choice("down_block_types", DOWN_BLOCKS, t)
        for t in self.up_block_types:
            choice("up_block_types", UP_BLOCKS, t)
        if self.mid_block_type not in MID_BLOCKS:
            raise NotImplementedError(f"mid_block_type={self.mid_block_type!r} is not supported; supported values: "
                                      f"{list(MID_BLOCKS)}")
        if self.time_embedding_type == "learned":
            raise NotImplementedError("time_embedding_type='learned' is not supported: it is a table lookup of integer "
                                      "steps, which the framework's continuous time cannot drive; supported values: "
                                      f"{list(TIME_EMBEDDINGS)}")
        choice("time_embedding_type", TIME_EMBEDDINGS)
        choice("resnet_time_scale_shift", TIME_SCALE_SHIFTS)
        choice("act_fn", ACTIVATIONS)
        choice("downsample_type", RESAMPLE_TYPES)
        choice("upsample_type", RESAMPLE_TYPES)
        choice("flavor", FLAVORS, error=ValueError)
        if self.class_embed_type is not None:
            raise NotImplementedError(
                f"class_embed_type={self.class_embed_type!r} is not supported: 'timestep' and 'identity' take float "
                "class vectors rather than class ids; supported: None (with num_class_embeds: a label embedding)")
        n = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == n) or n == 0:
            raise ValueError(f"down_block_types ({len(self.down_block_types)}), up_block_types "
                             f"({len(self.up_block_types)}) and block_out_channels ({n}) must have one entry per level")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        uses_skip = any("Skip" in t for t in self.down_block_types + self.up_block_types)
        if uses_skip and (self.in_channels != 3 or self.out_channels != 3):
            raise ValueError("Skip blocks carry a 3-channel image pyramid (diffusers builds their skip_conv with 3 "
                             f"channels); in_channels={self.in_channels}, out_channels={self.out_channels}")
        plain = [t for t in self.down_block_types + self.up_block_types if "Skip" not in t]
        if self.norm_num_groups is None and plain and self.flavor == "diffusers":
            raise ValueError(f"norm_num_groups=None is only valid with Skip blocks; {plain[0]} needs a group count")
        head_dim = self.attention_head_dim
        if head_dim is not None and any(c % head_dim for c in self.block_out_channels):
            raise ValueError(f"attention_head_dim={head_dim} must divide every block_out_channels entry "
                             f"{list(self.block_out_channels)}")
        if self.sample_size is not None:
            divisor = 2 ** (n - 1)
            if self.sample_size[0] % divisor or self.sample_size[1] % divisor:
                raise ValueError(f"sample_size={self.sample_size} must be divisible by {divisor} "
                                 f"(2 ** (len(block_out_channels) - 1))")

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def conditional(self) -> bool:
        """Whether the network takes class labels (a label embedding of `num_class_embeds` rows)."""
        return self.num_class_embeds is not None


def _strip(block_type):
    return block_type[7:] if isinstance(block_type, str) and block_type.startswith("UNetRes") else block_type


def quarter_groups(channels: int) -> int:
    return min(channels // 4, 32)


# --- resampling ------------------------------------------------------------------------------------------------------

def _fir_kernel_2d(kernel_1d, gain):
    k = np.asarray(kernel_1d, dtype=np.float64)
    k = np.outer(k, k)
    return k / k.sum() * gain


def _depthwise(x, kernel_2d, *, lhs_dilation, strides, padding):
    """Convolution (not correlation: the kernel is flipped, as upfirdn2d does) of each channel of NHWC x."""
    c = x.shape[-1]
    k = jnp.asarray(kernel_2d[::-1, ::-1], x.dtype)
    k = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # HWIO with I = 1, O = C: one filter per channel
    return jax.lax.conv_general_dilated(x, k, window_strides=strides, padding=padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def fir_upsample(x: jax.Array, kernel_1d: Sequence[float] = FIR_KERNEL) -> jax.Array:
    """2x FIR upsampling of NHWC x (StyleGAN2's upsample_2d, diffusers' FirUpsample2D without conv): a zero after
    each pixel, padding ((p + 1) // 2 + 1, p // 2) with p = len(kernel) - 2, convolution with outer(k, k) / sum * 4."""
    p = len(kernel_1d) - 2
    lo, hi = (p + 1) // 2 + 1, p // 2
    # lhs_dilation inserts one zero between pixels; the zero after the last one is one more high pad.
    return _depthwise(x, _fir_kernel_2d(kernel_1d, 4.0), lhs_dilation=(2, 2), strides=(1, 1),
                      padding=((lo, hi + 1), (lo, hi + 1)))


def fir_downsample(x: jax.Array, kernel_1d: Sequence[float] = FIR_KERNEL,
                   padding: tuple[int, int] | None = None) -> jax.Array:
    """2x FIR downsampling of NHWC x (StyleGAN2's downsample_2d): pad ((p + 1) // 2, p // 2) with
    p = len(kernel) - 2 (or `padding`, (low, high) on both axes), convolve with outer(k, k) / sum, keep every other
    pixel."""
    p = len(kernel_1d) - 2
    lo, hi = ((p + 1) // 2, p // 2) if padding is None else padding
    return _depthwise(x, _fir_kernel_2d(kernel_1d, 1.0), lhs_dilation=(1, 1), strides=(2, 2),
                      padding=((lo, hi), (lo, hi)))


def nearest_upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def average_downsample(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return jnp.mean(jnp.reshape(x, (b, h // 2, 2, w // 2, 2, c)), axis=(2, 4))


def group_norm_layer(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # use_fast_variance=False: E[(x - mean)^2], as torch computes it (E[x^2] - mean^2 loses float32 digits).
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def conv_layer(features: int, kernel: int, name: str, padding: int | None = None,
               strides: int = 1) -> nn.Conv:
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                   name=name)


# --- layers ----------------------------------------------------------------------------------------------------------

class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (see the module docstring). `resample`: None, "up"/"down" (nearest / 2x2 average,
    diffusers' kernel=None) or "fir_up"/"fir_down" (FIR, kernel="fir"). temb None: a block built with
    temb_channels=None (AutoencoderKL's), which has no time projection."""

    out_channels: int
    groups: int
    groups_out: int
    eps: float
    act: str
    time_scale_shift: str
    output_scale_factor: float = 1.0
    resample: str | None = None
    use_in_shortcut: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
        act = ACTIVATIONS[self.act]
        h = act(group_norm_layer(self.groups, self.eps, "norm1")(x))
        resample = {None: None, "up": nearest_upsample, "down": average_downsample, "fir_up": fir_upsample,
                    "fir_down": fir_downsample}[self.resample]
        if resample is not None:
            x, h = resample(x), resample(h)
        h = conv_layer(self.out_channels, 3, "conv1")(h)
        width = self.out_channels * (2 if self.time_scale_shift == "scale_shift" else 1)
        if temb is None:  # temb_channels=None (the VAE's blocks): no time projection
            h = group_norm_layer(self.groups_out, self.eps, "norm2")(h)
        elif self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(nn.Dense(width, name="time_emb_proj")(act(temb))[:, None, None, :], 2, axis=-1)
            h = group_norm_layer(self.groups_out, self.eps, "norm2")(h) * (1.0 + scale) + shift
        else:
            t = nn.Dense(width, name="time_emb_proj")(act(temb))[:, None, None, :]
            h = group_norm_layer(self.groups_out, self.eps, "norm2")(h + t)
        h = conv_layer(self.out_channels, 3, "conv2")(act(h))
        shortcut = x.shape[-1] != self.out_channels if self.use_in_shortcut is None else self.use_in_shortcut
        if shortcut:
            x = conv_layer(self.out_channels, 1, "conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """Self-attention over the H*W positions of NHWC x (diffusers' Attention as its UNet blocks build it)."""

    heads: int
    groups: int | None
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = x if self.groups is None else group_norm_layer(self.groups, self.eps, "group_norm")(x)
        h = jnp.reshape(h, (b, height * width, c))
        d = c // self.heads

        def project(name):
            return jnp.reshape(nn.Dense(c, name=name)(h), (b, height * width, self.heads, d))

        q, k, v = project("to_q"), project("to_k"), project("to_v")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # upcast_softmax
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = nn.Dense(c, name="to_out_0")(jnp.reshape(out, (b, height * width, c)))
        return (jnp.reshape(out, x.shape) + x) / self.rescale_output_factor


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0, flavor: str = "diffusers") -> jax.Array:
    """diffusers' get_timestep_embedding: (B,) float timesteps -> (B, dim) [sin, cos] (or [cos, sin] if flipped),
    `models.mlp.time_embedding` with the frequencies formed as the flavor's reference code forms them ("diffusers":
    torch's; "score_sde"; "edm": EDM's PositionalEmbedding, freq_shift its endpoint)."""
    return time_embedding(timesteps, dim, max_period, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift,
                          frequencies="torch" if flavor == "diffusers" else flavor)


# --- blocks ----------------------------------------------------------------------------------------------------------

def _groups(cfg, channels, diffusers_groups):
    """A GroupNorm's group count: diffusers' value, or score_sde's min(C // 4, 32) in the "score_sde" flavor."""
    return quarter_groups(channels) if cfg.flavor == "score_sde" else diffusers_groups


def _resnet_options(cfg, skip):
    # Residual sums are divided by sqrt(2) in the Skip blocks, and in every block of the "score_sde" flavor
    # (score_sde's skip_rescale); diffusers' plain blocks divide by 1.
    scale = _SKIP_SCALE if skip or cfg.flavor == "score_sde" else 1.0
    return dict(eps=cfg.norm_eps, act=cfg.act_fn, time_scale_shift=cfg.resnet_time_scale_shift,
                output_scale_factor=scale)


class DownBlock(nn.Module):
    """One of `DOWN_BLOCKS`. Returns (h, the activations it saves for the decoder, skip_sample)."""

    config: UNet2DConfig
    kind: str
    in_channels: int
    out_channels: int
    add_downsample: bool

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array,
                 skip_sample: jax.Array) -> tuple[jax.Array, list[jax.Array], jax.Array]:
        cfg, out = self.config, self.out_channels
        skip = "Skip" in self.kind
        resnet = _resnet_options(cfg, skip)
        attn_groups = _groups(cfg, out, 32 if skip else cfg.norm_num_groups)
        saved = []
        for i in range(cfg.layers_per_block):
            c_in = self.in_channels if i == 0 else out
            if skip:
                groups = (quarter_groups(c_in), quarter_groups(out))
            else:
                groups = (_groups(cfg, c_in, cfg.norm_num_groups), _groups(cfg, out, cfg.norm_num_groups))
            h = ResnetBlock2D(out, *groups, **resnet, name=f"resnets_{i}")(h, temb)
            if self.kind in ("AttnDownBlock2D", "AttnSkipDownBlock2D"):
                h = Attention(out // (cfg.attention_head_dim or out), attn_groups, cfg.norm_eps,
                              resnet["output_scale_factor"], name=f"attentions_{i}")(h)
            saved.append(h)
        if not self.add_downsample:
            return h, saved, skip_sample
        g = quarter_groups(out) if skip else _groups(cfg, out, cfg.norm_num_groups)
        if skip:
            h = ResnetBlock2D(out, g, g, **resnet, resample="fir_down", use_in_shortcut=True, name="resnet_down")(
                h, temb)
            skip_sample = fir_downsample(skip_sample)
            h = conv_layer(out, 1, "skip_conv")(skip_sample) + h
        elif self.kind == "ResnetDownsampleBlock2D" or (self.kind == "AttnDownBlock2D"
                                                        and cfg.downsample_type == "resnet"):
            # score_sde's BigGAN down-resnet always has a shortcut conv; diffusers' only if the width changes.
            shortcut = True if cfg.flavor == "score_sde" else None
            h = ResnetBlock2D(out, g, g, **resnet, resample="down", use_in_shortcut=shortcut,
                              name="downsamplers_0")(h, temb)
        else:  # Downsample2D(use_conv=True): padding 0 pads (0, 1) bottom/right first
            h = _DownsampleConv(out, cfg.downsample_padding, name="downsamplers_0")(h)
        saved.append(h)
        return h, saved, skip_sample


class _DownsampleConv(nn.Module):
    """Downsample2D(use_conv=True)'s stride-2 conv3x3 (named `conv`, as diffusers' name="op" block stores it)."""

    features: int
    padding: int

    @nn.compact
    def __call__(self, h):
        if self.padding == 0:  # diffusers pads (0, 1) at the bottom and right, then convolves unpadded
            h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv_layer(self.features, 3, "conv", padding=self.padding, strides=2)(h)


class UpsampleConv(nn.Module):
    """Upsample2D(use_conv=True): nearest 2x, then conv3x3 (named `conv`)."""

    features: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return conv_layer(self.features, 3, "conv")(nearest_upsample(h))


class UpBlock(nn.Module):
    """One of `UP_BLOCKS`; consumes `layers_per_block + 1` saved activations. Returns (h, skip_sample)."""

    config: UNet2DConfig
    kind: str
    in_channels: int
    prev_output_channels: int
    out_channels: int
    add_upsample: bool

    @nn.compact
    def __call__(self, h: jax.Array, saved: list[jax.Array], temb: jax.Array,
                 skip_sample: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        cfg, out = self.config, self.out_channels
        skip = "Skip" in self.kind
        resnet = _resnet_options(cfg, skip)
        scale = resnet["output_scale_factor"]
        heads = out // (cfg.attention_head_dim or out)
        # AttnSkipUpBlock2D, and AttnUpBlock2D in the "score_sde" flavor, attend once, after the last resnet.
        attend_once = self.kind == "AttnSkipUpBlock2D" or (self.kind == "AttnUpBlock2D" and cfg.flavor == "score_sde")
        n = cfg.layers_per_block + 1
        for i in range(n):
            res_skip = self.in_channels if i == n - 1 else out
            res_in = self.prev_output_channels if i == 0 else out
            if self.kind == "SkipUpBlock2D":
                groups = (quarter_groups(res_in + res_skip), quarter_groups(out))
            elif self.kind == "AttnSkipUpBlock2D":  # diffusers computes min(res_in + res_skip // 4, 32) here
                groups = (_groups(cfg, res_in + res_skip, min(res_in + res_skip // 4, 32)), quarter_groups(out))
            else:
                groups = (_groups(cfg, res_in + res_skip, cfg.norm_num_groups), _groups(cfg, out, cfg.norm_num_groups))
            h = jnp.concatenate([h, saved.pop()], axis=-1)
            h = ResnetBlock2D(out, *groups, **resnet, name=f"resnets_{i}")(h, temb)
            if self.kind == "AttnUpBlock2D" and not attend_once:
                h = Attention(heads, cfg.norm_num_groups, cfg.norm_eps, scale, name=f"attentions_{i}")(h)
        if attend_once:
            groups = _groups(cfg, out, 32 if skip else cfg.norm_num_groups)
            h = Attention(heads, groups, cfg.norm_eps, scale, name="attentions_0")(h)
        if skip:
            skip_sample = None if skip_sample is None else fir_upsample(skip_sample)
            if self.add_upsample:
                g = quarter_groups(out)
                pyramid = conv_layer(3, 3, "skip_conv")(nn.silu(group_norm_layer(g, cfg.norm_eps, "skip_norm")(h)))
                skip_sample = pyramid if skip_sample is None else skip_sample + pyramid
                h = ResnetBlock2D(out, g, g, **resnet, resample="fir_up", use_in_shortcut=True, name="resnet_up")(
                    h, temb)
            return h, skip_sample
        if self.add_upsample:
            if self.kind == "ResnetUpsampleBlock2D" or (self.kind == "AttnUpBlock2D"
                                                        and cfg.upsample_type == "resnet"):
                g = _groups(cfg, out, cfg.norm_num_groups)
                shortcut = True if cfg.flavor == "score_sde" else None
                h = ResnetBlock2D(out, g, g, **resnet, resample="up", use_in_shortcut=shortcut,
                                  name="upsamplers_0")(h, temb)
            else:
                h = UpsampleConv(out, name="upsamplers_0")(h)
        return h, skip_sample


class MidBlock(nn.Module):
    """UNetMidBlock2D: resnet, [attention], resnet at the lowest resolution."""

    config: UNet2DConfig

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
        cfg = self.config
        c = cfg.block_out_channels[-1]
        groups = cfg.norm_num_groups if cfg.norm_num_groups is not None else quarter_groups(c)
        attn_groups = cfg.attn_norm_num_groups
        if attn_groups is None:  # diffusers: a norm only with the "default" shift
            attn_groups = groups if cfg.resnet_time_scale_shift == "default" else None
        resnet: dict[str, Any] = dict(groups=groups, groups_out=groups, eps=cfg.norm_eps, act=cfg.act_fn,
                                      time_scale_shift=cfg.resnet_time_scale_shift,
                                      output_scale_factor=cfg.mid_block_scale_factor)
        h = ResnetBlock2D(c, **resnet, name="resnets_0")(h, temb)
        if cfg.add_attention:
            h = Attention(c // (cfg.attention_head_dim or c), attn_groups, cfg.norm_eps, cfg.mid_block_scale_factor,
                          name="attentions_0")(h)
        return ResnetBlock2D(c, **resnet, name="resnets_1")(h, temb)


class _FourierProjection(nn.Module):
    """GaussianFourierProjection (log=True, sin first): t (B,) -> [sin, cos](2 pi log(t) W), W (dim,)."""

    dim: int

    @nn.compact
    def __call__(self, t):
        w = self.param("weight", nn.initializers.normal(16.0), (self.dim,))
        proj = jnp.log(t)[:, None] * w[None, :] * (2.0 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class _TimestepEmbedding(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, emb):
        return nn.Dense(self.dim, name="linear_2")(nn.silu(nn.Dense(self.dim, name="linear_1")(emb)))


class UNet2D(nn.Module):
    """(x (B, H, W, C_in), timestep (scalar or (B,)), class_labels (B,) int or None) -> (B, H, W, C_out).

    `timestep` is the checkpoint's own time input: a (possibly fractional) DDPM step index for "positional"
    embeddings, sigma for "fourier" ones. `class_labels` are required exactly when `config.num_class_embeds` is set.
    Computation is in x's dtype (float32 for a checkpoint's accuracy).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cfg = UNet2DConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        ...                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        ...                    up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        >>> net = UNet2D(cfg)
        >>> x = jnp.zeros((2, 8, 8, 3))
        >>> params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, 10.0)
        >>> jax.eval_shape(net.apply, params, x, 10.0).shape
        (2, 8, 8, 3)
    """

    config: UNet2DConfig

    @nn.compact
    def __call__(self, x: jax.Array, timestep: ArrayLike, class_labels: ArrayLike | None = None) -> jax.Array:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet2D expects NHWC images with {cfg.in_channels} channels, got shape {x.shape}")
        divisor = 2 ** (len(cfg.block_out_channels) - 1)
        if x.shape[1] % divisor or x.shape[2] % divisor:
            raise ValueError(f"UNet2D: image size {x.shape[1]}x{x.shape[2]} is not divisible by {divisor}")
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (batch,))
        if cfg.center_input_sample:
            x = 2.0 * x - 1.0
        c0 = cfg.block_out_channels[0]
        if cfg.time_embedding_type == "fourier":
            emb = _FourierProjection(c0, name="time_proj")(t)
        else:
            emb = timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift, flavor=cfg.flavor)
        emb = _TimestepEmbedding(cfg.time_embed_dim, name="time_embedding")(emb.astype(x.dtype))
        if cfg.conditional:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional ({cfg.num_class_embeds} label embeddings): "
                                 "pass class_labels")
            labels = jnp.broadcast_to(jnp.asarray(class_labels, jnp.int32), (batch,))
            emb = emb + nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, name="class_embedding")(labels).astype(
                emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional network (num_class_embeds is None)")

        skip_sample = x
        h = conv_layer(c0, 3, "conv_in")(x)
        saved = [h]
        n = len(cfg.block_out_channels)
        out = c0
        for i, kind in enumerate(cfg.down_block_types):
            c_in, out = out, cfg.block_out_channels[i]
            h, states, skip_sample = DownBlock(cfg, kind, c_in, out, i != n - 1, name=f"down_blocks_{i}")(
                h, emb, skip_sample)
            saved += states
        if cfg.mid_block_type is not None:
            h = MidBlock(cfg, name="mid_block")(h, emb)

        skip_sample = None
        reversed_channels = cfg.block_out_channels[::-1]
        out = reversed_channels[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev, out = out, reversed_channels[i]
            c_in = reversed_channels[min(i + 1, n - 1)]
            h, skip_sample = UpBlock(cfg, kind, c_in, prev, out, i != n - 1, name=f"up_blocks_{i}")(
                h, saved[len(saved) - cfg.layers_per_block - 1:], emb, skip_sample)
            del saved[len(saved) - cfg.layers_per_block - 1:]

        groups = cfg.norm_num_groups if cfg.norm_num_groups is not None else quarter_groups(c0)
        h = nn.silu(group_norm_layer(groups, cfg.norm_eps, "conv_norm_out")(h))
        h = conv_layer(cfg.out_channels, 3, "conv_out")(h)
        if skip_sample is not None:
            h = h + skip_sample
        if cfg.time_embedding_type == "fourier":
            h = h / t[:, None, None, None].astype(h.dtype)
        return h
