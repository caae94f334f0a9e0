"""Benchmark the stochastic samplers against the ODE samplers by distribution, and count compilations with args
(`experiments.runs.stochastic_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_stochastic.py --json outputs/bench/stochastic.json
    python scripts/benchmark_stochastic.py --json experiments/results/restart_cfg_pp_oracle.json --parts restart,cfg_pp

Writes the JSON and prints the tables (markdown).
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import stochastic_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per cell (and exact draws)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the oracle and the draws")
    parser.add_argument("--parts", default="distribution,compilations",
                        help="comma-separated tables: distribution, compilations, restart, cfg_pp")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    stochastic_benchmark.benchmark(args.json, num_samples=args.num_samples, seed=args.seed,
                                   parts=tuple(args.parts.split(",")))


if __name__ == "__main__":
    main()
