"""Benchmark the step schedules: standard grids against OSS, Bellman/BOSS, GITS and gradient refinement
(`experiments.runs.schedule_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_schedules.py --json outputs/bench/benchmark_schedules.json

Writes the JSON, benchmark_schedules.md (printed too) and benchmark_schedules.png beside it.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import schedule_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nfes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--distill-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=1024)
    args = parser.parse_args(argv)
    schedule_benchmark.benchmark(args.json, seed=args.seed, nfes=args.nfes, teacher_steps=args.teacher_steps,
                                 distill_batch=args.distill_batch, eval_batch=args.eval_batch)


if __name__ == "__main__":
    main()
