"""Sample a trained multi-resolution model with the full-resolution baseline and a bottleneck plan, side by side.

    python scripts/sample_bottleneck.py --config experiments/configs/digits_bottleneck.py \
        --workdir outputs/digits_bottleneck

Both start from the same noise. Writes WORKDIR/comparison.png (the two grids side by side), baseline.png,
bottleneck.png and bottleneck.json (NFE per stage, model FLOPs per sample, wall time). Config variants and overrides:
`digits_bottleneck.py:checkpoint_dir=DIR`, `--config.plan=bottleneck_3x`, `--config.baseline.num_steps=40`.
"""

import os
import sys

# Runnable as `python scripts/sample_bottleneck.py` from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import bottleneck_run  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to a bottleneck config (file.py or file.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", "outputs/digits_bottleneck", "Directory for the PNGs and bottleneck.json.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = bottleneck_run.run(FLAGS.config, FLAGS.workdir)
    print(f"wrote {results['files']['comparison']} and {results['files']['json']}")


if __name__ == "__main__":
    app.run(main)
