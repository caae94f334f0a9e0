"""BOSS straightening measured: Euler's error against the teacher before and after straightening, and its cost
(`experiments.runs.boss_benchmark`, whose docstring says what is measured).

    python scripts/benchmark_boss.py --runs 4=outputs/boss_fm4 6=outputs/boss_fm6 --fd-samples 10000 \\
        --json experiments/results/boss_digits_fm_fd10k.json

(`--fd-samples 2000 --json experiments/results/boss_digits_fm.json`: the same in 20 min instead of 60 on 2 shared
CPU cores.)

Prints the table and writes JSON.
"""

from __future__ import annotations

import argparse

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import boss_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="K=WORKDIR of each straightened run")
    parser.add_argument("--config", default="experiments/configs/boss_straighten.py",
                        help="the runs' training config, file.py[:arg]; each run's is this with num_steps=K")
    parser.add_argument("--nfes", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--num-noise", type=int, default=1000, help="held-out noises for the RMSE")
    parser.add_argument("--fd-samples", type=int, default=0, help="FD-digits of this many samples (0: skip)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        k, sep, workdir = item.partition("=")
        if not sep or not k.isdigit():
            parser.error(f"--runs takes K=WORKDIR items, got {item!r}")
        runs[int(k)] = workdir
    boss_benchmark.benchmark(runs, args.json, config_spec=args.config, nfes=args.nfes, num_noise=args.num_noise,
                             fd_samples=args.fd_samples)


if __name__ == "__main__":
    main()
