"""score_sde checkpoints (Song et al. 2021, github.com/yang-song/score_sde, JAX): `checkpoint_N` files.

score_sde saves its training state with `flax.training.checkpoints`: the msgpack serialization of a state dict
{step, optimizer: {target: params, state}, lr, model_state, ema_rate, params_ema, rng}. It is read here with
`flax.serialization.msgpack_restore` (no pickle); the EMA parameters (`params_ema`, what score_sde samples with)
are used unless params="params" asks for the optimizer's. A checkpoint holds no config: the caller names one of
`PRESETS` (score_sde's config files) or gives the config keys (a dict, a JSON file, or keyword options), flat
(nf=..., sigma_max=..., image_size=...) or nested as score_sde's ConfigDict ({"model": ..., "data": ...,
"training": ...}).

score_sde's NCSNpp network (models/ncsnpp.py) maps onto `models.pretrained.unet2d.UNet2D` for two families
(`family`), which cover every published NCSN++ / DDPM++ checkpoint except the CIFAR-10 NCSN++ ones:
  "ncsnpp_ve": progressive output_skip, progressive_input input_skip, combine sum, biggan resblocks, FIR [1, 3, 3, 1],
    Fourier embedding, scale_by_sigma, continuous VE (CelebA-HQ 256, FFHQ 256 / 1024, LSUN church / bedroom):
    diffusers' Skip blocks, as diffusers' own NCSN++ conversion maps them. Process `ve` (sigma_min, sigma_max,
    t_min = 1e-5); the network takes sigma(t) and returns the score: prediction "score".
  "ddpmpp_vp": no pyramids, biggan resblocks without FIR, positional embedding, VP SDE (CIFAR-10 DDPM++, deep or
    not, continuous or discrete): ResnetDownsample / Attn blocks with resnet resampling, in the "score_sde" flavor
    (residual sums / sqrt(2), one attention per decoder level, see unet2d). Continuous: process `vp_linear`
    (beta_min, beta_max, t_min = 1e-3), input 999 t (score_sde's label); discrete: `vp_discrete` of score_sde's
    table (betas linspace(beta_min / N, beta_max / N, N), N = num_scales), input the step index. Prediction "eps"
    (score_sde's score is -output / std).
The rest raises NotImplementedError naming the key and the reason: 'residual' pyramids (CIFAR-10 NCSN++: FIR conv
resampling), concatenating combines, 'ddpm' resblocks, discrete VE (NCSN / SMLD sigma tables), sub-VP.
Data are [0, 1] images unless data.centered (then [-1, 1]); the network centers them itself otherwise.

Mapping (score_sde's flax auto-names, counted in the order NCSNpp.__call__ creates the modules; `module_map`):
  GaussianFourierProjection_0/W -> time_proj/weight; Dense_0, Dense_1 -> time_embedding/linear_1, linear_2;
  Conv_0 -> conv_in; per level: ResnetBlockBigGANpp_k -> resnets_i (+ AttnBlockpp_j -> attentions_i), the
  down-resnet -> resnet_down (Skip) or downsamplers_0, Combine_k/Conv_0 -> skip_conv; the middle resnet, attention,
  resnet -> mid_block; up levels: resnets, one attention, [GroupNorm_k / Conv_{k+1} (the output pyramid) ->
  skip_norm / skip_conv, or conv_norm_out / conv_out at the last level], the up-resnet -> resnet_up or upsamplers_0;
  without pyramids the last GroupNorm / Conv -> conv_norm_out / conv_out. Inside a resnet: GroupNorm_0, Conv_0,
  Dense_0, GroupNorm_1, Conv_1, Conv_2 -> norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut; inside an
  attention: GroupNorm_0, NIN_0..3 (W, b) -> group_norm, to_q, to_k, to_v, to_out_0 (kernel, bias). Layouts agree
  (flax HWIO and (in, out)), so no array is transposed.
"""

from __future__ import annotations

import collections
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry, read_json
from fastsamplers.core.typing import PyTree, Shape
from fastsamplers.models.pretrained.diffusers import ParamPath, expected_params, unflatten
from fastsamplers.models.pretrained.model import Pretrained, check_weights, make_functions
from fastsamplers.models.pretrained.unet2d import UNet2D, UNet2DConfig
from fastsamplers.schedules.processes import get_process

# Which weights of a training state: the EMA ones (what score_sde samples with) or the optimizer's.
PARAMS_KEYS = Registry.of_names("params", ("params_ema", "params"), ordered=True,
                                unknown="{kind}={name!r}; valid: {valid}")
VE_SAMPLING_EPS = 1e-5  # score_sde's run_lib: the sampling eps (t_min) of VE and of VP models
VP_SAMPLING_EPS = 1e-3

# score_sde config keys (flattened from its model / data / training sections) and their defaults: those its
# configs share. image_size and sigma_max differ between its datasets, so they have none (a preset gives them).
DEFAULTS = Registry("score_sde config key", dict(
    name="ncsnpp", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.0,
    resamp_with_conv=True, conditional=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
    resblock_type="biggan", progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
    attention_type="ddpm", init_scale=0.0, embedding_type="fourier", fourier_scale=16.0, scale_by_sigma=True,
    nonlinearity="swish", normalization="GroupNorm", conv_size=3, sigma_min=0.01, sigma_max=None, beta_min=0.1,
    beta_max=20.0, num_scales=1000, ema_rate=0.999, image_size=None, num_channels=3, centered=False, sde="vesde",
    continuous=True), unknown="score_sde {source}: unknown {kind} {name!r}; known keys: {valid}")
_SECTIONS = ("model", "data", "training")

_NCSNPP_256 = dict(nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), image_size=256)
# score_sde's config files (configs/ve/*.py, configs/vp/*.py) as flat keys.
PRESETS = Registry("score_sde config", {
    "ve/celebahq_256_ncsnpp_continuous": dict(_NCSNPP_256, sigma_max=348.0),
    "ve/ffhq_256_ncsnpp_continuous": dict(_NCSNPP_256, sigma_max=348.0),
    "ve/church_ncsnpp_continuous": dict(_NCSNPP_256, sigma_max=380.0),
    "ve/bedroom_ncsnpp_continuous": dict(_NCSNPP_256, sigma_max=378.0),
    "ve/ffhq_ncsnpp_continuous": dict(nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1,
                                      attn_resolutions=(16,), image_size=1024, sigma_max=1348.0),
    "ve/cifar10_ncsnpp_continuous": dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                                         image_size=32, sigma_max=50.0, progressive="none",
                                         progressive_input="residual"),
}, unknown="unknown {kind} {name!r}; valid presets: {valid} (aliases {aliases}), a .json file or a dict")
_DDPMPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), image_size=32, sde="vpsde",
               centered=True, fir=False, scale_by_sigma=False, progressive="none", progressive_input="none",
               embedding_type="positional")
PRESETS.update({
    "vp/cifar10_ddpmpp_continuous": dict(_DDPMPP),
    "vp/cifar10_ddpmpp_deep_continuous": dict(_DDPMPP, num_res_blocks=8),
    "vp/cifar10_ddpmpp": dict(_DDPMPP, continuous=False),
    "subvp/cifar10_ddpmpp_continuous": dict(_DDPMPP, sde="subvpsde"),
})
ALIASES = {"ncsnpp_continuous_ve": "ve/cifar10_ncsnpp_continuous", "ddpmpp_continuous_vp":
           "vp/cifar10_ddpmpp_continuous"}


def checkpoint_files(folder: str) -> list[str]:
    """The `checkpoint_N` files of a folder, sorted by N."""
    found = [(int(m.group(1)), f) for f in os.listdir(folder) if (m := re.fullmatch(r"checkpoint_(\d+)", f))]
    return [os.path.join(folder, f) for _, f in sorted(found)]


# Keys of score_sde's training and data-pipeline config sections that have no bearing on the network.
_PIPELINE_KEYS = ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq", "likelihood_weighting",
                  "reduce_mean", "dataset", "random_flip", "uniform_dequantization", "tfrecords_path", "category",
                  "snapshot_freq_for_preemption", "snapshot_sampling", "n_jitted_steps")


def resolve_config(config: str | dict[str, Any] | None = None, *, source: str | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """The flat score_sde config: DEFAULTS, updated by a preset name / dict / JSON file, then by `overrides`.

    Args:
      config: a preset name (`PRESETS`, `ALIASES`), a .json file, a dict of config keys, or None (DEFAULTS).
      source: where the config came from (a file), for the errors (default "config dict").
      **overrides: config keys applied last.

    Returns:
      The flat config, with "_source" (what the errors name).

    Raises:
      ValueError: an unknown preset or key (naming the valid ones); FileNotFoundError: a missing JSON file.
    """
    given, raw, source = source, {}, source or "config dict"
    if isinstance(config, str) and config.endswith(".json"):
        raw = read_json(config)
        source = f"config file {config}"
    elif isinstance(config, str):
        raw = dict(PRESETS.lookup(ALIASES.get(config, config), aliases=sorted(ALIASES)))
        source = f"preset {config!r}" + (f" in {given}" if given else "")
    elif isinstance(config, dict):
        raw = dict(config)
    elif config is not None:
        raise ValueError(f"config must be a preset name, a .json path or a dict, got {type(config).__name__}")
    flat = {}
    for key, value in raw.items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    flat.update(overrides)
    resolved = dict(DEFAULTS)
    for key, value in flat.items():
        if key in _PIPELINE_KEYS:
            continue
        DEFAULTS.check(key, source=source)
        resolved[key] = tuple(value) if isinstance(value, list) else value
    resolved["_source"] = source
    return resolved


# key -> (supported value, why the others have no UNet2DModel counterpart), for every supported network.
_COMMON = {
    "name": ("ncsnpp", "only the NCSN++ / DDPM++ network (models/ncsnpp.py) is mapped"),
    "normalization": ("GroupNorm", "UNet2DModel normalizes with GroupNorm"),
    "nonlinearity": ("swish", "only swish (SiLU) is mapped"),
    "attention_type": ("ddpm", "UNet2DModel's attention is DDPM's"),
    "conv_size": (3, "UNet2DModel's convolutions are 3x3"),
    "num_channels": (3, "only 3-channel images are mapped"),
    "conditional": (True, "UNet2DModel always conditions on time"),
    "resblock_type": ("biggan", "score_sde's 'ddpm' resblocks downsample with convs in a layout no score_sde "
                                "checkpoint config mapped here uses"),
    "skip_rescale": (True, "the mapped blocks divide residual sums by sqrt(2)"),
}
# (progressive, progressive_input) -> the family's further requirements. NCSN++ VE (output_skip / input_skip) is
# diffusers' Skip blocks; DDPM++ VP (no pyramids) is ResnetDownsample / Attn blocks in the "score_sde" flavor.
_FAMILIES = {
    ("output_skip", "input_skip"): {
        "progressive_combine": ("sum", "the Skip blocks add the input pyramid"),
        "fir": (True, "the Skip blocks resample with a FIR kernel"),
        "fir_kernel": ((1, 3, 3, 1), "the Skip blocks' FIR kernel is [1, 3, 3, 1]"),
        "embedding_type": ("fourier", "the Skip-block NCSN++ takes sigma through Fourier features"),
        "scale_by_sigma": (True, "UNet2DModel's Fourier variant divides its output by sigma"),
        "sde": ("vesde", "the Fourier NCSN++ is a VE score model"),
        "continuous": (True, "discrete-time VE models take step indices into a sigma table (no framework process)"),
    },
    ("none", "none"): {
        "fir": (False, "plain blocks resample by nearest / 2x2 average (DDPM++), not FIR"),
        "embedding_type": ("positional", "DDPM++ embeds 999 t sinusoidally"),
        "scale_by_sigma": (False, "DDPM++ predicts the noise, unscaled"),
        "sde": ("vpsde", "DDPM++ without pyramids is mapped for the VP SDE (sub-VP has no framework process)"),
    },
}
_FAMILY_REASON = ("score_sde's progressive / progressive_input pyramids map onto UNet2DModel only as (output_skip, "
                  "input_skip), diffusers' Skip blocks, or (none, none); 'residual' pyramids (the CIFAR-10 NCSN++ "
                  "configs) need FIR conv resampling, which UNet2DModel lacks")


def _check(cfg, key, supported, reason, source):
    value = cfg[key]
    if isinstance(supported, tuple):
        ok = isinstance(value, (tuple, list)) and tuple(value) == supported
    elif isinstance(supported, str):
        ok = str(value).lower() == supported.lower()
    else:
        ok = value == supported
    if not ok:
        raise NotImplementedError(f"{source}: {key}={value!r} is not supported ({reason}); supported: {supported!r}")


def family(cfg: dict[str, Any]) -> str:
    """ "ncsnpp_ve" or "ddpmpp_vp": the supported network a resolved config describes, or NotImplementedError."""
    source = f"score_sde {cfg['_source']}"
    for key, (supported, reason) in _COMMON.items():
        _check(cfg, key, supported, reason, source)
    pyramids = (str(cfg["progressive"]).lower(), str(cfg["progressive_input"]).lower())
    if pyramids not in _FAMILIES:
        raise NotImplementedError(f"{source}: progressive={cfg['progressive']!r} with progressive_input="
                                  f"{cfg['progressive_input']!r} is not supported ({_FAMILY_REASON}); supported: "
                                  f"{list(_FAMILIES)}")
    for key, (supported, reason) in _FAMILIES[pyramids].items():
        _check(cfg, key, supported, reason, source)
    return "ncsnpp_ve" if pyramids == ("output_skip", "input_skip") else "ddpmpp_vp"


def unet_config(cfg: dict[str, Any]) -> UNet2DConfig:
    """The `UNet2DConfig` of a resolved score_sde config, or NotImplementedError naming the key."""
    source = f"score_sde {cfg['_source']}"
    kind = family(cfg)
    for key in ("image_size",) + (("sigma_max",) if kind == "ncsnpp_ve" else ()):
        if cfg[key] is None:
            raise ValueError(f"{source}: {key} is required (score_sde's configs differ in it); pass {key}=... or a "
                             f"preset ({sorted(PRESETS)})")
    size = int(cfg["image_size"])
    levels = len(cfg["ch_mult"])
    if size % 2 ** (levels - 1):
        raise ValueError(f"{source}: image_size={size} is not divisible by 2 ** (len(ch_mult) - 1) = "
                         f"{2 ** (levels - 1)}")
    attn = set(int(r) for r in cfg["attn_resolutions"])
    attends = [size // 2**i in attn for i in range(levels)]
    if kind == "ncsnpp_ve":
        down = tuple("AttnSkipDownBlock2D" if a else "SkipDownBlock2D" for a in attends)
        options: dict[str, Any] = dict(time_embedding_type="fourier")
    else:
        down = tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attends)
        options = dict(time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
                       downsample_type="resnet", upsample_type="resnet")
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    return UNet2DConfig(
        sample_size=(size, size), in_channels=3, out_channels=3, center_input_sample=not cfg["centered"],
        down_block_types=down, up_block_types=up, block_out_channels=tuple(int(cfg["nf"]) * int(m)
                                                                           for m in cfg["ch_mult"]),
        layers_per_block=int(cfg["num_res_blocks"]), mid_block_scale_factor=math.sqrt(2.0), act_fn="silu",
        attention_head_dim=None, norm_num_groups=None, norm_eps=1e-6, flavor="score_sde", **options)


_RESNET = (("GroupNorm_0", "norm1"), ("Conv_0", "conv1"), ("Dense_0", "time_emb_proj"), ("GroupNorm_1", "norm2"),
           ("Conv_1", "conv2"), ("Conv_2", "conv_shortcut"))
_ATTENTION = (("GroupNorm_0", "group_norm"), ("NIN_0", "to_q"), ("NIN_1", "to_k"), ("NIN_2", "to_v"),
              ("NIN_3", "to_out_0"))
_NIN_LEAVES = {"W": "kernel", "b": "bias"}


def module_map(config: UNet2DConfig) -> list[tuple[str, ParamPath]]:
    """[(score_sde module path, UNet2D module path)] in NCSNpp.__call__'s creation order (see the module docstring)."""
    counts: collections.Counter[str] = collections.Counter()

    def new(kind):
        counts[kind] += 1
        return f"{kind}_{counts[kind] - 1}"

    skip = config.time_embedding_type == "fourier"  # the Skip-block (NCSN++ VE) network
    pairs: list[tuple[str, ParamPath]] = [("GaussianFourierProjection_0", ("time_proj",))] if skip else []
    pairs += [(new("Dense"), ("time_embedding", "linear_1")), (new("Dense"), ("time_embedding", "linear_2")),
              (new("Conv"), ("conv_in",))]
    levels = len(config.block_out_channels)
    for i, kind in enumerate(config.down_block_types):
        block = f"down_blocks_{i}"
        for b in range(config.layers_per_block):
            pairs.append((new("ResnetBlockBigGANpp"), (block, f"resnets_{b}")))
            if kind.startswith("Attn"):
                pairs.append((new("AttnBlockpp"), (block, f"attentions_{b}")))
        if i != levels - 1:
            pairs.append((new("ResnetBlockBigGANpp"), (block, "resnet_down" if skip else "downsamplers_0")))
            if skip:
                pairs.append((new("Combine") + "/Conv_0", (block, "skip_conv")))
    pairs += [(new("ResnetBlockBigGANpp"), ("mid_block", "resnets_0")),
              (new("AttnBlockpp"), ("mid_block", "attentions_0")),
              (new("ResnetBlockBigGANpp"), ("mid_block", "resnets_1"))]
    for j, kind in enumerate(config.up_block_types):
        block = f"up_blocks_{j}"
        for b in range(config.layers_per_block + 1):
            pairs.append((new("ResnetBlockBigGANpp"), (block, f"resnets_{b}")))
        if kind.startswith("Attn"):
            pairs.append((new("AttnBlockpp"), (block, "attentions_0")))
        last = j == levels - 1
        if skip:  # output_skip: each level's GroupNorm -> act -> conv3x3 joins the pyramid; the last is the output
            pairs.append((new("GroupNorm"), ("conv_norm_out",) if last else (block, "skip_norm")))
            pairs.append((new("Conv"), ("conv_out",) if last else (block, "skip_conv")))
        if not last:
            pairs.append((new("ResnetBlockBigGANpp"), (block, "resnet_up" if skip else "upsamplers_0")))
    if not skip:  # progressive "none": one output head after the decoder
        pairs += [(new("GroupNorm"), ("conv_norm_out",)), (new("Conv"), ("conv_out",))]
    return pairs


def parameter_map(config: UNet2DConfig, expected: dict[ParamPath, Shape]) -> dict[str, ParamPath]:
    """{score_sde parameter path "A/B/leaf": UNet2D parameter path} for the network's `expected_params`."""
    by_module = collections.defaultdict(list)
    for path in expected:
        by_module[path[:-1]].append(path[-1])
    out = {}
    for theirs, ours in module_map(config):
        kind = theirs.split("/")[-1].rsplit("_", 1)[0]
        inner = {"ResnetBlockBigGANpp": _RESNET, "AttnBlockpp": _ATTENTION}.get(kind, (("", ""),))
        for their_sub, our_sub in inner:
            module = ours + ((our_sub,) if our_sub else ())
            if module not in by_module:
                continue  # a resnet without a shortcut conv
            prefix = theirs + (f"/{their_sub}" if their_sub else "")
            for leaf in by_module[module]:
                their_leaf = {"kernel": "W", "bias": "b"}[leaf] if their_sub.startswith("NIN") else leaf
                if kind == "GaussianFourierProjection":
                    their_leaf = "W"
                out[f"{prefix}/{their_leaf}"] = module + (leaf,)
    if len(out) != len(expected):  # every parameter of the network has exactly one score_sde name
        raise AssertionError(f"score_sde mapping covers {len(out)} of {len(expected)} parameters")
    return out


def read_checkpoint(path: str, params: str = "params_ema") -> tuple[str, dict[str, np.ndarray]]:
    """(file, its flat {"A/B/leaf": numpy array} parameter tree) from a checkpoint_N file or a folder of them."""
    from flax import serialization

    PARAMS_KEYS.check(params)
    if os.path.isdir(path):
        files = checkpoint_files(path)
        if not files:
            raise FileNotFoundError(f"{path}: no checkpoint_N file in this folder")
        path = files[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing checkpoint file {path}")
    with open(path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except Exception as error:  # msgpack raises several types on a non-msgpack file
            raise ValueError(f"{path}: not a flax msgpack checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a training-state dict, got {type(state).__name__}")
    if params == "params_ema" and "params_ema" in state:
        tree = state["params_ema"]
    elif "params" in state and params == "params":
        tree = state["params"]
    elif params == "params" and isinstance(state.get("optimizer"), dict) and "target" in state["optimizer"]:
        tree = state["optimizer"]["target"]
    else:
        raise ValueError(f"{path}: no {params!r} in the checkpoint (top-level keys: {sorted(state)}); valid: "
                         "params_ema, or params (the optimizer's target)")
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return path, flat


def to_score_sde_tree(params: PyTree, config: UNet2DConfig) -> dict[str, Any]:
    """The nested score_sde parameter tree of UNet2D `params` (the inverse of the loading map; for tests and export)."""
    flat = {tuple(getattr(k, "key", k) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    mapping = parameter_map(config, {p: v.shape for p, v in flat.items()})
    tree: dict[str, Any] = {}
    for theirs, ours in mapping.items():
        node = tree
        *modules, leaf = theirs.split("/")
        for m in modules:
            node = node.setdefault(m, {})
        node[leaf] = np.asarray(flat[ours])
    return tree


def network(cfg: dict[str, Any]) -> tuple[UNet2DConfig, Shape, dict[ParamPath, Shape]]:
    """(UNet2D config, image shape (H, W, 3), {UNet2D parameter path: shape}) of a resolved score_sde config, or
    NotImplementedError / ValueError naming the key (no compute: an abstract init)."""
    unet = unet_config(cfg)
    image_shape = tuple(unet.sample_size) + (3,)
    return unet, image_shape, expected_params(UNet2D(unet), image_shape)


def make_pretrained(cfg: dict[str, Any], unet: UNet2DConfig, params: PyTree, source: str, layout: str) -> Pretrained:
    """The `Pretrained` of UNet2D `params` for a resolved score_sde config: its family's process, time input and
    prediction (see the module docstring), whichever file layout the weights came from."""
    if family(cfg) == "ddpmpp_vp" and cfg["continuous"]:
        process = get_process("vp_linear", beta_min=float(cfg["beta_min"]), beta_max=float(cfg["beta_max"]),
                              t_min=VP_SAMPLING_EPS)
        time_input, prediction = "t999", "eps"
    elif family(cfg) == "ddpmpp_vp":  # score_sde's discrete VPSDE table
        n = int(cfg["num_scales"])
        betas = np.linspace(float(cfg["beta_min"]) / n, float(cfg["beta_max"]) / n, n, dtype=np.float64)
        process = get_process("vp_discrete", alphas_cumprod=tuple(np.cumprod(1.0 - betas).tolist()))
        time_input, prediction = "index", "eps"
    else:
        process = get_process("ve", sigma_min=float(cfg["sigma_min"]), sigma_max=float(cfg["sigma_max"]),
                              t_min=VE_SAMPLING_EPS)
        time_input, prediction = "sigma", "score"
    timestep, apply, model_fn = make_functions(unet, process, time_input, None, None)
    return Pretrained(params=params, apply=apply, model_fn=model_fn, process=process, prediction=prediction,
                      timestep=timestep, image_shape=tuple(unet.sample_size) + (3,), config=unet, source=source,
                      layout=layout)


def load(path: str, *, config: str | dict[str, Any] | None = None, params: str = "params_ema",
         **overrides: Any) -> Pretrained:
    """A score_sde NCSN++ checkpoint as a `Pretrained`.

    Args:
      path: a `checkpoint_N` file, or a folder of them (the highest N is read).
      config: a preset name (`PRESETS`, `ALIASES`), a .json file or a dict of score_sde config keys.
      params: "params_ema" (default, what score_sde samples with) or "params" (the optimizer's).
      **overrides: score_sde config keys (image_size=..., sigma_max=..., nf=..., ...), applied last.

    Returns:
      A `Pretrained` on the family's process (see the module docstring).

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    PARAMS_KEYS.check(params)  # before the config and the network are built
    cfg = resolve_config(config, **overrides)
    unet, _, expected = network(cfg)
    mapping = parameter_map(unet, expected)
    file, found = read_checkpoint(path, params)
    check_weights({k: v.shape for k, v in found.items()}, {k: expected[v] for k, v in mapping.items()}, file,
                  f"score_sde {cfg['_source']}")
    weights = unflatten({mapping[k]: jnp.asarray(np.asarray(v, np.float32)) for k, v in found.items()})
    return make_pretrained(cfg, unet, weights, file, "score_sde")
