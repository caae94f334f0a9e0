"""The Gaussian-mixture oracle block shared by the oracle configs (`quickstart.py`, `distill_oracle.py`): which
mixture, on which process, predicting what. Not a config itself (no `get_config`)."""

from __future__ import annotations

import ml_collections


def add_oracle(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Set the oracle's keys on `config` (unlocked): the seed that draws the mixture (and every batch), its size,
    the process and the prediction kind of its model function. Returns `config`."""
    config.seed = 0
    config.oracle = ml_collections.ConfigDict()
    config.oracle.dim = 8
    config.oracle.num_components = 6
    config.process = "vp_linear"  # schedules.PROCESSES
    config.prediction = "eps"  # what the oracle model predicts; each solver converts it to its native kind
    return config
