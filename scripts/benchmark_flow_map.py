"""A data-free flow map against its teacher: the student at 1, 2, 4 steps beside the teacher at the same NFE and at
its fine solve (`experiments.runs.flow_map_benchmark`, whose docstring says what is measured).

    python scripts/benchmark_flow_map.py --workdir outputs/flow_map_digits \
        --json experiments/results/flow_map_digits.json
    python scripts/benchmark_flow_map.py --workdir outputs/flow_map_toy2d \\
        --config experiments/configs/flow_map_distill.py:teacher=toy2d_fm --json experiments/results/flow_map_toy2d.json

Prints the markdown table and writes it beside the JSON.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import flow_map_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the flow-map run's --workdir")
    parser.add_argument("--config", default="experiments/configs/flow_map_distill.py",
                        help="the run's training config, file.py[:arg]")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="flow-map steps (= NFE)")
    parser.add_argument("--grids", nargs="+", default=["uniform"], help="the flow map's time grids")
    parser.add_argument("--teacher-solvers", nargs="+", default=["euler", "heun", "dpmpp_2m"])
    parser.add_argument("--reference", default="heun:100", help="SOLVER:STEPS of the teacher's fine solve")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--weights", choices=["ema", "raw"], default=None,
                        help="the student's weights (default: as the run samples, its sample.use_ema)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    solver, sep, steps = args.reference.partition(":")
    if not sep or not steps.isdigit():
        parser.error(f"--reference takes SOLVER:STEPS, got {args.reference!r}")
    flow_map_benchmark.benchmark(args.workdir, args.json, config_spec=args.config, steps=tuple(args.steps),
                                 grids=tuple(args.grids), teacher_solvers=tuple(args.teacher_solvers),
                                 reference=(solver, int(steps)), num_samples=args.num_samples,
                                 use_ema=None if args.weights is None else args.weights == "ema")


if __name__ == "__main__":
    main()
