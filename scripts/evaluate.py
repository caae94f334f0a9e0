"""Sample a trained model (or the oracle) with every solver x time grid x NFE of a config and score each cell.

    python scripts/evaluate.py --config experiments/configs/evaluate.py:model=digits_vp --workdir outputs/eval_vp

Writes WORKDIR/rows.json, then the markdown table (WORKDIR/table.md) and the plot (WORKDIR/table.png).
"""

import os

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers import core
from fastsamplers.experiments.report import tables
from fastsamplers.experiments.runs import sampler_tables


def evaluate(config, workdir):
    results = sampler_tables.run(config, workdir)
    text = tables.markdown(results["rows"], title=results["description"])
    core.write_atomic(os.path.join(workdir, "table.md"), text)
    tables.plot(results["rows"], os.path.join(workdir, "table.png"), title=results["description"])
    print(text)


if __name__ == "__main__":
    cli.main(evaluate, workdir_help="Directory for rows.json, table.md and table.png.",
             config_help="Path to an evaluation config (file.py or file.py:arg).")
