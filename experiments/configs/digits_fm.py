"""Flow matching on the OT path for scikit-learn's digits (at their native 8 x 8 px) with a small UNet.

Launch (from the repository root; about 15 minutes on a 2-core CPU, ~150 ms a step):

    python scripts/train.py --config experiments/configs/digits_fm.py --workdir outputs/digits_fm

Variants (`digits_fm.py:ARG`): `coupling=ot` pairs each minibatch by exact OT (default independent);
`path=kinetic` trains on the digits' kinetic-optimal Gaussian path (`schedules.kinetic`, Shaul et al. 2023; its
separation estimated from the data at the first build, kept in the workdir; default `ot`, sigma = t);
`size=8|16|32` the resolution (default 8, the native size); `smoke` a few steps of a tiny UNet, for tests;
`conditional` a class-conditional UNet (10 digit classes, label dropout 0.1) sampled with classifier-free guidance
of scale 2 (`samplers.guided`; it needs the default independent coupling); flags combine, e.g. `conditional,smoke`.
Launch the conditional run with

    python scripts/train.py --config experiments/configs/digits_fm.py:conditional --workdir outputs/digits_fm_cond

Overrides: `--config.train.num_steps=20000 --config.sample.solver=heun --config.sample.nfe=19`.
"""

from __future__ import annotations

from fastsamplers.experiments.configs import PATHS, parse_arg
from fastsamplers.experiments.configs.train_base import digits_unet


def get_config(arg=None):
    arg = parse_arg(arg, choices={"path": PATHS}, coupling="independent", path="ot", size=0, smoke=False,
                    conditional=False)
    c = digits_unet(arg.size or 8, arg.smoke, arg.conditional)
    c.process.name = PATHS.lookup(arg.path)
    c.loss.prediction = "velocity"
    c.loss.coupling = arg.coupling
    c.loss.t_min, c.loss.t_max = 0.0, 1.0
    c.sample.solver = "euler" if arg.smoke else "heun"
    c.sample.nfe = 4 if arg.smoke else 39
    c.sample.t_min, c.sample.t_max = 0.0, 1.0
    c.lock()
    return c
