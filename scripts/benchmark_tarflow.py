"""CPU time of the reference TarFlow architecture: ours (JAX, `models.pretrained.load` of a tarflow folder) against
Apple's PyTorch `transformer_flow.Model` on the same random weights, and GS-Jacobi against sequential on it.

    python scripts/benchmark_tarflow.py --repo /path/to/ml-tarflow --torch-python /path/to/torch/python \
        [--img-size 64] [--json outputs/bench/tarflow.json]

The architecture is TarFlow-AFHQ's (patch 8, 768 channels, 8 blocks x 8 layers, 3 classes) at --img-size: 256 is
the released model's 1024 tokens; the default 64 (64 tokens, the same layers) keeps a CPU run of both sides to a few
minutes, the forward pass ~16x and the sequential inverse's dependent passes 16x fewer. The torch side runs in
--torch-python (a python with torch, safetensors and numpy), this file itself with --torch-side: it builds the Model
with scripts/make_tarflow_fixtures.py's redrawn weights (so that every layer matters), writes the converted folder,
and times its forward and reverse (sequential, KV cache) on one sample; the JAX side loads that folder and times the
same, then compares the inversion plans with `experiments.runs.causal_inversion.benchmark` (dependent passes, wall
time). Random weights converge unlike trained ones: the plans' pass counts show the mechanics, not the paper's
speedups. One run each, after one untimed (compiling) call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INIT_KWARGS = dict(in_channels=3, patch_size=8, channels=768, num_blocks=8, layers_per_block=8, num_classes=3)


def timed(fn, *args):
    """(result, seconds) of fn(*args) after one untimed call."""
    fn(*args)
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def torch_side(repo: str, folder: str, img_size: int) -> dict:
    """Build, save and time the reference Model (torch only)."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, HERE)
    import make_tarflow_fixtures as fixtures

    kwargs = dict(INIT_KWARGS, img_size=img_size)
    torch.manual_seed(0)
    model = fixtures.reference_module(repo).Model(**kwargs).eval()
    fixtures.randomize(model, seed=0)
    model.var.fill_(1.0)  # as in the released nvp models
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"layout": "tarflow", "init_kwargs": kwargs, "noise_std": 0.07}, f)
    x = torch.rand(1, 3, img_size, img_size) * 2 - 1
    y = torch.tensor([1])
    noise = torch.randn(1, model.num_patches, 3 * 64)
    with torch.no_grad():
        _, forward = timed(lambda: model(x, y))
        _, reverse = timed(lambda: model.reverse(noise.clone(), y))
    return {"torch_forward_s": forward, "torch_sequential_s": reverse, "torch_threads": torch.get_num_threads()}


def jax_side(folder: str, segments: int, tol: float) -> tuple[dict, list]:
    import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
    import jax
    import jax.numpy as jnp

    from fastsamplers.experiments.runs import causal_inversion
    from fastsamplers.models import pretrained
    from fastsamplers.samplers import causal

    m = pretrained.load(folder)
    x = jax.random.uniform(jax.random.PRNGKey(0), (1, *m.image_shape), minval=-1.0, maxval=1.0)
    y = jnp.array([1])
    forward = jax.jit(m.flow.apply)
    _, forward_s = timed(lambda: jax.block_until_ready(forward(m.params, x, y)))
    inverse = jax.jit(lambda params, z, y: causal.invert(m.flow, params, z, y))
    _, sequential_s = timed(lambda: jax.block_until_ready(inverse(m.params, x, y)))
    plans = {"sequential": "sequential",
             f"gs_jacobi x{segments} tol {tol:g}": {"mode": "gs_jacobi", "segments": segments, "tol": tol},
             f"gs_jacobi x{segments}, 4 iterations": {"mode": "gs_jacobi", "segments": segments, "max_iterations": 4},
             "jacobi tol": {"mode": "jacobi", "tol": tol}}
    rows = causal_inversion.benchmark(m.flow, m.params, plans, num_samples=1, batch_size=1, latency_batch=1,
                                      fd=False, repeats=1, log=lambda _: None)
    record = {"jax_forward_s": forward_s, "jax_sequential_s": sequential_s, "device": jax.devices()[0].device_kind,
              "plans_table": causal_inversion.format_rows(rows)}
    return record, rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of github.com/apple/ml-tarflow")
    parser.add_argument("--torch-python", default=sys.executable, help="a python with torch and safetensors")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--json", default=None)
    parser.add_argument("--folder", default=None, help="where to write the converted folder (default: a temp dir)")
    parser.add_argument("--torch-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = args.folder or tempfile.mkdtemp(prefix="tarflow_bench_")
    if args.torch_side:
        print(json.dumps(torch_side(args.repo, folder, args.img_size)))
        return {}
    out = subprocess.run([args.torch_python, os.path.abspath(__file__), "--repo", args.repo, "--folder", folder,
                          "--img-size", str(args.img_size), "--torch-side"], check=True, capture_output=True,
                         text=True)
    record = {"img_size": args.img_size, **INIT_KWARGS, **json.loads(out.stdout.strip().splitlines()[-1])}
    jax_record, rows = jax_side(folder, args.segments, args.tol)
    record.update(jax_record, rows=rows)
    print(f"TarFlow p8 D768 8x8 at {args.img_size} px ({(args.img_size // 8) ** 2} tokens), batch 1, CPU "
          f"({record['torch_threads']} torch threads):")
    print(f"  forward     torch {record['torch_forward_s']:.3f} s   jax {record['jax_forward_s']:.3f} s")
    print(f"  sequential  torch {record['torch_sequential_s']:.3f} s   jax {record['jax_sequential_s']:.3f} s")
    print(record["plans_table"])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    main()
