"""What a training run writes as it goes, besides checkpoints: `metrics.jsonl` (and TensorBoard scalars when
tensorboardX is installed) and the progress bar."""

from __future__ import annotations

import json
import os

from fastsamplers import core


class MetricsWriter:
    """Appends JSON lines to WORKDIR/metrics.jsonl (and TensorBoard scalars when tensorboardX is installed). On
    resume, lines past the restored step (written after the last checkpoint of a killed run) are dropped."""

    def __init__(self, workdir, resume_step=0, enabled=True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if not enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            core.write_atomic(self.path, "".join(kept))
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            pass
        else:
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in record.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, record["step"])

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def progress_bar(train_cfg, step, enabled):
    """A tqdm bar over the run's steps from `step`; off unless `enabled` (process 0) and `train.progress`."""
    from tqdm.auto import tqdm

    return tqdm(total=train_cfg.num_steps, initial=step, disable=not (enabled and train_cfg.progress),
                unit="step", dynamic_ncols=True)
