"""AMED against the best fixed (solver, grid) pair on the Gaussian-mixture oracle (issue 27 item 2;
`experiments.runs.amed_benchmark`, whose docstring says what is measured).

Command (from the repository root):

    python scripts/benchmark_amed.py --json experiments/results/amed_oracle.json

`--quick`: NFE 5 only, small batches. `--rows`: some of `amed_benchmark.ROWS`. `--digits /work/outputs/digits_vp`:
FD-digits of the rows against tAB2/uniform and DPM-Solver++(2M)/logsnr at the first NFE (`--num-samples` each):

    python scripts/benchmark_amed.py --digits /work/outputs/digits_vp --nfes 5 --rows "AMED-Plugin iPNDM, unrolled" \
        --json experiments/results/amed_digits_vp.json
 Output: the markdown table (printed, and beside the JSON) and the JSON.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers import core
from fastsamplers.experiments.runs import amed_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="outputs/bench/amed_oracle.json")
    parser.add_argument("--nfes", default="4,5,6,8,10")
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--evaluation", type=int, default=2048)
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--grid", default="quadratic")
    parser.add_argument("--rows", default="", help="';'-separated labels of amed_benchmark.ROWS (default: all; the "
                        "labels hold commas)")
    parser.add_argument("--batch-size", type=int, default=None, help="Adam's minibatch (default: the whole batch)")
    parser.add_argument("--digits", default="", help="a digits_vp run's workdir: FD-digits at the first NFE instead")
    parser.add_argument("--digits-config", default="experiments/configs/digits_vp.py")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    nfes = [int(n) for n in args.nfes.split(",")]
    if args.quick:
        nfes, args.calibration, args.evaluation, args.iterations = [5], 128, 256, 100
    known = core.Registry("AMED row", amed_benchmark.ROWS)
    labels = [label.strip() for label in args.rows.split(";")] if args.rows else list(amed_benchmark.ROWS)
    rows = {label: dict(known.lookup(label), batch_size=args.batch_size) for label in labels}
    if args.digits:
        jax.config.update("jax_enable_x64", False)
        out = amed_benchmark.digits_rows(args.digits_config, args.digits, nfe=nfes[0], num_samples=args.num_samples,
                                         calibration=args.calibration, teacher_steps=args.teacher_steps,
                                         iterations=args.iterations, grid=args.grid, rows=rows)
        core.write_json(args.json, dict(command=cli.command_line(__file__, argv), rows=out), indent=1)
        return
    amed_benchmark.benchmark(args.json, nfes=nfes, calibration=args.calibration, evaluation=args.evaluation,
                             teacher_steps=args.teacher_steps, iterations=args.iterations, grid=args.grid,
                             rows=rows, command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
