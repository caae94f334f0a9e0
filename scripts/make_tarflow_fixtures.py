"""Write the TarFlow fixtures: tiny random-weight reference TarFlows (Apple's ml-tarflow `transformer_flow.Model`, run
from a checkout) as converted folders, with the reference's own outputs.

    python scripts/make_tarflow_fixtures.py --repo /path/to/ml-tarflow [--out tests/fixtures/tarflow]

For each configuration of `SPECS`, OUT/NAME/ holds config.json ({"layout": "tarflow", "init_kwargs", "noise_std"}),
model.safetensors (the state dict, buffers included, weights rounded to float16 and stored so) and outputs.npz:
  x (B, C, H, W), y (B,) with one label -1 (the mean class embedding): the forward pass's inputs;
  z, logdet: Model.forward(x, y) (z unpatchified to NCHW; logdet per dimension, as the reference returns it);
  z_uncond, logdet_uncond: the same with y = None;
  noise (B, C, H, W): the reverse pass's input (the reference's token noise, unpatchified), labels (B,) in range;
  reverse_cond, reverse_uncond, reverse_guided, reverse_annealed, reverse_temp: Model.reverse(noise) with labels,
  with y = None, with guidance 1.5 (constant, annealed, and constant with attn_temp 0.7 on the unconditional branch).
Every weight is redrawn (the reference zero-initialises proj_out), with scales that keep |a| well below 1, and the
prior variance `var` is drawn in [0.5, 1.5] (all ones in the reference's nvp models) so that its use is checked.
Runs in a torch environment; imports only torch, safetensors, numpy and the standard library.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

SPECS = {
    # 3 channels, patch 2, one head (64 channels), 2 blocks of 2 layers, 3 classes
    "rgb8": dict(init_kwargs=dict(in_channels=3, img_size=8, patch_size=2, channels=64, num_blocks=2,
                                  layers_per_block=2, num_classes=3), noise_std=0.07, labels=(0, 2, 1, -1)),
    # 1 channel, patch 4, two heads (128 channels), 3 blocks of 1 layer, 2 classes
    "gray16": dict(init_kwargs=dict(in_channels=1, img_size=16, patch_size=4, channels=128, num_blocks=3,
                                    layers_per_block=1, num_classes=2), noise_std=0.05, labels=(1, 0, -1)),
}
GUIDANCE = 1.5
ATTN_TEMP = 0.7


def reference_module(repo: str):
    spec = importlib.util.spec_from_file_location("transformer_flow", os.path.join(repo, "transformer_flow.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter redrawn and rounded to float16: Linear weights N(0, 1/fan_in) (proj_out's 0.1/fan_in, so
    that |a| stays small), biases and embeddings N(0, 0.1^2) (positions 0.3^2), LayerNorm scales 1 + N(0, 0.1^2);
    the prior variance uniform in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.named_parameters():
            noise = torch.randn(value.shape, generator=gen)
            if name.endswith("weight") and value.ndim == 2:
                scale = (0.1 if "proj_out" in name else 1.0) / value.shape[1] ** 0.5
                value.copy_(noise * scale)
            elif "norm" in name and name.endswith("weight"):
                value.copy_(1 + 0.1 * noise)
            else:
                value.copy_(noise * (0.3 if "pos_embed" in name else 0.1))
            value.copy_(value.half().float())
        model.var.copy_((0.5 + torch.rand(model.var.shape, generator=gen)).half().float())


def write(name: str, repo: str, out_dir: str, seed: int = 0) -> str:
    """Build SPECS[name] with the reference code, write its converted folder and outputs.npz; returns the folder."""
    spec = SPECS[name]
    kwargs = spec["init_kwargs"]
    tf = reference_module(repo)
    torch.manual_seed(seed)
    model = tf.Model(**kwargs).eval()
    randomize(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    size, channels = kwargs["img_size"], kwargs["in_channels"]
    y = torch.tensor(spec["labels"])
    batch = len(y)
    labels = torch.clamp(y, min=0)  # reverse_step indexes class_embed[y] directly (transformer_flow.py:196)
    x = torch.rand((batch, channels, size, size), generator=gen) * 2 - 1
    tokens = model.num_patches, channels * kwargs["patch_size"] ** 2
    noise = torch.randn((batch,) + tokens, generator=gen)
    arrays = {"x": x, "y": y, "labels": labels, "noise": model.unpatchify(noise)}
    with torch.no_grad():
        z, _, logdet = model(x, y)
        arrays.update(z=model.unpatchify(z), logdet=logdet)
        z, _, logdet = model(x, None)
        arrays.update(z_uncond=model.unpatchify(z), logdet_uncond=logdet)
        arrays["reverse_cond"] = model.reverse(noise.clone(), labels)
        arrays["reverse_uncond"] = model.reverse(noise.clone(), None)
        arrays["reverse_guided"] = model.reverse(noise.clone(), labels, guidance=GUIDANCE)
        arrays["reverse_annealed"] = model.reverse(noise.clone(), labels, guidance=GUIDANCE, annealed_guidance=True)
        arrays["reverse_temp"] = model.reverse(noise.clone(), labels, guidance=GUIDANCE, attn_temp=ATTN_TEMP)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"layout": "tarflow", "init_kwargs": kwargs, "noise_std": spec["noise_std"]}, f, indent=1,
                  sort_keys=True)
    np.savez_compressed(os.path.join(folder, "outputs.npz"),
                        **{k: v.numpy().astype(np.int32 if not v.is_floating_point() else np.float32)
                           for k, v in arrays.items()}, guidance=np.float32(GUIDANCE),
                        attn_temp=np.float32(ATTN_TEMP))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of github.com/apple/ml-tarflow")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "tests", "fixtures", "tarflow"))
    args = parser.parse_args()
    for name in SPECS:
        print(write(name, args.repo, args.out))


if __name__ == "__main__":
    main()
