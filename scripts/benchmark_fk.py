"""Benchmark the Feynman-Kac correctors on the exact oracle: distance to the exact annealed, guided, product and tilted
targets for the corrected, uncorrected and ODE samplers, and the particle loop's overhead
(`experiments.runs.fk_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_fk.py --json experiments/results/fk_oracle.json [--parts rows]
    python scripts/benchmark_fk.py --json experiments/results/fk_digits.json --parts digits \
        --train_config experiments/configs/digits_vp.py:conditional --checkpoint_dir outputs/digits_vp_cond

Writes the JSON and prints the tables.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import fk_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="rows: seeds per cell (the median is reported)")
    parser.add_argument("--parts", default="rows,overhead", help="comma-separated: rows, overhead")
    parser.add_argument("--targets", default=",".join(fk_benchmark.PROBLEMS), help="comma-separated target names")
    parser.add_argument("--train_config", default="", help="digits part: the class-conditional run's config")
    parser.add_argument("--checkpoint_dir", default="", help="digits part: that run's workdir")
    parser.add_argument("--digits_samples", type=int, default=2000)
    args = parser.parse_args(argv)
    parts = tuple(args.parts.split(","))
    if "digits" not in parts:  # the oracle parts in float64; a trained network samples in float32
        jax.config.update("jax_enable_x64", True)
    fk_benchmark.benchmark(args.json, seed=args.seed, parts=parts, targets=tuple(args.targets.split(",")),
                           train_config=args.train_config, checkpoint_dir=args.checkpoint_dir,
                           digits_samples=args.digits_samples, seeds=args.seeds)


if __name__ == "__main__":
    main()
