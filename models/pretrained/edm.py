"""EDM checkpoints (NVlabs/edm): the four preconditioned denoisers D(x; sigma) and the converted folder's loader.

A converted folder (scripts/convert_checkpoint.py --layout edm, from an EDM network pickle) holds
  config.json:       {"layout": "edm", "class_name": one of `PRECONDITIONERS`, "init_kwargs": {...}}, the
                     constructor arguments EDM's pickle records (`net.init_kwargs`: img_resolution, img_channels,
                     label_dim, use_fp16, the preconditioner's options, model_type and the network's options);
  model.safetensors: the preconditioned network's `state_dict()` under EDM's names (`model.enc.16x16_block0.conv0.
                     weight`, ...), buffers included (each Conv2d's resample_filter, FourierEmbedding's freqs,
                     iDDPMPrecond's noise table u).

In the framework's conventions every EDM network is a data predictor on the `edm` process (alpha = 1, sigma = t):
model_fn(x, t, args) = D(x; sigma = t), prediction "x0", whatever its preconditioner. D = c_skip x +
c_out F(c_in x, c_noise) with (training/networks.py):
  EDMPrecond (654-668):   c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(sd^2 + s^2),
                          c_noise = log(s) / 4
  VPPrecond (495-517):    c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) sigma_inv(s)
  VEPrecond (548-562):    c_skip = 1, c_out = s, c_in = 1, c_noise = log(s / 2)
  iDDPMPrecond (601-625): c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = M - 1 - argmin_j |s - u_j|;
                          the network has 2 C output channels, of which D uses the first C.
Coefficients are computed in x's dtype, in EDM's order of operations (EDM computes in float32; use_fp16 is
ignored: the network runs in x's dtype). iDDPM's index is the exact argmin of |s - u_j|; EDM's torch.cdist forms
|s - u_j| as sqrt(s^2 + u_j^2 - 2 s u_j) in float32, so at sigmas within float32 rounding of a midpoint between two
table entries it may pick the other one.

The process is `get_process("edm", t_min, t_max)` with EDM's sampler defaults clamped to the network's range, as
edm_sampler does (generate.py:31-33): t_min = max(0.002, sigma_min), t_max = min(80, sigma_max), where the range is
VP's [sigma(epsilon_t), sigma(1)] (~[0.001, 152]), VE's [sigma_min, sigma_max] ([0.02, 100]), iDDPM's [u_{M-1}, u_0]
and EDM's [sigma_min, sigma_max] ([0, inf]).

Labels: args=(params, labels) with integer class indices (B,) for a conditional network (one-hot rows made
inside), or labels None for EDM's zero label vector (networks.py:498: what EDM feeds when it is given no labels);
an unconditional network takes args=params.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, ModelFn
from fastsamplers.models.conditioning import split_conditional_args
from fastsamplers.models.pretrained.diffusers import torch_name, torch_shape, to_flax, unflatten
from fastsamplers.models.pretrained.edm_networks import EDMNetwork, EDMNetworkConfig, filter_buffer, network_config
from fastsamplers.models.pretrained.model import (ApplyFn, Pretrained, TimestepFn, batch_times, check_weights,
                                                  read_converted_config)
from fastsamplers.schedules.processes import Process, get_process

WEIGHTS = "model.safetensors"
SAMPLER_SIGMA_MIN, SAMPLER_SIGMA_MAX = 0.002, 80.0  # edm_sampler's defaults (generate.py:27)
_INTERFACE = dict(img_resolution=None, img_channels=None, label_dim=0, use_fp16=False)


def _vp_sigma(options, t):  # VPPrecond.sigma (networks.py:511-513)
    return math.sqrt(math.expm1(0.5 * options["beta_d"] * t ** 2 + options["beta_min"] * t))


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """A preconditioned EDM network: `class_name` (a key of `PRECONDITIONERS`), its options (a sorted tuple of
    (name, value) pairs: hashable) and the network's `EDMNetworkConfig`. Build it with `edm_config`."""

    class_name: str
    img_resolution: int
    img_channels: int
    label_dim: int
    options: tuple[tuple[str, Any], ...]
    network: EDMNetworkConfig

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    def sigma_range(self, u: np.ndarray | None = None) -> tuple[float, float]:
        """(sigma_min, sigma_max) of the network, as the preconditioner's constructor sets them; iDDPM's needs its
        noise table `u`."""
        if self.class_name == "VPPrecond":  # networks.py:491-492
            options = dict(self.options)
            return _vp_sigma(options, options["epsilon_t"]), _vp_sigma(options, 1.0)
        if self.class_name == "iDDPMPrecond":  # networks.py:598-599
            if u is None:
                raise ValueError("iDDPMPrecond's sigma range is read from its noise table u")
            return float(u[self.option("M") - 1]), float(u[0])
        return float(self.option("sigma_min")), float(self.option("sigma_max"))


def edm_config(class_name: str, init_kwargs: dict[str, Any], source: str = "config.json") -> EDMConfig:
    """The validated `EDMConfig` of EDM's `class_name(**init_kwargs)`. Errors are one sentence naming `source`.

    Args:
      class_name: "EDMPrecond", "VPPrecond", "VEPrecond" or "iDDPMPrecond".
      init_kwargs: the constructor's keyword arguments, as EDM's pickle records them.
      source: the file they come from, for the errors.

    Returns:
      The config.

    Raises:
      ValueError: an unknown class_name, model_type or option (listing the valid ones), a missing one.
    """
    try:
        entry = PRECONDITIONERS.lookup(class_name)
        kwargs = dict(init_kwargs)
        interface = {k: kwargs.pop(k, v) for k, v in _INTERFACE.items()}
        missing = [k for k, v in interface.items() if v is None]
        if missing:
            raise ValueError(f"{class_name} needs {missing} in init_kwargs")
        options = {k: kwargs.pop(k, v) for k, v in entry["options"].items()}
        model_type = options.pop("model_type")
        channels = int(interface["img_channels"])
        network = network_config(model_type, img_resolution=int(interface["img_resolution"]), in_channels=channels,
                                 out_channels=channels * entry["outputs"], label_dim=int(interface["label_dim"]),
                                 **kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from None
    return EDMConfig(class_name, network.img_resolution, channels, network.label_dim,
                     tuple(sorted((k, float(v) if k != "M" else int(v)) for k, v in options.items())), network)


# --- the denoiser ----------------------------------------------------------------------------------------------------

def _vp_coefficients(cfg, sigma, u):
    beta_d, beta_min, m = cfg.option("beta_d"), cfg.option("beta_min"), cfg.option("M")
    sigma_inv = (jnp.sqrt(beta_min ** 2 + 2 * beta_d * jnp.log(1 + sigma ** 2)) - beta_min) / beta_d  # 515-517
    return 1.0, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), (m - 1) * sigma_inv


def _ve_coefficients(cfg, sigma, u):
    return 1.0, sigma, 1.0, jnp.log(0.5 * sigma)


def _iddpm_coefficients(cfg, sigma, u):
    index = jnp.argmin(jnp.abs(sigma - u.astype(sigma.dtype)[None, :]), axis=-1)[..., None]  # round_sigma (621-625)
    return 1.0, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), (cfg.option("M") - 1 - index).astype(sigma.dtype)


def _edm_coefficients(cfg, sigma, u):
    sd = cfg.option("sigma_data")
    return (sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2),
            1 / jnp.sqrt(sd ** 2 + sigma ** 2), jnp.log(sigma) / 4)


# class_name -> its constructor's options and defaults (networks.py:470-481, 529-537, 573-582, 633-642), less the
# interface ones (`_INTERFACE`); the factor of its network's output channels; and its coefficients(config, sigma
# (B, 1), u or None) -> (c_skip, c_out, c_in, c_noise), each (B, 1) or a float.
PRECONDITIONERS = Registry("EDM preconditioner class_name", {
    "VPPrecond": dict(options=dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, model_type="SongUNet"),
                      outputs=1, coefficients=_vp_coefficients),
    "VEPrecond": dict(options=dict(sigma_min=0.02, sigma_max=100.0, model_type="SongUNet"), outputs=1,
                      coefficients=_ve_coefficients),
    "iDDPMPrecond": dict(options=dict(C_1=0.001, C_2=0.008, M=1000, model_type="DhariwalUNet"), outputs=2,
                         coefficients=_iddpm_coefficients),
    "EDMPrecond": dict(options=dict(sigma_min=0.0, sigma_max=math.inf, sigma_data=0.5, model_type="DhariwalUNet"),
                       outputs=1, coefficients=_edm_coefficients),
}, ordered=True, unknown="unknown {kind} {name!r}; valid: {valid}")


class EDMDenoiser(nn.Module):
    """EDM's preconditioned network (`config.class_name`): (x (B, H, W, C), sigma (B,) or scalar, class_labels (B,)
    int or None, augment_labels (B, augment_dim) or None) -> D(x; sigma), (B, H, W, C), in x's dtype.

    Parameters: `model/...` (the `EDMNetwork`) and, for iDDPMPrecond, its noise table `u` (M + 1,)."""

    config: EDMConfig

    @nn.compact
    def __call__(self, x: jax.Array, sigma: ArrayLike, class_labels: ArrayLike | None = None,
                 augment_labels: ArrayLike | None = None) -> jax.Array:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.img_resolution, cfg.img_resolution, cfg.img_channels):
            raise ValueError(f"{cfg.class_name} expects NHWC images of shape (B, {cfg.img_resolution}, "
                             f"{cfg.img_resolution}, {cfg.img_channels}), got {x.shape}")
        u = self.param("u", nn.initializers.zeros, (cfg.option("M") + 1,)) if cfg.class_name == "iDDPMPrecond" else None
        sigma = batch_times(jnp.asarray(sigma, x.dtype), x.shape[0])[:, None]
        c_skip, c_out, c_in, c_noise = PRECONDITIONERS[cfg.class_name]["coefficients"](cfg, sigma, u)
        labels = None
        if cfg.label_dim:
            labels = (jnp.zeros((1, cfg.label_dim), x.dtype) if class_labels is None else
                      jax.nn.one_hot(jnp.broadcast_to(jnp.asarray(class_labels), x.shape[:1]), cfg.label_dim,
                                     dtype=x.dtype))
        elif class_labels is not None:
            raise ValueError(f"class_labels given to an unconditional {cfg.class_name} (label_dim=0)")
        scale = lambda c: c if isinstance(c, float) else c[:, :, None, None]  # noqa: E731  (B, 1) -> (B, 1, 1, 1)
        f = EDMNetwork(cfg.network, name="model")(scale(c_in) * x, c_noise[:, 0], labels, augment_labels)
        return scale(c_skip) * x + scale(c_out) * f[..., :cfg.img_channels]


@functools.lru_cache(maxsize=32)
def make_functions(config: EDMConfig) -> tuple[TimestepFn, ApplyFn, ModelFn]:
    """(timestep, apply, model_fn) of the EDM network of `config` (see `Pretrained`): timestep(t) = t (sigma),
    apply(params, x, sigma, class_labels=None) = D(x; sigma), model_fn(x, t, args) = D(x; t). Cached on the
    config, so that two loads of one architecture share compiled programs."""
    net = EDMDenoiser(config)

    def timestep(t):
        return jnp.asarray(t)

    def apply(params, x, sigma, class_labels=None, augment_labels=None):
        return net.apply({"params": params}, x, sigma, class_labels, augment_labels)

    if config.label_dim:
        def model_fn(x, t, args):
            params, labels = split_conditional_args(args, config.label_dim)
            return apply(params, x, batch_times(t, x.shape[0]), labels)
    else:
        def model_fn(x, t, args):
            return apply(args, x, batch_times(t, x.shape[0]))

    return timestep, apply, model_fn


# --- the loader ------------------------------------------------------------------------------------------------------

def expected_weights(config: EDMConfig) -> tuple[dict[tuple[str, ...], tuple[int, ...]], dict[str, tuple]]:
    """({flax parameter path: shape}, {buffer name: shape}) of the denoiser (abstract init: no compute)."""
    net = config.network
    x = jnp.zeros((1, config.img_resolution, config.img_resolution, config.img_channels), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if config.label_dim else None
    augment = jnp.zeros((1, net.augment_dim), jnp.float32) if net.augment_dim else None
    tree = jax.eval_shape(lambda: EDMDenoiser(config).init(jax.random.PRNGKey(0), x, 1.0, labels, augment))

    def flat(collection):
        return {tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree.get(collection, {}))[0]}

    return flat("params"), {".".join(path): shape for path, shape in flat("buffers").items()}


def process_of(config: EDMConfig, u: np.ndarray | None = None) -> Process:
    """The `edm` process of the network: edm_sampler's sigma range clamped to the network's (module docstring)."""
    sigma_min, sigma_max = config.sigma_range(u)
    return get_process("edm", t_min=max(SAMPLER_SIGMA_MIN, sigma_min), t_max=min(SAMPLER_SIGMA_MAX, sigma_max))


def load(path: str) -> Pretrained:
    """A converted EDM folder (see the module docstring) as a `Pretrained` on the `edm` process, prediction "x0".

    Args:
      path: the folder holding config.json and model.safetensors.

    Returns:
      The `Pretrained`: apply(params, x, sigma, class_labels=None, augment_labels=None) is D(x; sigma); model_fn(x,
      t, args) = D(x; t), args = params or (params, labels); config is the `EDMConfig`.

    Raises:
      FileNotFoundError, ValueError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    raw, config_file, weights_file = read_converted_config(path, "edm", "convert EDM's pickle with "
                                                           "scripts/convert_checkpoint.py SOURCE OUT --layout edm "
                                                           "--edm-repo PATH")
    for key in ("class_name", "init_kwargs"):
        if key not in raw:
            raise ValueError(f"{config_file}: missing key {key!r} (an edm folder's config.json holds layout, "
                             "class_name and init_kwargs)")
    if not isinstance(raw["init_kwargs"], dict):
        raise ValueError(f"{config_file}: init_kwargs must be an object, got {type(raw['init_kwargs']).__name__}")
    config = edm_config(raw["class_name"], raw["init_kwargs"], config_file)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing weights file {weights_file}")

    params_shapes, buffers = expected_weights(config)
    by_name = {torch_name(p): p for p in params_shapes}
    expected = {**{torch_name(p): torch_shape(p, s) for p, s in params_shapes.items()},
                **buffers}
    state = load_file(weights_file)
    check_weights({k: v.shape for k, v in state.items()}, expected, weights_file,
                  f"network in {os.path.basename(config_file)}")
    for name in buffers:  # constants of the config here: a file with other filters was made by other code
        if not np.array_equal(state[name], filter_buffer(config.network.resample_filter)):
            raise ValueError(f"{weights_file}: buffer {name!r} is not the resample_filter "
                             f"{list(config.network.resample_filter)} of config.json")
    params = unflatten({by_name[k]: to_flax(by_name[k], state[k]) for k in by_name})
    u = np.asarray(state["u"]) if "u" in state else None
    timestep, apply, model_fn = make_functions(config)
    image_shape = (config.img_resolution, config.img_resolution, config.img_channels)
    return Pretrained(params=params, apply=apply, model_fn=model_fn, process=process_of(config, u), prediction="x0",
                      timestep=timestep, image_shape=image_shape, num_classes=config.label_dim or None,
                      config=config, source=path, layout="edm")

