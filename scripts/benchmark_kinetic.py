"""Benchmark kinetic-optimal Gaussian paths against conditional OT on the exact 2-D oracles (and the digits data set's
kinetic energies): `experiments.runs.kinetic_benchmark`, whose docstring says what is measured.

Command (from the repository root):

    python scripts/benchmark_kinetic.py --json experiments/results/kinetic_oracle.json [--parts toy2d,digits]

With trained digits runs (`digits_fm.py` and `digits_fm.py:path=kinetic`), their FD-digits at Euler 2/4/8:

    python scripts/benchmark_kinetic.py --json experiments/results/kinetic_digits.json --parts digits \
        --digits-models cond_ot=outputs/digits_fm,kinetic=outputs/digits_fm_kinetic

Writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse

import cli  # (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import kinetic_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=int, default=1000, help="samples per W2 / straightness estimate")
    parser.add_argument("--parts", default="toy2d", help="comma-separated: toy2d, digits")
    parser.add_argument("--datasets", default=",".join(kinetic_benchmark.DATASETS), help="comma-separated 2-D sets")
    parser.add_argument("--digits-models", default="", help="LABEL=RUN_DIR,...: cond_ot and/or kinetic digits runs")
    parser.add_argument("--num-samples", type=int, default=10_000, help="digits samples per FD-digits")
    args = parser.parse_args(argv)
    items = [item for item in args.digits_models.split(",") if item]
    if any("=" not in item for item in items):
        parser.error(f"--digits-models takes LABEL=RUN_DIR pairs separated by commas, got {args.digits_models!r}")
    models = dict(item.split("=", 1) for item in items)
    jax.config.update("jax_enable_x64", True)  # the oracle and the tables in float64
    kinetic_benchmark.benchmark(args.json, parts=tuple(args.parts.split(",")), datasets=tuple(args.datasets.split(",")),
                                seed=args.seed, num=args.num, models=models, num_samples=args.num_samples,
                                command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
