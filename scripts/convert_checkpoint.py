"""Convert a published PyTorch checkpoint, once, into the folder `models.pretrained.load` reads.

    python scripts/convert_checkpoint.py SOURCE OUT_FOLDER --layout edm|guided_diffusion|score_sde_pytorch [options]

Runs where torch is installed: it imports only torch, safetensors and numpy (none of the JAX stack), so a torch-only
environment will do. It writes OUT_FOLDER/config.json (the layout and the network's configuration) and
OUT_FOLDER/model.safetensors (the weights under the reference code's own parameter names), the converted layouts
that `models.pretrained` documents. Each layout's conversion is one function of `CONVERTERS`:

  edm                an EDM network pickle (NVlabs/edm `network-snapshot-*.pkl` / `edm-*.pkl`). Those pickles embed
                     their classes, so unpickling needs EDM's repository importable (`--edm-repo PATH`); this script
                     is the only place the project opens a pickle, and only on this explicit request.
  guided_diffusion   a guided-diffusion state dict (`64x64_diffusion.pt`, `64x64_classifier.pt`, ...), read with
                     torch.load(weights_only=True); the flags the checkpoint was made with are named by a preset or
                     given as JSON.
  score_sde_pytorch  a score_sde_pytorch `checkpoint_N.pth` (weights_only=True): its EMA weights under parameter
                     names, with the run's config named as for the flax checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def save(folder: str, config: dict, state: dict) -> None:
    """Write config.json and model.safetensors (each tensor contiguous, float32 unless integer) into `folder`."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, value in state.items():
        value = value.detach().cpu()
        tensors[name] = (value if not value.is_floating_point() else value.float()).contiguous().clone()
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    print(f"wrote {len(tensors)} tensors and config.json ({config['layout']}) to {folder}")


# --- edm -------------------------------------------------------------------------------------------------------------


# --- guided_diffusion ------------------------------------------------------------------------------------------------


# --- score_sde_pytorch -----------------------------------------------------------------------------------------------


# layout -> convert(source, out_folder, args), which reads the options `add_options` declares.
CONVERTERS = {}


def add_options(parser: argparse.ArgumentParser) -> None:
    pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the published checkpoint file")
    parser.add_argument("out_folder", help="the folder to write config.json and model.safetensors into")
    parser.add_argument("--layout", required=True, help=f"one of {sorted(CONVERTERS)}")
    add_options(parser)
    args = parser.parse_args(argv)
    if args.layout not in CONVERTERS:
        sys.exit(f"unknown layout {args.layout!r}; valid layouts: {sorted(CONVERTERS)}")
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as error:
        sys.exit(f"convert_checkpoint needs torch and safetensors ({error}); install them in this environment "
                 "(`pip install torch safetensors numpy`)")
    if not os.path.isfile(args.source):
        sys.exit(f"no such file: {args.source}")
    CONVERTERS[args.layout](args.source, args.out_folder, args)


if __name__ == "__main__":
    main()
