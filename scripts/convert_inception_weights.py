"""Converts pytorch-fid's FID Inception-v3 weights (.pth) into our .npz for `experiments.metrics.inception.load_params`.

    python scripts/convert_inception_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The .pth is the file that pytorch-fid releases as its FID weights (the TF Inception graph of 2015-12-05 ported to
PyTorch); get it yourself, this script downloads nothing. It needs PyTorch only to read the .pth (run it in any
environment that has torch and this repository's dependencies); nothing else here imports torch. The SHA-256 of the
.pth is printed, and checked against the 8 hex digits in its file name when it has them (torch hub's convention).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.metrics import inception


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pth", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("convert_inception_weights.py needs PyTorch to read the .pth (pip install torch); the .npz it "
                 "writes is used without torch")
    if not os.path.isfile(args.pth):
        sys.exit(f"no such file: {args.pth}")
    with open(args.pth, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    print(f"{args.pth}: sha256 {sha256}")
    if (m := re.search(r"-([0-9a-f]{8,64})\.pth$", os.path.basename(args.pth))) and not sha256.startswith(m[1]):
        print(f"warning: the file name says sha256 {m[1]}..., the file's is {sha256[:len(m[1])]}...: "
              "a corrupt or different file", file=sys.stderr)
    state_dict = torch.load(args.pth, map_location="cpu", weights_only=True)
    params = inception.convert_torch_state_dict({k: v.detach().cpu().numpy() for k, v in state_dict.items()})
    inception.save_params(params, args.out)
    flat = inception.flatten_params(params)
    print(f"wrote {args.out}: {len(flat)} arrays, {sum(v.size for v in flat.values()):,} float32 numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
