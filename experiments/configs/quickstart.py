"""Quickstart: DEIS against DDIM and DPM-Solver++(2M) at 10 NFE, scored against the exact probability-flow map.

The data is an 8-dimensional Gaussian mixture whose every prediction is known in closed form, so each sampler's
error is measured against the true ODE solution (`samplers.exact_flow_map`), not against another sampler.

Launch (from the repository root):

    python scripts/sample.py --config experiments/configs/quickstart.py --workdir outputs/quickstart

Variants (`quickstart.py:ARG`, comma-separated):
  smoke     a batch of 256 instead of 4096, for tests (seconds on a CPU);
  nfe=N     another budget of model evaluations, e.g. `quickstart.py:nfe=20`.
Any key can also be overridden by flag, e.g. `--config.nfe=5 --config.grid=quadratic --config.batch=1024`.
"""

from __future__ import annotations

import ml_collections

from fastsamplers.experiments.configs import parse_arg
from fastsamplers.experiments.configs.oracle_base import add_oracle


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, nfe=10)
    config = add_oracle(ml_collections.ConfigDict())  # seed, oracle, process, prediction
    config.grid = "logsnr"  # schedules.GRIDS: the default for solver entries that name no grid
    config.nfe = arg.nfe  # model evaluations per sample, the same budget for every solver
    config.batch = 256 if arg.smoke else 4096

    # Each entry: a table label, a registered solver name (samplers.SOLVERS), its keyword options, and the time grid
    # its paper uses. The paper's tAB-r is deis_tab with order r + 1: order 4 is tAB3, with DEIS's quadratic grid.
    config.solvers = [
        dict(label="DEIS tAB3", name="deis_tab", options=dict(order=4), grid="quadratic"),
        dict(label="iPNDM", name="ipndm", options=dict(order=4), grid="quadratic"),
        dict(label="DDIM", name="ddim", options=dict(), grid="quadratic"),
        dict(label="DPM-Solver++(2M)", name="dpmpp_2m", options=dict(), grid="logsnr"),
    ]
    config.baseline = "DDIM"  # the label every RMSE is divided by in the "ratio" column

    config.outputs = ml_collections.ConfigDict()
    config.outputs.json = "quickstart.json"
    config.outputs.png = "quickstart.png"

    config.lock()
    return config
