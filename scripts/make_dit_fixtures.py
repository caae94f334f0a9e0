r"""Record tiny random DiT / SiT / DiTPipeline / AutoencoderKL outputs from the reference code, for
tests/test_dit_pretrained.py.

    TORCH_VENV/bin/python scripts/make_dit_fixtures.py --dit-repo PATH/TO/DiT --sit-repo PATH/TO/SiT [--out DIR]

Needs torch, numpy, safetensors, timm and diffusers (not this project's packages): run it in a torch environment.
The reference networks are imported from the checkouts (facebookresearch/DiT, willisma/SiT models.py), never copied.
Written under --out (default tests/fixtures/dit):

  dit/       a tiny DiT (8x8x4 latents, patch 2, depth 2, hidden 64, 4 heads, 5 classes + the null 5, learn_sigma)
             with random weights, converted by scripts/convert_checkpoint.py --layout dit from its state dict; and
             dit/outputs.npz: x (B, 8, 8, 4) NHWC, t (B,) step indices, y (B,) labels (the null one included), out
             (B, 8, 8, 8) = DiT.forward, NHWC; pos_embed_4 = DiT's get_2d_sincos_pos_embed(64, 4) (another grid).
  sit/       a tiny SiT of the same size, converted with --layout sit; sit/outputs.npz: x, t (SiT's time in [0, 1]),
             y, out = SiT.forward (its velocity, 4 channels).
  pipeline/  a DiTPipeline root: transformer/ = diffusers' DiTTransformer2DModel holding the tiny DiT's weights (by
             the renames of diffusers' scripts/convert_dit_to_diffusers.py: qkv chunked into to_q/k/v, the timestep
             and label embedders copied into every block; 1000 classes and a label table of its own, since
             DiTPipeline's null label is 1000 whatever the model), vae/ = a tiny random AutoencoderKL (two levels, 16
             and 32 channels, 8 groups), scheduler/ = DDIMScheduler (linear betas, clip_sample false); and
             pipeline/outputs.npz: x, t, y, out = the transformer's output on the dit inputs; vae_z (B, 8, 8, 4),
             vae_out = AutoencoderKL.decode(vae_z) (NHWC); the pipeline run `DiTPipeline(class_labels, guidance_scale
             4, 4 steps, generator seed 0, output_type "np")`: run_labels, run_timesteps, run_x_init (its noise),
             run_latents (the latents it decodes, before 1 / scaling_factor), run_images (its [0, 1] images).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "dit")
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0,
            class_dropout_prob=0.1, num_classes=5, learn_sigma=True)
BATCH = 3
PIPELINE_CLASSES = 1000


def _module(repo: str, name: str):
    """models.py of a checkout, imported under its own name (DiT's and SiT's files share the name models.py)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _converter():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", os.path.join(ROOT, "scripts",
                                                                                     "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomize(net, seed: int) -> None:
    """Every parameter but the fixed pos_embed ~ N(0, 0.1^2) (DiT's init zeroes adaLN and the output layer)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _nhwc(t):
    return np.ascontiguousarray(t.detach().numpy().transpose(0, 2, 3, 1), dtype=np.float32)


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, 8, 8, 4)).astype(np.float32)
    y = np.array([0, 3, TINY["num_classes"]], np.int64)  # the last: the null label
    return x, y


def _convert(layout: str, state: dict, out: str, scratch: str) -> None:
    import torch

    os.makedirs(scratch, exist_ok=True)
    pt = os.path.join(scratch, f"{layout}_tiny.pt")
    torch.save(state, pt)
    model = {k: TINY[k] for k in ("depth", "hidden_size", "patch_size", "num_heads")}
    args = types.SimpleNamespace(model=json.dumps(model), image_size=8 * TINY["input_size"],
                                 num_classes=TINY["num_classes"], learn_sigma="true", vae=None)
    _converter().CONVERTERS[layout](pt, out, args)


def make_original(repo: str, layout: str, out: str, scratch: str) -> None:
    import torch

    module = _module(repo, f"{layout}_models")
    net = getattr(module, "DiT" if layout == "dit" else "SiT")(**TINY).eval()
    _randomize(net, seed=0 if layout == "dit" else 1)
    x, y = _inputs(seed=2)
    t = np.array([0.0, 421.0, 999.0], np.float32) if layout == "dit" else np.array([0.0, 0.37, 0.95], np.float32)
    with torch.no_grad():
        res = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t), torch.from_numpy(y))
    _convert(layout, net.state_dict(), os.path.join(out, layout), scratch)
    extra = {}
    if layout == "dit":
        extra["pos_embed_4"] = module.get_2d_sincos_pos_embed(TINY["hidden_size"], 4).astype(np.float32)
    np.savez(os.path.join(out, layout, "outputs.npz"), x=x, t=t, y=y, out=_nhwc(res), **extra)


def to_diffusers(state: dict, depth: int) -> dict:
    """DiT's state dict under DiTTransformer2DModel's names (diffusers' scripts/convert_dit_to_diffusers.py)."""
    import torch

    new = {"pos_embed.proj.weight": state["x_embedder.proj.weight"],
           "pos_embed.proj.bias": state["x_embedder.proj.bias"],
           "proj_out_1.weight": state["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": state["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": state["final_layer.linear.weight"], "proj_out_2.bias": state["final_layer.linear.bias"]}
    for i in range(depth):
        b, o = f"transformer_blocks.{i}", f"blocks.{i}"
        new[f"{b}.norm1.emb.timestep_embedder.linear_1.weight"] = state["t_embedder.mlp.0.weight"]
        new[f"{b}.norm1.emb.timestep_embedder.linear_1.bias"] = state["t_embedder.mlp.0.bias"]
        new[f"{b}.norm1.emb.timestep_embedder.linear_2.weight"] = state["t_embedder.mlp.2.weight"]
        new[f"{b}.norm1.emb.timestep_embedder.linear_2.bias"] = state["t_embedder.mlp.2.bias"]
        new[f"{b}.norm1.emb.class_embedder.embedding_table.weight"] = state["y_embedder.embedding_table.weight"]
        new[f"{b}.norm1.linear.weight"] = state[f"{o}.adaLN_modulation.1.weight"]
        new[f"{b}.norm1.linear.bias"] = state[f"{o}.adaLN_modulation.1.bias"]
        q, k, v = torch.chunk(state[f"{o}.attn.qkv.weight"], 3, dim=0)
        qb, kb, vb = torch.chunk(state[f"{o}.attn.qkv.bias"], 3, dim=0)
        for name, w, bias in (("to_q", q, qb), ("to_k", k, kb), ("to_v", v, vb)):
            new[f"{b}.attn1.{name}.weight"], new[f"{b}.attn1.{name}.bias"] = w, bias
        new[f"{b}.attn1.to_out.0.weight"] = state[f"{o}.attn.proj.weight"]
        new[f"{b}.attn1.to_out.0.bias"] = state[f"{o}.attn.proj.bias"]
        new[f"{b}.ff.net.0.proj.weight"] = state[f"{o}.mlp.fc1.weight"]
        new[f"{b}.ff.net.0.proj.bias"] = state[f"{o}.mlp.fc1.bias"]
        new[f"{b}.ff.net.2.weight"] = state[f"{o}.mlp.fc2.weight"]
        new[f"{b}.ff.net.2.bias"] = state[f"{o}.mlp.fc2.bias"]
    return new


def make_pipeline(repo: str, out: str) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    from diffusers.pipelines.dit import pipeline_dit
    from safetensors.torch import load_file

    state = load_file(os.path.join(out, "dit", "model.safetensors"))
    # DiTPipeline's unconditional label is 1000 whatever the model (pipeline_dit.py: class_null): a 1001-row table.
    gen = torch.Generator().manual_seed(5)
    state["y_embedder.embedding_table.weight"] = 0.1 * torch.randn((PIPELINE_CLASSES + 1, TINY["hidden_size"]),
                                                                   generator=gen)
    transformer = DiTTransformer2DModel(num_attention_heads=TINY["num_heads"],
                                        attention_head_dim=TINY["hidden_size"] // TINY["num_heads"], in_channels=4,
                                        out_channels=8, num_layers=TINY["depth"], sample_size=TINY["input_size"],
                                        patch_size=TINY["patch_size"], num_embeds_ada_norm=PIPELINE_CLASSES)
    missing, unexpected = transformer.load_state_dict(to_diffusers(state, TINY["depth"]), strict=False)
    assert not unexpected and all("pos_embed.pos_embed" == k for k in missing), (missing, unexpected)
    transformer.eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=False)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    folder = os.path.join(out, "pipeline")
    pipe.save_pretrained(folder, safe_serialization=True)

    x, y = _inputs(seed=2)
    y[-1] = PIPELINE_CLASSES  # its null label
    t = np.array([0.0, 421.0, 999.0], np.float32)
    rng = np.random.default_rng(4)
    z = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    recorded = {}
    randn = pipeline_dit.randn_tensor

    def record_noise(*args, **kwargs):
        recorded["x_init"] = randn(*args, **kwargs)
        return recorded["x_init"]

    decode = vae.decode

    def record_latents(latents, *args, **kwargs):
        recorded["latents"] = latents * vae.config.scaling_factor  # the pipeline divided them by it
        return decode(latents, *args, **kwargs)

    pipeline_dit.randn_tensor, vae.decode = record_noise, record_latents
    labels = [1, 4]
    with torch.no_grad():
        res = transformer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t),
                          torch.from_numpy(y)).sample
        vae_out = decode(torch.from_numpy(z.transpose(0, 3, 1, 2).copy())).sample
        images = pipe(class_labels=labels, guidance_scale=4.0, generator=torch.manual_seed(0), num_inference_steps=4,
                      output_type="np").images
    pipeline_dit.randn_tensor = randn
    np.savez(os.path.join(folder, "outputs.npz"), x=x, t=t, y=y, out=_nhwc(res), vae_z=z, vae_out=_nhwc(vae_out),
             run_labels=np.array(labels), run_timesteps=pipe.scheduler.timesteps.numpy(),
             run_x_init=_nhwc(recorded["x_init"]), run_latents=_nhwc(recorded["latents"][: len(labels)]),
             run_images=np.asarray(images, np.float32))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit-repo", required=True, help="a checkout of github.com/facebookresearch/DiT")
    parser.add_argument("--sit-repo", required=True, help="a checkout of github.com/willisma/SiT")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--scratch", default="/tmp/dit", help="where the intermediate .pt files go")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.dont_write_bytecode = True
    make_original(args.dit_repo, "dit", args.out, args.scratch)
    make_original(args.sit_repo, "sit", args.out, args.scratch)
    make_pipeline(args.dit_repo, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
