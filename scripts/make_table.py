"""Markdown tables and a metric-versus-NFE plot from one or more evaluation rows files (scripts/evaluate.py).

    python scripts/make_table.py --rows outputs/eval_vp/rows.json --out outputs/eval_vp

Several --rows files (e.g. one per schedule family run separately) are concatenated into one table. With
`--published NAME` (a table of experiments/results/published/, or a .json path) the rows are also printed beside the
published numbers, "ours / theirs (difference)", into published.md.
"""

import argparse
import json
import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers import core
from fastsamplers.experiments.report import published_tables as published, tables


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", action="append", required=True, help="a rows.json of scripts/evaluate.py")
    parser.add_argument("--out", required=True, help="directory for table.md and table.png")
    parser.add_argument("--title", default=None)
    parser.add_argument("--published", default=None, help=f"a published table to compare with: {list(published.TABLES)}"
                        " or a .json path")
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
    if args.published:
        table = published.load(args.published)
        sources = "; ".join(f"{s['title']}, {s['where']}" for s in table["sources"].values())
        text = (f"## {title}: ours beside {table['name']}\n\n{published.beside(rows, table)}\n\n"
                f"Published: {table['checkpoint']}; {table['settings']}. Sources: {sources}.\n"
                + (f"\nNo published numbers: {table['note']}.\n" if not table["rows"] else ""))
        core.write_atomic(os.path.join(args.out, "published.md"), text)
        print(text)


if __name__ == "__main__":
    main()
