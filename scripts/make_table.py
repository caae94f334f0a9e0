"""Markdown tables and a metric-versus-NFE plot from one or more evaluation rows files (scripts/evaluate.py).

    python scripts/make_table.py --rows outputs/eval_vp/rows.json --out outputs/eval_vp

Several --rows files (e.g. one per schedule family run separately) are concatenated into one table.
"""

import argparse
import json
import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers import core
from fastsamplers.experiments.report import tables


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", action="append", required=True, help="a rows.json of scripts/evaluate.py")
    parser.add_argument("--out", required=True, help="directory for table.md and table.png")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    rows, descriptions = [], []
    for path in args.rows:
        with open(path) as f:
            results = json.load(f)
        rows += results["rows"]
        descriptions.append(results.get("description", path))
    metrics = {row["metric"] for row in rows}
    if len(metrics) > 1:
        raise SystemExit(f"the rows mix metrics {sorted(metrics)}; make one table per metric")
    title = args.title or "; ".join(dict.fromkeys(descriptions))
    text = tables.markdown(rows, title=title)
    core.write_atomic(os.path.join(args.out, "table.md"), text)
    tables.plot(rows, os.path.join(args.out, "table.png"), title=title)
    print(text)


if __name__ == "__main__":
    main()
