"""Experiments on a trained causal flow (TarFlow): CRM / IGM per block with a recommended plan
(`scripts/causal_metrics.py`), and the comparison of inversions (`scripts/benchmark_causal.py`).

The benchmark samples the same latents z with every plan and reports, per plan: the dependent network passes
(per block and in total, the sum of the Jacobi iterations of the segments; sequential is T per block), the wall
time of the whole sample set (throughput: large batches) and of one small batch (latency), max |x - x_sequential|
of the inverted samples in [-1, 1] units, and the FD-digits of the final (denoised) samples. The first plan is the
reference ("sequential").
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.experiments.metrics import fd_digits
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train.checkpoints import restore_run
from fastsamplers.models.tarflow import denoise
from fastsamplers.samplers import causal, causal_metrics


def load_flow(train_spec, workdir, use_ema=True):
    """(config, flow, params, dataset, step) of a TarFlow training run's latest checkpoint."""
    config, experiment, params, step = restore_run(train_spec, workdir, use_ema)
    if not experiment.is_flow:
        raise ValueError(f"{train_spec} does not train a normalizing flow (model {config.model.name!r})")
    return config, experiment.net, params, experiment.datasets[0], step


def data_metrics(flow, params, dataset, num_examples=500, seed=0):
    """`causal_metrics.block_metrics` on `num_examples` data images (with their labels for a conditional flow)."""
    n = min(num_examples, dataset.num_examples)
    index = jax.random.permutation(jax.random.PRNGKey(seed), dataset.num_examples)[:n]
    x = dataset.data[index]
    y = dataset.labels[index] if flow.num_classes and dataset.labels is not None else None
    return causal_metrics.block_metrics(flow, params, x, y)


def _labels(flow, n):
    return jnp.arange(n, dtype=jnp.int32) % flow.num_classes if flow.num_classes else None


def _chunks(n, batch_size):
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def benchmark(flow, params, plans, num_samples=10000, batch_size=2500, latency_batch=1, seed=0, guidance=0.0,
              annealed_guidance=False, clamp=None, denoise_sigma=None, fd=True, repeats=3, log=print):
    """Rows of the comparison of `plans` ({name: plan}, the first one the reference); see the module docstring."""
    key = jax.random.PRNGKey(seed)
    shape = (flow.image_size, flow.image_size, flow.channels)
    z_all = jax.random.normal(key, (num_samples, *shape), jnp.float32)
    y_all = _labels(flow, num_samples)
    # The parameters are an argument of every compiled program (traced, never baked in as constants); partial binds
    # them at the call.
    denoiser = functools.partial(jax.jit(lambda params, x, y: denoise(flow, params, x, denoise_sigma, y)),
                                 params) if denoise_sigma else None
    rows, reference = [], None
    for name, plan in plans.items():
        run = functools.partial(jax.jit(lambda params, z, y, plan=plan: causal.invert(
            flow, params, z, y, plan, guidance, annealed_guidance, clamp)), params)
        # throughput: every sample, in batches, after one compile per batch shape
        chunks = _chunks(num_samples, batch_size)
        for lo, hi in {hi - lo: (lo, hi) for lo, hi in chunks}.values():
            jax.block_until_ready(run(z_all[lo:hi], None if y_all is None else y_all[lo:hi]))
        start = time.perf_counter()
        results = [run(z_all[lo:hi], None if y_all is None else y_all[lo:hi]) for lo, hi in chunks]
        jax.block_until_ready(results)
        seconds = time.perf_counter() - start
        x = jnp.concatenate([r[0] for r in results])
        passes = np.stack([np.asarray(r[1]["passes"]) for r in results])  # (chunks, blocks)
        iterations = [np.stack([np.asarray(r[1]["iterations"][k]) for r in results]).max(axis=0).tolist()
                      for k in range(flow.num_blocks)]
        # latency: one small batch, median of `repeats`
        z_small, y_small = z_all[:latency_batch], None if y_all is None else y_all[:latency_batch]
        jax.block_until_ready(run(z_small, y_small))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(z_small, y_small))
            times.append(time.perf_counter() - t0)
        nonfinite = int(jnp.sum(~jnp.all(jnp.isfinite(x.reshape(num_samples, -1)), axis=1)))
        if reference is None:
            reference = x
        row = {"plan": name, "spec": plan, "passes_per_block": passes.max(axis=0).tolist(),
               "passes": int(passes.sum(axis=1).max()), "passes_mean": float(passes.sum(axis=1).mean()),
               "iterations_per_segment": iterations, "seconds": seconds,
               "latency_batch": latency_batch, "latency_seconds": float(np.median(times)),
               "max_abs_diff": float(jnp.max(jnp.abs(x - reference))), "nonfinite_samples": nonfinite}
        if fd:
            final = x
            if denoiser is not None:
                final = jnp.concatenate([denoiser(x[lo:hi], None if y_all is None else y_all[lo:hi])
                                         for lo, hi in chunks])
            row["fd_digits"] = fd_digits.score_samples(np.asarray(final), size=flow.image_size)["fd_digits"]
        rows.append(row)
        log(f"{name}: {row['passes']} passes, {seconds:.2f} s, latency {row['latency_seconds'] * 1e3:.1f} ms, "
            f"max|dx| {row['max_abs_diff']:.2e}" + (f", FD {row['fd_digits']:.3f}" if fd else ""))
    base = rows[0]
    for row in rows:
        row["pass_reduction"] = base["passes"] / row["passes"]
        row["speedup"] = base["seconds"] / row["seconds"]
        row["latency_speedup"] = base["latency_seconds"] / row["latency_seconds"]
        if fd:
            row["fd_change"] = row["fd_digits"] / base["fd_digits"] - 1.0
    return rows


def format_rows(rows):
    """A markdown table of `benchmark` rows."""
    fd = "fd_digits" in rows[0]
    headers = ["plan", "dependent passes", "fewer passes", "wall s (all)", "speedup", "latency ms", "latency speedup",
               "max abs x - x_seq"] + (["FD-digits", "FD change"] if fd else [])
    cells = []
    for r in rows:
        line = [f"{r['plan']}", f"{r['passes']} ({'/'.join(map(str, r['passes_per_block']))})",
                f"{r['pass_reduction']:.2f}x", f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x",
                f"{r['latency_seconds'] * 1e3:.1f}", f"{r['latency_speedup']:.2f}x", f"{r['max_abs_diff']:.1e}"]
        if fd:
            line += [f"{r['fd_digits']:.4f}", f"{100 * r['fd_change']:+.1f}%"]
        cells.append(line)
    return render_table(headers, cells)
