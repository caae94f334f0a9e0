r"""Write small random-weight guided-diffusion (ADM) networks, their outputs, and a classifier-guided DDIM run, for
tests/test_guided_diffusion.py.

    TORCH_VENV/bin/python scripts/make_guided_diffusion_fixtures.py --repo /path/to/guided-diffusion \
        [--out tests/fixtures/guided_diffusion]

Needs torch, numpy and safetensors, and a checkout of openai/guided-diffusion (`--repo`; its code is imported from
there and run, never copied). tests/test_guided_diffusion.py reads what this writes; where torch imports and
GUIDED_DIFFUSION_REPO names a checkout, it calls `write_network` live on every spec of `SPECS` (the committed
fixtures are the ones with `fixture=True`).

Each network is a folder `<name>/` in the converted layout, written by scripts/convert_checkpoint.py from the torch
state dict (`torch.save`, then `convert_checkpoint.main([... "--layout", "guided_diffusion", "--flags", ...])`), whose
model.safetensors is then stored in float16 (the weights are float16-rounded, so the file holds the same values in
half the bytes), plus `<name>/outputs.npz`: x (B, H, W, C) float32 (NHWC), timesteps (B,) (fractional ones included),
labels (B,) (-1: none), out (the network's output, NHWC or (B, classes) logits) and, for a classifier,
grad = d/dx sum_b log softmax(logits_b)[labels_b] (NHWC), what classifier_sample.py's cond_fn computes before its
scale. The networks come from script_util's create_model / create_classifier where the flags are theirs, and from
UNetModel / EncoderUNetModel directly, with the same arguments, where channel_mult is a list (ours, see
models/pretrained/guided_diffusion.py). Weights are random: GroupNorm scales 1 + 0.2 N(0, 1), biases 0.2 N(0, 1),
kernels N(0, 1 / fan_in), label embeddings N(0, 1), the positional embedding N(0, 1 / C), the zero-initialised
layers (out_layers.3, proj_out, out.2) included, all rounded to float16.

`ddim_guided.npz`: guided-diffusion's `ddim_sample_loop_progressive` on the "adm_new" model and the "classifier"
classifier, respaced with space_timesteps(1000, "ddim5") (steps 800, 600, 400, 200, 0), eta = 0,
cond_fn = SCALE * grad log softmax(classifier(x, t))[y] (classifier_sample.py:54-61) with model_kwargs y, and
clip_denoised=False (the framework's solvers do not clip x0_hat to [-1, 1]; a random network's x0_hat lies far outside
it). Written: x_init (B, H, W, C), labels, scale, timesteps (the original steps visited), states (5, B, H, W, C)
(each step's sample), unguided_final (the same loop without cond_fn), alphas_cumprod_linear / _cosine
(get_named_beta_schedule's tables), and log_variance_i2 / log_variance_i0: p_mean_variance's learned log variance on
x_init at respaced indices 2 and 0 (the latter uses the clipped posterior variance).

`ddpm_learned.npz`: guided-diffusion's `p_sample_loop_progressive` (DDPM's ancestral sampler with the learned
variance) on "adm_new", respaced with space_timesteps(1000, "5") (steps 999, 749, 500, 250, 0), its p_sample noise
replaced by the recorded `noises` (5, B, H, W, C) in order: x_init, labels, noises, timesteps, states_clipped
(clip_denoised=True, image_sample.py's default) and states (clip_denoised=False), each (5, B, H, W, C).

`released_shapes.json`: for every preset of scripts/convert_checkpoint.py (the released checkpoints' flags), the
parameter count and the sha256 of the sorted "name:shape" lines of the network script_util builds from those flags
(on torch's meta device: no weights), with guided-diffusion's 1-D convolutions' (O, I, 1) written (O, I) as the loader
reads them. The test hashes the names and shapes our loader expects for the same flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "guided_diffusion")
BATCH = 4
SCALE = 3.0  # the guidance scale of the DDIM case: large enough that guidance changes the sample
_DIFFUSION = dict(steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False,
                  predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing="")
_MODEL = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", learn_sigma=False,
              class_cond=False, use_checkpoint=False, attention_resolutions="8,4", num_heads=1, num_head_channels=-1,
              num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0.0, resblock_updown=False, use_fp16=False,
              use_new_attention_order=False)
_CLASSIFIER = dict(image_size=8, classifier_use_fp16=False, classifier_width=32, classifier_depth=1,
                   classifier_attention_resolutions="4", classifier_use_scale_shift_norm=True,
                   classifier_resblock_updown=True, classifier_pool="attention", channel_mult="1,2")

# name -> flags, diffusion flags, inputs, whether it is committed.
SPECS = {
    # ADM as released at 64 and 256: class-conditional, learned sigma, new attention order, head width 16 (2 heads),
    # scale-shift norm, resampling ResBlocks; linear betas. (Widths stay 32, GroupNorm32's least, to keep the files
    # small; the classifier's encoder and every decoder block change width.)
    "adm_new": dict(model_flags=dict(_MODEL, class_cond=True, learn_sigma=True, num_head_channels=16,
                                     use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True),
                    diffusion_flags=dict(_DIFFUSION, learn_sigma=True), timesteps=(0.0, 17.0, 523.5, 999.0),
                    labels=(0, 3, 999, 517), fixture=True),
    # The 128x128 release's legacy attention order with num_heads (2, and 4 in the decoder), conv resampling, the
    # embedding added (no scale-shift); unconditional, eps only, cosine betas.
    "adm_legacy": dict(model_flags=dict(_MODEL, num_heads=2, num_heads_upsample=4),
                       diffusion_flags=dict(_DIFFUSION, noise_schedule="cosine"), timesteps=(3.0, 250.0, 700.25, 999.0),
                       labels=None, fixture=True),
    # The noisy classifier (EncoderUNetModel, attention pool) as create_classifier builds it, at 8x8 with a small
    # channel_mult.
    "classifier": dict(classifier_flags=_CLASSIFIER, diffusion_flags=_DIFFUSION, timesteps=(0.0, 99.0, 600.5, 999.0),
                       labels=(1, 998, 40, 7), fixture=True),
    # Live only: the 512x512 default's half-width first level (channel_mult 0.5), legacy order with head width 32.
    "adm_half": dict(model_flags=dict(_MODEL, num_channels=64, channel_mult=[0.5, 1], num_head_channels=32,
                                      attention_resolutions="4", class_cond=True),
                     diffusion_flags=_DIFFUSION, timesteps=(1.0, 400.0, 998.0, 12.5), labels=(5, 6, 7, 8),
                     fixture=False),
    # Live only: the classifier's adaptive pool, without resampling ResBlocks (conv downsampling).
    "classifier_adaptive": dict(classifier_flags=dict(_CLASSIFIER, classifier_pool="adaptive",
                                                      classifier_resblock_updown=False,
                                                      classifier_use_scale_shift_norm=False),
                                diffusion_flags=_DIFFUSION, timesteps=(2.0, 300.0, 500.0, 999.0), labels=(1, 2, 3, 4),
                                fixture=False),
}


def import_reference(repo: str):
    """guided_diffusion's modules (script_util, unet, respace, gaussian_diffusion) from the checkout `repo`."""
    if not os.path.isdir(os.path.join(repo, "guided_diffusion")):
        raise SystemExit(f"{repo}: not a guided-diffusion checkout (no guided_diffusion/ package)")
    sys.path.insert(0, repo)
    from guided_diffusion import gaussian_diffusion, script_util, unet  # noqa: E402

    return script_util, unet, gaussian_diffusion


def _converter():
    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  os.path.join(ROOT, "scripts", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(spec: dict, repo: str, seed: int):
    """The reference network of `spec` with random float16-rounded weights, in eval mode, float32."""
    import torch

    script_util, unet, _ = import_reference(repo)
    if "model_flags" in spec:
        flags = dict(spec["model_flags"])
        if isinstance(flags["channel_mult"], str):
            net = script_util.create_model(**flags)
        else:  # create_model with a list channel_mult (script_util.py:172-188)
            size = flags["image_size"]
            net = unet.UNetModel(
                image_size=size, in_channels=3, model_channels=flags["num_channels"],
                out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
                attention_resolutions=tuple(size // int(r) for r in flags["attention_resolutions"].split(",")),
                dropout=flags["dropout"], channel_mult=tuple(flags["channel_mult"]),
                num_classes=script_util.NUM_CLASSES if flags["class_cond"] else None,
                num_heads=flags["num_heads"], num_head_channels=flags["num_head_channels"],
                num_heads_upsample=flags["num_heads_upsample"], use_scale_shift_norm=flags["use_scale_shift_norm"],
                resblock_updown=flags["resblock_updown"], use_new_attention_order=flags["use_new_attention_order"])
    else:  # create_classifier (script_util.py:228-266) with the spec's channel_mult
        flags = dict(spec["classifier_flags"])
        size = flags["image_size"]
        net = unet.EncoderUNetModel(
            image_size=size, in_channels=3, model_channels=flags["classifier_width"], out_channels=1000,
            num_res_blocks=flags["classifier_depth"],
            attention_resolutions=tuple(size // int(r) for r in flags["classifier_attention_resolutions"].split(",")),
            channel_mult=tuple(int(m) for m in flags["channel_mult"].split(",")), num_head_channels=64,
            use_scale_shift_norm=flags["classifier_use_scale_shift_norm"],
            resblock_updown=flags["classifier_resblock_updown"], pool=flags["classifier_pool"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("positional_embedding"):
                value = noise / p.shape[0] ** 0.5
            elif name == "label_emb.weight":
                value = noise
            elif p.ndim == 1 and name.endswith("weight"):  # GroupNorm scale
                value = 1.0 + 0.2 * noise
            elif p.ndim == 1:
                value = 0.2 * noise
            else:
                value = noise / float(np.prod(p.shape[1:])) ** 0.5
            p.copy_(value.half().float())
    return net.eval().float()


def run(net, spec: dict, seed: int) -> dict[str, np.ndarray]:
    """The network's outputs on fixed inputs (NHWC), and for a classifier the gradient of its log-probabilities."""
    import torch

    size = (spec.get("model_flags") or spec["classifier_flags"])["image_size"]
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, 3, size, size, generator=generator)
    timesteps = torch.tensor(spec["timesteps"], dtype=torch.float32)
    labels = None if spec["labels"] is None else torch.tensor(spec["labels"])
    out = {"x": x.permute(0, 2, 3, 1).numpy(), "timesteps": timesteps.numpy(),
           "labels": np.full(BATCH, -1) if labels is None else labels.numpy()}
    if "classifier_flags" in spec:
        x_in = x.detach().requires_grad_(True)
        logits = net(x_in, timesteps)
        selected = torch.log_softmax(logits, dim=-1)[range(BATCH), labels]
        out["grad"] = torch.autograd.grad(selected.sum(), x_in)[0].permute(0, 2, 3, 1).numpy()
        out["out"] = logits.detach().numpy()
    else:
        with torch.no_grad():
            out["out"] = net(x, timesteps, labels).permute(0, 2, 3, 1).numpy()
    return out


def write_network(name: str, repo: str, out: str, seed: int = 0):
    """Build the spec's network, write its converted folder `out/name` and outputs.npz; returns the network."""
    import torch
    from safetensors.torch import load_file, save_file

    spec = SPECS[name]
    net = build(spec, repo, seed)
    folder = os.path.join(out, name)
    flags = {k: spec[k] for k in ("model_flags", "classifier_flags", "diffusion_flags") if k in spec}
    with tempfile.TemporaryDirectory() as tmp:
        pt = os.path.join(tmp, f"{name}.pt")
        torch.save(net.state_dict(), pt)
        _converter().main([pt, folder, "--layout", "guided_diffusion", "--flags", json.dumps(flags)])
    weights = os.path.join(folder, "model.safetensors")
    save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    np.savez(os.path.join(folder, "outputs.npz"), **run(net, spec, seed))
    return net


def ddim_guided(model, classifier, repo: str, path: str, seed: int = 0) -> None:
    """guided-diffusion's classifier-guided DDIM (see the module docstring) on the two networks, into `path`."""
    import torch

    script_util, _, gaussian_diffusion = import_reference(repo)
    spec = SPECS["adm_new"]
    diffusion = script_util.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                                      timestep_respacing="ddim5")
    size = spec["model_flags"]["image_size"]
    generator = torch.Generator().manual_seed(seed + 7)
    x_init = torch.randn(BATCH, 3, size, size, generator=generator)
    y = torch.tensor([3, 517, 0, 999])

    def cond_fn(x, t, y=None):  # classifier_sample.py:54-61
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * SCALE

    def model_fn(x, t, y=None):
        return model(x, t, y)

    def loop(cond):
        return [out["sample"] for out in diffusion.ddim_sample_loop_progressive(
            model_fn, tuple(x_init.shape), noise=x_init, clip_denoised=False, cond_fn=cond, model_kwargs={"y": y},
            device="cpu", eta=0.0)]

    states = loop(cond_fn)
    unguided = loop(None)[-1]
    with torch.no_grad():
        log_variance = {i: diffusion.p_mean_variance(model_fn, x_init, torch.tensor([i] * BATCH), clip_denoised=False,
                                                     model_kwargs={"y": y})["log_variance"] for i in (2, 0)}
    nhwc = lambda a: a.permute(0, 2, 3, 1).numpy()  # noqa: E731
    tables = {f"alphas_cumprod_{s}": np.cumprod(1.0 - gaussian_diffusion.get_named_beta_schedule(s, 1000))
              for s in ("linear", "cosine")}
    np.savez(path, x_init=nhwc(x_init), labels=y.numpy(), scale=np.float64(SCALE),
             timesteps=np.asarray(sorted(diffusion.timestep_map, reverse=True)),
             states=np.stack([nhwc(s) for s in states]), unguided_final=nhwc(unguided),
             log_variance_i2=nhwc(log_variance[2]), log_variance_i0=nhwc(log_variance[0]), **tables)


def ddpm_learned(model, repo: str, path: str, seed: int = 0) -> None:
    """guided-diffusion's ancestral sampler with the learned variance (see the module docstring), into `path`."""
    import torch

    script_util, _, _ = import_reference(repo)
    size = SPECS["adm_new"]["model_flags"]["image_size"]
    diffusion = script_util.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                                      timestep_respacing="5")
    generator = torch.Generator().manual_seed(seed + 11)
    x_init = torch.randn(BATCH, 3, size, size, generator=generator)
    noises = torch.randn(5, BATCH, 3, size, size, generator=generator)
    y = torch.tensor([3, 517, 0, 999])
    nhwc = lambda a: a.permute(0, 2, 3, 1).numpy()  # noqa: E731
    out = {}
    real = torch.randn_like
    for clip in (True, False):
        drawn = iter(noises)
        torch.randn_like = lambda x, **kwargs: next(drawn).to(x.dtype)  # p_sample's noise, in order (line 430)
        try:
            with torch.no_grad():
                states = [o["sample"] for o in diffusion.p_sample_loop_progressive(
                    model, tuple(x_init.shape), noise=x_init, clip_denoised=clip, model_kwargs={"y": y},
                    device="cpu")]
        finally:
            torch.randn_like = real
        out["states_clipped" if clip else "states"] = np.stack([nhwc(s) for s in states])
    np.savez(path, x_init=nhwc(x_init), labels=y.numpy(), noises=np.stack([nhwc(n) for n in noises]),
             timesteps=np.asarray(sorted(diffusion.timestep_map, reverse=True)), **out)


def shape_digest(shapes: dict[str, tuple[int, ...]]) -> str:
    """sha256 of the sorted "name:d0,d1,..." lines (the test computes the same from our expected parameters)."""
    import hashlib

    lines = sorted(f"{name}:{','.join(map(str, shape))}" for name, shape in shapes.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def released_shapes(repo: str, path: str) -> None:
    """{preset: {"parameters": count, "sha256": shape_digest}} of the released architectures, into `path`."""
    import torch

    script_util, _, _ = import_reference(repo)
    converter = _converter()
    out = {}
    for name in sorted(converter.GUIDED_DIFFUSION_PRESETS):
        config = converter.guided_diffusion_config(name, None)
        with torch.device("meta"):
            if "model_flags" in config:
                net = script_util.create_model(**config["model_flags"])
            else:
                net = script_util.create_classifier(**config["classifier_flags"])
        shapes = {k: tuple(v.shape[:-1]) if v.ndim == 3 and v.shape[-1] == 1 else tuple(v.shape)
                  for k, v in net.state_dict().items()}
        out[name] = {"parameters": sum(p.numel() for p in net.parameters()), "sha256": shape_digest(shapes)}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of openai/guided-diffusion")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    nets = {name: write_network(name, args.repo, args.out) for name, spec in SPECS.items() if spec["fixture"]}
    ddim_guided(nets["adm_new"], nets["classifier"], args.repo, os.path.join(args.out, "ddim_guided.npz"))
    ddpm_learned(nets["adm_new"], args.repo, os.path.join(args.out, "ddpm_learned.npz"))
    released_shapes(args.repo, os.path.join(args.out, "released_shapes.json"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.out) for f in files)
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
