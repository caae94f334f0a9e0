"""Apple's TarFlow checkpoints (apple/ml-tarflow, transformer_flow.py `Model`) as a `models.tarflow.TarFlow`.

A converted folder (scripts/convert_checkpoint.py --layout tarflow, from the published `.pth` state dict) holds
  config.json:       {"layout": "tarflow", "init_kwargs": {...}, "noise_std": sigma_n (optional)}: the reference
                     Model's constructor arguments (in_channels, img_size, patch_size, channels, num_blocks,
                     layers_per_block, nvp, num_classes) and the training data's noise level;
  model.safetensors: the Model's state_dict() under its own names (`blocks.0.attn_blocks.1.attention.qkv.weight`,
                     ...), buffers included (each block's causal `attn_mask`, the prior's `var`).

The reference architecture is `TarFlow` with its reference options (`flow_of`; see models/tarflow.py): channel-
slowest patch vectors, the shift on the outputs, the mean class embedding as the unconditional branch, no final
LayerNorm, LayerNorm eps 1e-5, exact GELU, the prior variance, and heads of 64 channels (MetaBlock's head_dim
default, transformer_flow.py:128, which Model does not override). The weights map one to one, transposed (Linear
(out, in) -> Dense (in, out), the fused qkv split as attention.py's "adm" layout) and with the positional
embeddings of flipped blocks flipped, since the reference permutes them with the tokens (transformer_flow.py:156)
where `TarFlow` indexes them in the block's own order.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import Shape
from fastsamplers.models.pretrained.diffusers import unflatten
from fastsamplers.models.pretrained.model import PretrainedFlow, check_weights, read_converted_config
from fastsamplers.models.tarflow import TarFlow

HEAD_CHANNELS = 64  # MetaBlock's head_dim default (transformer_flow.py:128)
REQUIRED = ("in_channels", "img_size", "patch_size", "channels", "num_blocks", "layers_per_block")
OPTIONAL = {"nvp": True, "num_classes": 0}  # Model's defaults (transformer_flow.py:262-263)
INIT_KWARGS = Registry.of_names("init_kwargs key", REQUIRED + tuple(OPTIONAL), ordered=True,
                                unknown="{where}: unknown {kind} {name!r}; valid: {valid}")
# flax layer name (its index stripped) -> the reference's module path inside an attention block
_LAYERS = {"attn": "attention.qkv", "ln_attn": "attention.norm", "ln_mlp": "mlp.norm", "mlp_in": "mlp.main.0",
           "mlp_out": "mlp.main.2"}


def flow_of(init_kwargs: dict[str, Any], source: str = "config.json") -> TarFlow:
    """The `TarFlow` of the reference Model's constructor arguments; ValueError (one sentence naming `source`) on
    unknown, missing or ill-typed arguments, NotImplementedError for nvp=False (not built)."""
    for key in init_kwargs:
        INIT_KWARGS.check(key, where=source)
    missing = [k for k in REQUIRED if k not in init_kwargs]
    if missing:
        raise ValueError(f"{source}: init_kwargs lacks {missing}, which transformer_flow.Model requires")
    kwargs = {**OPTIONAL, **init_kwargs}
    for key, value in kwargs.items():
        if not isinstance(value, int) or (key != "nvp" and isinstance(value, bool)) or value < 0:
            raise ValueError(f"{source}: init_kwargs[{key!r}] must be a non-negative integer, got {value!r}")
    if not kwargs["nvp"]:
        raise NotImplementedError(f"{source}: nvp=False (the volume-preserving TarFlow, whose blocks output shifts "
                                  "only) is not built: the released and the paper's models are nvp")
    if kwargs["channels"] % HEAD_CHANNELS:
        raise ValueError(f"{source}: channels={kwargs['channels']} is not a multiple of the reference's head size "
                         f"{HEAD_CHANNELS}")
    try:
        return TarFlow(image_size=kwargs["img_size"], channels=kwargs["in_channels"], patch_size=kwargs["patch_size"],
                       num_blocks=kwargs["num_blocks"], layers_per_block=kwargs["layers_per_block"],
                       hidden=kwargs["channels"], num_heads=kwargs["channels"] // HEAD_CHANNELS, mlp_ratio=4.0,
                       num_classes=kwargs["num_classes"], patch_order="chw", shift="output", null_class="mean",
                       final_norm=False, ln_eps=1e-5, exact_gelu=True, prior_variance=True)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def torch_name(path: tuple[str, ...]) -> str:
    """The reference state-dict key of a flax parameter path (("block_0", "attn_1", "qkv", "kernel") ->
    "blocks.0.attn_blocks.1.attention.qkv.weight")."""
    if path == ("prior_var", "var"):
        return "var"
    block, *inner, leaf = path
    prefix = f"blocks.{block.split('_')[1]}."
    if leaf in ("pos_embed", "embedding"):
        return prefix + ("pos_embed" if leaf == "pos_embed" else "class_embed")
    layer = inner[0]
    if layer in ("proj_in", "proj_out"):
        module = layer
    else:
        kind, index = layer.rsplit("_", 1)
        module = f"attn_blocks.{index}." + ("attention.proj" if inner[1:] == ["out"] else _LAYERS[kind])
    return prefix + module + "." + {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)


def torch_shape(path: tuple[str, ...], shape: Shape) -> Shape:
    """The reference's shape of a flax parameter: Dense kernels (in..., out...) -> (out, in) (the attention's
    output projection reads two axes, heads and head channels), biases flat, the class table (K, 1, D)."""
    if path[-1] == "kernel":
        inputs = 2 if path[-2] == "out" else 1
        return (math.prod(shape[inputs:]), math.prod(shape[:inputs]))
    if path[-1] == "bias":
        return (math.prod(shape),)
    if path[-1] == "embedding":
        return (shape[0], 1, shape[1])
    return tuple(shape)


def to_flax(path: tuple[str, ...], array: np.ndarray, shape: Shape) -> jax.Array:
    """A reference array as the flax parameter at `path` of `shape` (float32)."""
    array = np.asarray(array, np.float32)
    if path[-1] == "kernel":
        array = array.T
    elif path[-1] == "pos_embed" and int(path[0].split("_")[1]) % 2:
        array = array[::-1]  # PermutationFlip of the positions (transformer_flow.py:23-25, 156)
    return jnp.asarray(np.reshape(array, shape))


def expected_params(flow: TarFlow) -> dict[tuple[str, ...], Shape]:
    """{flax parameter path: shape} of `flow` (abstract init: no compute)."""
    x = jnp.zeros((1, flow.image_size, flow.image_size, flow.channels), jnp.float32)
    tree = jax.eval_shape(lambda: flow.init(jax.random.PRNGKey(0), x))["params"]
    return {tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load(path: str) -> PretrainedFlow:
    """A converted TarFlow folder (see the module docstring) as a `PretrainedFlow`.

    Args:
      path: the folder holding config.json and model.safetensors.

    Returns:
      The `PretrainedFlow`: flow (a `TarFlow` with the reference options), params ({"params": ...}), image_shape,
      num_classes, noise_std, config (the init_kwargs), source, layout "tarflow".

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    raw, config_file, weights_file = read_converted_config(path, "tarflow", "convert the published .pth with "
                                                           "scripts/convert_checkpoint.py SOURCE OUT --layout tarflow")
    if not isinstance(raw.get("init_kwargs"), dict):
        raise ValueError(f"{config_file}: a tarflow folder's config.json holds init_kwargs, an object of the "
                         "reference Model's constructor arguments")
    noise_std = raw.get("noise_std")
    if noise_std is not None and (isinstance(noise_std, bool) or not isinstance(noise_std, (int, float))
                                  or noise_std < 0):
        raise ValueError(f"{config_file}: noise_std must be a non-negative number or absent, got {noise_std!r}")
    flow = flow_of(raw["init_kwargs"], config_file)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing weights file {weights_file}")

    shapes = expected_params(flow)
    by_name = {torch_name(p): p for p in shapes}
    masks = {f"blocks.{k}.attn_mask": (flow.num_tokens, flow.num_tokens) for k in range(flow.num_blocks)}
    state = load_file(weights_file)
    check_weights({k: v.shape for k, v in state.items()},
                  {**{name: torch_shape(p, shapes[p]) for name, p in by_name.items()}, **masks}, weights_file,
                  f"network in {os.path.basename(config_file)}")
    causal = np.tril(np.ones((flow.num_tokens, flow.num_tokens)))
    for name in masks:  # a constant of the architecture (transformer_flow.py:151): other values are other code
        if not np.array_equal(state[name], causal):
            raise ValueError(f"{weights_file}: buffer {name!r} is not the causal mask tril(ones(T, T))")
    if not np.all(state["var"] > 0):
        raise ValueError(f"{weights_file}: the prior variance 'var' has entries <= 0")
    params = unflatten({p: to_flax(p, state[name], shapes[p]) for name, p in by_name.items()})
    num_classes = raw["init_kwargs"].get("num_classes", 0) or None
    return PretrainedFlow(flow=flow, params={"params": params},
                          image_shape=(flow.image_size, flow.image_size, flow.channels), num_classes=num_classes,
                          noise_std=None if noise_std is None else float(noise_std), config=dict(raw["init_kwargs"]),
                          source=path, layout="tarflow")
