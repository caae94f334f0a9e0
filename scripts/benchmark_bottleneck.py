"""Bottleneck sampling against full-resolution sampling on the digits DiT: wall time, model FLOPs, FD-digits.

    python scripts/benchmark_bottleneck.py --json outputs/bench/bottleneck.json

Rows (config: experiments/configs/digits_bottleneck.py): the full-resolution baseline at N steps; every plan of the
config (32 -> 16 -> 32 px at about 2x and 3x fewer model FLOPs); after each plan its equal-cost baseline, the
baseline with the number of steps whose model FLOPs come closest to the plan's. Per row: wall time (compile
excluded, one warm-up batch, median of --repeats timed passes), model FLOPs per sample (the matrix products and
convolutions of one call, counted from the model's jaxpr, at each resolution times the calls made there), NFE,
FD-digits at 32 px on --num-samples samples, and the ratios to the baseline. Prints markdown tables and writes
them with the rows to --json.

64 px: the DiT runs at 64 px (its positions are computed at call time), so the same rows with every resolution
doubled are timed and counted (on res64.num_samples samples), but no FD is given there: the model was trained at 16
and 32 px only and the digits data and the FD-digits classifier stop at 32 px. --no-64 leaves these rows out.

Options: --config FILE.py[:ARG] (default the digits config; e.g. `:checkpoint_dir=DIR`), --checkpoint-dir DIR,
--num-samples N, --batch-size B, --metric fd_digits|none, --repeats R, --no-64,
--num-samples-64 N, --batch-size-64 B.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import bottleneck_benchmark
from fastsamplers.experiments.train import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the rows and tables (JSON)")
    parser.add_argument("--config", default="experiments/configs/digits_bottleneck.py",
                        help="the bottleneck config, file.py or file.py:arg")
    parser.add_argument("--checkpoint-dir", help="the training run's workdir (overrides the config's)")
    parser.add_argument("--num-samples", type=int, help="samples per 32 px row (default: the config's, 10000)")
    parser.add_argument("--batch-size", type=int, help="samples per compiled call (default: the config's)")
    parser.add_argument("--metric", choices=bottleneck_benchmark.METRICS,
                        help="fd_digits, or none: time and FLOPs only")
    parser.add_argument("--repeats", type=int, help="timed passes per row; the median is reported")
    parser.add_argument("--no-64", action="store_true", help="leave out the 64 px cost rows")
    parser.add_argument("--num-samples-64", type=int, help="samples per 64 px row (default: the config's res64)")
    parser.add_argument("--batch-size-64", type=int, help="samples per compiled call at 64 px (default: res64's)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    config.unlock()
    for key, value in (("checkpoint_dir", args.checkpoint_dir), ("num_samples", args.num_samples),
                       ("batch_size", args.batch_size), ("metric", args.metric), ("timing_repeats", args.repeats)):
        if value is not None:
            config[key] = value
    if args.no_64:
        config.res64.enabled = False
    if args.num_samples_64 is not None:
        config.res64.num_samples = args.num_samples_64
    if args.batch_size_64 is not None:
        config.res64.batch_size = args.batch_size_64
    config.lock()
    bottleneck_benchmark.benchmark(config, args.json)


if __name__ == "__main__":
    main()
