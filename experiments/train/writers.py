"""What a training run writes as it goes, besides checkpoints: `metrics.jsonl` (and TensorBoard scalars when
tensorboardX is installed), the progress bar, and the lines it prints at its start (what it will do) and its end
(the final evaluation and where the files are)."""

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
    """A tqdm bar over the run's steps, started at `step` (the resume step), so that its rate and ETA count only the
    steps this process runs; off unless `enabled` (process 0) and `train.progress`."""
    from tqdm.auto import tqdm

    return tqdm(total=train_cfg.num_steps, initial=step, disable=not (enabled and train_cfg.progress),
                unit="step", dynamic_ncols=True)


def start_lines(config, workdir, step, devices, changes=(), kept=None):
    """What the run will do, printed before it starts: the workdir, new or resumed (from which step), the devices,
    the steps and the batch, and the config keys that changed since the run's earlier config (`kept`: where that
    one is now)."""
    train = config.train
    platforms = sorted({device.platform for device in devices})
    resume = f"resuming from the checkpoint at step {step}" if step else "a new run"
    lines = [f"training in {workdir}: {resume}",
             f"  devices: {len(devices)} ({', '.join(platforms)}), batch {train.batch_size}"
             + (f", {train.batch_size // len(devices)} per device" if len(devices) > 1 else ""),
             f"  steps: {train.num_steps - step} to run, to step {train.num_steps}; a checkpoint every "
             f"{train.checkpoint_every}, metrics every {train.log_every} in metrics.jsonl"]
    if changes:
        lines.append(f"  the config changed since the earlier run ({len(changes)} keys; the earlier config is kept "
                     f"as {os.path.basename(kept)}):")
        lines += [f"    {change}" for change in changes]
    return lines


def end_line(result, workdir, sample_paths):
    """The run's last line: the final evaluation and where its files are."""
    evaluation = [f"eval loss {result['eval_loss']:.4g} ({result['params']} weights)"]
    for name, entry in result["resolutions"].items():
        if "w2" in entry:
            evaluation.append(f"W2 {entry['w2']:.4g}" + (f" at {name} px" if len(result["resolutions"]) > 1 else ""))
    samples = ", ".join(os.path.relpath(path, workdir) for path in sample_paths) or "none written"
    return (f"done at step {result['step']}: {', '.join(evaluation)}; in {workdir}: eval.json, metrics.jsonl, "
            f"config.json, checkpoints/, samples: {samples}")
