"""Write tiny random-weight score_sde_pytorch checkpoints, converted, with the reference network's outputs, for
tests/test_score_sde_pytorch.py.

    TORCH_VENV/bin/python scripts/make_score_sde_pytorch_fixtures.py --repo /path/to/score_sde_pytorch [--out DIR]

Needs torch, numpy, safetensors and ml_collections (not this project's packages) and a checkout of
github.com/yang-song/score_sde_pytorch, whose own NCSNpp (models/ncsnpp.py), config files and EMA (models/ema.py)
make and run each network. Its models/up_or_down_sampling.py imports `op.upfirdn2d`, a CUDA extension compiled at
import; `fir_stand_in` puts a pure-torch module `op` in sys.modules first (this script's own code: the FIR formula,
upsample by zero insertion, pad, convolve, downsample), so nothing is compiled and the rest of the network code runs
unchanged.

For each spec of `SPECS` (a released config file, shrunk to nf 16, two levels, 8 px) it: builds the network with
random weights, wraps it in DataParallel as score_sde_pytorch's create_model does, makes its EMA, takes one Adam step
on a loss and one EMA update (so the EMA weights differ from the raw ones and the optimizer has state), saves the
state {'optimizer', 'model', 'ema', 'step'} with torch.save as utils.save_checkpoint does, and converts that file with
scripts/convert_checkpoint.py (torch.load(weights_only=True): the Adam state loads too). Written under DIR/<name>/:
config.json + model.safetensors (the converted EMA weights), outputs.npz: x (B, H, W, C) NHWC float32, labels (B,)
(the network's time input: 999 t for DDPM++ VP, sigma for NCSN++ VE), t (B,) the framework's time, out (the EMA
network's output, NHWC) and out_raw (the raw weights'); with `raw`, also DIR/<name>_raw/ (`--params model`).
The .pth files themselves are not kept.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "score_sde_pytorch")
_TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))

# name -> the released config it shrinks, its overrides ({section: {key: value}}), the framework times of the inputs
# and the network's time labels there, and whether a raw-weights folder is written too.
SPECS = {
    # DDPM++ deep continuous (the USF / DPM-Solver-v3 ScoreSDE checkpoint's config): VP, positional 999 t, no FIR.
    "ddpmpp_vp": dict(config="vp.cifar10_ddpmpp_deep_continuous", model=_TINY, data=dict(image_size=8),
                      t=(1e-3, 0.25, 0.6, 1.0), label=lambda t: 999.0 * t, raw=True),
    # NCSN++ VE (CelebA-HQ 256's config): FIR resampling, Fourier embedding of sigma, output_skip / input_skip
    # pyramids, output / sigma.
    "ncsnpp_ve": dict(config="ve.celebahq_256_ncsnpp_continuous", model=_TINY, data=dict(image_size=8),
                      t=(1e-5, 0.3, 0.7, 1.0), label=lambda t: 0.01 * (348.0 / 0.01) ** t, raw=False),
}


def _upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """FIR resampling of NCHW x: insert up - 1 zeros after each pixel, zero-pad pad[0] before and pad[1] after each
    spatial axis, convolve (true convolution: the kernel flipped) with `kernel`, keep every down-th pixel."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros((n, c, h, up, w, up))
        spread[:, :, :, 0, :, 0] = x
        x = spread.reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    k = torch.flip(kernel.to(x.dtype), (0, 1))[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def fir_stand_in() -> None:
    """Register the pure-torch `op` module (see the module docstring) before score_sde_pytorch's models import."""
    op = types.ModuleType("op")
    op.upfirdn2d = _upfirdn2d
    sys.modules["op"] = op


def reference(repo: str) -> types.SimpleNamespace:
    """score_sde_pytorch's modules, imported from `repo` with the FIR stand-in: ncsnpp, ema and the configs."""
    fir_stand_in()
    if repo not in sys.path:
        sys.path.insert(0, repo)
    return types.SimpleNamespace(ncsnpp=importlib.import_module("models.ncsnpp"),
                                 ema=importlib.import_module("models.ema"),
                                 config=lambda name: importlib.import_module(f"configs.{name}").get_config())


def config_of(ref: types.SimpleNamespace, spec: dict):
    config = ref.config(spec["config"])
    for section in ("model", "data"):
        for key, value in spec[section].items():
            setattr(getattr(config, section), key, value)
    return config


def randomize(model, seed: int) -> None:
    """Weights of the reference's order of magnitude: GroupNorm scales 1 + 0.2 N(0, 1), biases 0.2 N(0, 1), kernels
    N(0, 1 / fan_in), the Fourier W N(0, 1) (not score_sde's N(0, 16^2), so that float32 ulps of log(sigma) do not
    dominate the 1e-5 comparison)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if id(p) in norms:
                value = 1.0 + 0.2 * noise
            elif p.ndim == 1 and name.endswith(".W"):  # the Fourier projection
                value = noise
            elif p.ndim == 1:
                value = 0.2 * noise
            elif name.endswith(".W"):  # NIN: (in, out)
                value = noise / math.sqrt(p.shape[0])
            else:  # conv (out, in, kh, kw), linear (out, in)
                value = noise / math.sqrt(p[0].numel())
            p.copy_(value)


def converter():
    """scripts/convert_checkpoint.py as a module (this script's neighbour)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return importlib.import_module("convert_checkpoint")


def save(name: str, out_dir: str, repo: str, seed: int = 0, raw: bool | None = None) -> str:
    """Write the spec's converted folder(s) and outputs.npz under out_dir; returns the EMA folder."""
    import torch

    spec = SPECS[name]
    ref = reference(repo)
    config = config_of(ref, spec)
    torch.manual_seed(seed)
    net = ref.ncsnpp.NCSNpp(config)
    randomize(net, seed)
    model = torch.nn.DataParallel(net)  # as models/utils.py create_model: state-dict names start with "module."
    ema = ref.ema.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    size = config.data.image_size
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((len(spec["t"]), 3, size, size), generator=gen)
    t = np.asarray(spec["t"], np.float64)
    labels = torch.tensor(spec["label"](t), dtype=torch.float32)
    model.eval()  # no dropout: the step below only has to move the weights
    loss = model(x, labels).square().mean()
    loss.backward()
    optimizer.step()
    ema.update(model.parameters())  # num_updates 1: decay min(rate, 2 / 11), so EMA != raw weights

    with torch.no_grad():
        out_raw = model(x, labels).permute(0, 2, 3, 1).numpy()
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        out = model(x, labels).permute(0, 2, 3, 1).numpy()
        ema.restore(model.parameters())
    state = {"optimizer": optimizer.state_dict(), "model": model.state_dict(), "ema": ema.state_dict(), "step": 1}

    folder = os.path.join(out_dir, name)
    convert = converter()
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "checkpoint_1.pth")
        torch.save(state, pth)  # utils.save_checkpoint
        keys = os.path.join(tmp, "config.json")
        with open(keys, "w") as f:
            json.dump({s: config[s].to_dict() for s in ("model", "data", "training")}, f)
        convert.main([pth, folder, "--layout", "score_sde_pytorch", "--config-json", keys])
        if spec["raw"] if raw is None else raw:
            convert.main([pth, folder + "_raw", "--layout", "score_sde_pytorch", "--config-json", keys, "--params",
                          "model"])
    np.savez_compressed(os.path.join(folder, "outputs.npz"), x=x.permute(0, 2, 3, 1).numpy(),
                        labels=labels.numpy(), t=t, out=out, out_raw=out_raw)
    print(f"{name}: {sum(p.numel() for p in net.parameters())} parameters, max |out - out_raw| = "
          f"{float(np.max(np.abs(out - out_raw))):.3g}")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of github.com/yang-song/score_sde_pytorch")
    parser.add_argument("--out", default=OUT, help="the fixtures folder")
    args = parser.parse_args(argv)
    for name in SPECS:
        print(save(name, args.out, args.repo))


if __name__ == "__main__":
    main()
