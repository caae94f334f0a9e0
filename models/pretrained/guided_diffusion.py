"""guided-diffusion (openai, ADM) checkpoints: a converted folder of config.json and model.safetensors.

`scripts/convert_checkpoint.py --layout guided_diffusion` writes the folder from a released `.pt` state dict:
config.json = {"layout": "guided_diffusion", "model_flags": {...}, "diffusion_flags": {...}} for a diffusion model,
with "classifier_flags" in place of "model_flags" for a noisy classifier; model.safetensors = the state dict under
guided-diffusion's own names. The flags are the arguments of guided_diffusion/script_util.py's `create_model`
(`MODEL_FLAGS`), `create_classifier` (`CLASSIFIER_FLAGS`) and `create_gaussian_diffusion` (`DIFFUSION_FLAGS`; its
`steps` may also be given under the scripts' name `diffusion_steps`), with their meaning there: attention_resolutions
"32,16,8" are resolutions (ds = image_size // resolution), channel_mult "" is the image size's default
(script_util.py:148-158), class_cond gives 1000 classes. Missing keys take those functions' defaults
(create_classifier has none but classifier_use_fp16); the converter writes every key. channel_mult may also be a list
of numbers (not a script_util form: it allows the 512x512 default's 0.5 at other sizes), and classifier_flags may
hold one too (ours: create_classifier always takes the image size's default, which "" or no key gives, as for every
released classifier). dropout, use_checkpoint and use_fp16 do not change inference here (the network runs in
float32).

The model loads on the `vp_discrete` process of its betas (`get_named_beta_schedule`, gaussian_diffusion.py:18-42:
"linear" = linspace(1e-4, 0.02) scaled by 1000 / steps, "cosine" = the squared-cosine alpha-bar with beta <= 0.999;
both are diffusers' tables, `diffusers.alphas_cumprod`), step n at t = (n + 1) / steps (the network is fed
`process.discrete_index(t)`), prediction "eps" ("x0" with predict_xstart). With learn_sigma the network's 6 output
channels are [eps | v]: `Pretrained.apply` returns all of them, `model_fn` the eps ones (what every ODE solver uses),
`variance_model_fn` all of them in framework time, for the ancestral sampler with the learned variance
(`samplers.get_solver("ddpm", variance="learned")`, guided-diffusion's p_sample). timestep_respacing is a sampling
choice of the reference scripts and is ignored (the framework's grid picks the steps: the `respaced` grid is
guided-diffusion's); sigma_small, use_kl and rescale_learned_sigmas concern only the reverse variance and training.

A classifier folder loads to a `PretrainedClassifier`: classifier_fn(x, t, params) -> logits, on the same time
mapping (guided-diffusion's cond_fn gets the original step index, respace.py:98-128), for `samplers.classifier_guided`.
Only safetensors and JSON are read here, never a pickle.
"""

from __future__ import annotations

import os
from typing import Any

from fastsamplers.core import Registry
from fastsamplers.models.pretrained.adm import ADMConfig, ADMEncoder, ADMUNet
from fastsamplers.models.pretrained.diffusers import ParamPath, alphas_cumprod, expected_params, to_flax, unflatten
from fastsamplers.models.pretrained.diffusers import torch_shape
from fastsamplers.models.pretrained.model import (Pretrained, PretrainedClassifier, check_weights, make_functions,
                                                read_converted_config)
from fastsamplers.schedules.processes import Process, get_process

LAYOUT = "guided_diffusion"
WEIGHTS = "model.safetensors"
NUM_CLASSES = 1000  # script_util.py:8
_REQUIRED = object()
# The arguments of script_util's create_model, create_classifier and create_gaussian_diffusion, with their defaults.
MODEL_FLAGS = Registry("model flag", dict(
    image_size=_REQUIRED, num_channels=_REQUIRED, num_res_blocks=_REQUIRED, channel_mult="", learn_sigma=False,
    class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1,
    num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0, resblock_updown=False, use_fp16=False,
    use_new_attention_order=False), ordered=True, unknown="{source}: unknown {kind} {name!r}; valid: {valid}")
CLASSIFIER_FLAGS = Registry("classifier flag", dict(
    image_size=_REQUIRED, classifier_use_fp16=False, classifier_width=_REQUIRED, classifier_depth=_REQUIRED,
    classifier_attention_resolutions=_REQUIRED, classifier_use_scale_shift_norm=_REQUIRED,
    classifier_resblock_updown=_REQUIRED, classifier_pool=_REQUIRED, channel_mult=""),
    ordered=True, unknown="{source}: unknown {kind} {name!r}; valid: {valid}")
DIFFUSION_FLAGS = Registry("diffusion flag", dict(
    steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False, predict_xstart=False,
    rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing=""),
    ordered=True, unknown="{source}: unknown {kind} {name!r}; valid: {valid}")
# get_named_beta_schedule's names -> the diffusers scheduler config of the same table (gaussian_diffusion.py:27-40).
NOISE_SCHEDULES = Registry("noise_schedule", {
    "linear": lambda steps: {"beta_schedule": "linear", "beta_start": 1000 / steps * 1e-4,
                             "beta_end": 1000 / steps * 0.02},
    "cosine": lambda steps: {"beta_schedule": "squaredcos_cap_v2"}},
    ordered=True, unknown="{source}: unknown {kind} {name!r}; valid: {valid}")
# The released files' default channel_mult per image size (script_util.py:148-158, 241-250).
CHANNEL_MULTS = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def _flags(registry: Registry, given: Any, source: str, what: str) -> dict[str, Any]:
    """`given` (a dict) over the registry's defaults; unknown or missing keys are one sentence naming `source`."""
    if not isinstance(given, dict):
        raise ValueError(f"{source}: {what} must be a JSON object of {registry.kind}s, got {type(given).__name__}")
    for key in given:
        registry.check(key, source=source)
    flags = {**registry, **given}
    missing = [k for k, v in flags.items() if v is _REQUIRED]
    if missing:
        raise ValueError(f"{source}: {what} lacks {', '.join(missing)} (no default in guided-diffusion)")
    return flags


def _resolutions(value: Any, image_size: int, source: str, key: str) -> tuple[int, ...]:
    """script_util.py:160-162: "32,16,8" -> the downsampling factors image_size // resolution."""
    try:
        return tuple(image_size // int(r) for r in str(value).split(","))
    except ValueError:
        raise ValueError(f"{source}: {key}={value!r} must be comma-separated resolutions such as \"32,16,8\"") from None


def _channel_mult(value: Any, image_size: int, source: str) -> tuple[float, ...]:
    if value == "":
        if image_size not in CHANNEL_MULTS:
            raise ValueError(f"{source}: channel_mult=\"\" has no default for image_size {image_size} "
                             f"(defaults exist for {sorted(CHANNEL_MULTS)}); give channel_mult")
        return CHANNEL_MULTS[image_size]
    if isinstance(value, str):  # script_util.py:159: integers only
        try:
            return tuple(int(m) for m in value.split(","))
        except ValueError:
            raise ValueError(f"{source}: channel_mult={value!r} must be comma-separated integers (or a JSON list of "
                             "numbers)") from None
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, (int, float)) for m in value):
        return tuple(value)
    raise ValueError(f"{source}: channel_mult={value!r} must be \"\", \"1,2,3,4\" or a list of numbers")


def model_config(flags: dict[str, Any], source: str) -> ADMConfig:
    """The `ADMConfig` of create_model's flags (script_util.py:134-188). Errors name `source` and the key."""
    f = _flags(MODEL_FLAGS, flags, source, "model_flags")
    size = int(f["image_size"])
    try:
        return ADMConfig(image_size=size, model_channels=int(f["num_channels"]),
                         out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=int(f["num_res_blocks"]),
                         attention_resolutions=_resolutions(f["attention_resolutions"], size, source,
                                                            "attention_resolutions"),
                         channel_mult=_channel_mult(f["channel_mult"], size, source),
                         num_classes=NUM_CLASSES if f["class_cond"] else None, num_heads=int(f["num_heads"]),
                         num_head_channels=int(f["num_head_channels"]),
                         num_heads_upsample=int(f["num_heads_upsample"]),
                         use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
                         resblock_updown=bool(f["resblock_updown"]),
                         use_new_attention_order=bool(f["use_new_attention_order"]))
    except (ValueError, NotImplementedError) as error:
        raise type(error)(f"{source}: {error}") from None


def classifier_config(flags: dict[str, Any], source: str) -> ADMConfig:
    """The `ADMConfig` (with a pool) of create_classifier's flags (script_util.py:228-266)."""
    f = _flags(CLASSIFIER_FLAGS, flags, source, "classifier_flags")
    size = int(f["image_size"])
    try:
        return ADMConfig(image_size=size, model_channels=int(f["classifier_width"]), out_channels=NUM_CLASSES,
                         num_res_blocks=int(f["classifier_depth"]),
                         attention_resolutions=_resolutions(f["classifier_attention_resolutions"], size, source,
                                                            "classifier_attention_resolutions"),
                         channel_mult=_channel_mult(f["channel_mult"], size, source), num_head_channels=64,
                         use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
                         resblock_updown=bool(f["classifier_resblock_updown"]), pool=f["classifier_pool"])
    except (ValueError, NotImplementedError) as error:
        raise type(error)(f"{source}: {error}") from None


def diffusion_process(flags: dict[str, Any], source: str) -> tuple[Process, str]:
    """(the `vp_discrete` process, the prediction kind) of create_gaussian_diffusion's flags."""
    if isinstance(flags, dict) and "diffusion_steps" in flags:  # the scripts' name (diffusion_defaults()) for steps
        if "steps" in flags and flags["steps"] != flags["diffusion_steps"]:
            raise ValueError(f"{source}: diffusion_flags has steps={flags['steps']} and diffusion_steps="
                             f"{flags['diffusion_steps']}; give one")
        flags = {("steps" if k == "diffusion_steps" else k): v for k, v in flags.items()}
    f = _flags(DIFFUSION_FLAGS, flags, source, "diffusion_flags")
    steps = int(f["steps"])
    if f["rescale_timesteps"] and steps != 1000:
        raise NotImplementedError(f"{source}: rescale_timesteps with steps={steps} feeds the network n * 1000 / steps "
                                  "(gaussian_diffusion.py:351-354), a time input not built here")
    schedule = NOISE_SCHEDULES.lookup(f["noise_schedule"], source=source)
    table = alphas_cumprod({"num_train_timesteps": steps, **schedule(steps)}, source)
    return get_process("vp_discrete", alphas_cumprod=tuple(table.tolist())), "x0" if f["predict_xstart"] else "eps"


def torch_name(path: ParamPath) -> str:
    """The state-dict key of a flax parameter path (`("input_blocks_1_0", "in_layers_2", "kernel")` ->
    "input_blocks.1.0.in_layers.2.weight")."""
    *modules, leaf = path
    modules = [".".join(part for part in _split_index(m)) for m in modules]
    return ".".join(modules + [{"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)])


def _split_index(module):
    """"input_blocks_1_0" -> ["input_blocks", "1", "0"]: the trailing integer parts of a module name."""
    parts = module.split("_")
    head = len(parts)
    while head > 1 and parts[head - 1].isdigit():
        head -= 1
    return ["_".join(parts[:head])] + parts[head:]


def read_state(path: str) -> tuple[str, dict[str, Any]]:
    """(config.json path, its contents) of a converted folder; FileNotFoundError / ValueError of one sentence."""
    raw, config_file, _ = read_converted_config(path, LAYOUT, "convert the .pt with scripts/convert_checkpoint.py "
                                                "--layout guided_diffusion")
    kinds = [k for k in ("model_flags", "classifier_flags") if k in raw]
    if len(kinds) != 1 or "diffusion_flags" not in raw:
        raise ValueError(f"{config_file}: a guided_diffusion config.json holds \"diffusion_flags\" and exactly one of "
                         f"\"model_flags\" (a diffusion model) or \"classifier_flags\" (a classifier); it has "
                         f"{sorted(raw)}")
    return config_file, raw


def load(path: str) -> Pretrained | PretrainedClassifier:
    """A converted guided-diffusion folder as a `Pretrained` (a diffusion model) or a `PretrainedClassifier`.

    Args:
      path: the folder holding config.json and model.safetensors (see the module docstring).

    Returns:
      A `Pretrained` on `vp_discrete` with eps prediction (args=(params, labels) when class_cond, labels integer
      class indices), or a `PretrainedClassifier` whose classifier_fn(x, t, params) gives logits.

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such folder: {path}")
    config_file, raw = read_state(path)
    classifier = "classifier_flags" in raw
    if classifier:
        config = classifier_config(raw["classifier_flags"], config_file)
    else:
        config = model_config(raw["model_flags"], config_file)
    process, prediction = diffusion_process(raw["diffusion_flags"], config_file)
    if not classifier and bool(raw["model_flags"].get("learn_sigma", False)) != bool(
            raw["diffusion_flags"].get("learn_sigma", False)):
        raise ValueError(f"{config_file}: learn_sigma differs between model_flags and diffusion_flags "
                         "(guided-diffusion passes one value to both)")
    weights_file = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing weights file {weights_file}")

    network = ADMEncoder if classifier else ADMUNet
    image_shape = (config.image_size, config.image_size, config.in_channels)
    expected = expected_params(network(config), image_shape)
    by_name = {torch_name(p): p for p in expected}
    # guided-diffusion's 1-D convolutions (qkv, proj_out, qkv_proj, c_proj) all have kernel size 1: (O, I, 1) is a
    # linear layer's (O, I).
    state = {k: v[..., 0] if v.ndim == 3 and v.shape[-1] == 1 else v for k, v in load_file(weights_file).items()}
    check_weights({k: v.shape for k, v in state.items()},
                  {torch_name(p): torch_shape(p, s) for p, s in expected.items()}, weights_file,
                  f"architecture in {os.path.basename(config_file)}")
    params = unflatten({by_name[k]: to_flax(by_name[k], v) for k, v in state.items()})
    if classifier:
        timestep, apply, classifier_fn = make_functions(config, process, "index", None, None, network=ADMEncoder)
        return PretrainedClassifier(params=params, apply=apply, classifier_fn=classifier_fn, process=process,
                                    timestep=timestep, image_shape=image_shape, num_classes=config.out_channels,
                                    config=config, source=path, layout=LAYOUT)
    learned = config.out_channels == 2 * config.in_channels
    timestep, apply, model_fn = make_functions(config, process, "index", config.num_classes, None, network=ADMUNet,
                                               model_channels=config.in_channels if learned else None)
    variance_model_fn = make_functions(config, process, "index", config.num_classes, None,
                                       network=ADMUNet)[2] if learned else None
    return Pretrained(params=params, apply=apply, model_fn=model_fn, process=process, prediction=prediction,
                      timestep=timestep, image_shape=image_shape, num_classes=config.num_classes, config=config,
                      source=path, layout=LAYOUT, variance_model_fn=variance_model_fn)

