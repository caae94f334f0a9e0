"""Benchmark classifier-free guidance on the exact conditional oracle: RMSE against the exact guided map, and the cost
of a 16-point sweep over the guidance scale (`experiments.runs.guidance_benchmark`, whose docstring says what is
measured).

Command (from the repository root):

    python scripts/benchmark_guidance.py --json outputs/bench/guidance.json [--parts sweep]

Writes the JSON and prints the tables.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import guidance_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="rmse,sweep", help="comma-separated: rmse, sweep")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    guidance_benchmark.benchmark(args.json, nfe=args.nfe, batch=args.batch, seed=args.seed,
                                 parts=tuple(args.parts.split(",")))


if __name__ == "__main__":
    main()
