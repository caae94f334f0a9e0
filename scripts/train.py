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

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)


def train(config, workdir):
    from fastsamplers.experiments.train import loop

    loop.train(config, workdir)


if __name__ == "__main__":
    cli.main(train, workdir_help="Directory for checkpoints, metrics, samples and eval.json.", distributed=True)
