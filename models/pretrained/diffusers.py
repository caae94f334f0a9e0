"""diffusers checkpoints: a `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors) and its scheduler.

Layouts accepted (`find_files`): the UNet folder itself, with scheduler_config.json beside config.json or in
`../scheduler/` or one folder up; or a pipeline root holding `unet/` and `scheduler/`. Weights are read with
`safetensors.numpy` (no torch, no pickle); NCHW conv kernels (O, I, kh, kw) become HWIO and linear weights
(out, in) become (in, out), once, here. Pre-0.10 attention names (query, key, value, proj_attn) are renamed as
diffusers renames them (to_q, to_k, to_v, to_out.0).

The scheduler config gives the process, the prediction kind and the time input:
  beta-table schedulers (DDPMScheduler, DDIMScheduler, PNDMScheduler, ...): `vp_discrete` from their betas
    (trained_betas, or beta_schedule linear / scaled_linear / squaredcos_cap_v2 / sigmoid / laplace with
    num_train_timesteps, beta_start, beta_end; computed in float64); prediction_type epsilon -> "eps",
    v_prediction -> "v", sample -> "x0"; the network's timestep is `process.discrete_index(t)` = N t - 1.
  ScoreSdeVeScheduler: `ve` with its sigma_min, sigma_max and t_min = sampling_eps; the network (NCSN++, "fourier")
    takes sigma(t) and returns the score, so the prediction is "score".
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry, read_json
from fastsamplers.core.typing import Shape
from fastsamplers.models.pretrained.model import Pretrained, check_weights, make_functions
from fastsamplers.models.pretrained.unet2d import UNet2D, UNet2DConfig
from fastsamplers.schedules.processes import Process, get_process

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_IGNORED_KEYS = ("dropout",)  # inference only
# The config.json keys of a UNet2DModel this loader reads: UNet2DConfig's fields (less ours, flavor).
CONFIG_KEYS = Registry.of_names("UNet2DModel config key",
                                [f.name for f in dataclasses.fields(UNet2DConfig) if f.name != "flavor"],
                                unknown="{source}: unknown {kind} {name!r}; known keys: {valid}")
BETA_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                   "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                   "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
                   "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                   "DDPMParallelScheduler", "DDIMParallelScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_LIST_MODULES = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)$")
_OLD_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_NEW_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# A flax parameter's path in its tree: the module names, then the leaf ("kernel", "bias", ...).
ParamPath = tuple[str, ...]


def find_files(path: str, variant: str | None = None, scheduler_config: str | None = None) -> tuple[str, str, str]:
    """(config.json, weights file, scheduler_config.json) of a diffusers UNet folder or pipeline root; a given
    `scheduler_config` path is used instead of searching.

    Raises:
      FileNotFoundError: naming every place looked in.
      ValueError: the folder holds only pickled weights (never unpickled here).
    """
    path = os.path.abspath(path)
    candidates = [path, os.path.join(path, "unet")]
    unet_dir = next((d for d in candidates if os.path.isfile(os.path.join(d, "config.json"))), None)
    if unet_dir is None:
        raise FileNotFoundError(f"no diffusers UNet config: neither {candidates[0]}/config.json nor "
                                f"{candidates[1]}/config.json exists")
    name = WEIGHTS if variant is None else WEIGHTS.replace(".safetensors", f".{variant}.safetensors")
    weights = os.path.join(unet_dir, name)
    if not os.path.isfile(weights):
        if os.path.isfile(weights + ".index.json"):
            raise NotImplementedError(f"{weights}.index.json: sharded weights are not supported (UNet2DModel "
                                      "checkpoints fit one file); merge the shards into one safetensors file")
        pickled = sorted(os.path.basename(f) for f in os.listdir(unet_dir) if f.endswith(PICKLED))
        if pickled:
            raise ValueError(
                f"{unet_dir} holds only pickled weights ({', '.join(pickled)}) and no {name}; this project never "
                "unpickles user files. Convert them once with scripts/convert_to_safetensors.py (it needs torch and "
                "reads with torch.load(..., weights_only=True)), e.g. `python scripts/convert_to_safetensors.py "
                f"{os.path.join(unet_dir, pickled[0])} {weights}`")
        others = sorted(os.path.basename(f) for f in glob.glob(os.path.join(unet_dir, "*.safetensors")))
        raise FileNotFoundError(f"missing weights file {weights}" + (
            f" (the folder has {', '.join(others)}: pass variant=... for diffusion_pytorch_model.<variant>"
            ".safetensors)" if others else ""))
    if scheduler_config is not None:
        if not os.path.isfile(scheduler_config):
            raise FileNotFoundError(f"missing file {scheduler_config}")
        return os.path.join(unet_dir, "config.json"), weights, scheduler_config
    scheduler_candidates = [os.path.join(unet_dir, "scheduler_config.json"),
                            os.path.join(os.path.dirname(unet_dir), "scheduler", "scheduler_config.json"),
                            os.path.join(os.path.dirname(unet_dir), "scheduler_config.json")]
    scheduler = next((f for f in scheduler_candidates if os.path.isfile(f)), None)
    if scheduler is None:
        raise FileNotFoundError("missing scheduler_config.json (it gives the noise schedule): looked for "
                                + ", ".join(scheduler_candidates) + "; or pass scheduler_config=PATH")
    return os.path.join(unet_dir, "config.json"), weights, scheduler


def unet_config(raw: dict[str, Any], source: str, image_size: int | Sequence[int] | None = None) -> UNet2DConfig:
    """The validated `UNet2DConfig` of a config.json dict. Errors name `source` and the key."""
    class_name = raw.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise NotImplementedError(f"{source}: _class_name={class_name!r} is not supported; supported: "
                                  "['UNet2DModel']")
    kwargs = {}
    for key, value in raw.items():
        if key.startswith("_") or key in _IGNORED_KEYS:
            continue
        if key == "num_train_timesteps":  # used only by time_embedding_type="learned", which is refused
            continue
        CONFIG_KEYS.check(key, source=source)
        kwargs[key] = value
    if image_size is not None:
        kwargs["sample_size"] = image_size
    if kwargs.get("sample_size") is None:
        raise ValueError(f"{source}: sample_size is null; pass image_size=(H, W) to say the training resolution")
    try:
        return UNet2DConfig(**kwargs)
    except (ValueError, NotImplementedError, TypeError) as error:
        raise type(error)(f"{source}: {error}") from None


def alphas_cumprod(raw: dict[str, Any], source: str) -> np.ndarray:
    """The float64 alphas_cumprod table of a beta-table scheduler config (diffusers' formulas)."""
    if raw.get("rescale_betas_zero_snr", False):
        raise NotImplementedError(f"{source}: rescale_betas_zero_snr=true makes alphas_cumprod reach 0 (infinite "
                                  "log-SNR at t = 1), which vp_discrete cannot represent")
    n = int(raw.get("num_train_timesteps", 1000))
    start, end = float(raw.get("beta_start", 0.0001)), float(raw.get("beta_end", 0.02))
    schedule = raw.get("beta_schedule", "linear")
    if raw.get("trained_betas") is not None:
        betas = np.asarray(raw["trained_betas"], np.float64)
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    elif schedule == "laplace":
        def alpha_bar(t):
            lam = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            return math.sqrt(math.exp(lam) / (1 + math.exp(lam)))
        betas = _betas_for_alpha_bar(n, alpha_bar)
    elif schedule == "sigmoid":
        betas = 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, n, dtype=np.float64))) * (end - start) + start
    else:
        raise NotImplementedError(f"{source}: beta_schedule={schedule!r} is not supported; supported values: "
                                  f"{list(BETA_SCHEDULES)}")
    return np.cumprod(1.0 - betas)


def _betas_for_alpha_bar(n, alpha_bar, max_beta=0.999):
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float64)


def scheduler_process(raw: dict[str, Any], source: str) -> tuple[Process, str, str]:
    """(process, prediction kind, time input) of a scheduler_config.json dict; the time input is "index" (the
    network takes process.discrete_index(t)) or "sigma" (it takes process.sigma(t))."""
    name = raw.get("_class_name")
    if name == "ScoreSdeVeScheduler":
        process = get_process("ve", sigma_min=float(raw.get("sigma_min", 0.01)),
                              sigma_max=float(raw.get("sigma_max", 1348.0)),
                              t_min=float(raw.get("sampling_eps", 1e-5)))
        return process, "score", "sigma"
    if name not in BETA_SCHEDULERS and not ("beta_schedule" in raw or "trained_betas" in raw):
        raise NotImplementedError(f"{source}: scheduler {name!r} is not supported; supported: ScoreSdeVeScheduler "
                                  f"and the beta-table schedulers {list(BETA_SCHEDULERS)}")
    kind = raw.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise NotImplementedError(f"{source}: prediction_type={kind!r} is not supported; supported values: "
                                  f"{list(PREDICTION_TYPES)}")
    try:
        process = get_process("vp_discrete", alphas_cumprod=tuple(alphas_cumprod(raw, source).tolist()))
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return process, PREDICTION_TYPES[kind], "index"


def torch_name(path: ParamPath) -> str:
    """The diffusers state-dict key of a flax parameter path (`("down_blocks_0", "resnets_1", "conv1", "kernel")` ->
    "down_blocks.0.resnets.1.conv1.weight")."""
    *modules, leaf = path
    modules = [_LIST_MODULES.sub(r"\1.\2", m) for m in modules]
    return ".".join(modules + [{"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)])


def torch_shape(path: ParamPath, shape: Shape) -> Shape:
    """The torch layout of a flax parameter's shape: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def to_flax(path: ParamPath, array: np.ndarray) -> jax.Array:
    """A torch-layout array as the flax parameter at `path` (float32)."""
    array = np.asarray(array, np.float32)
    if path[-1] == "kernel" and array.ndim == 4:
        array = np.transpose(array, (2, 3, 1, 0))
    elif path[-1] == "kernel" and array.ndim == 2:
        array = array.T
    return jnp.asarray(array)


def expected_params(net: Any, image_shape: Shape, inputs: tuple | None = None) -> dict[ParamPath, Shape]:
    """{flax path: shape} of the network's parameters (abstract init: no compute, no memory). The network is called
    as net(x, *inputs), x (1, *image_shape); inputs None: a UNet2D's (1.0, labels or None)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    if inputs is None:
        inputs = (1.0, jnp.zeros((1,), jnp.int32) if net.config.conditional else None)
    tree = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype), *inputs))
    return {tuple(getattr(k, "key", k) for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def rename_legacy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers' renames of pre-0.10 attention weights, and the Fourier weights' old name `time_proj.W`."""
    out = {}
    for key, value in state.items():
        match = _OLD_ATTENTION.match(key)
        if match:
            key = f"{match.group(1)}.{_NEW_ATTENTION[match.group(2)]}.{match.group(3)}"
        out[key] = value
    if "time_proj.W" in out:
        w = out.pop("time_proj.W")
        out.setdefault("time_proj.weight", w)
    return out


def unflatten(flat: dict[ParamPath, Any]) -> dict[str, Any]:
    """The nested dict of a flat {path: leaf} dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def load(path: str, *, null_label: int | None = None, scheduler_config: str | None = None,
         variant: str | None = None, image_size: int | Sequence[int] | None = None) -> Pretrained:
    """A diffusers `UNet2DModel` checkpoint as a `Pretrained` (see the module docstring for the layout).

    Args:
      path: the UNet folder or the pipeline root.
      null_label: for a class-conditional network (num_class_embeds), the label its training used for "no class",
        if any (diffusers' config does not record one); None: labels are required.
      scheduler_config: a scheduler_config.json to use instead of the one found beside the UNet.
      variant: read diffusion_pytorch_model.<variant>.safetensors (e.g. "fp16"); weights become float32.
      image_size: (H, W) when config.json's sample_size is null (or to override it).

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    config_file, weights_file, scheduler_file = find_files(path, variant, scheduler_config)
    config = unet_config(read_json(config_file), config_file, image_size)
    process, prediction, time_input = scheduler_process(read_json(scheduler_file), scheduler_file)
    image_shape = tuple(config.sample_size) + (config.in_channels,)
    num_classes = config.num_class_embeds
    if null_label is not None and (num_classes is None or not 0 <= null_label < num_classes):
        raise ValueError(f"{config_file}: null_label={null_label} needs a class-conditional network with "
                         f"0 <= null_label < num_class_embeds (num_class_embeds={num_classes})")

    net = UNet2D(config)
    expected = expected_params(net, image_shape)
    by_name = {torch_name(p): p for p in expected}
    state = rename_legacy(load_file(weights_file))
    check_weights({k: v.shape for k, v in state.items()},
                  {torch_name(p): torch_shape(p, s) for p, s in expected.items()}, weights_file,
                  f"architecture in {os.path.basename(config_file)}")
    params = unflatten({by_name[k]: to_flax(by_name[k], v) for k, v in state.items()})
    timestep, apply, model_fn = make_functions(config, process, time_input, num_classes, null_label)
    return Pretrained(params=params, apply=apply, model_fn=model_fn, process=process, prediction=prediction,
                      timestep=timestep, image_shape=image_shape, num_classes=num_classes, null_label=null_label,
                      config=config, source=os.path.dirname(config_file), layout="diffusers")
