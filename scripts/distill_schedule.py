"""Distil a step schedule for a model and solver, save it as a schedule file, and score it against the exact map.

    python scripts/distill_schedule.py --config experiments/configs/distill_oracle.py --workdir outputs/distill

Config variants and overrides: `--config experiments/configs/distill_oracle.py:smoke`, `...:method=gits,nfe=6`,
`--config.refine.enabled=True`.
"""

import os
import sys

# Runnable as `python scripts/distill_schedule.py` from a checkout without `pip install -e .`: put the repository
# root first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import distillation  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (file.py or file.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", "outputs/distill", "Directory for the schedule file, the results JSON and the plot.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distillation.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
