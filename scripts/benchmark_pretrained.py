r"""Benchmark a loaded diffusers checkpoint against diffusers itself, on this machine's CPU: network call and sampler.

Command (from the repository root; the torch side runs in a separate environment with torch and diffusers):

    python scripts/benchmark_pretrained.py --torch-python /work/venv_ref/bin/python \
        --json experiments/results/pretrained_benchmark_cpu.json

Smoke test (small batches, a few seconds of compute per worker):

    python scripts/benchmark_pretrained.py --torch-python /work/venv_ref/bin/python --batches 2 4 \
        --sampler-batch 2 --json /tmp/pretrained_benchmark_smoke.json

Only the profile (operators and the convolution share, at the first of --batches), into an existing record:

    python scripts/benchmark_pretrained.py --profile-only --batches 64 \
        --json experiments/results/pretrained_benchmark_cpu.json

What it does:

1. The torch side writes a random-weight `UNet2DModel` with google/ddpm-cifar10-32's architecture (sample_size 32,
   block_out_channels (128, 256, 256, 256), layers_per_block 2, attention at 16x16, 35.7M parameters; diffusers'
   default initialisation, seed 0) in the diffusers pipeline layout (unet/ + scheduler/, the checkpoint's
   DDPMScheduler config) to --model-dir (default: a temporary folder), once. Both sides read those files:
   `models.pretrained.load` here, `UNet2DModel.from_pretrained` there.
2. Workers, one process each and one at a time (so that each one's peak resident set size, getrusage's maxrss, is its
   own): for each framework, one worker per batch in --batches and one at --sampler-batch.
   - network: the time of one call, unet(x, t) (torch, no_grad) and jax.jit(m.apply) (ours, compiled ahead of
     time: the compile is timed on its own): one warm-up call, then --repeats timed calls; the minimum is reported.
     At the largest batch, --large-repeats (default 1) calls and no warm-up: a call there takes about a minute on
     two cores, and a first call's extra cost (allocation, primitive set-up) is small against it.
   - sampler (at --sampler-batch only, as the whole NFE-10 loop costs 10 network calls): NFE 10 of DDIM (eta 0, on
     DDIMScheduler's "leading" timesteps 900 ... 0 and its final step to alpha_prod 1) and of DPM-Solver++(2M)
     (DPMSolverMultistepScheduler, dpmsolver++, order 2, its defaults), timed from the initial noise to the
     [0, 1] numpy images: diffusers' DDIMPipeline / DDPMPipeline (with the DPM scheduler) against ours: noise from
     jax.random, `samplers.sample(m.model_fn, solver, m.process, x, ts, ...)` (one compiled lax.scan; its first
     call compiles and is reported separately) and the same post-processing. The grids are the schedulers' own
     (t = (n + 1) / 1000 for timestep n; tests/test_pretrained_sampling.py checks the two loops agree to 1e-5).
   - at the batches in --batches, the whole sampler time is extrapolated: NFE x (network call at that batch) x
     (the loop's measured overhead factor at --sampler-batch, sampler time / (NFE x network call), at least 1); the
     table marks these "extrap.". Pass --sampler-batch 64 (or more) to measure a loop at full size where time allows.
   - ours also reports XLA's cost analysis of the network (FLOPs per call, so achieved GFLOP/s) and, at the largest
     batch, the memory XLA plans for the whole compiled sampler (arguments + temporaries: an ahead-of-time compile,
     not a run).
   - where the time goes (at the first of --batches; skipped with --no-ops): the network's main operations alone
     in both frameworks (conv3x3 at 32x32x128 and 16x16x256, ours also in NCHW/OIHW layout, GroupNorm(32) at
     32x32x128, the single-head attention core at 16x16x256), and the network's convolutions: every distinct
     convolution of one forward pass (torch: Conv2d pre-hooks; ours: conv_general_dilated in the jaxpr) timed
     alone and weighted by its count, so the network splits into convolutions and the rest. torch's network is
     also timed on one thread there. `--profile-only` runs just this part and puts it into an existing --json.
   The torch workers run with OMP_WAIT_POLICY=PASSIVE (--torch-omp-wait-policy; '' keeps the environment's): on a
   CPU shared with other jobs, OpenMP's spinning threads slowed torch down up to 4x at small batches here, which
   would flatter ours.
3. Output: a markdown table (printed) and the JSON record (--json, written with core.write_json): every worker's
   numbers, the ratios (diffusers time / ours: > 1 means ours is faster), the machine (cores, threads, load
   averages before and after: the CPU may be shared), versions and the exact command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def peak_rss_mib() -> float:
    """This process's peak resident set size (getrusage maxrss, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats):
    """(seconds of each of `repeats` calls of fn())."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def diffusers_timesteps(solver: str, num_train: int = 1000, num_steps: int = NFE):
    """The schedulers' timesteps (DDIMScheduler "leading", DPMSolverMultistepScheduler "linspace"), as ints; both
    finish at alpha_prod 1 (sigma 0). numpy-free, so that both workers share it."""
    if solver == "ddim":
        ratio = num_train // num_steps
        return [i * ratio for i in range(num_steps)][::-1]
    return [round(i * (num_train - 1) / num_steps) for i in range(num_steps + 1)][::-1][:-1]


# --- the torch side (runs in the torch environment: no project imports) -------------------------------------------

def torch_save(model_dir: str, seed: int = 0) -> dict:
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG).eval()
    unet.save_pretrained(os.path.join(model_dir, "unet"), safe_serialization=True)
    os.makedirs(os.path.join(model_dir, "scheduler"), exist_ok=True)
    with open(os.path.join(model_dir, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)
    return {"num_params": sum(p.numel() for p in unet.parameters()), "model_dir": model_dir}


def torch_worker(args) -> dict:
    import diffusers
    import torch
    from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler, UNet2DModel)

    diffusers.utils.logging.set_verbosity_error()
    unet = UNet2DModel.from_pretrained(os.path.join(args.model_dir, "unet")).eval()
    with open(os.path.join(args.model_dir, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    b = args.batch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((b, 3, 32, 32), generator=gen)
    t = torch.tensor(500)
    record = {"framework": "torch", "batch": b, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "num_params": sum(p.numel() for p in unet.parameters())}

    def net():
        with torch.no_grad():
            unet(x, t).sample

    if not args.no_warmup:
        record["network_first_s"] = timed(net, 1)[0]
    record["network_s"] = timed(net, args.repeats)
    if args.loops:
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

            record["sampler_s"][name] = timed(run, args.repeats)
    if args.ops:
        record["ops_s"] = torch_ops(b, args.repeats)
        record["convolutions"] = torch_convolutions(unet, x, t, args.repeats)
        # The network on one thread too (a shared CPU can make torch's OpenMP threads wait on each other).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        record["network_1thread_s"] = timed(net, 1)  # one call (the network is warm)
        torch.set_num_threads(threads)
    record["peak_rss_mib"] = peak_rss_mib()
    return record


def torch_convolutions(unet, x, t, repeats):
    """The network's convolutions alone: every distinct Conv2d call of one forward pass (recorded by hooks), timed
    on its own (one warm-up, then the minimum of `repeats`) and weighted by how often the pass makes it."""
    import collections

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


def torch_ops(b, repeats):
    import torch

    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        for name, (c, size) in {"conv3x3_32x32x128": (128, 32), "conv3x3_16x16x256": (256, 16)}.items():
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


# --- our side (the project environment) ---------------------------------------------------------------------------

def jax_worker(args) -> dict:
    sys.path.insert(0, ROOT)
    import cli  # noqa: F401  (quiet XLA logs)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fastsamplers.models import pretrained
    from fastsamplers import samplers

    m = pretrained.load(args.model_dir)
    b = args.batch
    record = {"framework": "jax", "batch": b, "jax": jax.__version__, "backend": jax.default_backend(),
              "num_params": int(sum(np.size(p) for p in jax.tree.leaves(m.params)))}
    x = jax.random.normal(jax.random.PRNGKey(0), (b, 32, 32, 3), jnp.float32)
    t = jnp.float32(500.0)
    start = time.perf_counter()
    apply = jax.jit(m.apply).lower(m.params, x, t).compile()  # ahead of time: the compile is timed on its own
    record["network_compile_s"] = time.perf_counter() - start
    cost = apply.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    record["network_flops"] = float(cost.get("flops", float("nan"))) if cost else float("nan")

    def net():
        apply(m.params, x, t).block_until_ready()

    if not args.no_warmup:
        record["network_first_s"] = timed(net, 1)[0]
    record["network_s"] = timed(net, args.repeats)

    noise = jax.jit(lambda key: jax.random.normal(key, (b, 32, 32, 3), jnp.float32))
    grids = {s: np.concatenate([(np.asarray(diffusers_timesteps(s), np.float64) + 1.0) / 1000.0, [0.0]])
             for s in SOLVERS}
    if args.loops:
        record["sampler_s"], record["sampler_first_s"] = {}, {}
        for name in SOLVERS:
            def run(name=name):
                x_init = noise(jax.random.PRNGKey(1))
                out, _ = samplers.sample(m.model_fn, name, m.process, x_init, grids[name], prediction=m.prediction,
                                         args=m.params)
                np.asarray(jnp.clip(out / 2 + 0.5, 0.0, 1.0))

            record["sampler_first_s"][name] = timed(run, 1)[0]
            record["sampler_s"][name] = timed(run, args.repeats)
            record.setdefault("sampler_compile_s", {})[name] = (record["sampler_first_s"][name]
                                                                 - min(record["sampler_s"][name]))
    if args.memory_analysis:
        # The memory XLA plans for the whole DDIM sampler at this batch (compiled ahead of time, not run).
        fn = jax.jit(lambda x_init, params: samplers.sample(m.model_fn, "ddim", m.process, x_init, grids["ddim"],
                                                            prediction=m.prediction, args=params,
                                                            check_finite=False)[0])
        stats = fn.lower(jax.ShapeDtypeStruct(x.shape, x.dtype), m.params).compile().memory_analysis()
        if stats is not None:
            record["sampler_xla_memory_mib"] = {
                k: getattr(stats, f"{k}_size_in_bytes") / 2**20 for k in ("argument", "output", "temp")}
    if args.ops:
        record["ops_s"] = jax_ops(b, args.repeats)
        record["convolutions"] = jax_convolutions(m, x, t, args.repeats)
    record["peak_rss_mib"] = peak_rss_mib()
    return record


def jax_convolutions(m, x, t, repeats):
    """The network's convolutions alone (as `torch_convolutions`): every distinct conv_general_dilated of the
    network's jaxpr, compiled and timed on its own and weighted by its count."""
    import collections

    import jax

    calls, prims = collections.Counter(), {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                key = (tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
                       tuple(sorted(eqn.params.items())))
                calls[key] += 1
                prims[key] = eqn.primitive
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(m.apply)(m.params, x, t).jaxpr)
    total, rows = 0.0, []
    key0 = jax.random.PRNGKey(0)
    for key, count in calls.items():
        lhs_shape, rhs_shape, params = key
        fn = jax.jit(lambda lhs, rhs, prim=prims[key], params=dict(params): prim.bind(lhs, rhs, **params))
        lhs, rhs = jax.random.normal(key0, lhs_shape), jax.random.normal(key0, rhs_shape)
        fn(lhs, rhs).block_until_ready()
        seconds = min(timed(lambda: fn(lhs, rhs).block_until_ready(), repeats))
        total += count * seconds
        rows.append({"input": list(lhs_shape), "kernel": list(rhs_shape), "count": count, "seconds": seconds})
    return {"total_s": total, "num_calls": sum(calls.values()), "distinct": rows}


def jax_ops(b, repeats):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    out = {}

    def bench(name, fn, *inputs):
        fn = jax.jit(fn)
        fn(*inputs).block_until_ready()
        out[name] = min(timed(lambda: fn(*inputs).block_until_ready(), repeats))

    for name, (c, size) in {"conv3x3_32x32x128": (128, 32), "conv3x3_16x16x256": (256, 16)}.items():
        h = jax.random.normal(key, (b, size, size, c))
        w = jax.random.normal(key, (3, 3, c, c)) / (3 * c**0.5)
        bench(name, lambda h, w: jax.lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)),
                                                              dimension_numbers=("NHWC", "HWIO", "NHWC")), h, w)
        if size == 32:  # the same convolution in torch's layout
            bench(name + "_nchw", lambda h, w: jax.lax.conv_general_dilated(
                h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")),
                jnp.transpose(h, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1)))
    norm = nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False)
    h = jax.random.normal(key, (b, 32, 32, 128))
    variables = norm.init(key, h)
    bench("groupnorm_32x32x128", norm.apply, variables, h)
    q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (b, 256, 256)) for i in range(3))

    def attention(q, k, v):
        w = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / 16.0, axis=-1)
        return jnp.einsum("bqk,bkc->bqc", w, v)

    bench("attention_16x16x256", attention, q, k, v)
    return out


# --- the orchestrator ---------------------------------------------------------------------------------------------

def call_worker(python: str, mode: str, args, batch: int, loops: bool, ops: bool, memory: bool, workdir: str):
    result = os.path.join(workdir, f"{mode}_{batch}_{int(loops)}.json")
    large = batch == max(args.batches) and not loops
    cmd = [python, os.path.abspath(__file__), "--worker", mode, "--model-dir", args.model_dir, "--batch", str(batch),
           "--repeats", str(args.large_repeats if large else args.repeats), "--result", result]
    cmd += ["--no-warmup"] if large and args.large_repeats == 1 else []
    cmd += ["--loops"] if loops else []
    cmd += ["--ops"] if ops else []
    cmd += ["--memory-analysis"] if memory else []
    env = dict(os.environ)
    if mode == "torch" and args.torch_omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.torch_omp_wait_policy
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({shlex.join(cmd)}):\n{proc.stderr[-4000:]}")
    with open(result, encoding="utf-8") as f:
        record = json.load(f)
    record["load_average_after"] = load_average()
    record["worker_wall_s"] = time.perf_counter() - start
    print(f"  {mode} batch {batch}{' (loops)' if loops else ''}: network {min(record['network_s']):.3f} s/call, "
          f"peak RSS {record['peak_rss_mib']:.0f} MiB, worker {record['worker_wall_s']:.0f} s", flush=True)
    return record


def fmt(seconds):
    return "–" if seconds is None else (f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms")


def ratio(theirs, ours):
    return None if theirs is None or ours is None else theirs / ours


def summarize(records: dict, args) -> tuple[list, dict]:
    """(table rows, ratios) from {(framework, batch, loops): record}."""
    rows, ratios = [], {}
    small = args.sampler_batch
    loop = {fw: records[(fw, small, True)] for fw in ("jax", "torch")}
    measured = {fw: {s: min(loop[fw]["sampler_s"][s]) / (NFE * min(loop[fw]["network_s"])) for s in SOLVERS}
                for fw in ("jax", "torch")}
    # A loop cannot be faster than its network calls: a factor under 1 is timing noise, so it is taken as 1.
    overhead = {fw: {s: max(1.0, v) for s, v in d.items()} for fw, d in measured.items()}

    def add(label, ours, theirs, note=""):
        r = ratio(theirs, ours)
        rows.append([label, fmt(ours), fmt(theirs), "–" if r is None else f"{r:.2f}x", note])
        return r

    for key in [(small, True)] + [(b, False) for b in args.batches]:
        b = key[0]
        j, t = records[("jax",) + key], records[("torch",) + key]
        ratios[f"network_b{b}"] = add(f"network call, batch {b}", min(j["network_s"]), min(t["network_s"]))
        if "network_1thread_s" in t:
            ratios[f"network_b{b}_torch_1thread"] = add(f"network call, batch {b}", min(j["network_s"]),
                                                        min(t["network_1thread_s"]), "diffusers on 1 thread")
    for s in SOLVERS:
        label = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)"}[s]
        ratios[f"{s}_nfe{NFE}_b{small}"] = add(f"{label} NFE {NFE}, batch {small}", min(loop["jax"]["sampler_s"][s]),
                                               min(loop["torch"]["sampler_s"][s]), "measured")
        for b in args.batches:
            ours, theirs = (NFE * min(records[(fw, b, False)]["network_s"]) * overhead[fw][s] for fw in ("jax",
                                                                                                    "torch"))
            ratios[f"{s}_nfe{NFE}_b{b}"] = add(f"{label} NFE {NFE}, batch {b}", ours, theirs,
                                               f"extrap. (loop overhead x{overhead['jax'][s]:.3f} / "
                                               f"x{overhead['torch'][s]:.3f})")
    for s in SOLVERS:
        rows.append([f"compile, {s} sampler, batch {small} (ours)", fmt(loop["jax"]["sampler_compile_s"][s]), "–",
                     "–", "first call minus a steady one"])
    for b in args.batches:
        rows.append([f"compile, network, batch {b} (ours)", fmt(records[("jax", b, False)]["network_compile_s"]), "–",
                     "–", "jit(...).lower(...).compile()"])
    big = max(args.batches)
    j, t = records[("jax", big, False)], records[("torch", big, False)]
    rows.append([f"peak RSS MiB, batch {big} (network)", f"{j['peak_rss_mib']:.0f}", f"{t['peak_rss_mib']:.0f}",
                 f"{t['peak_rss_mib'] / j['peak_rss_mib']:.2f}x", "getrusage maxrss of each worker"])
    ratios[f"peak_rss_b{big}"] = t["peak_rss_mib"] / j["peak_rss_mib"]
    if "sampler_xla_memory_mib" in j:
        mem = j["sampler_xla_memory_mib"]
        rows.append([f"XLA plan MiB, DDIM sampler, batch {big}", f"{mem['argument'] + mem['temp']:.0f}", "–", "–",
                     f"arguments {mem['argument']:.0f} + temporaries {mem['temp']:.0f}"])
    ratios["loop_overhead_measured"] = measured
    ratios["loop_overhead_used"] = overhead
    return rows, ratios


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/work/venv_ref/bin/python",
                        help="a python with torch and diffusers (not this project's packages)")
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
    parser.add_argument("--json", default=os.path.join(ROOT, "experiments", "results",
                                                       "pretrained_benchmark_cpu.json"))
    # worker modes (called by the orchestrator)
    parser.add_argument("--worker", choices=("torch-save", "torch", "jax"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-analysis", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        record = {"torch-save": lambda: torch_save(args.model_dir), "torch": lambda: torch_worker(args),
                  "jax": lambda: jax_worker(args)}[args.worker]()
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return

    sys.path.insert(0, ROOT)
    from fastsamplers import core
    from fastsamplers.experiments.report.tables import render_table

    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:])
    load_before = load_average()
    start = time.perf_counter()
    if args.profile_only:
        return profile_only(args, command, core, render_table)
    with tempfile.TemporaryDirectory() as workdir:
        if args.model_dir is None:
            args.model_dir = os.path.join(workdir, "ddpm-cifar10-32-random")
        print(f"writing the random model to {args.model_dir}", flush=True)
        saved = call_worker_save(args, workdir)
        if saved["num_params"] != EXPECTED_PARAMS:
            raise SystemExit(f"the model has {saved['num_params']} parameters, expected {EXPECTED_PARAMS}")
        records = {}
        plan = [(args.sampler_batch, True, False, False)]
        plan += [(b, False, not args.no_ops and i == 0, b == max(args.batches)) for i, b in enumerate(args.batches)]
        for batch, loops, ops, memory in plan:
            records[("jax", batch, loops)] = call_worker(sys.executable, "jax", args, batch, loops, ops, memory,
                                                         workdir)
            records[("torch", batch, loops)] = call_worker(args.torch_python, "torch", args, batch, loops, ops,
                                                           False, workdir)
    load_after = load_average()
    rows, ratios = summarize(records, args)
    table = render_table(["", "ours (s)", "diffusers (s)", "speed-up (diffusers / ours)", "note"], rows)
    print(table)
    first = args.batches[0]
    profile = None if args.no_ops else operator_report(records[("jax", first, False)],
                                                       records[("torch", first, False)], render_table)
    flops = {b: records[("jax", b, False)].get("network_flops") for b in args.batches}
    gflops = {f"{fw}_b{b}": flops[b] / min(records[(fw, b, False)]["network_s"]) / 1e9
              for b in args.batches for fw in ("jax", "torch") if flops[b]}
    print(f"\nnetwork FLOPs per image (XLA cost analysis): {flops[first] / first / 1e9:.1f} G; achieved "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gflops.items()))
    j = records[("jax", first, False)]
    t = records[("torch", first, False)]
    record = {
        "command": command, "nfe": NFE, "batches": args.batches, "sampler_batch": args.sampler_batch,
        "repeats": args.repeats, "model": {"architecture": "google/ddpm-cifar10-32 (random weights, seed 0)",
                                           "num_params": saved["num_params"], "unet_config": UNET_CONFIG,
                                           "scheduler_config": SCHEDULER_CONFIG},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after,
                    "torch_threads": t["threads"], "torch_omp_wait_policy": t["omp_wait_policy"],
                    "jax_backend": j["backend"]},
        "versions": {"jax": j["jax"], "torch": t["torch"], "diffusers": t["diffusers"]},
        "table": rows, "ratios": ratios, "profile": profile, "network_flops": flops, "achieved_gflops": gflops,
        "workers": [dict(r, loops=k[2]) for k, r in records.items()], "total_wall_s": time.perf_counter() - start,
        "notes": [
            "ratios are diffusers time / ours: > 1 means ours is faster; minimum over the repeats",
            f"the NFE-{NFE} samplers are measured at batch {args.sampler_batch}; at the other batches they are "
            "extrapolated: NFE x network call x the loop overhead factor measured at the small batch (sampler time / "
            "(NFE x network call), taken as 1 where noise makes it smaller)",
            "peak RSS is each worker process's getrusage maxrss (the network at that batch, plus compile for ours)",
        ],
    }
    core.write_json(args.json, record)
    print(f"\nwrote {args.json} ({record['total_wall_s']:.0f} s; load average before {load_before}, after "
          f"{load_after})")


def operator_report(j, t, render_table) -> dict:
    """The operator timings and the convolution share of the network of a jax and a torch worker (run with --ops),
    printed, as a dict."""
    b = j["batch"]
    ops = {k: {"ours_s": j["ops_s"][k], "diffusers_s": t["ops_s"].get(k), "speed_up": ratio(t["ops_s"].get(k),
                                                                                              j["ops_s"][k])}
           for k in j["ops_s"]}
    rows = [[k, fmt(v["ours_s"]), fmt(v["diffusers_s"]), "–" if v["speed_up"] is None else f"{v['speed_up']:.2f}x"]
            for k, v in ops.items()]
    net = {"ours_s": min(j["network_s"]), "diffusers_s": min(t["network_s"])}
    conv = {"ours_s": j["convolutions"]["total_s"], "diffusers_s": t["convolutions"]["total_s"]}
    rest = {k: net[k] - conv[k] for k in net}
    for label, v in ((f"network call ({j['convolutions']['num_calls']} convolutions)", net),
                     ("its convolutions, each timed alone x its count", conv),
                     ("the rest (network - convolutions)", rest)):
        rows.append([label, fmt(v["ours_s"]), fmt(v["diffusers_s"]), f"{ratio(v['diffusers_s'], v['ours_s']):.2f}x"])
    print(f"\nwhere the time goes, batch {b}:")
    print(render_table(["", "ours (s)", "diffusers (s)", "speed-up"], rows))
    return {"batch": b, "operators": ops, "network": net, "convolutions": conv, "rest": rest,
            "convolutions_distinct": {"ours": j["convolutions"]["distinct"],
                                      "diffusers": t["convolutions"]["distinct"]}}


def profile_only(args, command, core, render_table):
    """--profile-only: the --ops workers at the first of --batches; the result replaces the 'profile' entry of the
    record at --json (or starts one)."""
    batch = args.batches[0]
    with tempfile.TemporaryDirectory() as workdir:
        if args.model_dir is None:
            args.model_dir = os.path.join(workdir, "ddpm-cifar10-32-random")
        call_worker_save(args, workdir)
        args.batches = [batch, batch + 1]  # not the largest batch: warm-up and --repeats apply
        j = call_worker(sys.executable, "jax", args, batch, False, True, False, workdir)
        t = call_worker(args.torch_python, "torch", args, batch, False, True, False, workdir)
    profile = operator_report(j, t, render_table)
    profile.update(command=command, load_average_after=load_average(), workers=[j, t])
    record = {}
    if os.path.isfile(args.json):
        with open(args.json, encoding="utf-8") as f:
            record = json.load(f)
    record["profile"] = profile
    core.write_json(args.json, record)
    print(f"\nwrote the profile into {args.json}")


def call_worker_save(args, workdir):
    result = os.path.join(workdir, "save.json")
    cmd = [args.torch_python, os.path.abspath(__file__), "--worker", "torch-save", "--model-dir", args.model_dir,
           "--result", result]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({shlex.join(cmd)}):\n{proc.stderr[-4000:]}")
    with open(result, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    main()
