"""EDM's two image networks in Flax, for NHWC images: SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM), as
NVlabs/edm's training/networks.py builds them; `EDMNetwork(config)(x, noise_labels, class_labels, augment_labels)`
is its `model(x, c_noise, class_labels, augment_labels)`, the network F that a preconditioner wraps
(`models.pretrained.edm`).

Facts from training/networks.py (cited by line in the code):
  - Conv2d (48-90): optional resampling by the filter f = outer(r, r) / sum(r)^2 (depthwise, stride 2: down with
    padding (len(r) - 1) // 2, up as a transposed conv of 4 f), then a k x k conv (padding k // 2); kernel 0 means a
    pure resample. `fused_resample` down convolves first (padding k // 2 + f_pad) and then filters unpadded.
  - GroupNorm (96-106): min(32, C // 4) groups; eps 1e-6 in SongUNet, 1e-5 in DhariwalUNet.
  - UNetBlock (134-187): conv0(silu(norm0(x))) with the block's up/down, affine(emb) added before norm1 or as
    (scale, shift) after it (adaptive_scale), conv1, + skip(x) (a 1x1 conv or pure resample where the shape
    changes), * skip_scale; then optional self-attention (qkv in EDM's channel order, `attention.QKV_LAYOUTS["edm"]`)
    with its own residual and skip_scale.
  - SongUNet (229-363) and DhariwalUNet (372-461): the encoder / decoder layouts, embeddings and output heads.

Submodule names are EDM's state-dict names with "." as the path separator (`model/enc/16x16_block0/conv0/kernel` is
`model.enc.16x16_block0.conv0.weight`); Conv kernels are HWIO, Dense kernels (in, out), GroupNorm scale/bias,
FourierEmbedding's buffer `freqs` a parameter of `map_noise`. Each resampling filter is a constant of the config; at
init (only) it is also declared as a "buffers" variable named `<conv>.resample_filter`, so that the abstract init
lists every tensor of EDM's state dict. Training-only options (dropout, label_dropout) are accepted and unused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike
from fastsamplers.models.pretrained.attention import self_attention
from fastsamplers.models.pretrained.unet2d import (conv_layer, fir_downsample, fir_upsample, group_norm_layer,
                                                    quarter_groups, timestep_embedding)

# model_type -> its constructor's defaults (networks.py:230-250, 373-387), less img_resolution / in / out_channels.
_SONG = dict(label_dim=0, augment_dim=0, model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4,
             num_blocks=4, attn_resolutions=(16,), dropout=0.10, label_dropout=0.0, embedding_type="positional",
             channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=(1, 1))
_DHARIWAL = dict(label_dim=0, augment_dim=0, model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4,
                 num_blocks=3, attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0.0)
MODEL_TYPES = Registry("EDM model_type", {"SongUNet": _SONG, "DhariwalUNet": _DHARIWAL}, ordered=True,
                       unknown="unknown {kind} {name!r}; valid: {valid}")
# model_type -> the names of its options (img_resolution, in_channels, out_channels and its constructor's).
MODEL_OPTIONS = {name: Registry.of_names(f"{name} option", ("img_resolution", "in_channels", "out_channels",
                                                           *defaults), unknown="{kind} {name!r} does not exist; "
                                          "valid options: {valid}") for name, defaults in MODEL_TYPES.items()}
# SongUNet's choices (EDM's asserts, networks.py:251-253).
CHOICES = {key: Registry.of_names(key, values, ordered=True, unknown="SongUNet: {kind}={name!r} is not supported; "
                                  "valid: {valid}")
           for key, values in (("embedding_type", ("positional", "fourier")),
                               ("encoder_type", ("standard", "skip", "residual")),
                               ("decoder_type", ("standard", "skip")))}


@dataclasses.dataclass(frozen=True)
class EDMNetworkConfig:
    """The constructor arguments of EDM's SongUNet or DhariwalUNet (same names; build with `network_config`, which
    fills in each type's defaults). The SongUNet-only fields are left at SongUNet's defaults for a DhariwalUNet."""

    model_type: str
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int
    augment_dim: int
    model_channels: int
    channel_mult: tuple[int, ...]
    channel_mult_emb: int
    num_blocks: int
    attn_resolutions: tuple[int, ...]
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: tuple[float, ...] = (1, 1)

    @property
    def song(self) -> bool:
        return self.model_type == "SongUNet"


def network_config(model_type: str, **kwargs: Any) -> EDMNetworkConfig:
    """The validated `EDMNetworkConfig` of EDM's `model_type(**kwargs)` (the keyword arguments its pickle records).

    Args:
      model_type: "SongUNet" or "DhariwalUNet".
      **kwargs: img_resolution, in_channels, out_channels and the type's options (dropout and label_dropout are
        training-only: accepted, unused).

    Returns:
      The config, hashable.

    Raises:
      ValueError: an unknown model_type or option (listing the valid ones), or a value EDM's constructor rejects.
    """
    defaults = MODEL_TYPES.lookup(model_type)
    for key in kwargs:
        MODEL_OPTIONS[model_type].check(key)
    missing = [k for k in ("img_resolution", "in_channels", "out_channels") if k not in kwargs]
    if missing:
        raise ValueError(f"{model_type} needs {missing}")
    options = {**defaults, **kwargs}
    del options["dropout"], options["label_dropout"]  # training only (networks.py:177, 326, 444)
    for key in ("channel_mult", "attn_resolutions", "resample_filter"):
        if key in options:
            options[key] = tuple(options[key])
    config = EDMNetworkConfig(model_type=model_type, **options)
    for key, choices in CHOICES.items():
        choices.check(getattr(config, key))
    divisor = 2 ** (len(config.channel_mult) - 1)
    if config.img_resolution % divisor:
        raise ValueError(f"{model_type}: img_resolution={config.img_resolution} must be divisible by {divisor} "
                         f"(one halving per channel_mult entry after the first)")
    return config


# --- layers ----------------------------------------------------------------------------------------------------------

def filter_buffer(resample_filter: tuple[float, ...]) -> np.ndarray:
    """EDM's resample_filter buffer (networks.py:64-65): outer(r, r) / sum(r)^2, shape (1, 1, k, k)."""
    r = np.asarray(resample_filter, np.float32)
    return (np.outer(r, r) / np.square(r.sum()))[None, None]


def conv2d(module: nn.Module, x: jax.Array, features: int, kernel: int, name: str, *, up: bool = False,
           down: bool = False, resample_filter: tuple[float, ...] = (1, 1), fused_resample: bool = False) -> jax.Array:
    """EDM's Conv2d (networks.py:68-90) on NHWC x, inside the compact `module`: a `name` Conv (kernel x kernel, with
    bias; none for kernel 0) with optional 2x resampling by `resample_filter` (`fir_upsample` / `fir_downsample`:
    the same depthwise filters as EDM's conv_transpose2d / strided conv2d)."""
    if (up or down) and module.is_initializing():  # list EDM's buffer among the init's variables (module docstring)
        module.variable("buffers", f"{name}.resample_filter", lambda: jnp.asarray(filter_buffer(resample_filter)))
    if fused_resample and up and kernel:  # networks.py:75-77: no EDM network builds it
        raise NotImplementedError("EDM's fused_resample with up=True is not built: neither SongUNet nor DhariwalUNet "
                                  "uses it")
    if fused_resample and down and kernel:  # networks.py:78-80: conv with the filter's padding added, then filter
        f_pad = (len(resample_filter) - 1) // 2
        x = conv_layer(features, kernel, name, padding=kernel // 2 + f_pad)(x)
        return fir_downsample(x, resample_filter, padding=(0, 0))
    if up:
        x = fir_upsample(x, resample_filter)
    if down:
        x = fir_downsample(x, resample_filter)
    return conv_layer(features, kernel, name)(x) if kernel else x


def _group_norm(channels, eps, name):
    return group_norm_layer(quarter_groups(channels), eps, name)  # GroupNorm(num_groups=32, min_channels_per_group=4)


class UNetBlock(nn.Module):
    """EDM's UNetBlock (networks.py:134-187) on NHWC x and the embedding (B, emb_channels)."""

    in_channels: int
    out_channels: int
    heads: int = 0
    up: bool = False
    down: bool = False
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: tuple[float, ...] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        resample = dict(up=self.up, down=self.down, resample_filter=self.resample_filter)
        cout = self.out_channels
        orig = x
        x = conv2d(self, nn.silu(_group_norm(self.in_channels, self.eps, "norm0")(x)), cout, 3, "conv0", **resample)
        params = nn.Dense(cout * (2 if self.adaptive_scale else 1), name="affine")(emb)[:, None, None, :]
        if self.adaptive_scale:  # scale first (networks.py:172)
            scale, shift = jnp.split(params.astype(x.dtype), 2, axis=-1)
            x = nn.silu(shift + _group_norm(cout, self.eps, "norm1")(x) * (scale + 1))
        else:
            x = nn.silu(_group_norm(cout, self.eps, "norm1")(x + params.astype(x.dtype)))
        x = conv_layer(cout, 3, "conv1")(x)
        if cout != self.in_channels or self.up or self.down:  # networks.py:156-159
            kernel = 1 if self.resample_proj or cout != self.in_channels else 0
            orig = conv2d(self, orig, cout, kernel, "skip", **resample)
        x = (x + orig) * self.skip_scale
        if self.heads:
            def project(features, name):  # EDM's 1x1 Conv2d on (B, L, C)
                conv = conv_layer(features, 1, name)
                return lambda h: conv(h[:, :, None, :])[:, :, 0, :]

            a = self_attention(_group_norm(cout, self.eps, "norm2")(x), project(3 * cout, "qkv"),
                               project(cout, "proj"), self.heads, "edm")
            x = (a + x) * self.skip_scale
        return x


class FourierEmbedding(nn.Module):
    """EDM's FourierEmbedding (networks.py:212-220): [cos | sin](2 pi freqs x); `freqs` is the checkpoint's buffer."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        freqs = self.param("freqs", nn.initializers.normal(16.0), (self.channels // 2,))
        # float32(2 pi) * freqs, rounded, then the outer product: EDM's order of float32 roundings.
        w = (jnp.asarray(2 * np.pi, freqs.dtype) * freqs).astype(x.dtype)
        x = x[:, None] * w[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=-1)


# --- the networks ----------------------------------------------------------------------------------------------------

def _layers(cfg: EDMNetworkConfig) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(encoder, decoder): EDM's ModuleDict entries in order, as (name, spec); spec["kind"] is "block" (a UNetBlock's
    fields), "conv" (a Conv2d: features, kernel, resampling) or "norm" (channels). networks.py:275-318 (SongUNet),
    402-431 (DhariwalUNet)."""
    mc = cfg.model_channels
    if cfg.song:  # networks.py:262-266
        common = dict(skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=cfg.resample_filter, resample_proj=True,
                      adaptive_scale=False)
    else:  # networks.py:393 and UNetBlock's defaults
        common = dict(skip_scale=1.0, eps=1e-5, resample_filter=(1, 1), resample_proj=False, adaptive_scale=True)

    def block(cin, cout, attention=False, **extra):
        heads = (1 if cfg.song else cout // 64) if attention else 0  # num_heads=1; channels_per_head=64 (145)
        return dict(kind="block", in_channels=cin, out_channels=cout, heads=heads, **common, **extra)

    def conv(cin, cout, kernel, **extra):
        return dict(kind="conv", in_channels=cin, features=cout, kernel=kernel, **extra)

    enc = []
    cout, caux = cfg.in_channels, cfg.in_channels
    for level, mult in enumerate(cfg.channel_mult):
        res = cfg.img_resolution >> level
        if level == 0:
            cin, cout = cout, (mc if cfg.song else mc * mult)
            enc.append((f"{res}x{res}_conv", conv(cin, cout, 3)))
        else:
            enc.append((f"{res}x{res}_down", block(cout, cout, down=True)))
            if cfg.song and cfg.encoder_type == "skip":
                enc.append((f"{res}x{res}_aux_down", conv(caux, caux, 0, down=True,
                                                          resample_filter=cfg.resample_filter)))
                enc.append((f"{res}x{res}_aux_skip", conv(caux, cout, 1)))
            if cfg.song and cfg.encoder_type == "residual":
                enc.append((f"{res}x{res}_aux_residual", conv(caux, cout, 3, down=True, fused_resample=True,
                                                              resample_filter=cfg.resample_filter)))
                caux = cout
        for idx in range(cfg.num_blocks):
            cin, cout = cout, mc * mult
            enc.append((f"{res}x{res}_block{idx}", block(cin, cout, attention=res in cfg.attn_resolutions)))
    skips = [spec["out_channels" if spec["kind"] == "block" else "features"] for name, spec in enc
             if "aux" not in name]

    dec = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        res = cfg.img_resolution >> level
        if level == len(cfg.channel_mult) - 1:
            dec.append((f"{res}x{res}_in0", block(cout, cout, attention=True)))
            dec.append((f"{res}x{res}_in1", block(cout, cout)))
        else:
            dec.append((f"{res}x{res}_up", block(cout, cout, up=True)))
        for idx in range(cfg.num_blocks + 1):
            cin, cout = cout + skips.pop(), mc * mult
            # SongUNet attends in the last block of a level only (networks.py:312); DhariwalUNet in all (431).
            attention = res in cfg.attn_resolutions and (idx == cfg.num_blocks or not cfg.song)
            dec.append((f"{res}x{res}_block{idx}", block(cin, cout, attention=attention)))
        if cfg.song and (cfg.decoder_type == "skip" or level == 0):
            if cfg.decoder_type == "skip" and level < len(cfg.channel_mult) - 1:
                dec.append((f"{res}x{res}_aux_up", conv(cfg.out_channels, cfg.out_channels, 0, up=True,
                                                        resample_filter=cfg.resample_filter)))
            dec.append((f"{res}x{res}_aux_norm", dict(kind="norm", channels=cout)))
            dec.append((f"{res}x{res}_aux_conv", conv(cout, cfg.out_channels, 3)))
    return enc, dec


def _block(spec, name):
    return UNetBlock(**{k: v for k, v in spec.items() if k != "kind"}, name=name)


class Encoder(nn.Module):
    """EDM's `enc` ModuleDict and its forward loop (networks.py:335-346, 450-453): returns (x, skips)."""

    config: EDMNetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        aux = x
        for name, spec in _layers(self.config)[0]:
            if spec["kind"] == "block":
                x = _block(spec, name)(x, emb)
                skips.append(x)
            elif "aux_down" in name:
                aux = conv2d(self, aux, spec["features"], 0, name, down=True, resample_filter=spec["resample_filter"])
            elif "aux_skip" in name:
                x = skips[-1] = x + conv2d(self, aux, spec["features"], 1, name)
            elif "aux_residual" in name:  # networks.py:343
                x = skips[-1] = aux = (x + conv2d(self, aux, spec["features"], 3, name, down=True, fused_resample=True,
                                                  resample_filter=spec["resample_filter"])) / np.sqrt(2)
            else:  # the first level's conv
                x = conv2d(self, x, spec["features"], spec["kernel"], name)
                skips.append(x)
        return x, skips


class Decoder(nn.Module):
    """EDM's `dec` ModuleDict and its forward loop (networks.py:349-363, 456-459): returns x for DhariwalUNet, the
    summed `aux` output for SongUNet."""

    config: EDMNetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array, skips: list[jax.Array], emb: jax.Array) -> jax.Array:
        aux, tmp = None, None
        for name, spec in _layers(self.config)[1]:
            if spec["kind"] == "block":
                if x.shape[-1] != spec["in_channels"]:  # the concat of networks.py:360-361, x first
                    x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = _block(spec, name)(x, emb)
            elif "aux_up" in name:
                aux = conv2d(self, aux, spec["features"], 0, name, up=True, resample_filter=spec["resample_filter"])
            elif "aux_norm" in name:
                tmp = _group_norm(spec["channels"], 1e-6, name)(x)
            else:  # aux_conv
                tmp = conv2d(self, nn.silu(tmp), spec["features"], 3, name)
                aux = tmp if aux is None else tmp + aux
        return x if aux is None else aux


class EDMNetwork(nn.Module):
    """EDM's SongUNet or DhariwalUNet (`config.model_type`): (x (B, H, W, in_channels), noise_labels (B,),
    class_labels (B, label_dim) float or None, augment_labels (B, augment_dim) or None) -> (B, H, W, out_channels).

    The arguments are those of EDM's `forward` (networks.py:320, 435): noise_labels is the preconditioner's c_noise,
    class_labels the one-hot rows (None: no label term; EDM's preconditioners pass zeros instead), augment_labels
    the augmentation vector (None at sampling: the map_augment term is skipped, as EDM skips it, 329 and 438).
    Computation is in x's dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cfg = network_config("SongUNet", img_resolution=8, in_channels=3, out_channels=3, model_channels=16,
        ...                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
        >>> x = jnp.zeros((2, 8, 8, 3))
        >>> params = jax.eval_shape(EDMNetwork(cfg).init, jax.random.PRNGKey(0), x, jnp.zeros(2))
        >>> jax.eval_shape(EDMNetwork(cfg).apply, params, x, jnp.zeros(2)).shape
        (2, 8, 8, 3)
    """

    config: EDMNetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: ArrayLike, class_labels: ArrayLike | None = None,
                 augment_labels: ArrayLike | None = None) -> jax.Array:
        cfg = self.config
        mc = cfg.model_channels
        emb_channels = mc * cfg.channel_mult_emb
        noise = jnp.asarray(noise_labels, x.dtype)
        if cfg.song:  # networks.py:269-273, 322-332
            noise_channels = mc * cfg.channel_mult_noise
            if cfg.embedding_type == "fourier":
                emb = FourierEmbedding(noise_channels, name="map_noise")(noise)
            else:
                emb = timestep_embedding(noise, noise_channels, True, 1, flavor="edm").astype(x.dtype)
            half = noise_channels // 2
            emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)  # swap sin/cos (323)
            if cfg.label_dim and class_labels is not None:
                labels = jnp.asarray(class_labels, x.dtype) * np.sqrt(cfg.label_dim)
                emb = emb + nn.Dense(noise_channels, name="map_label")(labels)
            emb = self._augment(emb, augment_labels, noise_channels)
            emb = nn.silu(nn.Dense(emb_channels, name="map_layer0")(emb))
            emb = nn.silu(nn.Dense(emb_channels, name="map_layer1")(emb))
        else:  # networks.py:396-400, 437-447
            emb = timestep_embedding(noise, mc, True, 0, flavor="edm").astype(x.dtype)
            emb = self._augment(emb, augment_labels, mc)
            emb = nn.Dense(emb_channels, name="map_layer1")(nn.silu(nn.Dense(emb_channels, name="map_layer0")(emb)))
            if cfg.label_dim and class_labels is not None:
                emb = emb + nn.Dense(emb_channels, use_bias=False, name="map_label")(
                    jnp.asarray(class_labels, x.dtype))
            emb = nn.silu(emb)
        x, skips = Encoder(cfg, name="enc")(x, emb)
        x = Decoder(cfg, name="dec")(x, skips, emb)
        if not cfg.song:
            x = conv_layer(cfg.out_channels, 3, "out_conv")(nn.silu(_group_norm(x.shape[-1], 1e-5, "out_norm")(x)))
        return x

    def _augment(self, emb, augment_labels, features):
        if self.config.augment_dim and augment_labels is not None:
            emb = emb + nn.Dense(features, use_bias=False, name="map_augment")(jnp.asarray(augment_labels, emb.dtype))
        return emb
