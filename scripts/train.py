"""Train a model from a config; rerunning the same command resumes from the newest checkpoint in --workdir.

    python scripts/train.py --config experiments/configs/toy2d_fm.py:coupling=ot --workdir outputs/toy2d_ot
    python scripts/train.py --config experiments/configs/digits_fm.py --workdir outputs/digits_fm \
        --config.train.num_steps=4000

Several hosts (one process per host, each seeing its local devices): pass --distributed, which calls
`jax.distributed.initialize()`; on a cluster with a supported scheduler (SLURM, TPU pods, ...) it finds the
coordinator by itself, elsewhere give --coordinator_address=HOST:PORT --num_processes=N --process_id=I on each host.
Every process runs the same command; process 0 writes the metrics, samples and eval.json, orbax writes checkpoints
from all of them into the shared --workdir.
"""

import os
import sys

# Runnable as `python scripts/train.py` from a checkout without `pip install -e .`: put the repository root first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (file.py or file.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and eval.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host training).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    from experiments import training

    training.train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
