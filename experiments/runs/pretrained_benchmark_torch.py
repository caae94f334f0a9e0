"""The diffusers side of `experiments.runs.pretrained_benchmark`, and what both sides must agree on.

A worker process of the benchmark runs this file with a python that has torch and diffusers, which need not have
this project installed: `TORCH_PYTHON pretrained_benchmark_torch.py SPEC.json`. So the file imports only the
standard library at module level and nothing of the project (torch and diffusers inside the functions); the
project's side (`pretrained_benchmark_jax`, the orchestrator) imports the shared pieces from it: the architecture
(google/ddpm-cifar10-32's UNet2DModel and scheduler configs), the NFE, the schedulers' timesteps and the timing.

SPEC.json is a dict: "mode" ("save": write the random-weight model to "model_dir"; "measure": time it), "model_dir",
"result" (where the record goes, JSON) and, to measure, "batch", "repeats", "warmup" (one untimed call first),
"loops" (the NFE-10 samplers), "ops" (the operator timings and the convolution profile).
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time

NFE = 10
# google/ddpm-cifar10-32's UNet2DModel config (its config.json, the architecture keys).
UNET_CONFIG = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                   layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                         "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                   act_fn="silu", center_input_sample=False, downsample_padding=0, flip_sin_to_cos=False,
                   freq_shift=1, mid_block_scale_factor=1, norm_eps=1e-6, norm_num_groups=32,
                   time_embedding_type="positional")
# Its scheduler_config.json.
SCHEDULER_CONFIG = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                    "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
                    "variance_type": "fixed_large"}
EXPECTED_PARAMS = 35_746_307
SOLVERS = ("ddim", "dpmpp_2m")
# Operator shapes timed alone (channels, size): the network's main convolutions, at 32x32x128 and 16x16x256.
CONVOLUTIONS = {"conv3x3_32x32x128": (128, 32), "conv3x3_16x16x256": (256, 16)}


def peak_rss_mib() -> float:
    """This process's peak resident set size (getrusage maxrss, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats: int) -> list[float]:
    """The seconds of each of `repeats` calls of fn() (fn waits for its own result)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def diffusers_timesteps(solver: str, num_train: int = 1000, num_steps: int = NFE) -> list[int]:
    """The schedulers' timesteps (DDIMScheduler "leading", DPMSolverMultistepScheduler "linspace"), as ints; both
    finish at alpha_prod 1 (sigma 0)."""
    if solver == "ddim":
        ratio = num_train // num_steps
        return [i * ratio for i in range(num_steps)][::-1]
    return [round(i * (num_train - 1) / num_steps) for i in range(num_steps + 1)][::-1][:-1]


def save_model(model_dir: str, seed: int = 0) -> dict:
    """Write a random-weight `UNet2DModel` of UNET_CONFIG (diffusers' default initialisation, torch seed `seed`) in
    the diffusers pipeline layout (unet/ + scheduler/) to model_dir. Returns {"num_params", "model_dir"}."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG).eval()
    unet.save_pretrained(os.path.join(model_dir, "unet"), safe_serialization=True)
    os.makedirs(os.path.join(model_dir, "scheduler"), exist_ok=True)
    with open(os.path.join(model_dir, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)
    return {"num_params": sum(p.numel() for p in unet.parameters()), "model_dir": model_dir}


def measure(spec: dict) -> dict:
    """diffusers' numbers at spec["batch"]: the network call (`unet(x, t)` under no_grad), with spec["loops"] the
    NFE-10 DDIMPipeline and DDPMPipeline-with-DPM-Solver++(2M) loops, with spec["ops"] the operator timings, the
    convolution profile and the network on one thread; and the peak RSS."""
    import diffusers
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler, UNet2DModel

    diffusers.utils.logging.set_verbosity_error()
    unet = UNet2DModel.from_pretrained(os.path.join(spec["model_dir"], "unet")).eval()
    with open(os.path.join(spec["model_dir"], "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    b, repeats = spec["batch"], spec["repeats"]
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((b, unet.config.in_channels, size, size), generator=gen)
    t = torch.tensor(500)
    record = {"framework": "torch", "batch": b, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "num_params": sum(p.numel() for p in unet.parameters())}

    def net():
        with torch.no_grad():
            unet(x, t).sample

    if spec["warmup"]:
        record["network_first_s"] = timed(net, 1)[0]
    record["network_s"] = timed(net, repeats)
    if spec["loops"]:
        pipes = {"ddim": (DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config, clip_sample=False)),
                          dict(eta=0.0)),
                 "dpmpp_2m": (DDPMPipeline(unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(
                     config, algorithm_type="dpmsolver++", solver_order=2)), {})}
        record["sampler_s"] = {}
        for name, (pipe, extra) in pipes.items():
            pipe.set_progress_bar_config(disable=True)
            pipe.scheduler.set_timesteps(NFE)
            assert pipe.scheduler.timesteps.tolist() == diffusers_timesteps(name), pipe.scheduler.timesteps

            def run(pipe=pipe, extra=extra):
                pipe(batch_size=b, generator=torch.Generator().manual_seed(1), num_inference_steps=NFE,
                     output_type="np", **extra)

            record["sampler_s"][name] = timed(run, repeats)
    if spec["ops"]:
        record["ops_s"] = operators(b, repeats)
        record["convolutions"] = convolutions(unet, x, t, repeats)
        # The network on one thread too (a shared CPU can make torch's OpenMP threads wait on each other).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        record["network_1thread_s"] = timed(net, 1)  # one call (the network is warm)
        torch.set_num_threads(threads)
    record["peak_rss_mib"] = peak_rss_mib()
    return record


def convolutions(unet, x, t, repeats: int) -> dict:
    """The network's convolutions alone: every distinct Conv2d call of one forward pass (recorded by hooks), timed
    on its own (one warm-up, then the minimum of `repeats`) and weighted by how often the pass makes it."""
    import torch
    import torch.nn.functional as F

    calls = collections.Counter()
    modules = {}

    def hook(module, inputs):
        key = (tuple(inputs[0].shape), module.in_channels, module.out_channels, module.kernel_size, module.stride,
               module.padding, module.groups)
        calls[key] += 1
        modules[key] = module

    handles = [mod.register_forward_pre_hook(hook) for mod in unet.modules() if isinstance(mod, torch.nn.Conv2d)]
    with torch.no_grad():
        unet(x, t)
    for h in handles:
        h.remove()
    total, rows = 0.0, []
    with torch.no_grad():
        for key, count in calls.items():
            mod = modules[key]
            h = torch.randn(key[0])

            def conv(mod=mod, h=h):
                F.conv2d(h, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)

            conv()
            seconds = min(timed(conv, repeats))
            total += count * seconds
            rows.append({"input": list(key[0]), "kernel": [key[2], key[1]] + list(key[3]), "count": count,
                         "seconds": seconds})
    return {"total_s": total, "num_calls": sum(calls.values()), "distinct": rows}


def operators(b: int, repeats: int) -> dict:
    """The minimum seconds of the network's main operations alone at batch b: CONVOLUTIONS, GroupNorm(32) at
    32x32x128 and the single-head attention core at 16x16x256."""
    import torch

    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        for name, (c, size) in CONVOLUTIONS.items():
            conv = torch.nn.Conv2d(c, c, 3, padding=1)
            h = torch.randn(b, c, size, size)
            conv(h)
            out[name] = min(timed(lambda: conv(h), repeats))
        norm = torch.nn.GroupNorm(32, 128, eps=1e-6)
        h = torch.randn(b, 128, 32, 32)
        norm(h)
        out["groupnorm_32x32x128"] = min(timed(lambda: norm(h), repeats))
        q, k, v = (torch.randn(b, 256, 256) for _ in range(3))  # (B, positions, channels), one head

        def attention():
            w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / 16.0, dim=-1)
            return torch.bmm(w, v)

        attention()
        out["attention_16x16x256"] = min(timed(attention, repeats))
    return out


def main(argv=None) -> None:
    """`python pretrained_benchmark_torch.py SPEC.json`: save or measure, as the spec says; the record to its
    "result" file."""
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    record = save_model(spec["model_dir"]) if spec["mode"] == "save" else measure(spec)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
