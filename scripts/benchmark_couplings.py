"""Benchmark the exact minibatch-OT solvers of experiments/train/couplings.py: scipy (host callback) against optax.

Command (from the repository root):

    python scripts/benchmark_couplings.py --json outputs/bench/benchmark_couplings.json

For 2D and 64-dimensional Gaussian batches (noise N(0, I), "data" N(1, 0.5^2 I)) of each size, times the jitted
`ot` coupling with each solver (median wall time per call after a compile-and-warm-up call, float32, on CPU unless
--platform says otherwise): scipy with its default Sinkhorn warm start ("scipy") and without it ("scipy cold"),
optax's Hungarian algorithm, and scipy on a stack of --stack problems under vmap (one callback, solved on a thread
pool; time per problem). It checks that all find the same matching cost (mean squared distance of the matched
pairs), and for reference times the Sinkhorn coupling (epsilon 0.05 relative to the mean cost, its defaults) and
reports the independent coupling's cost. --data moons replaces the 2-D "data" by the moons of the flow-matching
benchmark. Prints a table and writes the JSON (rows, settings, versions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train import couplings, data

SOLVERS = {"scipy": {"solver": "scipy"}, "scipy_cold": {"solver": "scipy", "warm_start": 0},
           "optax": {"solver": "optax"}}


def time_call(fn, args, repeats, budget_s):
    """Median seconds per call of an already-compiled fn, at least 3 calls, fewer than `repeats` past budget_s."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    while len(times) < repeats and (len(times) < 3 or sum(times) < budget_s):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matching_cost(x_noise, x_data):
    diff = np.asarray(x_noise, np.float64) - np.asarray(x_data, np.float64)
    return float(np.mean(np.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1)))


def run(args):
    key = jax.random.PRNGKey(args.seed)
    rows = []
    for dim in args.dims:
        for batch in args.batches:
            k_noise, k_data, k_pair = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, dim), batch), 3)
            x_noise = jax.random.normal(k_noise, (batch, dim), np.float32)
            if args.data == "moons" and dim == 2:
                x_data = data.get_dataset("moons").sample(k_data, batch)
            else:
                x_data = 1.0 + 0.5 * jax.random.normal(k_data, (batch, dim), np.float32)
            row = {"dim": dim, "batch": batch, "independent_cost": matching_cost(x_noise, x_data)}
            for solver, options in SOLVERS.items():
                fn = jax.jit(couplings.get_coupling("ot", **options))
                row[f"{solver}_ms"] = 1e3 * time_call(fn, (k_pair, x_noise, x_data), args.repeats, args.budget_s)
                row[f"{solver}_cost"] = matching_cost(*fn(k_pair, x_noise, x_data))
            stacked = jax.jit(jax.vmap(couplings.get_coupling("ot"), in_axes=(None, 0, 0)))
            stack = (k_pair, jnp.stack([x_noise] * args.stack), jnp.stack([jnp.roll(x_data, k, 0)
                                                                           for k in range(args.stack)]))
            row["scipy_stacked_ms"] = 1e3 * time_call(stacked, stack, args.repeats, args.budget_s) / args.stack
            sink = jax.jit(couplings.get_coupling("sinkhorn", sampling="conditional"))
            row["sinkhorn_ms"] = 1e3 * time_call(sink, (k_pair, x_noise, x_data), args.repeats, args.budget_s)
            row["sinkhorn_cost"] = matching_cost(*sink(k_pair, x_noise, x_data))
            row["costs_agree"] = bool(all(abs(row["scipy_cost"] - row[f"{solver}_cost"]) <= 1e-5 * row["scipy_cost"]
                                          for solver in SOLVERS))
            row["speedup_scipy_over_optax"] = row["optax_ms"] / row["scipy_ms"]
            rows.append(row)
            print(format_table([row], header=False), flush=True)
    return rows


# The table is printed a row at a time, as the rows are measured: fixed widths keep its columns.
COLUMNS = ("dim", "batch", "scipy ms", "cold ms", "stacked ms", "optax ms", "optax/scipy", "sinkhorn ms", "OT cost",
           "agree", "sinkhorn cost", "indep. cost")
WIDTHS = (4, 6, 9, 8, 11, 9, 12, 12, 9, 6, 14, 12)


def format_table(rows, header=True):
    cells = [(row["dim"], row["batch"], f"{row['scipy_ms']:.2f}", f"{row['scipy_cold_ms']:.2f}",
              f"{row['scipy_stacked_ms']:.2f}", f"{row['optax_ms']:.2f}", f"{row['speedup_scipy_over_optax']:.1f}",
              f"{row['sinkhorn_ms']:.2f}", f"{row['scipy_cost']:.4f}", row["costs_agree"],
              f"{row['sinkhorn_cost']:.4f}", f"{row['independent_cost']:.4f}") for row in rows]
    return render_table(COLUMNS, cells, style="text", align="r" * len(COLUMNS), widths=WIDTHS, sep=" ", rule=False,
                        header=header)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--batches", default="64,128,256,512", help="comma-separated batch sizes")
    parser.add_argument("--dims", default="2,64", help="comma-separated data dimensions")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per entry (at most)")
    parser.add_argument("--budget_s", type=float, default=5.0, help="stop timing an entry after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="gaussian", choices=("gaussian", "moons"), help="the 2-D data")
    parser.add_argument("--stack", type=int, default=16, help="problems per vmapped call (the stacked column)")
    parser.add_argument("--platform", default="cpu", help="JAX platform to run on (default cpu)")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.dims = [int(d) for d in args.dims.split(",")]
    jax.config.update("jax_platforms", args.platform)

    print(f"exact minibatch OT inside jit on {jax.devices()[0].platform} ({os.cpu_count()} CPU cores), float32")
    print(format_table([]), flush=True)
    rows = run(args)
    if not all(row["costs_agree"] for row in rows):
        print("WARNING: the two solvers disagree on the optimal cost somewhere (see costs_agree)")
    if args.json:
        core.write_json(args.json, {
            "rows": rows,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "default_solver": couplings.DEFAULT_OT_SOLVER,
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
                         "machine": platform.machine(), "cpu_count": os.cpu_count()},
        }, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
