"""Convert a pickled torch checkpoint (.bin, .ckpt, .pt, .pth) to safetensors, once, so `models.pretrained` can read it.

    python scripts/convert_to_safetensors.py unet/diffusion_pytorch_model.bin [unet/diffusion_pytorch_model.safetensors]
    python scripts/convert_to_safetensors.py model.ckpt model.safetensors --key state_dict

Needs torch and safetensors (`pip install -e .[torch]`). The file is read with `torch.load(..., weights_only=True)`,
which loads tensors and plain containers only and refuses to run code stored in the pickle; the project itself never
unpickles a file. The output holds the tensors of the state dict (or of the dict under `--key`), contiguous, on CPU,
with their dtypes; the default output path replaces the input's extension by .safetensors.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the torch checkpoint (.bin, .ckpt, .pt, .pth)")
    parser.add_argument("target", nargs="?", default=None, help="the .safetensors file to write")
    parser.add_argument("--key", default=None, help="the entry holding the state dict (e.g. state_dict, model)")
    args = parser.parse_args(argv)
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as error:
        sys.exit(f"convert_to_safetensors needs torch and safetensors ({error}); install them with "
                 "`pip install -e .[torch]` (or in a separate environment)")

    state = torch.load(args.source, map_location="cpu", weights_only=True)
    if args.key is not None:
        if not isinstance(state, dict) or args.key not in state:
            entries = sorted(state) if isinstance(state, dict) else []
            sys.exit(f"{args.source}: no entry {args.key!r} (entries: {entries})")
        state = state[args.key]
    if not isinstance(state, dict) or not state:
        sys.exit(f"{args.source}: expected a state dict of tensors, got {type(state).__name__}")
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        sys.exit(f"{args.source}: entries that are not tensors: {not_tensors[:8]}; pass --key to name the state dict")
    target = args.target or os.path.splitext(args.source)[0] + ".safetensors"
    # clone: safetensors refuses tensors that share storage (tied weights); each entry gets its own copy.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, target)
    print(f"wrote {len(state)} tensors to {target}")


if __name__ == "__main__":
    main()
