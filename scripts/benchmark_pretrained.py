r"""Benchmark a loaded diffusers checkpoint against diffusers itself, on this machine's CPU: network call and sampler
(`experiments.runs.pretrained_benchmark`, whose docstring says what is measured and how).

The diffusers side runs in a separate environment with torch and diffusers: its python is --torch-python, or the
environment variable FASTSAMPLERS_TORCH_PYTHON. Command (from the repository root):

    python scripts/benchmark_pretrained.py --torch-python PATH/TO/torch-env/bin/python \
        --json experiments/results/pretrained_benchmark_cpu.json

Smoke test (small batches, a few seconds of compute per worker):

    FASTSAMPLERS_TORCH_PYTHON=PATH/TO/torch-env/bin/python python scripts/benchmark_pretrained.py --batches 2 4 \
        --sampler-batch 2 --json outputs/bench/pretrained_benchmark_smoke.json

Only the profile (operators and the convolution share, at the first of --batches), into an existing record:

    python scripts/benchmark_pretrained.py --profile-only --batches 64 \
        --json experiments/results/pretrained_benchmark_cpu.json
"""

from __future__ import annotations

import argparse
import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import pretrained_benchmark


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=None,
                        help="a python with torch and diffusers (not this project's packages); default: "
                             f"${pretrained_benchmark.TORCH_PYTHON_ENV}")
    parser.add_argument("--model-dir", default=None, help="where to write the random model (default: a temp dir)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--sampler-batch", type=int, default=8, help="the batch of the measured NFE-10 loops")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (minimum reported)")
    parser.add_argument("--large-repeats", type=int, default=1, help="--repeats at the largest batch")
    parser.add_argument("--torch-omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY of the torch workers ('' for the environment's): PASSIVE keeps torch's "
                             "OpenMP threads from spinning, which on a shared CPU slows torch down several times")
    parser.add_argument("--no-ops", action="store_true", help="skip the operator timings")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the operator timings and the convolution profile at the first of --batches; they "
                             "replace the 'profile' entry of an existing --json record")
    parser.add_argument("--json", default=os.path.join(cli.ROOT, "experiments", "results",
                                                       "pretrained_benchmark_cpu.json"))
    args = parser.parse_args(argv)
    command = cli.command_line(__file__, argv)
    settings = pretrained_benchmark.Settings(
        json=args.json, torch_python=args.torch_python, model_dir=args.model_dir, batches=tuple(args.batches),
        sampler_batch=args.sampler_batch, repeats=args.repeats, large_repeats=args.large_repeats,
        torch_omp_wait_policy=args.torch_omp_wait_policy, ops=not args.no_ops, command=command)
    try:
        settings.check()
    except ValueError as error:  # a wrong setting: one sentence, no traceback
        parser.error(str(error))
    (pretrained_benchmark.profile if args.profile_only else pretrained_benchmark.benchmark)(settings)


if __name__ == "__main__":
    main()
