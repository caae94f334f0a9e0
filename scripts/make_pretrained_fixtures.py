"""Write small random-weight diffusers `UNet2DModel` checkpoints and their torch outputs, for tests/test_pretrained.py.

    TORCH_VENV/bin/python scripts/make_pretrained_fixtures.py [--out tests/fixtures/pretrained]
    python scripts/make_pretrained_fixtures.py --score-sde-repo /path/to/score_sde [--out ...]

The second command (this project's environment: jax, flax, ml_collections) writes the score_sde fixtures with
score_sde's own network code from a checkout, see `save_score_sde` and `save_score_sde_ddpmpp`.

Needs numpy, torch, diffusers and safetensors (not this project's packages): run it in a separate environment, e.g.
`python3 -m venv TORCH_VENV && TORCH_VENV/bin/pip install torch diffusers safetensors numpy`.
tests/test_pretrained.py reads what it writes and, where torch and diffusers import, calls `build` and `run` live on
every spec in `SPECS` (the committed fixtures are the ones with `fixture=True`).

Each fixture is a folder `<name>/` in the layout its `layout` names: "pipeline" (`unet/` with config.json and
diffusion_pytorch_model.safetensors, `scheduler/scheduler_config.json`) or "unet" (scheduler_config.json beside
config.json), plus `<name>/outputs.npz`: x (B, H, W, C) float32 (NHWC), timesteps (B,), labels (B,) (-1: none) and
out (B, H, W, C), the torch network's output on them. Weights are random (norm scales 1 + 0.2 N(0, 1), biases
0.2 N(0, 1), kernels N(0, 1 / fan_in)), then rounded to float16 when `dtype` is "float16" (the file holds float16 and
torch runs float32 on the rounded values), which halves the files; the Fourier weights are N(0, 1) rather than
diffusers' N(0, 16^2) so that float32 ulps of log(sigma) do not dominate the 1e-5 comparison.

The "ncsnpp" outputs.npz also holds `out_score_sde`: the same network with every Skip-block GroupNorm given
score_sde's min(C // 4, 32) groups (diffusers uses 32 for the Skip blocks' attention and min(a + b // 4, 32) in
AttnSkipUpBlock2D; the rules agree for C >= 128). The test maps the weights into score_sde's parameter tree and
checks the score_sde loader against it.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pretrained")

_DDPM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                   "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": True,
                   "variance_type": "fixed_small"}
_VE_SCHEDULER = {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000, "sigma_min": 0.01,
                 "sigma_max": 50.0, "sampling_eps": 1e-5, "snr": 0.15, "correct_steps": 1}
_SKIP = dict(norm_num_groups=None, mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6, attention_head_dim=None,
             time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=1)

# name -> the UNet2DModel config, scheduler config, layout, file dtype, inputs, whether it is committed.
SPECS = {
    # DDPM (google/ddpm-cifar10-32's options): positional sin-first embedding with shift 1, padding-0 downsampling.
    "ddpm": dict(
        unet=dict(sample_size=8, block_out_channels=(16, 24), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=8, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6),
        scheduler=_DDPM_SCHEDULER, layout="pipeline", dtype="float32", timesteps=(0.0, 17.0, 523.5, 999.0),
        labels=None, fixture=True),
    # NCSN++ (google/ncsnpp-*): Skip blocks, FIR resampling, Fourier embedding of sigma, output / sigma.
    "ncsnpp": dict(
        unet=dict(sample_size=16, block_out_channels=(16, 32, 32), layers_per_block=1,
                  down_block_types=("SkipDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D"),
                  up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D", "SkipUpBlock2D"), center_input_sample=True,
                  **_SKIP),
        scheduler=_VE_SCHEDULER, layout="unet", dtype="float16", timesteps=(0.01, 0.3, 5.0, 50.0), labels=None,
        fixture=True),
    # Class-conditional, scale-shift, resnet resampling, mish, no mid-attention norm, v-prediction, cosine betas.
    "conditional": dict(
        unet=dict(sample_size=8, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D"), downsample_type="resnet",
                  upsample_type="resnet", resnet_time_scale_shift="scale_shift", num_class_embeds=10, act_fn="mish",
                  time_embedding_dim=32, attention_head_dim=8),
        scheduler=dict(_DDPM_SCHEDULER, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        layout="unet", dtype="float16", timesteps=(3.0, 250.0, 700.0, 999.0), labels=(0, 3, 9, 5), fixture=True),
    # Live only: conv resampling in Attn blocks, flip/shift 0, no mid attention, scaled_linear betas, one head.
    "attn_conv": dict(
        unet=dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4,
                  down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
                  attention_head_dim=None, add_attention=False, act_fn="silu"),
        scheduler=dict(_DDPM_SCHEDULER, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        layout="pipeline", dtype="float32", timesteps=(1.0, 400.0, 998.0), labels=None, fixture=False),
    # Live only: scale_shift with an explicit mid-attention norm, gelu, 2 layers per block in Skip blocks.
    "skip_scale_shift": dict(
        unet=dict(sample_size=8, block_out_channels=(32, 32), layers_per_block=2,
                  down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                  up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), resnet_time_scale_shift="scale_shift",
                  attn_norm_num_groups=4, act_fn="gelu", **_SKIP),
        scheduler=_VE_SCHEDULER, layout="unet", dtype="float32", timesteps=(0.02, 1.0, 40.0), labels=None,
        fixture=False),
}


def build(name: str, seed: int = 0):
    """The spec's UNet2DModel (eval mode, float32) with random weights, rounded to the spec's file dtype."""
    import torch
    from diffusers import UNet2DModel

    spec = SPECS[name]
    torch.manual_seed(seed)
    model = UNet2DModel(**spec["unet"]).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if key.endswith("time_proj.weight"):
                value = noise
            elif p.ndim == 1 and "norm" in key and key.endswith("weight"):
                value = 1.0 + 0.2 * noise
            elif p.ndim == 1:
                value = 0.2 * noise
            elif key.endswith("class_embedding.weight"):
                value = noise
            else:
                value = noise / math.sqrt(p[0].numel())
            if spec["dtype"] == "float16":
                value = value.half().float()
            p.copy_(value)
    return model


def inputs(name: str, seed: int = 0):
    """(x (B, C, H, W) float32 torch, timesteps (B,) float32 torch, labels (B,) int64 torch or None)."""
    import torch

    spec = SPECS[name]
    cfg = spec["unet"]
    gen = torch.Generator().manual_seed(seed + 2)
    batch = len(spec["timesteps"])
    x = torch.randn((batch, cfg.get("in_channels", 3), cfg["sample_size"], cfg["sample_size"]), generator=gen)
    labels = None if spec["labels"] is None else torch.tensor(spec["labels"], dtype=torch.int64)
    return x, torch.tensor(spec["timesteps"], dtype=torch.float32), labels


def run(model, x, timesteps, labels):
    """The model's output, NHWC numpy float32."""
    import torch

    with torch.no_grad():
        out = model(x, timesteps, class_labels=labels).sample
    return out.permute(0, 2, 3, 1).numpy().astype(np.float32)


def use_score_sde_groups(model):
    """Give every Skip-block GroupNorm score_sde's min(C // 4, 32) groups, in place (the parameters are unchanged)."""
    for key, module in model.named_modules():
        if type(module).__name__ == "GroupNorm" and ("down_blocks" in key or "up_blocks" in key):
            module.num_groups = min(module.num_channels // 4, 32)
    return model


def save(name: str, out_dir: str, seed: int = 0) -> str:
    """Write the spec's checkpoint folder and outputs.npz under out_dir/name; returns the folder."""
    spec = SPECS[name]
    folder = os.path.join(out_dir, name)
    model = build(name, seed)
    x, timesteps, labels = inputs(name, seed)
    out = run(model, x, timesteps, labels)
    unet_dir = os.path.join(folder, "unet") if spec["layout"] == "pipeline" else folder
    scheduler_dir = os.path.join(folder, "scheduler") if spec["layout"] == "pipeline" else folder
    os.makedirs(scheduler_dir, exist_ok=True)
    saved = model.half() if spec["dtype"] == "float16" else model
    saved.save_pretrained(unet_dir, safe_serialization=True)
    with open(os.path.join(scheduler_dir, "scheduler_config.json"), "w") as f:
        json.dump(spec["scheduler"], f, indent=2, sort_keys=True)
    arrays = dict(x=x.permute(0, 2, 3, 1).numpy(), timesteps=timesteps.numpy(), out=out,
                  labels=np.full(x.shape[0], -1) if labels is None else labels.numpy())
    if any("Skip" in t for t in spec["unet"]["down_block_types"]):
        arrays["out_score_sde"] = run(use_score_sde_groups(build(name, seed)), x, timesteps, labels)
    np.savez_compressed(os.path.join(folder, "outputs.npz"), **arrays)
    return folder


# The "ncsnpp" spec in score_sde's config keys (data.centered = not center_input_sample, attention at 16 / 2^2).
SCORE_SDE_CONFIG = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=16,
                        centered=False, sigma_min=0.01, sigma_max=50.0)


def _their_ncsnpp(repo: str):
    """score_sde's NCSNpp class, executed from a checkout of github.com/yang-song/score_sde. Its models/utils.py
    imports tensorflow and flax.optim (gone from flax), so a stand-in with the two helpers ncsnpp.py uses
    (register_model, get_sigmas) takes its place; the network code is score_sde's, unchanged."""
    import importlib
    import sys
    import types

    import jax.numpy as jnp

    package = types.ModuleType("score_sde_models")
    package.__path__ = [os.path.join(repo, "models")]
    sys.modules["score_sde_models"] = package
    utils = types.ModuleType("score_sde_models.utils")
    utils.register_model = lambda cls=None, *, name=None: (lambda c: c) if cls is None else cls
    utils.get_sigmas = lambda config: jnp.exp(jnp.linspace(jnp.log(config.model.sigma_max),
                                                           jnp.log(config.model.sigma_min), config.model.num_scales))
    sys.modules["score_sde_models.utils"] = utils
    return importlib.import_module("score_sde_models.ncsnpp").NCSNpp


def save_score_sde(out_dir: str, repo: str) -> str:
    """Write `ncsnpp/score_sde/checkpoint_1`: the "ncsnpp" fixture's weights in score_sde's parameter tree, as the
    flax msgpack of a score_sde training state ({step, optimizer: {state}, lr, model_state, ema_rate, params_ema,
    rng}; the optimizer's target is left out to keep the file small), float16 like the safetensors fixture.

    Before writing, score_sde's own NCSNpp (from `repo`) must (a) create exactly this tree of names and shapes and
    (b) reproduce `out_score_sde` of outputs.npz with these weights; the tree's names and shapes are also written
    to ncsnpp/score_sde/tree.json, which the test compares with the loader's mapping."""
    import flax
    import jax
    import jax.numpy as jnp

    from fastsamplers.models import pretrained
    from fastsamplers.models.pretrained import score_sde

    folder = os.path.join(out_dir, "ncsnpp")
    m = pretrained.load(folder)
    tree = score_sde.to_score_sde_tree(m.params, score_sde.unet_config(score_sde.resolve_config(SCORE_SDE_CONFIG)))
    data = np.load(os.path.join(folder, "outputs.npz"))

    net = _their_ncsnpp(repo)(_score_sde_config(SCORE_SDE_CONFIG))
    x, sigmas = jnp.asarray(data["x"]), jnp.asarray(data["timesteps"])
    init = net.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, sigmas, train=False)
    shapes = lambda t: {"/".join(str(getattr(k, "key", k)) for k in p): tuple(v.shape)  # noqa: E731
                        for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    theirs, ours = shapes(flax.core.unfreeze(init["params"])), shapes(tree)
    if theirs != ours:
        shapes_differ = [k for k in theirs if theirs[k] != ours.get(k)][:5]
        raise SystemExit(f"score_sde's tree differs: only theirs {sorted(set(theirs) - set(ours))[:5]}, only ours "
                         f"{sorted(set(ours) - set(theirs))[:5]}, shapes {shapes_differ}")
    out = np.asarray(net.apply({"params": jax.tree.map(jnp.asarray, tree)}, x, sigmas, train=False))
    err = float(np.max(np.abs(out - data["out_score_sde"])))
    if err > 1e-5 * max(1.0, float(np.max(np.abs(data["out_score_sde"])))):
        raise SystemExit(f"score_sde's NCSNpp with the mapped weights differs from torch by {err}")
    print(f"score_sde's NCSNpp: {len(theirs)} parameters, the same tree; max |out - torch| = {err:.3g}")

    state = {"step": np.int64(1), "optimizer": {"state": {"step": np.int64(1)}}, "lr": np.float32(2e-4),
             "model_state": {}, "ema_rate": np.float32(0.999), "rng": np.zeros(2, np.uint32),
             "params_ema": jax.tree.map(lambda a: np.asarray(a, np.float16), tree)}
    target = os.path.join(folder, "score_sde")
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "checkpoint_1"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(state))
    with open(os.path.join(target, "tree.json"), "w") as f:
        json.dump({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in SCORE_SDE_CONFIG.items()},
                   "params": {k: list(v) for k, v in sorted(theirs.items())}}, f, indent=0, sort_keys=True)
    return target


# A tiny score_sde DDPM++ (vp/cifar10_ddpmpp_continuous's architecture), for `save_score_sde_ddpmpp`.
DDPMPP_CONFIG = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, sde="vpsde",
                     centered=True, fir=False, scale_by_sigma=False, progressive="none", progressive_input="none",
                     embedding_type="positional")
DDPMPP_TIMES = (1e-3, 0.25, 0.6, 1.0)


def _score_sde_config(flat):
    import ml_collections

    from fastsamplers.models.pretrained import score_sde

    resolved = score_sde.resolve_config(flat)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({k: v for k, v in resolved.items() if not k.startswith("_")})
    config.data = ml_collections.ConfigDict(dict(centered=resolved["centered"], image_size=resolved["image_size"],
                                                 num_channels=3))
    config.training = ml_collections.ConfigDict(dict(continuous=resolved["continuous"], sde=resolved["sde"]))
    return config


def save_score_sde_ddpmpp(out_dir: str, repo: str, seed: int = 0) -> str:
    """Write `ddpmpp_vp/`: a random-weight score_sde DDPM++ made and run by score_sde's own NCSNpp (from `repo`):
    checkpoint_1 (the msgpack training state, weights rounded to float16 and stored so), config.json (its score_sde
    config keys) and outputs.npz (x (B, H, W, C), t (B,), timesteps = 999 t (score_sde's continuous VP labels), out:
    score_sde's output, the noise prediction). No torch: diffusers has no DDPM++ block layout."""
    import flax
    import jax
    import jax.numpy as jnp

    folder = os.path.join(out_dir, "ddpmpp_vp")
    os.makedirs(folder, exist_ok=True)
    net = _their_ncsnpp(repo)(_score_sde_config(DDPMPP_CONFIG))
    rng = np.random.default_rng(seed)
    size = DDPMPP_CONFIG["image_size"]
    x = rng.normal(size=(len(DDPMPP_TIMES), size, size, 3)).astype(np.float32)
    labels = (999.0 * np.asarray(DDPMPP_TIMES, np.float32)).astype(np.float32)
    init = net.init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(1)}, jnp.asarray(x),
                    jnp.asarray(labels), train=False)

    def randomize(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        noise = rng.normal(size=leaf.shape)
        if name == "scale":
            value = 1.0 + 0.2 * noise
        elif name in ("bias", "b"):
            value = 0.2 * noise
        else:  # kernels (..., in, out) and NIN W (in, out)
            value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return np.asarray(value, np.float16)

    tree = jax.tree_util.tree_map_with_path(randomize, flax.core.unfreeze(init["params"]))
    out = np.asarray(net.apply({"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)},
                               jnp.asarray(x), jnp.asarray(labels), train=False))
    state = {"step": np.int64(1), "optimizer": {"state": {"step": np.int64(1)}}, "lr": np.float32(2e-4),
             "model_state": {}, "ema_rate": np.float32(0.9999), "rng": np.zeros(2, np.uint32), "params_ema": tree}
    with open(os.path.join(folder, "checkpoint_1"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(state))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in DDPMPP_CONFIG.items()}, f, indent=2)
    np.savez_compressed(os.path.join(folder, "outputs.npz"), x=x, t=np.asarray(DDPMPP_TIMES, np.float32),
                        timesteps=labels, out=out.astype(np.float32))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help="the fixtures folder")
    parser.add_argument("--score-sde-repo", default=None,
                        help="a checkout of github.com/yang-song/score_sde: write the score_sde fixture instead")
    args = parser.parse_args()
    if args.score_sde_repo:
        import sys

        sys.path.insert(0, ROOT)
        print(save_score_sde(args.out, args.score_sde_repo))
        print(save_score_sde_ddpmpp(args.out, args.score_sde_repo))
        return
    for name, spec in SPECS.items():
        if spec["fixture"]:
            print(save(name, args.out))


if __name__ == "__main__":
    main()
