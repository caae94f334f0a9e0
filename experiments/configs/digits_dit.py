"""A DiT trained at 16 and 32 px at once (the loss is the mean of both), flow matching on the OT path, digits.

One set of weights runs at both sizes: the 2-D sin-cos positions are computed from the patch grid at call time.
This is the multi-resolution model that bottleneck sampling (high -> low -> high) needs.

Launch (from the repository root):

    python scripts/train.py --config experiments/configs/digits_dit.py --workdir outputs/digits_dit

Variants (`digits_dit.py:ARG`): `smoke` a tiny DiT for a few steps, for tests; `cpu` a DiT sized for a 2-core CPU
(patch 4, width 64: 64 tokens at 32 px, 16 at 16 px), the full config being ~3 s a step there.
Overrides: `--config.model.dit.depth=6 --config.data.image_sizes="(16, 32)"`.
"""

from __future__ import annotations

from fastsamplers.experiments.configs import parse_arg
from fastsamplers.experiments.configs.train_base import base_config


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, cpu=False)
    c = base_config()
    c.data.name = "digits"
    c.data.image_sizes = (16, 32)
    c.process.name = "ot"
    c.model.name = "dit"
    c.model.dit.update(patch_size=4 if arg.smoke else 2, hidden=32 if arg.smoke else 128, depth=1 if arg.smoke else 4,
                       num_heads=2 if arg.smoke else 4)
    if arg.cpu:
        c.model.dit.update(patch_size=4, hidden=64)
    c.loss.prediction = "velocity"
    c.loss.time_sampling = "logit_normal"  # SD3's choice for rectified flows
    c.loss.t_min, c.loss.t_max = 0.0, 1.0
    c.train.num_steps = 10 if arg.smoke else 20000
    c.train.batch_size = 8 if arg.smoke else 64
    c.train.lr = 3e-4
    c.train.warmup_steps = 2 if arg.smoke else 500
    c.train.weight_decay = 0.0
    c.train.ema_decay = 0.99 if arg.smoke else 0.9995
    c.train.log_every = 5 if arg.smoke else 200
    c.train.checkpoint_every = 5 if arg.smoke else 2000
    c.train.sample_every = 0 if arg.smoke else 2000
    c.train.progress = not arg.smoke
    c.sample.solver = "euler" if arg.smoke else "heun"
    c.sample.nfe = 3 if arg.smoke else 39
    c.sample.t_min, c.sample.t_max = 0.0, 1.0
    c.sample.num_samples = 8 if arg.smoke else 64
    c.eval.num_samples = 8 if arg.smoke else 500
    c.eval.loss_batches = 1 if arg.smoke else 8
    c.lock()
    return c
