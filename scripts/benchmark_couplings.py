"""Benchmark the exact minibatch-OT solvers of experiments/train/couplings.py: scipy (host callback) against optax
(`experiments.runs.coupling_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_couplings.py --json outputs/bench/benchmark_couplings.json

On CPU unless --platform says otherwise. Prints a table and writes the JSON (rows, settings, versions).
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import coupling_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--batches", default="64,128,256,512", help="comma-separated batch sizes")
    parser.add_argument("--dims", default="2,64", help="comma-separated data dimensions")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per entry (at most)")
    parser.add_argument("--budget_s", type=float, default=5.0, help="stop timing an entry after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="gaussian", choices=coupling_benchmark.DATA_2D, help="the 2-D data")
    parser.add_argument("--stack", type=int, default=16, help="problems per vmapped call (the stacked column)")
    parser.add_argument("--platform", default="cpu", help="JAX platform to run on (default cpu)")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", args.platform)
    return coupling_benchmark.benchmark([int(d) for d in args.dims.split(",")],
                                        [int(b) for b in args.batches.split(",")], repeats=args.repeats,
                                        budget_s=args.budget_s, seed=args.seed, data_2d=args.data, stack=args.stack,
                                        json_path=args.json)


if __name__ == "__main__":
    main()
