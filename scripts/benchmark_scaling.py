"""Benchmark inference-time scaling of flows: reward and mode fraction against the NFE budget for best-of-N, SMC and
RBF on the linear and VP SDE twins (`experiments.runs.scaling_benchmark`, whose docstring says what is measured).

Commands (from the repository root):

    python scripts/benchmark_scaling.py --json experiments/results/scaling_oracle.json
    python scripts/benchmark_scaling.py --json outputs/bench/scaling_digits.json --source checkpoint \
        --train_config experiments/configs/digits_fm.py --checkpoint_dir outputs/digits_fm --label 3 --batch 64

Writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse

import cli  # first: the repository on sys.path, quiet logs
import jax

from fastsamplers.experiments.runs import scaling_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--source", default="oracle", help="oracle or checkpoint")
    parser.add_argument("--budgets", default=",".join(map(str, scaling_benchmark.BUDGETS)))
    parser.add_argument("--strategies", default="best_of_n,smc,rbf")
    parser.add_argument("--paths", default="linear,vp")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--num_steps", type=int, default=8)
    parser.add_argument("--init", type=int, default=2)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_config", default="", help="checkpoint source: the training config file.py[:arg]")
    parser.add_argument("--checkpoint_dir", default="", help="checkpoint source: its --workdir")
    parser.add_argument("--label", type=int, default=0, help="checkpoint source: the rewarded digit class")
    args = parser.parse_args(argv)
    if args.source == "oracle":
        jax.config.update("jax_enable_x64", True)
    scaling_benchmark.benchmark(
        args.json, source=args.source, budgets=tuple(int(b) for b in args.budgets.split(",")),
        strategies=tuple(args.strategies.split(",")), paths=tuple(args.paths.split(",")), batch=args.batch,
        num_steps=args.num_steps, init=args.init, chains=args.chains, seed=args.seed, train_config=args.train_config,
        checkpoint_dir=args.checkpoint_dir, label=args.label, command=cli.command_line(__file__, argv))


if __name__ == "__main__":
    main()
