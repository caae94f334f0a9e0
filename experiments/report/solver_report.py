"""The solver benchmark's report (`experiments.runs.solver_benchmark`): markdown tables of its rows, the cells that
look wrong, and the RMSE-vs-NFE plot.

Rows are the runner's dicts ("section" accuracy / adaptive / overhead); `plan` is its `Plan` (read for its configs'
labels and solvers, grids and NFE targets); `meta` its metadata (command, date, machine, the oracle's and the
overhead model's sizes).
"""

from __future__ import annotations

import math

import numpy as np

from fastsamplers.experiments.report.tables import render_table

SUMMARY_NFES = (5, 10)  # the budgets of the best-per-family table


def render_markdown(meta: dict, plan, accuracy: list, adaptive: list, overhead: list) -> str:
    """The whole report: header, accuracy table, best per family, adaptive rows, overhead, flagged cells."""
    suspicious = suspicious_cells(accuracy, plan)
    oracle, model = meta["oracle"], meta["overhead_model"]
    parts = [
        "# Solver benchmark",
        f"`{meta['command']}`  \n{meta['date']}, jax {meta['jax_version']}, {meta['device']}, process "
        f"{meta['process']}, total {meta['runtime_s']:.0f} s, {meta['cpu_count']} CPUs, load average "
        f"{meta['load_average_at_start'][0]:.1f} at start / {meta['load_average_at_end'][0]:.1f} at end.",
        f"## Accuracy: RMSE vs the exact flow map\n\n{oracle['dim']}-d, {oracle['num_components']}-component "
        f"Gaussian-mixture oracle (eps prediction), batch {plan.accuracy_batch}, x_init ~ exact marginal at t_max, "
        "t_max -> t_min. Cell: RMSE, with the NFE actually used in parentheses when it differs from the column's "
        "target. deis_tab order k is the paper's tAB-(k-1). The RMSE is dominated by the few trajectories that end "
        "near another mixture component; the JSON also has the median per-sample error (`median_sample_err`).",
        accuracy_markdown(accuracy, plan),
        "### Best per solver family (over its configurations and grids)",
        best_per_family_markdown(accuracy, plan),
        "### Adaptive (diffrax tsit5, its own NFE count)",
        adaptive_markdown(adaptive),
        f"## Overhead: MLP (hidden {model['hidden']}, depth {model['depth']}), batch {plan.overhead_batch}, "
        f"{model['grid']} grid, NFE <= {model['nfe']}\n\n`sample`: compiled `samplers.sample` call, best of "
        f"{plan.sample_repeats}; jit program: the same under one outer `jax.jit` (no host-side checks); model "
        f"fraction = NFE x model call / sample; compile = first call - steady state.",
        overhead_markdown(overhead),
    ]
    if suspicious:
        parts += ["## Flagged cells", "\n".join(f"- {s}" for s in suspicious)]
    return "\n\n".join(parts) + "\n"


def fmt_cell(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["rmse"] is None:
        return f"nonfinite ({row['num_nonfinite']})"
    text = f"{row['rmse']:.2e}"
    return text if row["nfe"] == row["nfe_target"] else f"{text} ({row['nfe']})"


def fmt_rmse(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['message'][:80]}"
    return f"nonfinite ({row['num_nonfinite']})" if row["rmse"] is None else f"{row['rmse']:.2e}"


def fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def accuracy_markdown(rows: list, plan) -> str:
    """Solver x grid rows, one column per NFE target."""
    by_cell = {(r["config"], r["grid"], r["nfe_target"]): r for r in rows}
    body = [[c.label, g, *(fmt_cell(by_cell[(c.label, g, n)]) for n in plan.nfe_targets)]
            for c in plan.configs for g in plan.grids]
    return render_table(["solver", "grid", *(f"NFE {n}" for n in plan.nfe_targets)], body)


def best_per_family_markdown(rows: list, plan) -> str:
    """Per solver name, the lowest RMSE over its configurations and grids at each of SUMMARY_NFES."""
    targets = [n for n in SUMMARY_NFES if n in plan.nfe_targets]
    families = list(dict.fromkeys(c.solver for c in plan.configs))
    body = []
    for family in families:
        cells = []
        for target in targets:
            ok = [r for r in rows if r["solver"] == family and r["nfe_target"] == target and r["rmse"] is not None
                  and r["status"] == "ok"]
            best = min(ok, key=lambda r: r["rmse"], default=None)
            cells.append("-" if best is None else f"{best['rmse']:.2e} ({best['config']}, {best['grid']}, "
                                                  f"NFE {best['nfe']})")
        body.append([family, *cells])
    return render_table(["family", *(f"best at NFE <= {n}" for n in targets)], body)


def adaptive_markdown(rows: list) -> str:
    body = [[r["config"], r.get("nfe", "-"), fmt_rmse(r), fmt_ms(r.get("time_s"))] for r in rows]
    return render_table(["solver", "NFE (reported)", "RMSE", "time (ms)"], body)


def overhead_markdown(rows: list) -> str:
    body = [[r["config"], r["nfe"], fmt_ms(r["sample_s"]), fmt_ms(r["program_s"]), fmt_ms(r["model_call_s"]),
             fmt_ms(r["model_total_s"]), f"{100 * r['model_fraction']:.0f}%", f"{r['compile_s']:.2f}"]
            for r in rows]
    return render_table(["solver", "NFE", "sample (ms)", "jit program (ms)", "1 model call (ms)", "NFE x model (ms)",
                         "model fraction", "compile (s)"], body)


def suspicious_cells(rows: list, plan, tolerance: float = 1.5) -> list[str]:
    """Non-finite or errored cells, and RMSE that grows by more than `tolerance` as the actual NFE increases."""
    flags = [f"{r['config']} / {r['grid']} / NFE {r['nfe_target']}: "
             + (r["message"][:100] if r["status"] == "error" else f"{r['num_nonfinite']} non-finite values")
             for r in rows if r["status"] == "error" or (r["status"] == "ok" and r["rmse"] is None)]
    for config in plan.configs:
        for grid in plan.grids:
            series = curve(rows, config.label, grid)
            for (n0, e0), (n1, e1) in zip(series, series[1:]):
                if e1 > tolerance * e0:
                    flags.append(f"{config.label} / {grid}: RMSE grows from {e0:.2e} (NFE {n0}) to {e1:.2e} "
                                 f"(NFE {n1})")
    return flags


def curve(rows: list, label: str, grid: str) -> list[tuple]:
    """Sorted distinct (actual NFE, RMSE) points of one config on one grid."""
    points = {r["nfe"]: r["rmse"] for r in rows
              if r["config"] == label and r["grid"] == grid and r["status"] == "ok" and r["rmse"] is not None}
    return sorted(points.items())


def plot(rows: list, adaptive: list, plan, path: str, meta: dict) -> str:
    """RMSE vs NFE, log-log, one panel per grid, the adaptive rows as black markers; saved to path (returned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(plan.grids))
    nrows = math.ceil(len(plan.grids) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 5 * nrows), sharex=True, sharey=True, squeeze=False)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(plan.configs)))
    styles = ["-", "--", "-.", ":"]
    for ax, grid in zip(axes.flat, plan.grids):
        for i, config in enumerate(plan.configs):
            points = curve(rows, config.label, grid)
            if points:
                ax.plot(*zip(*points), styles[i % len(styles)], marker="o", ms=3, color=colors[i],
                        label=config.label)
        for marker, r in zip("*XPD", adaptive):
            if r["status"] == "ok" and r["rmse"] is not None:
                ax.plot(r["nfe"], r["rmse"], marker, color="k", ms=9, label=r["config"])
        ax.set(xscale="log", yscale="log", title=f"grid: {grid}", xlabel="NFE", ylabel="RMSE")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(plan.grids):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"RMSE vs NFE against the exact flow map ({meta['oracle']['dim']}-d Gaussian mixture)")
    fig.tight_layout(rect=(0, 0, 0.82, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
