"""What a loaded checkpoint is (`Pretrained`, `PretrainedClassifier` for a noisy classifier and `PretrainedFlow` for a
normalizing flow), and the checks every loader makes before any compute: its weights (`check_weights`; its JSON
files are read by `core.read_json`, whose errors name the file)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING, Callable, Hashable, Union

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry, read_json
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree, Shape
from fastsamplers.models.conditioning import split_conditional_args
from fastsamplers.models.pretrained.unet2d import UNet2D, UNet2DConfig
from fastsamplers.models.tarflow import TarFlow

if TYPE_CHECKING:
    from fastsamplers.models.pretrained.adm import ADMConfig
    from fastsamplers.schedules.processes import Process

# apply(params, x, timestep, class_labels=None) -> output, and timestep(t) -> the network's time input (`Pretrained`).
ApplyFn = Callable[..., jax.Array]
TimestepFn = Callable[[ArrayLike], jax.Array]
# A network's architecture: the flax module class a loader builds takes it as its one field.
NetworkConfig = Union["UNet2DConfig", "ADMConfig"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (samplers cache on model_fn, not params)
class Pretrained:
    """A published network in the framework's conventions.

    Attributes:
      params: the weights, a pytree of jnp float32 arrays (conv kernels HWIO, dense kernels (in, out)).
      apply: apply(params, x, timestep, class_labels=None) -> output: the raw network on NHWC images x (B, H, W, C)
        with the checkpoint's own time input (see `timestep`); its output is of kind `prediction`.
      model_fn: model_fn(x, t, args) -> prediction, in the framework's time (t = 0 data ... t = 1 noise):
        `apply(params, x, timestep(t), labels)`. args is `params` for an unconditional network and
        `(params, labels)` for a class-conditional one (labels (B,) int, or None for `null_label`). It holds no
        weights, so `samplers.sample(m.model_fn, ..., args=m.params)` compiles once for any parameter values.
      process: the `schedules.Process` the checkpoint was trained for.
      prediction: what the network predicts, one of `models.predictions.KINDS`.
      timestep: timestep(t) -> the network's time input at framework time t: the (fractional) DDPM step index
        `process.discrete_index(t)` = N t - 1 for a beta-table checkpoint (diffusers, guided-diffusion),
        `process.sigma(t)` for an NCSN++ VE one, 999 t for a score_sde VP one, t itself (EDM's sigma) for an EDM one.
      image_shape: (H, W, C) of the images the checkpoint was trained on.
      num_classes: the number of label embeddings of a class-conditional network (labels 0..num_classes-1), else None.
      null_label: the label that means "no class" (for classifier-free guidance), where the checkpoint has one and
        the caller named it, else None.
      config: the network's architecture, a hashable frozen dataclass of its layout
        (`models.pretrained.unet2d.UNet2DConfig`, `models.pretrained.edm.EDMConfig`, `models.pretrained.adm.ADMConfig`).
      source: the file or folder it was read from; layout: the `models.pretrained.LAYOUTS` name it was read as.
      latent_shape: for a latent model (DiT, SiT), the (h, w, C) of the latents it samples, image_shape being the
        decoded images'; None for a pixel-space model, which samples image_shape.
      decode: for a latent model with its VAE, decode(z) -> images in about [-1, 1] from diffusion latents (it
        divides by the VAE's scaling factor itself); else None. It is `functools.partial(fn, vae_params)` of the
        VAE's jitted fn(params, z) (`models.pretrained.vae.decode_fn`), so a compiled program can call `decode.func`
        with the weights `decode.args[0]` as a traced argument rather than baked-in constants.
      guidance_mask: the channels the checkpoint's own classifier-free guidance guides (a tuple of bools, for
        `samplers.guided(..., channel_mask=m.guidance_mask)`; DiT's and SiT's code guide channels 0-2 of 4); None: all.
      variance_model_fn: for a network with a learned variance (guided-diffusion's and DiT's learn_sigma), model_fn
        with all 2C output channels, [prediction | v], for `samplers.get_solver("ddpm", variance="learned")` (the
        published ancestral sampler); None otherwise.
    """

    params: PyTree
    apply: ApplyFn
    model_fn: ModelFn
    process: Process
    prediction: str
    timestep: TimestepFn
    image_shape: Shape
    num_classes: int | None = None
    null_label: int | None = None
    config: Hashable | None = None
    source: str = ""
    layout: str = ""
    latent_shape: Shape | None = None
    decode: Callable[[jax.Array], jax.Array] | None = None
    guidance_mask: tuple[bool, ...] | None = None
    variance_model_fn: ModelFn | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedClassifier:
    """A published noisy classifier p(y | x_t) in the framework's conventions (guided-diffusion's ImageNet ones).

    Attributes:
      params: the weights, a pytree of jnp float32 arrays.
      apply: apply(params, x, timestep) -> logits (B, num_classes) at the checkpoint's own time input.
      classifier_fn: classifier_fn(x, t, params) -> logits in the framework's time, `apply(params, x, timestep(t))`
        with t a scalar or (B,): the `classifier_fn` of `samplers.classifier_guided`.
      process: the process of the diffusion it was trained on (its time mapping).
      timestep: timestep(t) -> the network's time input, as for `Pretrained`.
      image_shape: (H, W, C) of its inputs; num_classes: the number of logits.
      config, source, layout: as for `Pretrained`.
    """

    params: PyTree
    apply: ApplyFn
    classifier_fn: ModelFn
    process: Process
    timestep: TimestepFn
    image_shape: Shape
    num_classes: int
    config: Hashable | None = None
    source: str = ""
    layout: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedFlow:
    """A published normalizing flow (Apple's TarFlow) in the framework's conventions.

    Attributes:
      flow: the `models.tarflow.TarFlow` module configured as the checkpoint's architecture: `flow.apply(params, x,
        y)` -> (z, log|det|), `samplers.causal.invert(flow, params, z, y, ...)` and `models.tarflow.denoise(flow,
        params, x, noise_std, y)` take it as it is.
      params: its variables, {"params": {...}} (jnp float32 arrays).
      image_shape: (H, W, C) of the images it models; num_classes: its class count, or None if unconditional.
      noise_std: the standard deviation of the noise added to the training data (the denoising step's sigma), when
        the converted folder records it, else None.
      config: the reference constructor's arguments (a dict, as config.json's init_kwargs).
      source, layout: as for `Pretrained`.
    """

    flow: TarFlow
    params: PyTree
    image_shape: Shape
    num_classes: int | None = None
    noise_std: float | None = None
    config: dict | None = None
    source: str = ""
    layout: str = ""


# The network's time label for t on the process: the discrete index (DDPM tables), sigma(t) (VE), or 999 t
# (score_sde's continuous VP label). name -> label(process, t).
TIME_INPUTS = Registry("time_input", {"index": lambda process, t: process.discrete_index(t),
                                      "sigma": lambda process, t: process.sigma(t),
                                      "t999": lambda process, t: 999.0 * jnp.asarray(t)},
                       ordered=True, unknown="unknown {kind} {name!r}; valid: {valid}")


@functools.lru_cache(maxsize=32)
def make_functions(config: NetworkConfig, process: Process, time_input: str, num_classes: int | None,
                   null_label: int | None, network: type = UNet2D,
                   model_channels: int | None = None) -> tuple[TimestepFn, ApplyFn, ModelFn]:
    """(timestep, apply, model_fn) of the `network` (a flax module class, built as network(config)) on `process`
    (see `Pretrained`); time_input "index" (the network takes `process.discrete_index(t)`), "sigma"
    (`process.sigma(t)`) or "t999" (999 t, score_sde's continuous VP label). model_fn keeps the first
    `model_channels` output channels when given (guided-diffusion's learned sigma: [eps | v], apply returns both).
    Cached on these (hashable) arguments: checkpoints of one architecture and process (two loads, EMA and raw
    weights) share the same function objects, hence jax's and the samplers' compiled programs."""
    label = TIME_INPUTS.lookup(time_input)
    net = network(config)

    def kept(out):
        return out if model_channels is None else out[..., :model_channels]

    def timestep(t):
        return label(process, t)

    def apply(params, x, t_input, class_labels=None):
        if num_classes is not None and class_labels is None:
            if null_label is None:
                raise ValueError(f"this network is class-conditional ({num_classes} classes) and has no null label: "
                                 "pass class_labels (or load with null_label=...)")
            class_labels = null_label
        return net.apply({"params": params}, x, batch_times(t_input, x.shape[0]), class_labels)

    if num_classes is None:
        def model_fn(x, t, args):
            return kept(apply(args, x, timestep(batch_times(t, x.shape[0]))))
    else:
        def model_fn(x, t, args):
            params, labels = split_conditional_args(args, num_classes)
            return kept(apply(params, x, timestep(batch_times(t, x.shape[0])), labels))

    return timestep, apply, model_fn


def batch_times(t: ArrayLike, batch: int) -> jax.Array:
    """t (a scalar, (B,), or (B, 1, ..., 1)) as a (batch,) array."""
    t = jnp.asarray(t)
    if t.ndim:
        t = jnp.reshape(t, (t.shape[0],))
    return jnp.broadcast_to(t, (batch,))


def read_converted_config(path: str, layout: str, how: str) -> tuple[dict, str, str]:
    """(config.json's contents, its path, model.safetensors' path) of a folder that scripts/convert_checkpoint.py
    wrote for `layout`; ValueError naming the file, and `how` it is converted, when config.json names another."""
    config_file = os.path.join(path, "config.json")
    raw = read_json(config_file)
    if not isinstance(raw, dict) or raw.get("layout") != layout:
        found = raw.get("layout") if isinstance(raw, dict) else None
        raise ValueError(f"{config_file}: layout {found!r} is not {layout!r}; {how}")
    return raw, config_file, os.path.join(path, "model.safetensors")


def check_weights(found: dict[str, Shape], expected: dict[str, Shape], source: str, origin: str) -> None:
    """Raise ValueError naming `source` and the key unless `found` and `expected` ({name: shape}) have the same
    names and shapes. `origin` says where the expected shapes come from (e.g. "config.json")."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) the {origin} needs: {_first(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected key(s) the {origin} has no place for: {_first(extra)}")
        raise ValueError(f"{source}: " + "; ".join(parts))
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise ValueError(f"{source}: parameter {name!r} has shape {tuple(found[name])}, expected "
                             f"{tuple(expected[name])} (from the {origin})")


def _first(names, count=8):
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")
