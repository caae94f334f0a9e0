"""DPM-OT on digits against the fixed samplers at equal NFE (`experiments.runs.dpm_ot_benchmark`, whose docstring
says what is measured).

    python scripts/benchmark_dpm_ot.py --json experiments/results/dpm_ot_digits_fm.json

(`--config experiments/configs/digits_vp.py --checkpoint outputs/digits_vp`: the VP eps model. The record in
experiments/results/dpm_ot_digits_fm.json was made on 2 shared CPU cores with `--dpm-ot-solvers euler --grids
uniform`.) Prints the table and
writes JSON (and the table beside it, .md).
"""

from __future__ import annotations

import argparse
import sys

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import dpm_ot_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/digits_fm.py", help="the run's config, file.py[:arg]")
    parser.add_argument("--checkpoint", default="outputs/digits_fm", help="the run's workdir")
    parser.add_argument("--nfes", type=int, nargs="+", default=[1, 2, 4, 6, 10])
    parser.add_argument("--t-ks", type=float, nargs="+", default=[0.3, 0.6], help="the OT targets' levels")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--fit-iterations", type=int, default=100)
    parser.add_argument("--fixed", nargs="+", default=list(dpm_ot_benchmark.FIXED), help="the fixed samplers")
    parser.add_argument("--grids", nargs="+", default=list(dpm_ot_benchmark.GRIDS), help="the fixed samplers' grids")
    parser.add_argument("--dpm-ot-solvers", nargs="+", default=list(dpm_ot_benchmark.DPM_OT_SOLVERS),
                        help="the solvers after the map")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    dpm_ot_benchmark.benchmark(args.config, args.checkpoint, args.json, nfes=args.nfes, t_ks=args.t_ks,
                               num_samples=args.num_samples, fit_iterations=args.fit_iterations,
                               fixed=args.fixed, grids=args.grids, dpm_ot_solvers=args.dpm_ot_solvers,
                               command=" ".join(sys.argv))


if __name__ == "__main__":
    main()
