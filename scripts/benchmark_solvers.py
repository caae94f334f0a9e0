"""Benchmark the samplers: accuracy against an exact flow map, and the overhead around the model calls
(`experiments.runs.solver_benchmark`, whose docstring says what is measured).

Command (the full run, from the repository root):

    python scripts/benchmark_solvers.py --json outputs/bench/benchmark_solvers.json

Smoke test (a tiny subset, under a minute):

    python scripts/benchmark_solvers.py --json outputs/bench/benchmark_solvers.json --quick

Output: FILE (all rows and metadata), benchmark_solvers.md (tables, also printed) and benchmark_solvers.png (RMSE vs
NFE, log-log, one panel per grid) in --out-dir.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import solver_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="output JSON file (all rows and metadata)")
    parser.add_argument("--out-dir", help="directory for benchmark_solvers.{md,png} (default: the JSON's directory)")
    parser.add_argument("--batch", type=int, default=None, help="accuracy batch size (default 1024; 128 if --quick)")
    parser.add_argument("--quick", action="store_true", help="a tiny subset, for smoke-testing (< 1 minute)")
    parser.add_argument("--process", default="vp_linear", help="noise process (schedules.PROCESSES)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the oracle, x_init and the MLP init")
    args = parser.parse_args(argv)
    plan = (solver_benchmark.quick_plan(args.batch or 128) if args.quick
            else solver_benchmark.Plan(accuracy_batch=args.batch or 1024))
    command = cli.command_line(__file__, argv)
    solver_benchmark.benchmark(plan, args.json, out_dir=args.out_dir, process=args.process, seed=args.seed,
                               command=command)


if __name__ == "__main__":
    main()
