"""DPM-Solver-v3 with estimated statistics against DPM-Solver++(2M/3M) and UniPC-3 on the same grids (issue 27;
`experiments.runs.dpm_solver_v3_benchmark`, whose docstring says what is measured): the uniform log-SNR grid, or
`--grids uniform,quadratic,logsnr,edm`, each snapped to the statistics grid.

Oracle (from the repository root):

    python scripts/benchmark_dpm_solver_v3.py --json experiments/results/dpm_solver_v3_oracle.json

Digits (a trained VP eps run; FD-digits at NFE 5 and 10):

    python scripts/benchmark_dpm_solver_v3.py --json outputs/bench/dpm_solver_v3_digits.json --nfes 5,10 \
        --digits experiments/configs/digits_vp.py=outputs/digits_vp --calibration 256 --num-samples 2000

Smoke run: `--quick` (NFE 4 and 5, small batches).
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers.experiments.runs import dpm_solver_v3_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/dpm_solver_v3_oracle.json")
    parser.add_argument("--nfes", default="4,5,6,8,10")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration samples")
    parser.add_argument("--evaluation", type=int, default=4096, help="held-out samples (oracle)")
    parser.add_argument("--num-points", type=int, default=121, help="statistics grid points")
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--digits", default=None, help="CONFIG.py[:arg]=CHECKPOINT_DIR of a trained run")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per FD-digits cell")
    parser.add_argument("--grids", default="logsnr", help="comma-separated time grids (schedules.GRIDS), each snapped "
                        "to the statistics grid")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    nfes = [int(n) for n in args.nfes.split(",")]
    if args.digits is None:
        jax.config.update("jax_enable_x64", True)
    if args.quick:
        nfes, args.calibration, args.evaluation, args.teacher_steps, args.num_points = [4, 5], 64, 128, 40, 41
    dpm_solver_v3_benchmark.benchmark(args.json, nfes=nfes, calibration=args.calibration, evaluation=args.evaluation,
                                      num_points=args.num_points, teacher_steps=args.teacher_steps,
                                      digits=args.digits, num_samples=args.num_samples,
                                      grids=args.grids.split(","),
                                      command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
