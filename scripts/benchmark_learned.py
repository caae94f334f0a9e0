"""Learned samplers against the best fixed (solver, grid) pair on the Gaussian-mixture oracle (issue 17;
`experiments.runs.learned_benchmark`, whose docstring says what is measured).

Command (the full run, from the repository root; about 15 minutes on a 2-core CPU):

    python scripts/benchmark_learned.py --json experiments/results/learned_oracle.json

Smoke run (NFE 4 and 5, small batches and budgets): add `--quick`. Output: the markdown table (printed, and beside
the JSON) and the JSON of every cell.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import learned_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/learned_oracle.json")
    parser.add_argument("--nfes", default="4,5,6,8,10")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration samples")
    parser.add_argument("--evaluation", type=int, default=4096, help="held-out samples")
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--budget", type=int, default=600, help="candidates the search may score")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    nfes = [int(n) for n in args.nfes.split(",")]
    if args.quick:
        nfes, args.calibration, args.evaluation, args.teacher_steps, args.budget = [4, 5], 128, 256, 60, 60
    learned_benchmark.benchmark(args.json, nfes=nfes, calibration=args.calibration, evaluation=args.evaluation,
                                teacher_steps=args.teacher_steps, budget=args.budget,
                                command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
