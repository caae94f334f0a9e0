"""The reference side of `experiments.runs.checkpoint_benchmark`: EDM's and guided-diffusion's own PyTorch networks
and samplers, timed on this machine.

A worker process runs this file with a python that has torch, numpy and safetensors (not this project's packages):
`TORCH_PYTHON checkpoint_benchmark_torch.py SPEC.json`. It imports only the standard library at module level and
nothing of the project; the reference code comes from the checkouts the spec names (`edm_repo`: NVlabs/edm,
`guided_diffusion_repo`: openai/guided-diffusion, `dit_repo`: facebookresearch/DiT), and the converted layout is
written by scripts/convert_checkpoint.py's own `save` (a torch-only file, loaded by path), so that both sides read one
folder.

SPEC.json: "mode" ("save": build the architecture with the reference's own initialisation, torch seed 0, and write
its converted folder to "model_dir"; "measure": time it), "architecture" (a key of `ARCHITECTURES`), "model_dir",
"result" (the record's JSON path), the repositories, "scripts_dir" and, to measure, "batch", "repeats" and "sampler"
(time the reference's sampler too).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from pretrained_benchmark_torch import peak_rss_mib, timed  # noqa: E402  (a sibling file: stdlib at module level)

# The published architectures: EDM's edm-cifar10-32x32-uncond-vp (EDMPrecond, SongUNet DDPM++, train.py's cifar10
# "ddpmpp" settings, 55.7M parameters) and guided-diffusion's 64x64_diffusion.pt (its README's flags, 296M).
ARCHITECTURES = {
    "edm_cifar10": dict(kind="edm", class_name="EDMPrecond", kwargs=dict(
        img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=128,
        channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.13,
        augment_dim=9, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
        decoder_type="standard", resample_filter=[1, 1])),
    "adm_imagenet64": dict(kind="guided_diffusion", model_flags=dict(
        image_size=64, num_channels=192, num_res_blocks=3, channel_mult="", learn_sigma=True, class_cond=True,
        use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
        num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.1, resblock_updown=True, use_fp16=False,
        use_new_attention_order=True), diffusion_flags=dict(
        learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine", timestep_respacing="", use_kl=False,
        predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)),
    # A DiT-B/2 on ImageNet-256 latents (32 x 32 x 4; DiT/models.py's DiT_B_2, learned sigma, 1000 classes: 130M).
    "dit_b2": dict(kind="dit", model="DiT-B/2", input_size=32, num_classes=1000, learn_sigma=True),
}
# The samplers timed on both sides: EDM's deterministic Heun (generate.py's edm_sampler, rho 7, sigma 80 -> 0.002,
# then 0) with 6 points, NFE 2 * 6 - 1 = 11 (its Heun takes an odd NFE); guided-diffusion's DDIM (eta 0) on the
# respacing "ddim10", NFE 10.
EDM_STEPS = 6
ADM_RESPACING = "ddim10"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(spec: dict):
    """The reference network of spec["architecture"] (eval mode), and the guided-diffusion diffusion object (None
    for EDM)."""
    import torch

    arch = ARCHITECTURES[spec["architecture"]]
    torch.manual_seed(0)
    if arch["kind"] == "edm":
        sys.path.insert(0, spec["edm_repo"])
        from training import networks
        return getattr(networks, arch["class_name"])(**arch["kwargs"]).eval(), None
    if arch["kind"] == "dit":
        sys.path.insert(0, spec["dit_repo"])
        from diffusion import create_diffusion

        dit = _load(os.path.join(spec["dit_repo"], "models.py"), "dit_models")  # by path: "models" is ours' name too
        net = dit.DiT_models[arch["model"]](input_size=arch["input_size"], num_classes=arch["num_classes"],
                                            learn_sigma=arch["learn_sigma"]).eval()
        return net, create_diffusion(ADM_RESPACING)
    sys.path.insert(0, spec["guided_diffusion_repo"])
    from guided_diffusion import script_util
    net = script_util.create_model(**arch["model_flags"]).eval()
    flags = dict(arch["diffusion_flags"], timestep_respacing=ADM_RESPACING)
    diffusion = script_util.create_gaussian_diffusion(steps=flags.pop("diffusion_steps"), **flags)
    return net, diffusion


def save(spec: dict) -> dict:
    """Write the random-weight reference network in the converted layout (config.json, model.safetensors)."""
    arch = ARCHITECTURES[spec["architecture"]]
    net, _ = build(spec)
    convert = _load(os.path.join(spec["scripts_dir"], "convert_checkpoint.py"), "convert_checkpoint")
    if arch["kind"] == "edm":
        config = {"layout": "edm", "class_name": type(net).__name__, "init_kwargs": dict(net.init_kwargs)}
    elif arch["kind"] == "dit":
        config = {"layout": "dit", "model": arch["model"], "input_size": arch["input_size"], "in_channels": 4,
                  "num_classes": arch["num_classes"], "learn_sigma": arch["learn_sigma"], "vae": None}
    else:
        config = {"layout": "guided_diffusion", "model_flags": arch["model_flags"],
                  "diffusion_flags": arch["diffusion_flags"]}
    convert.save(spec["model_dir"], config, net.state_dict())
    return {"num_params": sum(p.numel() for p in net.parameters()), "model_dir": spec["model_dir"]}


def measure(spec: dict) -> dict:
    """The reference's numbers at spec["batch"]: one network call (no_grad, the minimum of `repeats` after a warm-up)
    and, with spec["sampler"], its own sampler from noise to the sample; the peak RSS."""
    import torch
    from safetensors.torch import load_file

    arch = ARCHITECTURES[spec["architecture"]]
    net, diffusion = build(spec)
    net.load_state_dict(load_file(os.path.join(spec["model_dir"], "model.safetensors")))
    b, repeats = spec["batch"], spec["repeats"]
    gen = torch.Generator().manual_seed(0)
    record = {"framework": "torch", "batch": b, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "num_params": sum(p.numel() for p in net.parameters())}
    if arch["kind"] == "edm":
        shape = (b, net.img_channels, net.img_resolution, net.img_resolution)
        x, sigma = torch.randn(shape, generator=gen), torch.full((b,), 2.5)

        def call():
            with torch.no_grad():
                net(x, sigma)
    else:
        channels, size = (4, arch["input_size"]) if arch["kind"] == "dit" else (3, arch["model_flags"]["image_size"])
        x, t = torch.randn((b, channels, size, size), generator=gen), torch.full((b,), 500)
        y = torch.randint(0, 1000, (b,), generator=gen)

        def call():
            with torch.no_grad():
                net(x, t, y=y)

    timed(call, 1)
    record["network_s"] = timed(call, repeats)
    if spec["sampler"]:
        if arch["kind"] == "edm":
            sys.path.insert(0, spec["edm_repo"])
            generate = _load(os.path.join(spec["edm_repo"], "generate.py"), "edm_generate")

            def run():
                with torch.no_grad():
                    generate.edm_sampler(net, torch.randn(shape, generator=gen), num_steps=EDM_STEPS)

            record["sampler"] = {"name": "edm_sampler (Heun, rho 7)", "nfe": 2 * EDM_STEPS - 1}
        else:
            def run():
                with torch.no_grad():
                    diffusion.ddim_sample_loop(net, x.shape, noise=torch.randn(x.shape, generator=gen),
                                               clip_denoised=False, model_kwargs={"y": y}, eta=0.0)

            record["sampler"] = {"name": f"ddim_sample_loop ({ADM_RESPACING})",
                                 "nfe": len(diffusion.use_timesteps)}
        record["sampler_s"] = timed(run, repeats)
    record["peak_rss_mib"] = peak_rss_mib()
    return record


def main(argv=None) -> None:
    """`python checkpoint_benchmark_torch.py SPEC.json`: save or measure; the record to spec["result"]."""
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    record = save(spec) if spec["mode"] == "save" else measure(spec)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
