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

EDM_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")  # training/networks.py's preconditioners


def _jsonable(value):
    """EDM's init_kwargs (EasyDicts, tuples, numpy scalars) as plain JSON values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"init_kwargs holds a {type(value).__name__} ({value!r}), which JSON cannot hold")


def convert_edm(source: str, out_folder: str, args: argparse.Namespace) -> None:
    """An EDM network pickle (dict(ema=<preconditioned network>, ...), as EDM's training loop writes it,
    training_loop.py:179) -> config.json {"layout": "edm", "class_name", "init_kwargs"} and the network's state_dict.
    Unpickling runs EDM's code (the pickle embeds its classes), from the checkout `args.edm_repo`."""
    if not args.edm_repo:
        sys.exit("--layout edm needs --edm-repo PATH (a checkout of github.com/NVlabs/edm): EDM's network pickles "
                 "embed their classes and unpickling them imports EDM's dnnlib and torch_utils; this is the only "
                 "pickle the project ever opens, and only on this explicit request")
    sys.path.insert(0, os.path.abspath(args.edm_repo))
    try:
        import dnnlib  # noqa: F401
        import torch_utils.persistence  # noqa: F401
    except ImportError as error:
        sys.exit(f"--edm-repo {args.edm_repo}: cannot import EDM's dnnlib and torch_utils ({error}), which unpickling "
                 "an EDM network pickle needs; point it at a checkout of github.com/NVlabs/edm")
    import pickle

    with open(source, "rb") as f:
        data = pickle.load(f)  # the one pickle the project opens: an EDM network, on the user's explicit request
    net = data.get("ema") if isinstance(data, dict) else None
    if type(net).__name__ not in EDM_CLASSES or not hasattr(net, "init_kwargs"):
        sys.exit(f"{source}: not an EDM network pickle: expected a dict whose 'ema' is one of {list(EDM_CLASSES)} "
                 f"made by EDM's persistence, found {type(data).__name__}"
                 + (f" with ema={type(net).__name__}" if isinstance(data, dict) else ""))
    if net.init_args:
        sys.exit(f"{source}: {type(net).__name__} was built with positional arguments {net.init_args}; EDM's "
                 "training builds its networks with keywords only, and config.json records keywords")
    config = {"layout": "edm", "class_name": type(net).__name__, "init_kwargs": _jsonable(dict(net.init_kwargs))}
    save(out_folder, config, net.state_dict())


# --- guided_diffusion ------------------------------------------------------------------------------------------------


# --- score_sde_pytorch -----------------------------------------------------------------------------------------------


# layout -> convert(source, out_folder, args), which reads the options `add_options` declares.
CONVERTERS = {"edm": convert_edm}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edm-repo", default=None,
                        help="edm: a checkout of github.com/NVlabs/edm; unpickling an EDM network pickle runs its code "
                             "(the only pickle this project opens, on this explicit request)")


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
