"""Benchmark LightSB (`models.light_sb`): fit time and plan error against the closed-form Gaussian entropic OT plan
as the dimension grows, and against ott-jax's Sinkhorn plan on the 2-D sets (`experiments.runs.light_sb_benchmark`,
whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_light_sb.py --json outputs/bench/benchmark_light_sb.json

On CPU unless --platform says otherwise. Prints two tables and writes the JSON (rows, settings, versions).
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import light_sb_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--dims", default="2,16,64", help="comma-separated dimensions of the Gaussian rows")
    parser.add_argument("--data", default=",".join(light_sb_benchmark.DATA_2D), help="comma-separated 2-D sets")
    parser.add_argument("--num_samples", type=int, default=4096, help="training samples of each set")
    parser.add_argument("--steps", type=int, default=5000, help="Adam steps of each fit")
    parser.add_argument("--num_potentials", type=int, default=10, help="K for the Gaussian rows")
    parser.add_argument("--potentials_2d", type=int, default=100, help="K for the 2-D rows")
    parser.add_argument("--held_out", type=int, default=1024, help="held-out source points (and Sinkhorn's set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--platform", default="cpu", help="JAX platform to run on (default cpu)")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", args.platform)
    return light_sb_benchmark.benchmark([int(d) for d in args.dims.split(",")], args.data.split(","),
                                        num_samples=args.num_samples, num_potentials=args.num_potentials,
                                        steps=args.steps, potentials_2d=args.potentials_2d, held_out=args.held_out,
                                        seed=args.seed, json_path=args.json)


if __name__ == "__main__":
    main()
