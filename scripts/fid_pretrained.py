"""FID of a published checkpoint for one solver x time grid x NFE (50,000 samples, sharded, resumable).

    python scripts/fid_pretrained.py --config experiments/configs/fid_pretrained.py:solver=tab3 \\
        --config.checkpoint=CKPT --config.fid_weights=inception_fid.npz --config.reference=cifar10_stats.npz \\
        --config.grid=logsnr --config.nfe=10 --workdir outputs/fid/tab3_logsnr_10

--config FILE.py[:ARG]  the config (every key, the reference formats and the DEIS-table loop are in
                        experiments/configs/fid_pretrained.py); override keys with --config.KEY=VALUE.
--workdir DIR           shards/, results.json, samples.png; rerunning the same command resumes.
Several hosts: the same command on each with --distributed (and, without a scheduler jax finds by itself,
--coordinator_address=HOST:PORT --num_processes=N --process_id=I; scripts/cli.py). Writes WORKDIR/results.json
(process 0).
"""

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)


def fid_pretrained(config, workdir):
    from fastsamplers.experiments.runs import fid_protocol

    fid_protocol.run(config, workdir)


if __name__ == "__main__":
    cli.main(fid_pretrained, workdir_help="Directory for the shards and results.json (rerun to resume).",
             config_help="Path to experiments/configs/fid_pretrained.py (file.py or file.py:arg).", distributed=True)
