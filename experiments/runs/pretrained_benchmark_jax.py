"""Our side of `experiments.runs.pretrained_benchmark`: the numbers of one worker process on the loaded checkpoint.

A worker runs `python -m fastsamplers.experiments.runs.pretrained_benchmark_jax SPEC.json` (the spec of
`pretrained_benchmark_torch`, plus "memory": the XLA memory plan of the sampler), one process per batch so that its
peak resident set size is its own. `measure(spec)` is also called directly (tests).

  - network: `jax.jit(m.apply)` compiled ahead of time (the compile is timed on its own), then an optional warm-up
    call and `repeats` timed calls; XLA's cost analysis gives its FLOPs per call.
  - loops: NFE 10 of DDIM and DPM-Solver++(2M) on the diffusers schedulers' own grids (t = (n + 1) / 1000 for
    timestep n, then 0), from jax.random noise to [0, 1] numpy images: `samplers.sample(m.model_fn, ...)`, one
    compiled lax.scan; its first call compiles and is reported apart.
  - memory: the memory XLA plans for the whole compiled DDIM sampler at this batch (an ahead-of-time compile, no run).
  - ops: the operators of `pretrained_benchmark_torch.operators` (ours also in NCHW / OIHW layout) and the network's
    convolutions: every distinct conv_general_dilated of its jaxpr, timed alone and weighted by its count.
"""

from __future__ import annotations

import collections
import json
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import samplers
from fastsamplers.experiments.runs.pretrained_benchmark_torch import (CONVOLUTIONS, SOLVERS,
                                                                     diffusers_timesteps, peak_rss_mib, timed)
from fastsamplers.models import pretrained


def grids(num_train: int = 1000) -> dict:
    """{solver: ts}: the diffusers schedulers' timesteps n as t = (n + 1) / num_train, then the final step to 0."""
    return {s: np.concatenate([(np.asarray(diffusers_timesteps(s, num_train), np.float64) + 1.0) / num_train, [0.0]])
            for s in SOLVERS}


def measure(spec: dict) -> dict:
    """Our numbers at spec["batch"] on the checkpoint in spec["model_dir"] (module docstring)."""
    m = pretrained.load(spec["model_dir"])
    b, repeats = spec["batch"], spec["repeats"]
    record = {"framework": "jax", "batch": b, "jax": jax.__version__, "backend": jax.default_backend(),
              "num_params": int(sum(np.size(p) for p in jax.tree.leaves(m.params)))}
    shape = (b,) + tuple(m.image_shape)
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    t = jnp.float32(500.0)
    start = time.perf_counter()
    apply = jax.jit(m.apply).lower(m.params, x, t).compile()  # ahead of time: the compile is timed on its own
    record["network_compile_s"] = time.perf_counter() - start
    cost = apply.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    record["network_flops"] = float(cost.get("flops", float("nan"))) if cost else float("nan")

    def net():
        apply(m.params, x, t).block_until_ready()

    if spec["warmup"]:
        record["network_first_s"] = timed(net, 1)[0]
    record["network_s"] = timed(net, repeats)

    noise = jax.jit(lambda key: jax.random.normal(key, shape, jnp.float32))
    ts = grids()
    if spec["loops"]:
        record["sampler_s"], record["sampler_first_s"], record["sampler_compile_s"] = {}, {}, {}
        for name in SOLVERS:
            def run(name=name):
                out, _ = samplers.sample(m.model_fn, name, m.process, noise(jax.random.PRNGKey(1)), ts[name],
                                         prediction=m.prediction, args=m.params)
                np.asarray(jnp.clip(out / 2 + 0.5, 0.0, 1.0))

            record["sampler_first_s"][name] = timed(run, 1)[0]
            record["sampler_s"][name] = timed(run, repeats)
            record["sampler_compile_s"][name] = record["sampler_first_s"][name] - min(record["sampler_s"][name])
    if spec.get("memory"):
        fn = jax.jit(lambda x_init, params: samplers.sample(m.model_fn, "ddim", m.process, x_init, ts["ddim"],
                                                            prediction=m.prediction, args=params,
                                                            check_finite=False)[0])
        stats = fn.lower(jax.ShapeDtypeStruct(x.shape, x.dtype), m.params).compile().memory_analysis()
        if stats is not None:
            record["sampler_xla_memory_mib"] = {
                k: getattr(stats, f"{k}_size_in_bytes") / 2**20 for k in ("argument", "output", "temp")}
    if spec["ops"]:
        record["ops_s"] = operators(b, repeats)
        record["convolutions"] = convolutions(m, x, t, repeats)
    record["peak_rss_mib"] = peak_rss_mib()
    return record


def convolutions(m, x, t, repeats: int) -> dict:
    """The network's convolutions alone (as `pretrained_benchmark_torch.convolutions`): every distinct
    conv_general_dilated of the network's jaxpr, compiled and timed on its own and weighted by its count."""
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


def operators(b: int, repeats: int) -> dict:
    """The operators of `pretrained_benchmark_torch.operators` in jax at batch b (NHWC; the 32x32 convolution also
    in torch's NCHW / OIHW layout), the minimum seconds of `repeats` compiled calls after one warm-up."""
    key = jax.random.PRNGKey(0)
    out = {}

    def bench(name, fn, *inputs):
        fn = jax.jit(fn)
        fn(*inputs).block_until_ready()
        out[name] = min(timed(lambda: fn(*inputs).block_until_ready(), repeats))

    for name, (c, size) in CONVOLUTIONS.items():
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


def main(argv=None) -> None:
    """`python -m fastsamplers.experiments.runs.pretrained_benchmark_jax SPEC.json`: the record to spec["result"]."""
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    record = measure(spec)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
