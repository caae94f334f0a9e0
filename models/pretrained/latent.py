"""Latent class-conditional transformers on published weights: DiT (Peebles & Xie 2023) and SiT (Ma et al. 2024),
on `models.dit.DiT`, with the SD VAE decoder (`models.pretrained.vae`).

Three layouts:
  "dit"            a folder converted by `scripts/convert_checkpoint.py --layout dit` from a released DiT `.pt` (a
                   plain state dict under DiT/models.py's names): config.json = {"layout": "dit", "model": a preset
                   name ("DiT-XL/2", ...) or {"depth", "hidden_size", "patch_size", "num_heads"[, "mlp_ratio"]},
                   "input_size": the latent size (image_size // 8), "in_channels": 4, "num_classes": 1000,
                   "learn_sigma": true, "vae": "ema" / "mse" / null (the VAE the checkpoint samples with)} +
                   model.safetensors, and optionally vae/ (a diffusers AutoencoderKL folder).
  "sit"            the same from a released SiT `.pt` (SiT/models.py, the same backbone and names).
  "diffusers_dit"  a diffusers `DiTPipeline` root (model_index.json, transformer/, vae/, scheduler/) or its
                   transformer/ folder (a `DiTTransformer2DModel`; no VAE then unless vae= is given).

Numerics, each layout its own reference: DiT and SiT put the column half of the sin-cos positions first, embed time
as [cos, sin] of t exp(-ln(1e4) i / 128) (DiT/models.py:41-56, 279-318), guide channels 0-2 only (forward_with_cfg,
DiT/models.py:250-266: `guidance_mask`); diffusers' DiTTransformer2DModel uses downscale_freq_shift = 1
(exp(-ln(1e4) i / 127): CombinedTimestepLabelEmbeddings), its config's norm_eps (1e-5 by default) in the LayerNorm
before each MLP (BasicTransformerBlock's norm3; DiT: 1e-6), positions stretched to its trained grid at other sizes
(PatchEmbed's base_size), and guides all channels (pipeline_dit.py). diffusers stores the timestep and label
embedders once per block (copies of DiT's one): they must be equal, as every conversion makes them.

Times and predictions. DiT (both layouts): the `vp_discrete` process of DiT's linear betas (1e-4..0.02, 1000 steps;
diffusers: the scheduler config's), the network fed the step index `process.discrete_index(t)`, prediction "eps";
learn_sigma's 2C output channels are [eps | v]: `apply` returns all, `model_fn` the eps half (what ODE solvers use).
SiT: SiT's linear path x = t_SiT x_data + (1 - t_SiT) eps (transport/path.py) is the framework's "ot" process
(alpha = 1 - t, sigma = t, t_max = 1) at t = 1 - t_SiT; the network is fed t_SiT = 1 - t raw, and its velocity
v_SiT = dx/dt_SiT = x_data - eps is -dx/dt, so `model_fn` returns -v_SiT, prediction "velocity".

The VAE: `m.decode(z)` takes diffusion latents (B, h, w, 4) and returns images (B, 8h, 8w, 3) in about [-1, 1]
(it divides by the scaling factor 0.18215 itself); `m.latent_shape` is the latents' (h, w, 4) and `m.image_shape`
the decoded images' (8h, 8w, 3). Without a VAE folder `m.decode` is None.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry, read_json
from fastsamplers.core.typing import Shape
from fastsamplers.models.conditioning import split_conditional_args
from fastsamplers.models.dit import DiT, sincos_2d
from fastsamplers.models.pretrained.diffusers import alphas_cumprod, scheduler_process
from fastsamplers.models.pretrained.model import (Pretrained, batch_times, check_weights, make_functions,
                                               read_converted_config)
from fastsamplers.models.pretrained.vae import VAEConfig, decode_fn, load_decoder
from fastsamplers.schedules.processes import Process, get_process

WEIGHTS = "model.safetensors"
VAE_FACTOR = 8  # the SD VAE's downsampling (DiT/sample.py: latent_size = image_size // 8)
# DiT/models.py:328-363 (SiT/models.py: the same sizes under SiT- names): depth, hidden_size, patch_size, num_heads.
_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
PRESETS = Registry("model preset", {f"{family}-{size}/{p}": dict(depth=d, hidden_size=h, patch_size=p, num_heads=n)
                                    for family in ("DiT", "SiT") for size, (d, h, n) in _SIZES.items()
                                    for p in (2, 4, 8)}, ordered=True,
                   unknown="{source}: unknown {kind} {name!r}; valid: {valid}")
MODEL_KEYS = ("depth", "hidden_size", "patch_size", "num_heads", "mlp_ratio")
# The released VAEs (DiT/sample.py: stabilityai/sd-vae-ft-{ema,mse}).
VAE_NAMES = ("ema", "mse")
# Channels DiT's and SiT's forward_with_cfg guide (DiT/models.py:262, "for exact reproducibility").
REFERENCE_GUIDANCE_MASK = (True, True, True, False)


# --- the state dicts' names ------------------------------------------------------------------------------------------

def _dense(array):
    return np.asarray(array, np.float32).T


def _heads(num_heads):
    """A (D_out, D_in) projection onto heads -> flax MultiHeadDotProductAttention's (D_in, heads, d) kernel."""
    def convert(array):
        w = _dense(array)
        return w.reshape(w.shape[0], num_heads, -1)
    return convert


def _bias_heads(num_heads):
    return lambda array: np.asarray(array, np.float32).reshape(num_heads, -1)


def _out_heads(num_heads):
    """attn.proj's (D, D) -> MultiHeadDotProductAttention's out kernel (heads, d, D)."""
    return lambda array: _dense(array).reshape(num_heads, -1, np.shape(array)[0])


def _conv(array):
    return np.transpose(np.asarray(array, np.float32), (2, 3, 1, 0))  # OIHW -> HWIO


def _same(array):
    return np.asarray(array, np.float32)


def _linear(prefix, path):
    """{torch key: (flax path, converter)} of a torch Linear at `prefix` as a flax Dense at `path`."""
    return {f"{prefix}.weight": (path + ("kernel",), _dense), f"{prefix}.bias": (path + ("bias",), _same)}


# Each layout's names of DiT's layers: the patch conv, the label table, the timestep MLP's two Linears, the final
# layer's two, each block's prefix, adaLN Linear and MLP's two (diffusers: scripts/convert_dit_to_diffusers.py).
_EMB = "transformer_blocks.0.norm1.emb"
NAMES = {"original": dict(patch="x_embedder.proj", label="y_embedder.embedding_table",
                          time=("t_embedder.mlp.0", "t_embedder.mlp.2"),
                          final=("final_layer.adaLN_modulation.1", "final_layer.linear"), block="blocks",
                          ada="adaLN_modulation.1", mlp=("mlp.fc1", "mlp.fc2")),
         "diffusers": dict(patch="pos_embed.proj", label=f"{_EMB}.class_embedder.embedding_table",
                           time=(f"{_EMB}.timestep_embedder.linear_1", f"{_EMB}.timestep_embedder.linear_2"),
                           final=("proj_out_1", "proj_out_2"), block="transformer_blocks", ada="norm1.linear",
                           mlp=("ff.net.0.proj", "ff.net.2"))}


def state_names(net: DiT, layout: str) -> dict[str, tuple]:
    """{state-dict key: (flax path, array converter)} of DiT/models.py's names (`layout` "original") or
    DiTTransformer2DModel's ("diffusers"). The original's fused timm qkv (3D, D) rows are [q | k | v], each
    head-major (timm's reshape(B, N, 3, heads, d)): its entries are (attention path, "qkv" or "qkv_bias",
    converter), split by `_params`. Left out: DiT's pos_embed buffer (recomputed and compared by the loader) and
    diffusers' per-block embedder copies of blocks 1.. (compared with block 0's by the loader)."""
    n, h = NAMES[layout], net.num_heads
    names = {f"{n['patch']}.weight": (("patch_embed", "kernel"), _conv),
             f"{n['patch']}.bias": (("patch_embed", "bias"), _same),
             f"{n['label']}.weight": (("label_embed", "embedding"), _same)}
    for prefix, path in zip(n["time"] + n["final"], ("time_embed_0", "time_embed_1", "final_modulation",
                                                      "final_linear")):
        names.update(_linear(prefix, (path,)))
    for i in range(net.depth):
        block, attn = f"{n['block']}.{i}", (f"block_{i}", "MultiHeadDotProductAttention_0")
        for prefix, dense in zip((n["ada"],) + n["mlp"], ("Dense_0", "Dense_1", "Dense_2")):
            names.update(_linear(f"{block}.{prefix}", (f"block_{i}", dense)))
        if layout == "original":
            names[f"{block}.attn.qkv.weight"] = (attn, "qkv", _heads(h))
            names[f"{block}.attn.qkv.bias"] = (attn, "qkv_bias", _bias_heads(h))
            out = f"{block}.attn.proj"
        else:
            for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
                names[f"{block}.attn1.{theirs}.weight"] = (attn + (ours, "kernel"), _heads(h))
                names[f"{block}.attn1.{theirs}.bias"] = (attn + (ours, "bias"), _bias_heads(h))
            out = f"{block}.attn1.to_out.0"
        names[f"{out}.weight"] = (attn + ("out", "kernel"), _out_heads(h))
        names[f"{out}.bias"] = (attn + ("out", "bias"), _same)
    return names


def _params(state: dict[str, np.ndarray], names: dict, net: DiT, image_shape: Shape, source: str) -> dict:
    """The flax params of `net` from a state dict, checked name by name and shape by shape first."""
    expected = _expected(net, image_shape)
    flat: dict[tuple[str, ...], Any] = {}
    for key, (path, *rest) in names.items():
        if key not in state:
            continue
        if rest and isinstance(rest[0], str):  # the fused qkv: three kernels (or biases)
            what, convert = rest
            parts = np.split(np.asarray(state[key]), 3, axis=0)
            leaf = "kernel" if what == "qkv" else "bias"
            for name, part in zip(("query", "key", "value"), parts):
                flat[path + (name, leaf)] = convert(part)
        else:
            flat[path] = rest[0](state[key])
    _check_state(state, names, source)
    check_weights({"/".join(p): v.shape for p, v in flat.items()}, {"/".join(p): s for p, s in expected.items()},
                  source, "network in config.json")
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    return tree


def _check_state(state, names, source):
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names))
    if missing or extra:
        parts = ([f"missing {len(missing)} key(s) the network needs: {missing[:6]}"] if missing else []) + (
            [f"{len(extra)} unexpected key(s): {extra[:6]}"] if extra else [])
        raise ValueError(f"{source}: " + "; ".join(parts))


@functools.lru_cache(maxsize=16)
def _expected(net: DiT, image_shape: Shape) -> dict[tuple[str, ...], Shape]:
    tree = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), 1.0,
                                           jnp.zeros((1,), jnp.int32)))
    return {tuple(getattr(k, "key", k) for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


# --- the loaders -----------------------------------------------------------------------------------------------------

def _model(raw: Any, source: str) -> dict[str, Any]:
    """A preset name or a dict of MODEL_KEYS -> DiT's constructor keys."""
    if isinstance(raw, str):
        return dict(PRESETS.lookup(raw, source=source))
    if not isinstance(raw, dict) or set(raw) - set(MODEL_KEYS) or set(MODEL_KEYS[:4]) - set(raw):
        raise ValueError(f"{source}: \"model\" must be a preset name (one of {list(PRESETS)}) or an object with "
                         f"keys {list(MODEL_KEYS[:4])} (and optionally mlp_ratio); got {raw!r}")
    return dict(raw)


def _vae(path: str, vae: str | None, source: str) -> tuple[VAEConfig | None, Any]:
    """(config, params) of the VAE folder `vae`, else of path/vae when it exists, else (None, None)."""
    folder = vae if vae is not None else os.path.join(path, "vae")
    if vae is None and not os.path.isdir(folder):
        return None, None
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such VAE folder: {folder} (a diffusers AutoencoderKL folder: config.json and "
                                "diffusion_pytorch_model.safetensors)")
    config, params = load_decoder(folder)
    return config, params


def _latent_model(path, layout, net, state, names, process, prediction, latent_shape, num_classes, vae, source,
                  guidance_mask, learned):
    params = _params(state, names, net, latent_shape, source)
    vae_config, vae_params = _vae(path, vae, source)
    if vae_config is not None and vae_config.latent_channels != latent_shape[-1]:
        raise ValueError(f"{source}: the VAE has {vae_config.latent_channels} latent channels, the network "
                         f"{latent_shape[-1]}")
    factor = VAE_FACTOR if vae_config is None else vae_config.factor
    out = 3 if vae_config is None else vae_config.out_channels
    image_shape = (latent_shape[0] * factor, latent_shape[1] * factor, out)
    decode = None if vae_config is None else functools.partial(decode_fn(vae_config), vae_params)
    channels = latent_shape[-1] if learned else None
    if layout == "sit":
        timestep, apply, model_fn = _sit_functions(net, process, num_classes, channels)
        variance_model_fn = None  # SiT samples its velocity; its learned sigma is never used (SiT/models.py:245)
    else:
        timestep, apply, model_fn = make_functions(net, process, "index", num_classes, num_classes, network=_module,
                                                   model_channels=channels)
        variance_model_fn = make_functions(net, process, "index", num_classes, num_classes,
                                           network=_module)[2] if learned else None
    return Pretrained(params=params, apply=apply, model_fn=model_fn, process=process, prediction=prediction,
                      timestep=timestep, image_shape=image_shape, num_classes=num_classes, null_label=num_classes,
                      config=net, source=path, layout=layout, latent_shape=latent_shape, decode=decode,
                      guidance_mask=guidance_mask, variance_model_fn=variance_model_fn)


def _module(net: DiT) -> DiT:
    """make_functions' network(config): the config is the module itself."""
    return net


@functools.lru_cache(maxsize=16)
def _sit_functions(net: DiT, process: Process, num_classes: int, channels: int | None):
    """(timestep, apply, model_fn) of a SiT network (see the module docstring): timestep(t) = 1 - t, apply = SiT's
    forward (its velocity, the first `channels` outputs), model_fn = -apply at 1 - t."""
    def timestep(t):
        return 1.0 - jnp.asarray(t, jnp.float32)

    def apply(params, x, t_input, class_labels=None):
        out = net.apply({"params": params}, x, batch_times(t_input, x.shape[0]), class_labels)
        return out if channels is None else out[..., :channels]  # SiT/models.py:245-246

    def model_fn(x, t, args):
        params, labels = split_conditional_args(args, num_classes)
        return -apply(params, x, timestep(batch_times(t, x.shape[0])), labels)

    return timestep, apply, model_fn


def _read_converted(path: str, layout: str) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such folder: {path}")
    raw, config_file, weights_file = read_converted_config(path, layout, "convert the .pt with "
                                                           f"scripts/convert_checkpoint.py --layout {layout}")
    keys = {"layout", "model", "input_size", "in_channels", "num_classes", "learn_sigma", "vae", "image_size"}
    unknown = sorted(set(raw) - keys)
    if unknown or "model" not in raw or "input_size" not in raw:
        raise ValueError(f"{config_file}: a {layout} config.json has \"model\" and \"input_size\" (and optionally "
                         f"in_channels, num_classes, learn_sigma, vae, image_size); it has {sorted(raw)}")
    if raw.get("vae") not in VAE_NAMES + (None,):
        raise ValueError(f"{config_file}: vae={raw['vae']!r}; valid: {list(VAE_NAMES)} or null")
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing weights file {weights_file}")
    return config_file, raw, load_file(weights_file)


def _original(path: str, layout: str, vae: str | None) -> Pretrained:
    config_file, raw, state = _read_converted(path, layout)
    model = _model(raw["model"], config_file)
    size, channels = int(raw["input_size"]), int(raw.get("in_channels", 4))
    num_classes, learned = int(raw.get("num_classes", 1000)), bool(raw.get("learn_sigma", True))
    net = DiT(patch_size=model["patch_size"], hidden=model["hidden_size"], depth=model["depth"],
              num_heads=model["num_heads"], mlp_ratio=float(model.get("mlp_ratio", 4.0)), time_scale=1.0,
              num_classes=num_classes, out_channels=2 * channels if learned else channels, columns_first=True,
              flip_sin_to_cos=True)
    if "pos_embed" in state:  # the fixed buffer (1, T, D): a check that the layout's positions are ours
        grid = size // model["patch_size"]
        ours = np.asarray(sincos_2d(grid, grid, model["hidden_size"], columns_first=True))
        theirs = np.asarray(state.pop("pos_embed"), np.float32)
        if theirs.size != ours.size or np.max(np.abs(ours - theirs.reshape(ours.shape))) > 1e-5:
            raise ValueError(f"{os.path.join(path, WEIGHTS)}: pos_embed {theirs.shape} is not the 2-D sin-cos "
                             f"embedding of a {grid}x{grid} grid of width {model['hidden_size']} (wrong input_size or "
                             "model in config.json?)")
    if layout == "sit":
        process, prediction = get_process("ot", t_max=1.0), "velocity"
    else:  # DiT/diffusion/__init__.py: gd.get_named_beta_schedule("linear", 1000)
        table = alphas_cumprod({"num_train_timesteps": 1000, "beta_schedule": "linear"}, config_file)
        process, prediction = get_process("vp_discrete", alphas_cumprod=tuple(table.tolist())), "eps"
    return _latent_model(path, layout, net, state, state_names(net, "original"), process, prediction,
                         (size, size, channels),
                         num_classes, vae, os.path.join(path, WEIGHTS), REFERENCE_GUIDANCE_MASK, learned)


def load_dit(path: str, *, vae: str | None = None) -> Pretrained:
    """A converted DiT folder (layout "dit") as a `Pretrained` (see the module docstring).

    Args:
      path: the folder holding config.json and model.safetensors.
      vae: a diffusers AutoencoderKL folder for `decode` (default: path/vae when it exists).

    Returns:
      A `Pretrained` on `vp_discrete`, prediction "eps", args=(params, labels) (labels None: the null class).

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    return _original(path, "dit", vae)


def load_sit(path: str, *, vae: str | None = None) -> Pretrained:
    """A converted SiT folder (layout "sit") as a `Pretrained` on "ot" with velocity prediction (see the module
    docstring); args and errors as `load_dit`."""
    return _original(path, "sit", vae)


DIT_CONFIG = dict(activation_fn="gelu-approximate", norm_type="ada_norm_zero", norm_elementwise_affine=False,
                  attention_bias=True)
_DIT_KEYS = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "dropout",
             "norm_num_groups", "sample_size", "patch_size", "num_embeds_ada_norm", "upcast_attention", "norm_eps")
DIT_CONFIG_KEYS = Registry.of_names("DiTTransformer2DModel config key", tuple(DIT_CONFIG) + _DIT_KEYS, ordered=True,
                                    unknown="{source}: unknown {kind} {name!r}; valid: {valid}")


def transformer_folder(path: str) -> str | None:
    """The DiTTransformer2DModel folder of a DiTPipeline root (path/transformer) or of the folder itself, else None."""
    for folder in (os.path.join(path, "transformer"), path):
        config = os.path.join(folder, "config.json")
        if os.path.isfile(config):
            raw = read_json(config)
            if isinstance(raw, dict) and raw.get("_class_name") == "DiTTransformer2DModel":
                return folder
    return None


def load_diffusers(path: str, *, vae: str | None = None, scheduler_config: str | None = None) -> Pretrained:
    """A diffusers DiTPipeline root (or its transformer/ folder) as a `Pretrained` (layout "diffusers_dit").

    Args:
      path: the pipeline root (model_index.json, transformer/, vae/, scheduler/) or the transformer folder.
      vae: a diffusers AutoencoderKL folder (default: the pipeline's vae/).
      scheduler_config: a scheduler_config.json (default: the pipeline's scheduler/).

    Returns:
      A `Pretrained` on the scheduler's `vp_discrete` process, prediction from its prediction_type.

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    folder = transformer_folder(path)
    if folder is None:
        raise FileNotFoundError(f"{path}: no DiTTransformer2DModel config (transformer/config.json or config.json "
                                "with _class_name DiTTransformer2DModel)")
    root = os.path.dirname(folder) if os.path.basename(folder) == "transformer" else folder
    config_file = os.path.join(folder, "config.json")
    raw = read_json(config_file)
    for key, value in DIT_CONFIG.items():
        if raw.get(key, value) != value:
            raise NotImplementedError(f"{config_file}: {key}={raw[key]!r} is not DiT's ({value!r}); only DiT's "
                                      "DiTTransformer2DModel is built")
    for key in sorted(raw):
        if not key.startswith("_"):  # diffusers' own entries (_class_name, _diffusers_version)
            DIT_CONFIG_KEYS.check(key, source=config_file)
    heads, head_dim = int(raw.get("num_attention_heads", 16)), int(raw.get("attention_head_dim", 72))
    channels, patch = int(raw.get("in_channels", 4)), int(raw.get("patch_size", 2))
    out, size = int(raw.get("out_channels") or channels), int(raw.get("sample_size", 32))
    num_classes = int(raw.get("num_embeds_ada_norm", 1000))
    if out not in (channels, 2 * channels):
        raise ValueError(f"{config_file}: out_channels={out} is neither in_channels={channels} nor twice it")
    net = DiT(patch_size=patch, hidden=heads * head_dim, depth=int(raw.get("num_layers", 28)), num_heads=heads,
              time_scale=1.0, num_classes=num_classes, out_channels=out, columns_first=True,
              pos_base_size=size // patch,
              flip_sin_to_cos=True, freq_shift=1.0, mlp_norm_eps=float(raw.get("norm_eps", 1e-5)))
    weights_file = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"missing weights file {weights_file}")
    state = dict(load_file(weights_file))
    state.pop("pos_embed.pos_embed", None)  # a non-persistent buffer in current diffusers; older files hold it
    for i in range(1, net.depth):  # the per-block copies of the one timestep and label embedder
        for key in [k for k in state if k.startswith(f"transformer_blocks.{i}.norm1.emb.")]:
            first = key.replace(f"transformer_blocks.{i}.", "transformer_blocks.0.", 1)
            if first in state and not np.array_equal(state[key], state[first]):
                raise NotImplementedError(f"{weights_file}: {key} differs from block 0's; a DiT has one timestep and "
                                          "label embedder (every conversion copies it into each block), so "
                                          "per-block embedders are not built here")
            del state[key]
    if scheduler_config is None:
        scheduler_config = os.path.join(root, "scheduler", "scheduler_config.json")
    if not os.path.isfile(scheduler_config):
        raise FileNotFoundError(f"missing scheduler config {scheduler_config} (it gives the noise schedule); pass "
                                "scheduler_config=PATH")
    process, prediction, _ = scheduler_process(read_json(scheduler_config), scheduler_config)
    return _latent_model(root, "diffusers_dit", net, state, state_names(net, "diffusers"), process, prediction,
                         (size, size, channels), num_classes, vae, weights_file, None, out == 2 * channels)
