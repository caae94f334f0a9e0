"""Convert a published PyTorch checkpoint, once, into the folder `models.pretrained.load` reads.

    python scripts/convert_checkpoint.py SOURCE OUT_FOLDER --layout edm|guided_diffusion|score_sde_pytorch|dit|sit [...]

Runs where torch is installed: it imports only torch, safetensors and numpy (none of the JAX stack), so a torch-only
environment will do. It writes OUT_FOLDER/config.json (the layout and the network's configuration) and
OUT_FOLDER/model.safetensors (the weights under the reference code's own parameter names), the converted layouts
that `models.pretrained` documents. Each layout's conversion is one function of `CONVERTERS`:

  edm                an EDM network pickle (NVlabs/edm `network-snapshot-*.pkl` / `edm-*.pkl`). Those pickles embed
                     their classes, so unpickling needs EDM's repository importable (`--edm-repo PATH`); this script
                     is the only place the project opens a pickle, and only on this explicit request.
  guided_diffusion   a guided-diffusion state dict (`64x64_diffusion.pt`, `64x64_classifier.pt`, ...), read with
                     torch.load(weights_only=True); the flags the checkpoint was made with are named by a preset or
                     given as JSON.
  score_sde_pytorch  a score_sde_pytorch `checkpoint_N.pth` (weights_only=True): its EMA weights under parameter
                     names, with the run's config named as for the flax checkpoints.
  dit, sit           a released DiT / SiT `.pt` state dict (weights_only=True), its model named by a preset
                     (--model DiT-XL/2 --image-size 256), the SD VAE recorded by name or copied from a diffusers folder.
  tarflow            an Apple TarFlow state dict (`afhq_model_8_768_8_8_0.07.pth`, weights_only=True); the Model's
                     constructor arguments from --preset, --init-kwargs JSON, or the file name
                     `{ds}_model_{p}_{D}_{blocks}_{layers}_{sigma}.pth`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def save(folder: str, config: dict, state: dict) -> None:
    """Write config.json and model.safetensors (each tensor contiguous, float32 unless integer) into `folder`."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, value in state.items():
        value = value.detach().cpu()
        tensors[name] = (value if not value.is_floating_point() else value.float()).contiguous().clone()
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    print(f"wrote {len(tensors)} tensors and config.json ({config['layout']}) to {folder}")


# --- edm -------------------------------------------------------------------------------------------------------------

EDM_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")  # training/networks.py's preconditioners


def _jsonable(value):
    """EDM's init_kwargs (EasyDicts, tuples, numpy scalars) as plain JSON values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"init_kwargs holds a {type(value).__name__} ({value!r}), which JSON cannot hold")


def convert_edm(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """An EDM network pickle (dict(ema=<preconditioned network>, ...), as EDM's training loop writes it,
    training_loop.py:179) -> config.json {"layout": "edm", "class_name", "init_kwargs"} and the network's state_dict.
    Unpickling runs EDM's code (the pickle embeds its classes), from the checkout `args.edm_repo`."""
    if not args.edm_repo:
        sys.exit("--layout edm needs --edm-repo PATH (a checkout of github.com/NVlabs/edm): EDM's network pickles "
                 "embed their classes and unpickling them imports EDM's dnnlib and torch_utils; this is the only "
                 "pickle the project ever opens, and only on this explicit request")
    sys.path.insert(0, os.path.abspath(args.edm_repo))
    try:
        import dnnlib  # noqa: F401
        import torch_utils.persistence  # noqa: F401
    except ImportError as error:
        sys.exit(f"--edm-repo {args.edm_repo}: cannot import EDM's dnnlib and torch_utils ({error}), which unpickling "
                 "an EDM network pickle needs; point it at a checkout of github.com/NVlabs/edm")
    import pickle

    with open(source, "rb") as f:
        data = pickle.load(f)  # the one pickle the project opens: an EDM network, on the user's explicit request
    net = data.get("ema") if isinstance(data, dict) else None
    if type(net).__name__ not in EDM_CLASSES or not hasattr(net, "init_kwargs"):
        sys.exit(f"{source}: not an EDM network pickle: expected a dict whose 'ema' is one of {list(EDM_CLASSES)} "
                 f"made by EDM's persistence, found {type(data).__name__}"
                 + (f" with ema={type(net).__name__}" if isinstance(data, dict) else ""))
    if net.init_args:
        sys.exit(f"{source}: {type(net).__name__} was built with positional arguments {net.init_args}; EDM's "
                 "training builds its networks with keywords only, and config.json records keywords")
    config = {"layout": "edm", "class_name": type(net).__name__, "init_kwargs": _jsonable(dict(net.init_kwargs))}
    save(out_folder, config, net.state_dict())


# --- guided_diffusion ------------------------------------------------------------------------------------------------

# script_util.py's model_and_diffusion_defaults() and classifier_defaults(), as create_model / create_classifier /
# create_gaussian_diffusion name their arguments ("steps", not the scripts' "diffusion_steps"); each preset is the
# released file's flags from guided-diffusion's README over these.
_GD_MODEL = dict(image_size=64, num_channels=128, num_res_blocks=2, channel_mult="", learn_sigma=False,
                 class_cond=False, use_checkpoint=False, attention_resolutions="16,8", num_heads=4,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
                 resblock_updown=False, use_fp16=False, use_new_attention_order=False)
_GD_CLASSIFIER = dict(image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                      classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                      classifier_resblock_updown=True, classifier_pool="attention")
_GD_DIFFUSION = dict(steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False,
                     predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing="")
_GD_RELEASED = dict(attention_resolutions="32,16,8", learn_sigma=True, num_channels=256, num_head_channels=64,
                    num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)
_GD_LSUN = dict(_GD_RELEASED, image_size=256, dropout=0.1)


def _gd_model(noise_schedule="linear", **flags):
    return {"model_flags": dict(_GD_MODEL, **flags),
            "diffusion_flags": dict(_GD_DIFFUSION, learn_sigma=flags.get("learn_sigma", False),
                                    noise_schedule=noise_schedule)}


def _gd_classifier(noise_schedule="linear", **flags):
    return {"classifier_flags": dict(_GD_CLASSIFIER, **flags),
            "diffusion_flags": dict(_GD_DIFFUSION, noise_schedule=noise_schedule)}


# The released checkpoints (openaipublic.blob.core.windows.net/diffusion/jul-2021/NAME.pt), README.md's MODEL_FLAGS.
# A classifier's diffusion_flags only give its time mapping (step n at t = (n + 1) / steps); its noise schedule is
# its diffusion model's.
GUIDED_DIFFUSION_PRESETS = {
    "64x64_diffusion": _gd_model("cosine", **dict(_GD_RELEASED, image_size=64, num_channels=192, num_res_blocks=3,
                                                  class_cond=True, dropout=0.1, use_new_attention_order=True)),
    "128x128_diffusion": _gd_model(**dict(_GD_RELEASED, image_size=128, class_cond=True, num_heads=4,
                                          num_head_channels=-1)),
    "256x256_diffusion": _gd_model(**dict(_GD_RELEASED, image_size=256, class_cond=True)),
    "256x256_diffusion_uncond": _gd_model(**dict(_GD_RELEASED, image_size=256, class_cond=False)),
    "512x512_diffusion": _gd_model(**dict(_GD_RELEASED, image_size=512, class_cond=True, use_fp16=False)),
    "lsun_bedroom": _gd_model(**_GD_LSUN),
    "lsun_cat": _gd_model(**_GD_LSUN),
    "lsun_horse": _gd_model(**_GD_LSUN),
    "lsun_horse_nodropout": _gd_model(**dict(_GD_LSUN, dropout=0.0)),
    "64x64_classifier": _gd_classifier("cosine", image_size=64, classifier_depth=4),
    "128x128_classifier": _gd_classifier(image_size=128, classifier_use_fp16=True),
    "256x256_classifier": _gd_classifier(image_size=256, classifier_use_fp16=True),
    "512x512_classifier": _gd_classifier(image_size=512, classifier_use_fp16=True),
}


def guided_diffusion_config(preset: str | None, flags: str | None) -> dict:
    """The converted folder's config.json: a preset's flags, updated section by section by `flags` (JSON text or a
    JSON file: {"model_flags" or "classifier_flags": {...}, "diffusion_flags": {...}})."""
    if preset is None and flags is None:
        sys.exit(f"--layout guided_diffusion needs --preset (one of {sorted(GUIDED_DIFFUSION_PRESETS)}) or "
                 "--flags JSON")
    if preset is not None and preset not in GUIDED_DIFFUSION_PRESETS:
        sys.exit(f"unknown guided_diffusion preset {preset!r}; valid presets: {sorted(GUIDED_DIFFUSION_PRESETS)}")
    config = json.loads(json.dumps(GUIDED_DIFFUSION_PRESETS[preset])) if preset else {}
    if flags is not None:
        try:
            given = json.load(open(flags)) if os.path.isfile(flags) else json.loads(flags)
        except (OSError, ValueError) as error:
            sys.exit(f"--flags must be JSON text or a JSON file ({error})")
        sections = ("model_flags", "classifier_flags", "diffusion_flags")
        if not isinstance(given, dict) or not set(given) <= set(sections):
            sys.exit(f"--flags must be a JSON object with keys among {list(sections)}")
        for key, value in given.items():
            config[key] = {**config.get(key, {}), **value}
    if ("model_flags" in config) == ("classifier_flags" in config) or "diffusion_flags" not in config:
        sys.exit("a guided_diffusion config holds diffusion_flags and exactly one of model_flags or classifier_flags")
    return {"layout": "guided_diffusion", **config}


def convert_guided_diffusion(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """A guided-diffusion state dict (a plain dict of tensors) and its flags -> the converted folder."""
    import torch

    config = guided_diffusion_config(args.preset, args.flags)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and torch.is_tensor(v)
                                                      for k, v in state.items())):
        sys.exit(f"{source}: not a guided-diffusion state dict (a dict of parameter name -> tensor)")
    save(out_folder, config, state)


# --- score_sde_pytorch -----------------------------------------------------------------------------------------------

# What NCSNpp's state dict holds besides its trainable parameters (the EMA's shadow_params are those, in
# registration order, models/ema.py:30): the `sigmas` buffer (models/ncsnpp.py:41, rebuilt from the config by the
# loader, so not written) and the Gaussian Fourier `W` (requires_grad=False, models/layerspp.py:37; always the first
# module, ncsnpp.py:73), which the network needs and which only 'model' holds.
SCORE_SDE_BUFFERS = ("sigmas",)
SCORE_SDE_FOURIER = "all_modules.0.W"


def score_sde_weights(checkpoint: dict, params: str = "ema") -> dict:
    """{name: tensor} of a score_sde_pytorch training state ({'model', 'ema', 'optimizer', 'step'}, utils.py:22-29)
    under the network's names (DataParallel's `module.` stripped, `sigmas` dropped): the EMA shadow params zipped
    with the trainable names in order, plus the Fourier W, for params="ema"; the raw weights for params="model".
    Raises ValueError, one sentence, on a file that is not such a state or whose EMA list does not fit."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"not a score_sde_pytorch checkpoint: expected a dict with 'model' (a state dict), 'ema', "
                         f"'optimizer' and 'step' as its utils.save_checkpoint writes, got {found}")
    model = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint["model"].items()}
    model = {k: v for k, v in model.items() if k not in SCORE_SDE_BUFFERS}
    if params == "model":
        return model
    ema = checkpoint.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, (list, tuple)):
        raise ValueError("the checkpoint has no EMA weights ('ema': {'shadow_params': [...]}); pass --params model "
                         "to convert the raw weights")
    trainable = [k for k in model if k != SCORE_SDE_FOURIER]
    if len(trainable) != len(shadow):
        raise ValueError(f"the EMA holds {len(shadow)} tensors but the model has {len(trainable)} trainable "
                         f"parameters (its state dict less the sigmas buffer and the Fourier W), so the EMA weights "
                         f"cannot be named; pass --params model to convert the raw weights")
    out = {}
    for name, value in zip(trainable, shadow):
        if tuple(value.shape) != tuple(model[name].shape):
            raise ValueError(f"EMA tensor {len(out)} has shape {tuple(value.shape)} but the model's parameter "
                             f"{name!r} in the same place has {tuple(model[name].shape)}: the EMA list is not in "
                             f"the model's order; pass --params model to convert the raw weights")
        out[name] = value
    if SCORE_SDE_FOURIER in model:
        out[SCORE_SDE_FOURIER] = model[SCORE_SDE_FOURIER]
    return out


def convert_score_sde_pytorch(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """A score_sde_pytorch `checkpoint_N.pth` -> config.json {"layout", "config"} + model.safetensors."""
    import torch

    if (args.config is None) == (args.config_json is None):
        sys.exit("score_sde_pytorch: name the run's config, either --config NAME (e.g. "
                 "vp/cifar10_ddpmpp_deep_continuous, as models/pretrained/score_sde.py PRESETS spells them) or "
                 "--config-json FILE (score_sde config keys)")
    if args.config_json is not None:
        with open(args.config_json) as f:
            config = json.load(f)
    else:
        config = args.config
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)  # plain dicts, lists and tensors
    try:
        state = score_sde_weights(checkpoint, args.params)
    except ValueError as error:
        sys.exit(f"{source}: {error}")
    save(out_folder, {"layout": "score_sde_pytorch", "config": config}, state)


# --- dit / sit -------------------------------------------------------------------------------------------------------

DIT_KEYS = ("depth", "hidden_size", "patch_size", "num_heads", "mlp_ratio")  # DiT/models.py's constructor keys


def _dit_model(text: str | None, layout: str):
    """--model: a preset name ("DiT-XL/2", "SiT-XL/2", ...: models/pretrained/latent.py PRESETS checks it on load) or
    JSON text {depth, hidden_size, patch_size, num_heads[, mlp_ratio]}."""
    if not text:
        family = {"dit": "DiT", "sit": "SiT"}[layout]
        sys.exit(f"--layout {layout} needs --model: a preset such as {family}-XL/2 or JSON with keys "
                 "depth, hidden_size, patch_size, num_heads")
    if not text.lstrip().startswith("{"):
        return text
    model = json.loads(text)
    if set(model) - set(DIT_KEYS) or set(DIT_KEYS[:4]) - set(model):
        sys.exit(f"--model {text}: keys must be {list(DIT_KEYS[:4])} and optionally mlp_ratio")
    return model


def convert_dit(source: str, out_folder: str, args: argparse.Namespace, layout: str = "dit") -> None:
    """A released DiT (or SiT) `.pt`, a plain state dict (DiT/download.py; train.py's checkpoints hold it under
    "ema", also accepted) read with torch.load(weights_only=True) -> config.json {"layout", "model", "input_size",
    "in_channels", "num_classes", "learn_sigma", "vae"} and the state dict under its own names; `--vae FOLDER` copies
    a diffusers AutoencoderKL folder (already safetensors) into OUT_FOLDER/vae, `--vae ema|mse` records which one the
    checkpoint samples with."""
    import shutil

    import torch

    model = _dit_model(args.model, layout)
    if args.image_size % 8:
        sys.exit(f"--image-size {args.image_size} is not divisible by 8 (the SD VAE's factor)")
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "ema" in state and isinstance(state["ema"], dict):
        state = state["ema"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        sys.exit(f"{source}: not a state dict of tensors (nor a training checkpoint with \"ema\")")
    vae_name = args.vae if args.vae in ("ema", "mse") else None
    config = {"layout": layout, "model": model, "input_size": args.image_size // 8, "in_channels": 4,
              "num_classes": args.num_classes, "learn_sigma": args.learn_sigma == "true", "vae": vae_name}
    save(out_folder, config, state)
    if args.vae and vae_name is None:
        files = ("config.json", "diffusion_pytorch_model.safetensors")
        if not all(os.path.isfile(os.path.join(args.vae, f)) for f in files):
            sys.exit(f"--vae {args.vae}: neither ema / mse nor a diffusers AutoencoderKL folder ({', '.join(files)})")
        os.makedirs(os.path.join(out_folder, "vae"), exist_ok=True)
        for f in files:
            shutil.copyfile(os.path.join(args.vae, f), os.path.join(out_folder, "vae", f))
        print(f"copied the VAE {args.vae} to {os.path.join(out_folder, 'vae')}")


def convert_sit(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """A released SiT `.pt` (SiT-XL-2-256x256.pt): as `convert_dit`, layout "sit"."""
    convert_dit(source, out_folder, args, layout="sit")


# --- tarflow ---------------------------------------------------------------------------------------------------------

# name -> (Model's init_kwargs, the training noise sigma_n): the released AFHQ model and the paper's ImageNet configs,
# named as train.py would name them (ml-tarflow README.md:44-72, train.py:88; REFERENCES_CHECKPOINTS.md section 3).
TARFLOW_PRESETS = {
    "afhq_model_8_768_8_8_0.07": (dict(in_channels=3, img_size=256, patch_size=8, channels=768, num_blocks=8,
                                       layers_per_block=8, num_classes=3), 0.07),
    "imagenet64_model_2_768_8_8_0.05": (dict(in_channels=3, img_size=64, patch_size=2, channels=768, num_blocks=8,
                                             layers_per_block=8, num_classes=0), 0.05),
    "imagenet_model_2_768_8_8_0.05": (dict(in_channels=3, img_size=64, patch_size=2, channels=768, num_blocks=8,
                                           layers_per_block=8, num_classes=1000), 0.05),
    "imagenet_model_4_1024_8_8_0.15": (dict(in_channels=3, img_size=128, patch_size=4, channels=1024, num_blocks=8,
                                            layers_per_block=8, num_classes=1000), 0.15),
}
# train.py's file names (train.py:88): {dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise_std:.2f}
TARFLOW_NAME = re.compile(r"(?P<ds>[a-z0-9]+)_model_(?P<p>\d+)_(?P<D>\d+)_(?P<blocks>\d+)_(?P<layers>\d+)_"
                          r"(?P<sigma>\d+(?:\.\d+)?)$")
# dataset -> what the name leaves out: classes, and the image size where the dataset has one ("imagenet" is trained
# at 64 and 128 px, README.md:56-66, so its size comes from --init-kwargs)
TARFLOW_DATASETS = {"afhq": dict(img_size=256, num_classes=3), "imagenet64": dict(img_size=64, num_classes=0),
                    "imagenet": dict(num_classes=1000)}
TARFLOW_REQUIRED = ("in_channels", "img_size", "patch_size", "channels", "num_blocks", "layers_per_block")


def tarflow_config(source: str, preset: str | None, init_kwargs: str | None) -> dict:
    """The converted folder's config.json, {"layout": "tarflow", "init_kwargs", "noise_std"}: the preset's (or the
    file name's) arguments, updated by --init-kwargs (JSON text or file; a "noise_std" key sets noise_std)."""
    if preset is not None and preset not in TARFLOW_PRESETS:
        sys.exit(f"unknown tarflow preset {preset!r}; valid presets: {sorted(TARFLOW_PRESETS)}")
    name = os.path.splitext(os.path.basename(source))[0]
    match = TARFLOW_NAME.match(name)
    kwargs, noise_std = {}, None
    if preset is not None or name in TARFLOW_PRESETS:
        kwargs, noise_std = TARFLOW_PRESETS[preset or name]
    elif match and match["ds"] in TARFLOW_DATASETS:
        kwargs = dict(in_channels=3, patch_size=int(match["p"]), channels=int(match["D"]),
                      num_blocks=int(match["blocks"]), layers_per_block=int(match["layers"]),
                      **TARFLOW_DATASETS[match["ds"]])
        noise_std = float(match["sigma"])
    if init_kwargs is not None:
        try:
            given = json.load(open(init_kwargs)) if os.path.isfile(init_kwargs) else json.loads(init_kwargs)
        except (OSError, ValueError) as error:
            sys.exit(f"--init-kwargs must be JSON text or a JSON file ({error})")
        if not isinstance(given, dict):
            sys.exit("--init-kwargs must be a JSON object of transformer_flow.Model's constructor arguments")
        noise_std = given.pop("noise_std", noise_std)
        kwargs = {**kwargs, **given}
    missing = [k for k in TARFLOW_REQUIRED if k not in kwargs]
    if missing:
        sys.exit(f"--layout tarflow: the Model's arguments {missing} are unknown for {name!r}: pass --preset (one of "
                 f"{sorted(TARFLOW_PRESETS)}) or --init-kwargs JSON (file names {{dataset}}_model_{{p}}_{{D}}_"
                 f"{{blocks}}_{{layers}}_{{sigma}} with a dataset among {sorted(TARFLOW_DATASETS)} give the rest)")
    return {"layout": "tarflow", "init_kwargs": kwargs, "noise_std": noise_std}


def convert_tarflow(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """An Apple TarFlow state dict (train.py:144's torch.save(model.state_dict())) -> the converted folder."""
    import torch

    config = tarflow_config(source, args.preset, args.init_kwargs)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # a DistributedDataParallel's names
    if not (isinstance(state, dict) and "var" in state and all(isinstance(k, str) and torch.is_tensor(v)
                                                               for k, v in state.items())):
        sys.exit(f"{source}: not a TarFlow state dict (a dict of parameter name -> tensor with the prior's 'var')")
    save(out_folder, config, state)


# layout -> convert(source, out_folder, args), which reads the options `add_options` declares.
CONVERTERS = {"edm": convert_edm, "guided_diffusion": convert_guided_diffusion,
              "score_sde_pytorch": convert_score_sde_pytorch, "dit": convert_dit, "sit": convert_sit,
              "tarflow": convert_tarflow}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("edm")
    group.add_argument("--edm-repo", default=None,
                       help="edm: a checkout of github.com/NVlabs/edm; unpickling an EDM network pickle runs its code "
                            "(the only pickle this project opens, on this explicit request)")
    group = parser.add_argument_group("guided_diffusion")
    group.add_argument("--preset", help="guided_diffusion: the released checkpoint's name, one of "
                       f"{sorted(GUIDED_DIFFUSION_PRESETS)}; tarflow: one of {sorted(TARFLOW_PRESETS)}")
    group.add_argument("--flags", help="guided_diffusion: JSON text or file {\"model_flags\" or \"classifier_flags\": "
                       "{create_model's / create_classifier's arguments}, \"diffusion_flags\": "
                       "{create_gaussian_diffusion's}}, over the preset's if both are given")
    group = parser.add_argument_group("score_sde_pytorch")
    group.add_argument("--config", default=None, help="score_sde_pytorch: the run's config name (as "
                       "models/pretrained/score_sde.py PRESETS spells them, e.g. vp/cifar10_ddpmpp_deep_continuous)")
    group.add_argument("--config-json", default=None, help="score_sde_pytorch: a JSON file of the run's score_sde "
                       "config keys, in place of --config")
    group.add_argument("--params", default="ema", choices=("ema", "model"), help="score_sde_pytorch: the EMA "
                       "weights (default, what score_sde_pytorch samples with) or the raw ones")
    group = parser.add_argument_group("dit / sit")
    group.add_argument("--model", default=None, help="dit / sit: a preset (DiT-XL/2, DiT-B/4, SiT-XL/2, ...) or "
                       "JSON {depth, hidden_size, patch_size, num_heads[, mlp_ratio]}")
    group.add_argument("--image-size", type=int, default=256, help="dit / sit: the image size (256 or 512); the "
                       "latents are image_size // 8")
    group.add_argument("--num-classes", type=int, default=1000, help="dit / sit: label classes (the null label is "
                       "this number)")
    group.add_argument("--learn-sigma", default="true", choices=("true", "false"), help="dit / sit: 2C output "
                       "channels [eps | variance] (the released models: true)")
    group.add_argument("--vae", default=None, help="dit / sit: ema or mse (the sd-vae-ft-* the checkpoint samples "
                       "with, recorded), or a diffusers AutoencoderKL folder to copy into OUT_FOLDER/vae")
    group = parser.add_argument_group("tarflow")
    group.add_argument("--init-kwargs", default=None, help="tarflow: JSON text or file of transformer_flow.Model's "
                       "constructor arguments (and optionally noise_std), over the preset's or the file name's")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the published checkpoint file")
    parser.add_argument("out_folder", help="the folder to write config.json and model.safetensors into")
    parser.add_argument("--layout", required=True, help=f"one of {sorted(CONVERTERS)}")
    add_options(parser)
    args = parser.parse_args(argv)
    if args.layout not in CONVERTERS:
        sys.exit(f"unknown layout {args.layout!r}; valid layouts: {sorted(CONVERTERS)}")
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as error:
        sys.exit(f"convert_checkpoint needs torch and safetensors ({error}); install them in this environment "
                 "(`pip install torch safetensors numpy`)")
    if not os.path.isfile(args.source):
        sys.exit(f"no such file: {args.source}")
    CONVERTERS[args.layout](args.source, args.out_folder, args)


if __name__ == "__main__":
    main()
