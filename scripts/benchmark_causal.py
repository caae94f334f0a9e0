"""Sequential vs Jacobi vs GS-Jacobi inversion of a trained TarFlow: dependent passes, wall time, exactness, FD.

    python scripts/causal_metrics.py --config experiments/configs/digits_tarflow.py \
        --workdir outputs/digits_tarflow --plan outputs/digits_tarflow/plan.json
    python scripts/benchmark_causal.py --config experiments/configs/digits_tarflow.py \
        --workdir outputs/digits_tarflow --plan-file outputs/digits_tarflow/plan.json --json outputs/bench/causal.json

Plans compared (the same latents for all): sequential (the reference); Jacobi on every block; GS-Jacobi with
--segments equal segments on every block; the CRM / IGM plan of --plan-file when given. Every Jacobi loop stops at
--tol (max |x_new - x|) or at its iteration cap. Columns: see `experiments/runs/causal_inversion.py`. Wall time is
measured twice: all --num-samples in batches of --batch-size (throughput, where a CPU is compute-bound and Jacobi's
extra work shows), and one batch of --latency-batch samples (default 1: where the dependent passes dominate).
"""

from __future__ import annotations

import argparse
import json
import platform

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax

from fastsamplers import core
from fastsamplers.experiments.runs import causal_inversion


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the training config of the run (file.py[:arg])")
    parser.add_argument("--workdir", required=True, help="the run's workdir (with checkpoints/)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plan-file", default=None, help="a plan written by scripts/causal_metrics.py")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=2500)
    parser.add_argument("--latency-batch", type=int, default=1)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--jacobi-iterations", type=int, default=0, help="cap per block; 0 = T (exact)")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--guidance", type=float, default=None, help="default: the run's sample.guidance")
    parser.add_argument("--no-fd", action="store_true", help="skip FD-digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config, flow, params, _, step = causal_inversion.load_flow(args.config, args.workdir)
    plans = {
        "sequential": "sequential",
        "jacobi": {"mode": "jacobi", "max_iterations": args.jacobi_iterations, "tol": args.tol},
        f"gs_jacobi x{args.segments}": {"mode": "gs_jacobi", "segments": args.segments, "tol": args.tol},
    }
    if args.plan_file:
        with open(args.plan_file) as f:
            plans["CRM/IGM plan"] = json.load(f)["plan"]
    guidance = config.sample.guidance if args.guidance is None else args.guidance
    denoise_sigma = config.loss.noise_std if config.sample.denoise else None
    rows = causal_inversion.benchmark(flow, params, plans, args.num_samples, args.batch_size, args.latency_batch,
                                      args.seed, guidance, config.sample.annealed_guidance, None, denoise_sigma,
                                      fd=not args.no_fd)
    table = causal_inversion.format_rows(rows)
    print(f"\n{args.config} @ step {step}; {args.num_samples} samples; {jax.devices()[0].device_kind}\n")
    print(table)
    core.write_json(args.json, {"config": args.config, "step": step, "num_samples": args.num_samples, "tol": args.tol,
                                "guidance": guidance, "device": jax.devices()[0].device_kind, "host": platform.node(),
                                "rows": rows, "table": table}, indent=2)
    return rows


if __name__ == "__main__":
    main()
