"""Published checkpoints as Flax models in the framework's conventions: `load(path, **options) -> Pretrained`.

    m = models.pretrained.load("path/to/ddpm-cifar10-32")          # a diffusers pipeline root or UNet folder
    m = models.pretrained.load("ckpt/checkpoint_48", layout="score_sde", config="ve/church_ncsnpp_continuous")
    x, info = samplers.sample(m.model_fn, "ddim", m.process, x_init, ts, prediction=m.prediction, args=m.params)

Layouts (`LAYOUTS`): "diffusers" (`models.pretrained.diffusers`: a UNet2DModel config.json with
diffusion_pytorch_model.safetensors and a scheduler_config.json) and "score_sde" (`models.pretrained.score_sde`: a
flax msgpack `checkpoint_N` of Song et al.'s code, with the model config named by the caller) and "score_sde_pytorch"
(`models.pretrained.score_sde_pytorch`: a `checkpoint_N.pth` of the PyTorch port, converted once by
scripts/convert_checkpoint.py into config.json + model.safetensors), all three giving the Flax network
`models.pretrained.unet2d.UNet2D`; "edm" (`models.pretrained.edm`: a folder converted from an EDM network pickle by
scripts/convert_checkpoint.py; EDM's preconditioned networks); "guided_diffusion" (`models.pretrained.guided_diffusion`:
a folder converted by scripts/convert_checkpoint.py) gives ADM's `models.pretrained.adm.ADMUNet`, or for a noisy
classifier a `PretrainedClassifier` (`classifier_fn` for `samplers.classifier_guided`); "dit", "sit" (folders
converted from DiT's / SiT's `.pt`) and "diffusers_dit" (a DiTPipeline root) give latent transformers
(`models.pretrained.latent`: `models.dit.DiT` with the SD VAE's `decode`, `latent_shape`, `guidance_mask`):

    c = models.pretrained.load("converted/64x64_classifier")
    fn = samplers.classifier_guided(m.model_fn, c.classifier_fn, 1.0, process=m.process)
    x, info = samplers.sample(fn, "ddim", m.process, x_init, ts, args=((m.params, labels), (c.params, labels)))

"tarflow" (`models.pretrained.ml_tarflow`: a folder converted from Apple's TarFlow `.pth` by
scripts/convert_checkpoint.py) gives a `PretrainedFlow`, a `models.tarflow.TarFlow` and its variables:

    m = models.pretrained.load("converted/afhq_tarflow")
    x, info = samplers.causal.invert(m.flow, m.params, z, labels, plan="sequential", guidance=1.5)

A converted folder's config.json names its layout. Only safe formats are read: safetensors, JSON and msgpack, never
pickle (scripts/convert_to_safetensors.py and
scripts/convert_checkpoint.py convert a torch file once).
"""

from __future__ import annotations

import os
from typing import Any

from fastsamplers.core import Registry, read_json
from fastsamplers.models.pretrained import (diffusers, edm, guided_diffusion, latent, ml_tarflow, score_sde,
                                            score_sde_pytorch)
from fastsamplers.models.pretrained.model import Pretrained, PretrainedClassifier, PretrainedFlow
from fastsamplers.models.pretrained.unet2d import UNet2D, UNet2DConfig

# layout -> its loader, load(path, **options) -> Pretrained.
LAYOUTS = Registry("layout", {"diffusers": diffusers.load, "score_sde": score_sde.load,
                              "score_sde_pytorch": score_sde_pytorch.load, "edm": edm.load,
                              "guided_diffusion": guided_diffusion.load, "dit": latent.load_dit, "sit": latent.load_sit,
                              "diffusers_dit": latent.load_diffusers, "tarflow": ml_tarflow.load}, ordered=True,
                   unknown="unknown {kind} {name!r}; valid layouts: {valid}")

__all__ = ["LAYOUTS", "Pretrained", "PretrainedClassifier", "PretrainedFlow", "UNet2D", "UNet2DConfig", "load",
           "detect_layout"]


def detect_layout(path: str) -> str:
    """The layout a converted folder's config.json names ({"layout": ...}, as scripts/convert_checkpoint.py writes
    it), else "diffusers_dit" for a DiTPipeline root (transformer/config.json of a DiTTransformer2DModel) or its
    transformer folder, "diffusers" for a folder with config.json (or unet/config.json), "score_sde" for a
    `checkpoint_N` file or a folder of them, "score_sde_pytorch" for a `checkpoint_N.pth` (whose loader says how to
    convert it); FileNotFoundError otherwise."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        raw = read_json(config) if os.path.isfile(config) else None
        if isinstance(raw, dict) and "layout" in raw:
            try:
                return LAYOUTS.check(raw["layout"])
            except ValueError as error:  # the sentence, naming the file
                raise ValueError(f"{config}: {error}") from None
        if latent.transformer_folder(path) is not None:
            return "diffusers_dit"
        if raw is not None or os.path.isfile(os.path.join(path, "unet", "config.json")):
            return "diffusers"
        if score_sde.checkpoint_files(path):
            return "score_sde"
        raise FileNotFoundError(f"{path}: neither a diffusers folder (config.json or unet/config.json) nor a score_sde "
                                "checkpoint folder (checkpoint_N files)")
    if os.path.basename(path).startswith("checkpoint_"):  # score_sde's (msgpack) or score_sde_pytorch's (.pth)
        return "score_sde_pytorch" if path.endswith(".pth") else "score_sde"
    raise FileNotFoundError(f"{path}: not a diffusers folder nor a score_sde checkpoint_N file; pass layout=... "
                            f"(one of {list(LAYOUTS)})")


def load(path: str, layout: str | None = None, **options: Any) -> Pretrained | PretrainedClassifier | PretrainedFlow:
    """Load a published checkpoint.

    Args:
      path: a diffusers UNet folder / pipeline root, a score_sde `checkpoint_N` file (or its folder), or a folder
        written by scripts/convert_checkpoint.py.
      layout: one of `LAYOUTS`; None detects it from the files (`detect_layout`).
      **options: the layout's loader options: `models.pretrained.diffusers.load` (null_label, scheduler_config,
        variant, image_size) or `models.pretrained.score_sde.load` (config, image_size, params, and score_sde model
        config keys), or `models.pretrained.score_sde_pytorch.load` (score_sde config keys).

    Returns:
      A `Pretrained`: params, apply, model_fn, process, prediction, timestep, image_shape, num_classes, null_label;
      for a guided-diffusion classifier folder a `PretrainedClassifier` (params, apply, classifier_fn, ...); for a
      tarflow folder a `PretrainedFlow` (flow, params, image_shape, num_classes, noise_std, ...).

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    loader = LAYOUTS.lookup(detect_layout(path) if layout is None else layout)
    return loader(path, **options)
