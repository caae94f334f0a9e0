"""Write small random-weight EDM networks in the converted `edm` layout and EDM's own outputs, for tests/test_edm.py.

    TORCH_VENV/bin/python scripts/make_edm_fixtures.py --edm-repo /path/to/NVlabs/edm [--out tests/fixtures/edm]
    TORCH_VENV/bin/python scripts/make_edm_fixtures.py --edm-repo ... --out /tmp/edm_live --all   # LIVE_SPECS too

Needs torch, numpy and safetensors, and a checkout of github.com/NVlabs/edm (whose training/networks.py builds and
runs the networks; nothing of it is copied here). tests/test_edm.py reads what it writes and, where torch and the
checkout import (EDM_REPO names it), calls `build` and `outputs` live on `LIVE_SPECS`.

Each fixture `<name>/` holds config.json ({"layout": "edm", "class_name", "init_kwargs"}: what the converter writes)
and model.safetensors (the network's state_dict; parameters rounded to float16 and stored so, which halves the
files; buffers (resample filters, Fourier freqs, iDDPM's u) float32 as EDM made them), plus outputs.npz: x (B, H, W,
C) float32 NHWC, sigma (B,), labels (B,) int (-1: unconditional), out = D(x; sigma) (B, H, W, C) from EDM's forward
(class labels one-hot, as generate.py makes them), and out_scalar = D(x; sigma_scalar) for one scalar sigma.
Weights are redrawn so that every layer matters (EDM zero-initialises some convs): GroupNorm scales 1 + 0.2 N(0, 1),
biases 0.2 N(0, 1), weights N(0, 1 / fan_in).

`from_pickle/` is the "ddpmpp" network pickled with EDM's own persistence (as its training loop does:
pickle.dump(dict(ema=net, ...))) under /tmp, then converted by scripts/convert_checkpoint.py --layout edm (float32).
The pickle itself is never kept: it embeds EDM's source.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "edm")
_SONG = dict(model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
             dropout=0.13)

# name -> class_name, init_kwargs (as EDM's training builds them, train.py:116-147), sigmas, labels.
SPECS = {
    # edm-cifar10-*-vp's DDPM++ options under EDMPrecond: positional embedding, standard encoder, augment_dim 9.
    "ddpmpp": ("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, augment_dim=9,
                                  embedding_type="positional", encoder_type="standard", decoder_type="standard",
                                  channel_mult_noise=1, resample_filter=[1, 1], **_SONG),
               (0.002, 0.5, 7.0, 80.0), None),
    # NCSN++ (the -ve checkpoints): Fourier embedding, residual encoder, FIR [1, 3, 3, 1], channel_mult_noise 2.
    "ncsnpp_ve": ("VEPrecond", dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, augment_dim=9,
                                    embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                                    channel_mult_noise=2, resample_filter=[1, 3, 3, 1], **_SONG),
                  (0.02, 0.9, 13.0, 80.0), None),
    # VP, class-conditional, skip encoder and decoder (the remaining SongUNet options).
    "vp_cond": ("VPPrecond", dict(img_resolution=8, img_channels=3, label_dim=3, use_fp16=False,
                                  embedding_type="positional", encoder_type="skip", decoder_type="skip",
                                  channel_mult_noise=1, resample_filter=[1, 3, 3, 1], **_SONG),
                (0.002, 0.3, 5.0, 80.0), (0, 2, 1, 2)),
    # iDDPM with a conditional DhariwalUNet (2 C outputs, learned sigma; no head at < 64 channels).
    "iddpm": ("iDDPMPrecond", dict(img_resolution=8, img_channels=3, label_dim=3, use_fp16=False,
                                   model_type="DhariwalUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1,
                                   attn_resolutions=[4], dropout=0.1),
              (0.01, 0.4, 6.0, 80.0), (2, 0, 1, 1)),
    # EDMPrecond with a conditional DhariwalUNet: 64 channels at 4x4, so one attention head there (networks.py:145).
    "adm": ("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=3, use_fp16=False,
                               model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 4], num_blocks=0,
                               attn_resolutions=[4], dropout=0.1, augment_dim=9),
            (0.002, 0.5, 7.0, 80.0), (1, 1, 0, 2)),
}
SCALAR_SIGMA = 2.5
# Live only (tests/test_edm.py, where torch and EDM import): two and three heads, 3 levels, skip decoder with FIR.
LIVE_SPECS = {
    **SPECS,
    "adm_heads": ("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=4, use_fp16=False,
                                     model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2, 4],
                                     num_blocks=1, attn_resolutions=[4, 2]), (0.01, 1.3, 60.0), (3, 0, 1)),
    "ncsnpp_skip": ("VEPrecond", dict(img_resolution=16, img_channels=3, label_dim=2, use_fp16=False,
                                      model_type="SongUNet", embedding_type="fourier", encoder_type="skip",
                                      decoder_type="skip", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                                      model_channels=8, channel_mult=[1, 2, 2], num_blocks=2,
                                      attn_resolutions=[8]), (0.05, 3.0, 70.0), (1, 0, 1)),
}


def _networks(edm_repo: str):
    if edm_repo not in sys.path:
        sys.path.insert(0, edm_repo)
    from training import networks  # EDM's training/networks.py

    return networks


def build(name: str, edm_repo: str, seed: int = 0, specs: dict = LIVE_SPECS):
    """The spec's EDM network (eval mode, float32) with random float16-rounded parameters (module docstring)."""
    import torch

    class_name, init_kwargs, _, _ = specs[name]
    torch.manual_seed(seed)
    net = getattr(_networks(edm_repo), class_name)(**init_kwargs).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    for key, p in net.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1 and "norm" in key and key.endswith("weight"):
            value = 1.0 + 0.2 * noise
        elif p.ndim == 1:
            value = 0.2 * noise
        else:
            value = noise / np.sqrt(p[0].numel())
        p.copy_(value.half().float())
    return net


def outputs(name: str, net, seed: int = 0, specs: dict = LIVE_SPECS) -> dict[str, np.ndarray]:
    """x, sigma, labels, out, sigma_scalar, out_scalar (module docstring) of EDM's forward on the spec's inputs."""
    import torch

    _, init_kwargs, sigmas, labels = specs[name]
    gen = torch.Generator().manual_seed(seed + 2)
    res, channels = init_kwargs["img_resolution"], init_kwargs["img_channels"]
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    x = 0.5 * torch.randn((len(sigmas), channels, res, res), generator=gen)
    x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=gen)  # x_t's scale at each sigma
    onehot = None if labels is None else torch.eye(init_kwargs["label_dim"])[list(labels)]  # generate.py:285
    with torch.no_grad():
        out = net(x, sigma, onehot)
        out_scalar = net(x, torch.tensor(SCALAR_SIGMA), onehot)
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy().astype(np.float32)  # noqa: E731
    return dict(x=nhwc(x), sigma=sigma.numpy(), labels=np.full(len(sigmas), -1) if labels is None else
                np.asarray(labels), out=nhwc(out), sigma_scalar=np.float32(SCALAR_SIGMA), out_scalar=nhwc(out_scalar))


def write(folder: str, net, arrays: dict[str, np.ndarray] | None = None) -> str:
    """The converted folder of `net` (parameters float16, buffers float32) and, if given, outputs.npz."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    parameters = {k for k, _ in net.named_parameters()}
    state = {k: (v.half() if k in parameters else v.float()).contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    config = {"layout": "edm", "class_name": type(net).__name__, "init_kwargs": dict(net.init_kwargs)}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    if arrays is not None:
        np.savez_compressed(os.path.join(folder, "outputs.npz"), **arrays)
    return folder


def convert_pickle(net, out_folder: str, edm_repo: str) -> str:
    """Pickle `net` as EDM's training loop does, then convert it with scripts/convert_checkpoint.py; the pickle is
    written to a temporary folder and deleted."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "network-snapshot-000000.pkl")
        with open(path, "wb") as f:
            pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_checkpoint.py"), path, out_folder,
                        "--layout", "edm", "--edm-repo", edm_repo], check=True)
    return out_folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm-repo", required=True, help="a checkout of github.com/NVlabs/edm")
    parser.add_argument("--out", default=OUT, help="the fixtures folder")
    parser.add_argument("--all", action="store_true", help="write LIVE_SPECS too (not for committing)")
    args = parser.parse_args()
    edm_repo = os.path.abspath(args.edm_repo)
    for name in LIVE_SPECS if args.all else SPECS:
        net = build(name, edm_repo)
        print(write(os.path.join(args.out, name), net, outputs(name, net)))
    print(convert_pickle(build("ddpmpp", edm_repo), os.path.join(args.out, "from_pickle"), edm_repo))


if __name__ == "__main__":
    main()
