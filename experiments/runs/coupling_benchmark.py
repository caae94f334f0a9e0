"""The exact minibatch-OT solvers of `experiments.train.couplings` timed: scipy (host callback) against optax
(`scripts/benchmark_couplings.py`).

For 2D and 64-dimensional Gaussian batches (noise N(0, I), "data" N(1, 0.5^2 I)) of each size, times the jitted
`ot` coupling with each solver (median wall time per call after a compile-and-warm-up call, float32): scipy with its
default Sinkhorn warm start ("scipy") and without it ("scipy cold"), optax's Hungarian algorithm, and scipy on a stack
of `stack` problems under vmap (one callback, solved on a thread pool; time per problem). It checks that all find the
same matching cost (mean squared distance of the matched pairs), and for reference times the Sinkhorn coupling
(epsilon 0.05 relative to the mean cost, its defaults) and reports the independent coupling's cost. data_2d="moons"
replaces the 2-D "data" by the moons of the flow-matching benchmark.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train import couplings, data

SOLVERS = {"scipy": {"solver": "scipy"}, "scipy_cold": {"solver": "scipy", "warm_start": 0},
           "optax": {"solver": "optax"}}
DATA_2D = core.Registry.of_names("data", ("gaussian", "moons"), ordered=True)  # the 2-D "data" batches


def benchmark(dims=(2, 64), batches=(64, 128, 256, 512), *, repeats: int = 20, budget_s: float = 5.0, seed: int = 0,
              data_2d: str = "gaussian", stack: int = 16, json_path: str | None = None) -> list[dict]:
    """The table, printed a row at a time as it is measured, and (with json_path) written with its settings.

    Returns:
      The rows (`run`).
    """
    DATA_2D.check(data_2d)
    print(f"exact minibatch OT inside jit on {jax.devices()[0].platform} ({os.cpu_count()} CPU cores), float32")
    print(format_table([]), flush=True)
    rows = run(dims, batches, repeats, budget_s, seed, data_2d, stack)
    if not all(row["costs_agree"] for row in rows):
        print("WARNING: the two solvers disagree on the optimal cost somewhere (see costs_agree)")
    if json_path:
        core.write_json(json_path, {
            "rows": rows,
            "settings": dict(dims=list(dims), batches=list(batches), repeats=repeats, budget_s=budget_s, seed=seed,
                             data=data_2d, stack=stack, platform=jax.devices()[0].platform),
            "default_solver": couplings.DEFAULT_OT_SOLVER,
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
                         "machine": platform.machine(), "cpu_count": os.cpu_count()},
        }, indent=2)
        print(f"wrote {json_path}")
    return rows


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
    """The mean squared distance of the pairs."""
    diff = np.asarray(x_noise, np.float64) - np.asarray(x_data, np.float64)
    return float(np.mean(np.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1)))


def run(dims, batches, repeats=20, budget_s=5.0, seed=0, data_2d="gaussian", stack=16):
    """One row per (dim, batch): each solver's milliseconds per call and matching cost, the stacked scipy call's
    milliseconds per problem, Sinkhorn's, the independent coupling's cost, whether the exact solvers agree."""
    key = jax.random.PRNGKey(seed)
    rows = []
    for dim in dims:
        for batch in batches:
            k_noise, k_data, k_pair = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, dim), batch), 3)
            x_noise = jax.random.normal(k_noise, (batch, dim), np.float32)
            if data_2d == "moons" and dim == 2:
                x_data = data.get_dataset("moons").sample(k_data, batch)
            else:
                x_data = 1.0 + 0.5 * jax.random.normal(k_data, (batch, dim), np.float32)
            row = {"dim": dim, "batch": batch, "independent_cost": matching_cost(x_noise, x_data)}
            for solver, options in SOLVERS.items():
                fn = jax.jit(couplings.get_coupling("ot", **options))
                row[f"{solver}_ms"] = 1e3 * time_call(fn, (k_pair, x_noise, x_data), repeats, budget_s)
                row[f"{solver}_cost"] = matching_cost(*fn(k_pair, x_noise, x_data))
            stacked = jax.jit(jax.vmap(couplings.get_coupling("ot"), in_axes=(None, 0, 0)))
            problems = (k_pair, jnp.stack([x_noise] * stack), jnp.stack([jnp.roll(x_data, k, 0)
                                                                              for k in range(stack)]))
            row["scipy_stacked_ms"] = 1e3 * time_call(stacked, problems, repeats, budget_s) / stack
            sink = jax.jit(couplings.get_coupling("sinkhorn", sampling="conditional"))
            row["sinkhorn_ms"] = 1e3 * time_call(sink, (k_pair, x_noise, x_data), repeats, budget_s)
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
    """The rows as fixed-width text (header=False: the rows alone, to print one as it is measured)."""
    cells = [(row["dim"], row["batch"], f"{row['scipy_ms']:.2f}", f"{row['scipy_cold_ms']:.2f}",
              f"{row['scipy_stacked_ms']:.2f}", f"{row['optax_ms']:.2f}", f"{row['speedup_scipy_over_optax']:.1f}",
              f"{row['sinkhorn_ms']:.2f}", f"{row['scipy_cost']:.4f}", row["costs_agree"],
              f"{row['sinkhorn_cost']:.4f}", f"{row['independent_cost']:.4f}") for row in rows]
    return render_table(COLUMNS, cells, style="text", align="r" * len(COLUMNS), widths=WIDTHS, sep=" ", rule=False,
                        header=header)
