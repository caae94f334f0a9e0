"""Sample a trained multi-resolution model with the full-resolution baseline and a bottleneck plan, side by side.

    python scripts/sample_bottleneck.py --config experiments/configs/digits_bottleneck.py \
        --workdir outputs/digits_bottleneck

Both start from the same noise. Writes WORKDIR/comparison.png (the two grids side by side), baseline.png,
bottleneck.png and bottleneck.json (NFE per stage, model FLOPs per sample, wall time). Config variants and overrides:
`digits_bottleneck.py:checkpoint_dir=DIR`, `--config.plan=bottleneck_3x`, `--config.baseline.num_steps=40`.
"""

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import bottleneck_benchmark


def sample(config, workdir):
    results = bottleneck_benchmark.run(config, workdir)
    print(f"wrote {results['files']['comparison']} and {results['files']['json']}")


if __name__ == "__main__":
    cli.main(sample, workdir="outputs/digits_bottleneck", workdir_help="Directory for the PNGs and bottleneck.json.",
             config_help="Path to a bottleneck config (file.py or file.py:arg).")
