"""Flow matching on the 2-D benchmark, side by side with TorchCFM: training speed, W2 and straightness per coupling
(`experiments.runs.fm_benchmark`, whose docstring says what is measured).

    python scripts/benchmark_fm.py --json outputs/bench/fm.json \
        --torchcfm-python TORCH_VENV/bin/python     # a virtualenv with torchcfm, pot, scikit-learn

Without --torchcfm-python only this framework is measured; TorchCFM's side is scripts/torchcfm_baseline.py, run by
that python.
"""

from __future__ import annotations

import argparse
import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import fm_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--couplings", default="independent,ot,sinkhorn")
    parser.add_argument("--num-eval", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torchcfm-python", default=None, help="python of a virtualenv with torchcfm, pot, sklearn")
    parser.add_argument("--torchcfm-reg", type=float, default=0.6, help="POT's absolute reg for sinkhorn")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    fm_benchmark.benchmark(args.json, steps=args.steps, couplings=args.couplings.split(","), num_eval=args.num_eval,
                           seed=args.seed, torchcfm_python=args.torchcfm_python,
                           torchcfm_script=os.path.join(cli.ROOT, "scripts", "torchcfm_baseline.py"),
                           torchcfm_reg=args.torchcfm_reg)


if __name__ == "__main__":
    main()
