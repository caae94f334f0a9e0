"""Sample with a config's solvers and score them against the exact solution.

    python scripts/sample.py --config experiments/configs/quickstart.py --workdir outputs/quickstart

Config variants and overrides: `--config experiments/configs/quickstart.py:smoke`, `--config.nfe=5`.
"""

import os
import sys

# Runnable as `python scripts/sample.py` from a checkout without `pip install -e .`: put the repository root first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import sampling  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (file.py or file.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", "outputs/quickstart", "Directory for the results (JSON and PNG).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sampling.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
