"""CRM and IGM per block of a trained TarFlow, from a forward pass on data, and the GS-Jacobi plan they suggest.

    python scripts/causal_metrics.py --config experiments/configs/digits_tarflow.py --workdir outputs/digits_tarflow \
        --plan outputs/digits_tarflow/plan.json

Prints the table of `samplers.causal_metrics.block_metrics` and writes the recommended plan (a list with one dict
per block, the value of `--config.sample.plan` or of `samplers.causal.invert(plan=...)`) to --plan.
"""

from __future__ import annotations

import argparse
import json

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers import core
from fastsamplers.experiments.runs import causal_inversion
from fastsamplers.samplers import causal_metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the training config of the run (file.py[:arg])")
    parser.add_argument("--workdir", required=True, help="the run's workdir (with checkpoints/)")
    parser.add_argument("--plan", required=True, help="where to write the recommended plan (JSON)")
    parser.add_argument("--num-examples", type=int, default=500, help="data images for the forward pass")
    parser.add_argument("--segments", type=int, default=8, help="GS-Jacobi segments of the tough blocks")
    parser.add_argument("--tough-share", type=float, default=None, help="CRM share that makes a block tough")
    parser.add_argument("--tough-iterations", type=int, default=0, help="per segment; 0 = the segment length")
    parser.add_argument("--other-iterations", type=int, default=0, help="cap of the other blocks; 0 = T (exact)")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    _, flow, params, dataset, step = causal_inversion.load_flow(args.config, args.workdir)
    metrics = causal_inversion.data_metrics(flow, params, dataset, args.num_examples)
    plan = causal_metrics.recommend_plan(metrics, flow.num_tokens, args.tough_share, args.segments,
                                         args.tough_iterations, args.other_iterations, args.tol)
    print(f"{args.config} @ step {step}, {args.num_examples} data images\n")
    print(causal_metrics.format_metrics(metrics))
    print("\nrecommended plan:\n" + json.dumps(plan, indent=1))
    core.write_json(args.plan, {"plan": plan, "metrics": metrics, "config": args.config, "step": step}, indent=2)
    return plan, metrics


if __name__ == "__main__":
    main()
