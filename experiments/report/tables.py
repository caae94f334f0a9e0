"""Text tables: `render_table`, the one renderer of every printed or saved table (markdown, or aligned text), and the
tables and plots of evaluation rows (`experiments.runs.sampler_tables`): one markdown table per time grid, solvers as
rows and NFE as columns (the DEIS paper's layout), and a metric-versus-NFE plot with one panel per grid.

A cell shows the metric to 2 decimals (4 for the exact error), with the number of non-finite samples left out in
brackets when there were any, and "—" where the solver cannot reach that NFE budget exactly (the actual NFE of a
row is in its header when it differs from the budget). The adaptive reference is a line under each table.

>>> rows = [{"label": "DDIM", "grid": "uniform", "nfe_budget": 10, "nfe": 10, "value": 12.3456, "num_nonfinite": 0,
...          "metric": "fd_digits"}]
>>> print(markdown(rows).splitlines()[2])
| DDIM | 12.35 |
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from fastsamplers.core import Registry

STYLES = Registry.of_names("table style", ("markdown", "text"), unknown="unknown {kind} {name!r}; valid: {valid}")

METRIC_NAMES = {"fd_digits": "FD-digits", "fid": "FID", "exact": "RMSE vs exact"}
# The "grid" of a normalizing flow's row (`experiments.runs.fid_protocol`): its "nfe" is the mean number of dependent
# network passes per batch (`samplers.causal`), not model evaluations, so its rows get a table of their own.
FLOW_GRID = "flow plan"


def render_table(headers: Sequence[str], rows: Iterable[Sequence], *, style: str = "markdown",
                 align: str | None = None, widths: Sequence[int] | None = None, sep: str = "  ", rule: bool = True,
                 header: bool = True) -> str:
    """A table as text: markdown (`| a | b |` rows under a `|---|---|` rule) or columns padded to a common width.

    Cells are formatted by the caller (`str` is applied to anything else), so every table keeps its own number
    formats; this function only lays them out.

    Args:
      headers: the column titles.
      rows: the rows, each a sequence of cells (one per column).
      style: "markdown", or "text" for aligned columns.
      align: text only: one letter per column, "l" (left) or "r" (right); default all left.
      widths: text only: the least width of each column (the widest cell sets it otherwise), for tables printed a
        row at a time that must keep their columns.
      sep: text only: what separates two columns.
      rule: text only: a line of dashes under the header.
      header: include the header (and its rule); False gives the rows alone.

    Returns:
      The lines joined by newlines, with no trailing newline.

    Example:
        >>> print(render_table(["solver", "NFE"], [["ddim", 10]]))
        | solver | NFE |
        |---|---|
        | ddim | 10 |
        >>> print(render_table(["solver", "NFE"], [["ddim", 10]], style="text", align="lr"))
        solver  NFE
        ------  ---
        ddim     10
    """
    STYLES.check(style)
    headers = [str(h) for h in headers]
    rows = [[str(c) for c in row] for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row}")
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] if header else []
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l' or 'r' per column ({len(headers)}), got {align!r}")
    least = widths or [0] * len(headers)
    widths = [max([least[i], len(headers[i])] + [len(row[i]) for row in rows]) for i in range(len(headers))]

    def line(cells):
        return sep.join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))

    lines = [line(headers)] + ([sep.join("-" * w for w in widths)] if rule else []) if header else []
    return "\n".join(lines + [line(row) for row in rows])


def _format(row):
    if row is None:
        return "—"
    value = row["value"]
    text = "nan" if not math.isfinite(value) else (f"{value:.4f}" if row["metric"] == "exact" else f"{value:.2f}")
    if row.get("num_nonfinite"):
        text += f" ({row['num_nonfinite']} non-finite)"
    if row["nfe"] != row["nfe_budget"]:
        text += f" [NFE {row['nfe']}]"
    return text


def markdown(rows: list[dict], title: str | None = None) -> str:
    """Markdown text: a table per grid (solvers x NFE budgets), in the order the rows came.

    Args:
      rows: evaluation rows (`experiments.runs.sampler_tables.run(...)["rows"]`).
      title: a "## " heading above the tables.

    Returns:
      The text, ending with a newline.
    """
    fixed = [row for row in rows if row["grid"] not in ("adaptive", FLOW_GRID)]
    lines = [f"## {title}", ""] if title else []
    grids = list(dict.fromkeys(row["grid"] for row in fixed))
    nfes = sorted({row["nfe_budget"] for row in fixed})
    labels = list(dict.fromkeys(row["label"] for row in fixed))
    for grid in grids:
        if len(grids) > 1:
            lines += [f"### grid: {grid}", ""]
        cells = {(row["label"], row["nfe_budget"]): row for row in fixed if row["grid"] == grid}
        lines.append(render_table(["solver", *(f"NFE {n}" for n in nfes)],
                                  [[label, *(_format(cells.get((label, n))) for n in nfes)] for label in labels]))
        lines.append("")
    flows = [row for row in rows if row["grid"] == FLOW_GRID]
    if flows:
        metric = METRIC_NAMES.get(flows[0]["metric"], flows[0]["metric"])
        lines += [render_table(["flow plan", "dependent passes", metric],
                               [[row["label"], row["nfe"], _format(dict(row, nfe_budget=row["nfe"]))]
                                for row in flows]), ""]
    for row in rows:
        if row["grid"] == "adaptive":
            metric = METRIC_NAMES.get(row["metric"], row["metric"])
            lines.append(f"Adaptive reference ({row['options'].get('method', '')}, rtol "
                         f"{row['options'].get('rtol', '')}): {metric} {_format(dict(row, nfe_budget=row['nfe']))} "
                         f"at NFE {row['nfe']}.")
    return "\n".join(lines).rstrip() + "\n"


def grid_title(grid):
    """A short panel title: a schedule file "file:DIR/NAME" becomes "file: PARENT/NAME" (its folder and name).

    >>> grid_title("file:experiments/results/oss_vp/oss_s{num_steps}.json")
    'file: oss_vp/oss_s{num_steps}.json'
    """
    if not grid.startswith("file:"):
        return grid
    return "file: " + "/".join(grid[len("file:"):].split("/")[-2:])


def plot(rows: list[dict], path: str, title: str = "") -> str:
    """Metric versus NFE, a panel per grid, a line per solver (log-scale metric).

    Args:
      rows: evaluation rows, as for `markdown`.
      path: the PNG to write.
      title: the figure's title.

    Returns:
      The path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [row for row in rows if row["grid"] != "adaptive"]
    grids = list(dict.fromkeys(row["grid"] for row in fixed))
    labels = list(dict.fromkeys(row["label"] for row in fixed))
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 3.6), sharey=True, squeeze=False)
    metric = METRIC_NAMES.get(fixed[0]["metric"], fixed[0]["metric"]) if fixed else ""
    for ax, grid in zip(axes[0], grids):
        for label in labels:
            points = sorted((row["nfe"], row["value"]) for row in fixed
                            if row["grid"] == grid and row["label"] == label and math.isfinite(row["value"]))
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
        for row in rows:
            if row["grid"] == "adaptive" and math.isfinite(row["value"]):
                ax.axhline(row["value"], color="k", ls=":", lw=1, label=f"adaptive (NFE {row['nfe']})")
        ax.set_yscale("log")
        ax.set_xlabel("dependent passes" if grid == FLOW_GRID else "NFE")
        ax.set_title(grid_title(grid))
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
