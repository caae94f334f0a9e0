"""Align Your Steps schedules against the logSNR, EDM and quadratic grids and OSS / GITS on the Gaussian-mixture
oracle (issue 27 item 3; `experiments.runs.ays_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_ays.py --json experiments/results/ays_oracle.json

Smoke run (small batches, a short teacher): add `--quick`. Output: the markdown table (printed, and beside the JSON)
and the JSON of every cell.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import ays_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/ays_oracle.json")
    parser.add_argument("--nfes", default="5,10")
    parser.add_argument("--calibration", type=int, default=1024,
                        help="calibration samples (AYS: data; OSS/GITS: noise)")
    parser.add_argument("--evaluation", type=int, default=1024, help="held-out samples")
    parser.add_argument("--teacher-steps", type=int, default=200, help="OSS's and GITS's teacher grid")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    nfes = [int(n) for n in args.nfes.split(",")]
    if args.quick:
        args.calibration, args.evaluation, args.teacher_steps = 64, 128, 40
    ays_benchmark.benchmark(args.json, nfes=nfes, calibration=args.calibration, evaluation=args.evaluation,
                            teacher_steps=args.teacher_steps, command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
