"""Convert a published PyTorch checkpoint, once, into the folder `models.pretrained.load` reads.

    python scripts/convert_checkpoint.py SOURCE OUT_FOLDER --layout edm|guided_diffusion|score_sde_pytorch [options]

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
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def save(folder: str, config: dict, state: dict) -> None:
    """Write config.json and model.safetensors (each tensor contiguous, float32 unless integer) into `folder`."""
    import torch
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


# --- guided_diffusion ------------------------------------------------------------------------------------------------

# script_util.py's model_and_diffusion_defaults() and classifier_defaults(), as create_model / create_classifier /
# create_gaussian_diffusion name their arguments ("steps", not the scripts' "diffusion_steps"); each preset is the
# released file's flags from guided-diffusion's README over these.
_GD_MODEL = dict(image_size=64, num_channels=128, num_res_blocks=2, channel_mult="", learn_sigma=False, class_cond=False,
                 use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=False, use_fp16=False,
                 use_new_attention_order=False)
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
        sys.exit(f"--layout guided_diffusion needs --preset (one of {sorted(GUIDED_DIFFUSION_PRESETS)}) or --flags JSON")
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


# layout -> convert(source, out_folder, args), which reads the options `add_options` declares.
CONVERTERS = {"guided_diffusion": convert_guided_diffusion}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("guided_diffusion")
    group.add_argument("--preset", help="guided_diffusion: the released checkpoint's name, one of "
                       f"{sorted(GUIDED_DIFFUSION_PRESETS)}")
    group.add_argument("--flags", help="guided_diffusion: JSON text or file {\"model_flags\" or \"classifier_flags\": "
                       "{create_model's / create_classifier's arguments}, \"diffusion_flags\": "
                       "{create_gaussian_diffusion's}}, over the preset's if both are given")


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
