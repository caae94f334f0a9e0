"""Published tables (`experiments/results/published/NAME.json`) and our rows printed beside them.

A published table is JSON: `name`, `checkpoint` (the file the numbers were made on), `dataset`, `metric` ("fid"),
`num_samples`, `settings` (the sampling settings as the source states them), `sources` ({key: {"title", "where",
optionally "commit"}}) and `rows`: [{"label", "source" (a key of sources), "values": {NFE: number}}, optionally
"unverified": what about the row was not checked]. A checkpoint released without a published number has an empty
`rows` and a `note` saying so (`beside` then prints ours with "—" for theirs). Labels are those of the matching preset's rows
(`experiments/configs/fid_pretrained.py`), so our results line up with theirs by label and NFE.

    >>> table = load("edm_cifar10_uncond_vp")
    >>> table["rows"][-4]["label"], table["rows"][-4]["values"]["10"]
    ('iPNDM-4', 2.77)
    >>> ours = [{"label": "iPNDM-4", "nfe_budget": 10, "value": 2.81}]
    >>> print(beside(ours, table, nfes=[10]).splitlines()[2])
    | iPNDM-4 | 2.81 / 2.77 (+0.04) |
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from fastsamplers.core import Registry, read_json
from fastsamplers.experiments.report.tables import render_table

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "published")
TABLES = Registry.of_names("published table", tuple(sorted(
    name[:-5] for name in os.listdir(FOLDER) if name.endswith(".json"))) if os.path.isdir(FOLDER) else (),
    unknown="unknown {kind} {name!r}; valid: {valid} (or the path of a .json file)")
_KEYS = ("name", "checkpoint", "dataset", "metric", "num_samples", "settings", "sources", "rows")


def load(name: str) -> dict[str, Any]:
    """A published table by name (one of `TABLES`) or path, checked: ValueError naming the file and the entry."""
    path = name if name.endswith(".json") else os.path.join(FOLDER, TABLES.check(name) + ".json")
    table = read_json(path)
    missing = [key for key in _KEYS if key not in table]
    if missing:
        raise ValueError(f"{path}: missing {missing} (a published table has {list(_KEYS)})")
    if not table["rows"] and not table.get("note"):
        raise ValueError(f"{path}: no rows and no note (an empty table says why it has no published numbers)")
    for i, row in enumerate(table["rows"]):
        if not {"label", "source", "values"} <= set(row) or row["source"] not in table["sources"]:
            raise ValueError(f"{path}: row {i} needs label, values and a source among {sorted(table['sources'])}, "
                             f"got {row}")
        bad = {k: v for k, v in row["values"].items() if not k.isdigit() or not isinstance(v, (int, float))}
        if bad:
            raise ValueError(f"{path}: row {row['label']!r} has values that are not NFE: number: {bad}")
    return table


def beside(rows: Iterable[dict], table: dict[str, Any], *, nfes: Sequence[int] | None = None,
           style: str = "markdown") -> str:
    """Our rows beside a published table: one line per label (ours first, in their order, then the published rows
    we have no result for), one column per NFE, each cell "ours / theirs (ours - theirs)", with "—" for a side
    that has no number.

    Args:
      rows: our results' rows (`results.json["rows"]` of `experiments.runs.fid_protocol`: label, nfe (the actual
        NFE; else nfe_budget), value).
      table: a published table (`load`).
      nfes: the columns; default every NFE either side has.
      style: `render_table`'s style.

    Returns:
      The table as text.
    """
    # A row's actual NFE places it (a 2-stage solver in the column of budget 5 made 4 calls).
    ours = {(row["label"], int(row.get("nfe", row["nfe_budget"]))): float(row["value"]) for row in rows}
    theirs = {(row["label"], int(nfe)): float(value) for row in table["rows"] for nfe, value in row["values"].items()}
    labels = list(dict.fromkeys([label for label, _ in ours] + [row["label"] for row in table["rows"]]))
    columns = sorted({nfe for _, nfe in (*ours, *theirs)}) if nfes is None else list(nfes)

    def cell(label, nfe):
        mine, published = ours.get((label, nfe)), theirs.get((label, nfe))
        if mine is None and published is None:
            return "—"
        text = f"{_number(mine)} / {_number(published)}"
        return text + (f" ({mine - published:+.2f})" if mine is not None and published is not None else "")

    return render_table(["solver (ours / published)", *(f"NFE {n}" for n in columns)],
                        [[label, *(cell(label, n) for n in columns)] for label in labels], style=style)


def _number(value):
    return "—" if value is None else f"{value:.2f}"
