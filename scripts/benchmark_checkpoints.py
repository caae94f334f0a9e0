r"""Benchmark EDM's, guided-diffusion's and DiT's published architectures against their reference PyTorch code on
the same random weights, on this machine: network call and the whole sampler (`experiments.runs.checkpoint_benchmark`,
whose docstring says what is measured and how).

The reference side runs in a separate environment with torch, numpy and safetensors (--torch-python, or the
environment variable FASTSAMPLERS_TORCH_PYTHON) from checkouts of NVlabs/edm and openai/guided-diffusion. Command
(from the repository root):

    python scripts/benchmark_checkpoints.py --torch-python PATH/TO/torch-env/bin/python \
        --edm-repo PATH/TO/edm --guided-diffusion-repo PATH/TO/guided-diffusion \
        --json experiments/results/checkpoint_benchmark_cpu.json
"""

from __future__ import annotations

import argparse
import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import checkpoint_benchmark


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=None, help="a python with torch, numpy and safetensors")
    parser.add_argument("--edm-repo", default="", help="a checkout of NVlabs/edm")
    parser.add_argument("--guided-diffusion-repo", default="", help="a checkout of openai/guided-diffusion")
    parser.add_argument("--dit-repo", default="", help="a checkout of facebookresearch/DiT (timm installed)")
    parser.add_argument("--model-dir", default=None, help="where the random models go (default: a temp dir)")
    parser.add_argument("--architectures", nargs="+", default=list(checkpoint_benchmark.ARCHITECTURES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sampler-batch", type=int, default=1, help="the batch of the timed samplers")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (minimum reported)")
    parser.add_argument("--json", default=os.path.join(cli.ROOT, "experiments", "results",
                                                       "checkpoint_benchmark_cpu.json"))
    args = parser.parse_args(argv)
    command = cli.command_line(__file__, argv)
    settings = checkpoint_benchmark.Settings(
        json=args.json, torch_python=args.torch_python, edm_repo=args.edm_repo,
        guided_diffusion_repo=args.guided_diffusion_repo, dit_repo=args.dit_repo, model_dir=args.model_dir,
        architectures=tuple(args.architectures), batches=tuple(args.batches), sampler_batch=args.sampler_batch,
        repeats=args.repeats, command=command)
    try:
        settings.check()
    except ValueError as error:  # a wrong setting: one sentence, no traceback
        parser.error(str(error))
    checkpoint_benchmark.benchmark(settings)


if __name__ == "__main__":
    main()
