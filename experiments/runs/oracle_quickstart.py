"""Sample the Gaussian-mixture oracle with several solvers at one NFE and score each against the exact flow map.

`run(config, workdir)` is what `scripts/sample.py` calls (config: `experiments/configs/quickstart.py`). Every solver
starts from the same exact draws of x_{t_max}; its error is the RMSE, over the batch and the dimensions, between its
samples at t_min and the probability-flow ODE's exact solution from the same start (`samplers.exact_flow_map`,
float64). The results go to a printed table, a JSON file (config, rows, versions) and a scatter plot.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.models import GaussianMixture, predictions

# Streams of the root key (fold_in(root, stream)), so that each random draw stays put when others are added.
ORACLE_STREAM = 0
INIT_STREAM = 1


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample with every solver of `config.solvers` at `config.nfe` evaluations and compare with the exact map.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/quickstart.py`.
      workdir: a directory (created if missing) for `config.outputs.json` and `config.outputs.png`.

    Returns:
      A dict: "config" (plain dict), "rows" (one per solver: label, solver, options, num_steps, nfe, rmse,
      ratio_to_baseline), "ts" (each solver's time grid), "versions", "runtime_s", and "files" (paths written).
    """
    start = time.perf_counter()
    plan = _validate(config)
    process = plan["process"]
    root = jax.random.PRNGKey(config.seed)
    oracle = GaussianMixture.random(
        jax.random.fold_in(root, ORACLE_STREAM), dim=config.oracle.dim, num_components=config.oracle.num_components
    )
    # One compiled draw instead of a dispatch (and, on first use, a compile) per operation.
    draw = jax.jit(lambda gm, key: gm.marginal_sample(key, config.batch, process.t_max, process))
    x_init = draw(oracle, jax.random.fold_in(root, INIT_STREAM))
    model_fn = oracle.model_fn(process, config.prediction)

    exact = {}  # (t_start, t_end) -> exact samples: every grid here shares its ends, so this is computed once
    rows, samples = [], []
    for entry, solver, ts in zip(config.solvers, plan["solvers"], plan["ts"]):
        ends = (float(ts[0]), float(ts[-1]))
        if ends not in exact:
            exact[ends] = samplers.exact_flow_map(oracle, process, x_init, *ends)
        x, info = samplers.sample(model_fn, solver, process, x_init, ts, prediction=config.prediction)
        x = np.asarray(x, np.float64)
        rmse = float(np.sqrt(np.mean((x - exact[ends]) ** 2)))
        if not np.isfinite(rmse):
            raise FloatingPointError(f"{entry['label']}: the RMSE against the exact map is {rmse}; stopping")
        rows.append({
            "label": entry["label"],
            "solver": entry["name"],
            "options": dict(entry["options"]),
            "grid": entry.get("grid", config.grid),
            "num_steps": int(ts.shape[0] - 1),
            "nfe": int(info["nfe"]),
            "rmse": rmse,
        })
        samples.append((x, exact[ends]))
    baseline = next(row["rmse"] for row in rows if row["label"] == config.baseline)
    for row in rows:
        row["ratio_to_baseline"] = row["rmse"] / baseline

    print(format_table(rows, config.baseline))
    os.makedirs(workdir, exist_ok=True)
    json_path = os.path.join(workdir, config.outputs.json)
    png_path = os.path.join(workdir, config.outputs.png)
    plot_samples(rows, samples, png_path, title=_plot_title(config))
    results = {
        "config": config.to_dict(),
        "rows": rows,
        "ts": {row["label"]: np.asarray(ts, np.float64).tolist() for row, ts in zip(rows, plan["ts"])},
        "versions": versions(),
        "runtime_s": time.perf_counter() - start,
        "files": {"json": json_path, "png": png_path},
    }
    core.write_json(json_path, results, indent=2)
    return results


def _validate(config):
    """Build everything named in the config before any sampling, so a wrong name or size fails at once."""
    if config.nfe < 1 or config.batch < 1:
        raise ValueError(f"nfe and batch must be >= 1, got nfe={config.nfe}, batch={config.batch}")
    predictions.check_kind(config.prediction)
    process = schedules.get_process(config.process)
    labels = [entry["label"] for entry in config.solvers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"solver labels must be distinct, got {labels}")
    core.Registry.of_names("baseline", labels, ordered=True,
                           unknown="{kind} {name!r} is not one of the solver labels {valid}").check(config.baseline)
    solvers, grids = [], []
    for entry in config.solvers:
        solver = samplers.get_solver(entry["name"], **entry["options"])
        num_steps = solver.steps_for_nfe(config.nfe)
        solver.check_grid(num_steps)
        solvers.append(solver)
        grids.append(schedules.get_timesteps(entry.get("grid", config.grid), process, num_steps))
    return {"process": process, "solvers": solvers, "ts": grids}


def format_table(rows, baseline):
    """The rows as an aligned text table: text columns left-aligned, numbers right-aligned."""
    header = ("solver", "method", "grid", "NFE", "RMSE vs exact", f"ratio to {baseline}")
    lines = [
        (
            row["label"],
            row["solver"] + "".join(f" {k}={v}" for k, v in row["options"].items()),
            row["grid"],
            str(row["nfe"]),
            f"{row['rmse']:.3e}",
            f"{row['ratio_to_baseline']:.3f}",
        )
        for row in rows
    ]
    return render_table(header, lines, style="text", align="lllrrr")


def _plot_title(config):
    return (f"{config.oracle.dim}-d Gaussian mixture ({config.oracle.num_components} components), {config.process}, "
            f"grids as in each paper\nfirst two coordinates; segments join each exact sample to the solver's")


def plot_samples(rows, samples, path, title="", max_points=1500):
    """One panel per solver: the exact samples (black) and the solver's (red), first two coordinates, with a
    segment from each exact sample to the solver's sample from the same start, so the error is visible."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and touches no global pyplot state

    ncols = min(len(rows), 2)
    nrows = -(-len(rows) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 4.9 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, row, (x, exact) in zip(axes, rows, samples):
        x, exact = x[:max_points, :2], exact[:max_points, :2]
        ax.add_collection(LineCollection(np.stack([exact, x], axis=1), colors="tab:blue", linewidths=0.6, alpha=0.6))
        ax.scatter(exact[:, 0], exact[:, 1], s=5, c="black", linewidths=0, label="exact flow map")
        ax.scatter(x[:, 0], x[:, 1], s=5, c="tab:red", linewidths=0, label=row["label"])
        ax.set_title(f"{row['label']}: {row['nfe']} NFE, RMSE vs exact {row['rmse']:.2e}", fontsize=11)
        ax.legend(loc="upper right", fontsize=9, markerscale=2.5)
        ax.set_aspect("equal", adjustable="box")
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("x[0]")
    for ax in axes[::ncols]:
        ax.set_ylabel("x[1]")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
