"""Sample a trained model (or the oracle) with every solver x time grid x NFE of a config and score each cell.

    python scripts/evaluate.py --config experiments/configs/evaluate.py:model=digits_vp --workdir outputs/eval_vp

Writes WORKDIR/rows.json, then the markdown table (WORKDIR/table.md) and the plot (WORKDIR/table.png).
"""

import os
import sys

# Runnable as `python scripts/evaluate.py` from a checkout without `pip install -e .`: put the repository root first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import evaluation, tables  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to an evaluation config (file.py or file.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for rows.json, table.md and table.png.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = evaluation.run(FLAGS.config, FLAGS.workdir)
    text = tables.markdown(results["rows"], title=results["description"])
    with open(os.path.join(FLAGS.workdir, "table.md"), "w") as f:
        f.write(text)
    tables.plot(results["rows"], os.path.join(FLAGS.workdir, "table.png"), title=results["description"])
    print(text)


if __name__ == "__main__":
    app.run(main)
