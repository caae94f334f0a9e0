"""DualFast on DDIM, DPM-Solver++(2M) and UniPC-3: RMSE against the exact map on the oracle and FD-digits on the
digits models, a sweep of its coefficient, reference and ramp (issue 27 item 4; `experiments.runs.dualfast_benchmark`,
whose docstring says what is measured).

Command (from the repository root; the digits part needs the checkpoints in /work/outputs/digits_vp and
/work/outputs/digits_fm, see `dualfast_benchmark.DIGITS`):

    python scripts/benchmark_dualfast.py --json experiments/results/dualfast.json --samples 10000

Oracle only: `--digits none`. Smoke run (small batches): add `--quick`. Output: the markdown table (printed, and beside
the JSON) and the JSON of every cell.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import dualfast_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/dualfast.json")
    parser.add_argument("--nfes", default="5,10")
    parser.add_argument("--evaluation", type=int, default=1024, help="the oracle's held-out samples")
    parser.add_argument("--samples", type=int, default=2000, help="digits samples per cell")
    parser.add_argument("--digits", default=",".join(dualfast_benchmark.DIGITS),
                        help="comma-separated digits models (NAME or NAME=RUN_DIR), or 'none'")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    nfes = [int(n) for n in args.nfes.split(",")]
    digits = {} if args.digits == "none" else dict(
        item.split("=", 1) if "=" in item else (item, dualfast_benchmark.DIGITS.lookup(item)[1])
        for item in args.digits.split(","))
    if args.quick:
        args.evaluation, args.samples = 128, 256
    dualfast_benchmark.benchmark(args.json, nfes=nfes, evaluation=args.evaluation, num_samples=args.samples,
                                 digits=digits, command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
