"""The decoder of diffusers' `AutoencoderKL` (the Stable Diffusion VAE of DiT and SiT) in Flax, for NHWC latents.

`load_decoder(folder)` reads a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors, as
`stabilityai/sd-vae-ft-{ema,mse}` and a DiTPipeline's `vae/` ship it) and returns a `VAEDecoder` and its params
(only the decoder's and post_quant_conv's weights; the encoder's are ignored). `VAEDecoder` reproduces
`AutoencoderKL._decode` (diffusers/models/autoencoders/autoencoder_kl.py): post_quant_conv (1x1), then `Decoder`
(autoencoders/vae.py): conv_in, UNetMidBlock2D (resnet, one-head attention, resnet; no time embedding), the
UpDecoderBlock2D's in reversed channel order (layers_per_block + 1 resnets, nearest-2x + conv3x3 upsampling but in
the last), GroupNorm, SiLU, conv_out; every GroupNorm has norm_num_groups groups and eps 1e-6. The layers are
`models.pretrained.unet2d`'s, under diffusers' parameter names.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core import Registry, read_json
from fastsamplers.core.typing import PyTree
from fastsamplers.models.pretrained.diffusers import WEIGHTS, expected_params, rename_legacy, to_flax, torch_name
from fastsamplers.models.pretrained.diffusers import torch_shape, unflatten
from fastsamplers.models.pretrained.model import check_weights
from fastsamplers.models.pretrained.unet2d import ACTIVATIONS, Attention, ResnetBlock2D, UpsampleConv, conv_layer
from fastsamplers.models.pretrained.unet2d import group_norm_layer

_EPS = 1e-6  # Decoder's resnet_eps and conv_norm_out eps (autoencoders/vae.py)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The decoder's keys of an AutoencoderKL config.json (same names, same defaults)."""

    out_channels: int = 3
    latent_channels: int = 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        if any(kind != "UpDecoderBlock2D" for kind in self.up_block_types):
            raise NotImplementedError(f"up_block_types={list(self.up_block_types)}: only UpDecoderBlock2D is built "
                                      "(AutoencoderKL's)")
        if len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError(f"{len(self.up_block_types)} up_block_types for {len(self.block_out_channels)} "
                             "block_out_channels")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r}; valid: {sorted(ACTIVATIONS)}")

    @property
    def factor(self) -> int:
        """Image pixels per latent pixel, along each axis."""
        return 2 ** (len(self.block_out_channels) - 1)


# AutoencoderKL config.json keys that do not change decoding (the encoder's, the sizes, training options).
_ENCODER_KEYS = ("in_channels", "down_block_types", "sample_size", "force_upcast", "use_quant_conv",
                 "latents_mean", "latents_std")
CONFIG_KEYS = Registry.of_names("AutoencoderKL config key",
                                [f.name for f in dataclasses.fields(VAEConfig)] + list(_ENCODER_KEYS) +
                                ["shift_factor"], unknown="{source}: unknown {kind} {name!r}; known keys: {valid}")


class Decoder(nn.Module):
    """diffusers' vae.Decoder (norm_type "group"): latents (B, h, w, latent_channels) -> images (B, H, W, C)."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        groups = cfg.norm_num_groups
        resnet: dict[str, Any] = dict(groups=groups, groups_out=groups, eps=_EPS, act=cfg.act_fn,
                                      time_scale_shift="default")
        channels = cfg.block_out_channels[::-1]
        h = conv_layer(channels[0], 3, "conv_in")(z)
        mid = MidBlock(channels[0], resnet, cfg.mid_block_add_attention, name="mid_block")
        h = mid(h)
        for i, out in enumerate(channels):
            h = UpDecoderBlock(out, cfg.layers_per_block + 1, resnet, i != len(channels) - 1,
                               name=f"up_blocks_{i}")(h)
        h = ACTIVATIONS[cfg.act_fn](group_norm_layer(groups, _EPS, "conv_norm_out")(h))
        return conv_layer(cfg.out_channels, 3, "conv_out")(h)


class MidBlock(nn.Module):
    """UNetMidBlock2D with temb_channels=None: resnet, [one-head attention], resnet."""

    channels: int
    resnet: dict
    add_attention: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        h = ResnetBlock2D(self.channels, **self.resnet, name="resnets_0")(h, None)
        if self.add_attention:  # attention_head_dim = the channels: one head (vae.py's Decoder)
            h = Attention(1, self.resnet["groups"], _EPS, name="attentions_0")(h)
        return ResnetBlock2D(self.channels, **self.resnet, name="resnets_1")(h, None)


class UpDecoderBlock(nn.Module):
    """UpDecoderBlock2D: `layers` resnets without time embedding, then nearest-2x + conv3x3 when `upsample`."""

    channels: int
    layers: int
    resnet: dict
    upsample: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i in range(self.layers):
            h = ResnetBlock2D(self.channels, **self.resnet, name=f"resnets_{i}")(h, None)
        return UpsampleConv(self.channels, name="upsamplers_0")(h) if self.upsample else h


class VAEDecoder(nn.Module):
    """AutoencoderKL's decode: z (B, h, w, latent_channels), the VAE's own latents (already divided by the scaling
    factor) -> images (B, h * factor, w * factor, out_channels), about [-1, 1]."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(f"the VAE decoder expects NHWC latents with {self.config.latent_channels} channels, got "
                             f"shape {z.shape}")
        if self.config.use_post_quant_conv:
            z = conv_layer(self.config.latent_channels, 1, "post_quant_conv")(z)
        return Decoder(self.config, name="decoder")(z)


def vae_config(raw: dict[str, Any], source: str) -> VAEConfig:
    """The `VAEConfig` of an AutoencoderKL config.json dict; errors name `source` and the key."""
    if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise NotImplementedError(f"{source}: _class_name={raw['_class_name']!r}; only AutoencoderKL is supported")
    if raw.get("shift_factor") is not None:
        raise NotImplementedError(f"{source}: shift_factor={raw['shift_factor']} (SD3/FLUX VAEs): DiTPipeline and DiT "
                                  "decode z / scaling_factor only; a shifted VAE is not built here")
    kwargs = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        CONFIG_KEYS.check(key, source=source)
        if key not in _ENCODER_KEYS and key != "shift_factor":
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return VAEConfig(**kwargs)
    except (ValueError, NotImplementedError, TypeError) as error:
        raise type(error)(f"{source}: {error}") from None


def load_decoder(folder: str) -> tuple[VAEConfig, PyTree]:
    """(config, params) of the decoder of a diffusers AutoencoderKL folder (config.json +
    diffusion_pytorch_model.safetensors). FileNotFoundError / ValueError of one sentence naming the file."""
    from safetensors.numpy import load_file

    config_file, weights_file = os.path.join(folder, "config.json"), os.path.join(folder, WEIGHTS)
    config = vae_config(read_json(config_file), config_file)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing VAE weights file {weights_file}")
    expected = expected_params(VAEDecoder(config), (8, 8, config.latent_channels), ())
    by_name = {torch_name(p): p for p in expected}
    state = {k: v for k, v in rename_legacy(load_file(weights_file)).items()
             if not k.startswith(("encoder.", "quant_conv."))}
    # Attention projections stored as 1x1 convs (pre-0.10 files) are Dense weights.
    state = {k: v[:, :, 0, 0] if v.ndim == 4 and ".attentions." in k else v for k, v in state.items()}
    check_weights({k: v.shape for k, v in state.items()},
                  {torch_name(p): torch_shape(p, s) for p, s in expected.items()}, weights_file,
                  f"decoder in {os.path.basename(config_file)}")
    return config, unflatten({by_name[k]: to_flax(by_name[k], v) for k, v in state.items()})


@functools.lru_cache(maxsize=8)
def decode_fn(config: VAEConfig) -> Callable[[PyTree, jax.Array], jax.Array]:
    """decode(params, z) -> images: `VAEDecoder` on z / scaling_factor (DiTPipeline, pipeline_dit.py; DiT's
    sample.py), jitted once per config (cached: two loads of one VAE share it, and the programs that call it)."""
    net = VAEDecoder(config)
    return jax.jit(lambda params, z: net.apply({"params": params}, jnp.asarray(z) / config.scaling_factor))
