"""Conditional flow matching on the OT path for a 2-D set: N(0, I) -> moons (x 3 - 1), as in TorchCFM's benchmark.

Launch (from the repository root):

    python scripts/train.py --config experiments/configs/toy2d_fm.py:coupling=ot --workdir outputs/toy2d_ot

Variants (`toy2d_fm.py:ARG`, comma-separated):
  coupling=C   independent (default) | ot (exact minibatch OT) | sinkhorn (entropic OT plan);
  dataset=D    moons (default) | 8gaussians | checkerboard | swissroll;
  path=P       ot (default: sigma = t, alpha = 1 - t) | kinetic (the data's kinetic-optimal Gaussian path,
               `schedules.kinetic`: its separation estimated from the data at the first build, kept in the workdir);
  smoke        300 steps, small evaluation: seconds on a CPU, for tests.
Overrides: `--config.train.num_steps=20000 --config.loss.sinkhorn_epsilon=0.1 --config.sample.nfe=4`.
"""

from __future__ import annotations

from fastsamplers.experiments.configs import PATHS, parse_arg
from fastsamplers.experiments.configs.train_base import base_config


def get_config(arg=None):
    arg = parse_arg(arg, choices={"path": PATHS}, coupling="independent", dataset="moons", path="ot",
                    smoke=False)
    c = base_config()
    c.data.name = arg.dataset
    c.process.name = PATHS.lookup(arg.path)
    # TorchCFM's MLP(dim=2, w=64, time_varying=True): t appended to x, 3 hidden layers of 64, SELU.
    c.model.name = "mlp"
    c.model.mlp.update(hidden=64, depth=3, activation="selu", time_input="concat", zero_init_output=False)
    c.loss.prediction = "velocity"
    c.loss.coupling = arg.coupling
    c.loss.t_min, c.loss.t_max = 0.0, 1.0
    c.train.num_steps = 300 if arg.smoke else 20_000
    c.train.batch_size = 256
    c.train.lr = 1e-3
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.0  # plain weights, as TorchCFM evaluates them
    c.train.steps_per_call = 100  # a small model: run 100 steps per compiled call
    c.train.log_every = 100 if arg.smoke else 1000
    c.train.checkpoint_every = 100 if arg.smoke else 5000
    c.train.progress = not arg.smoke
    c.sample.solver = "euler"
    c.sample.grid = "uniform"
    c.sample.nfe = 100
    c.sample.t_min, c.sample.t_max = 0.0, 1.0  # the velocity model is defined at t = 1 (pure noise) and t = 0
    c.sample.num_samples = 1000
    c.sample.use_ema = False
    c.eval.num_samples = 500 if arg.smoke else 2000
    c.eval.loss_batches = 2 if arg.smoke else 8
    c.lock()
    return c
