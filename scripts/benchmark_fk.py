"""Benchmark the Feynman-Kac correctors on the exact oracle: distance to the exact annealed, guided, product and tilted
targets for the corrected, uncorrected and ODE samplers, and the particle loop's overhead
(`experiments.runs.fk_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_fk.py --json experiments/results/fk_oracle.json [--parts rows]

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
    parser.add_argument("--parts", default="rows,overhead", help="comma-separated: rows, overhead")
    parser.add_argument("--targets", default=",".join(fk_benchmark.PROBLEMS), help="comma-separated target names")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    fk_benchmark.benchmark(args.json, seed=args.seed, parts=tuple(args.parts.split(",")),
                           targets=tuple(args.targets.split(",")))


if __name__ == "__main__":
    main()
