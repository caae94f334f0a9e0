"""The registry of networks. Those of `NETWORKS` are called as `net.apply(params, x, t)` and return x's shape and
dtype (a prediction); those of `FLOWS` are normalizing flows, `net.apply(params, x, labels) -> (z, logdet)`."""

from __future__ import annotations

import dataclasses

from models.dit import DiT
from models.mlp import MLP
from models.tarflow import TarFlow
from models.unet import UNet

NETWORKS = {"mlp": MLP, "unet": UNet, "dit": DiT}
FLOWS = {"tarflow": TarFlow}


def network_options(cls):
    """The keyword options (dataclass fields) of a network class, without flax's `parent` and `name`."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def get_network(name, **options):
    """The network registered under `name` ("mlp", "unet", "dit", "tarflow"), built with keyword options.

    Example:
        >>> get_network("mlp", hidden=64, depth=3, time_input="concat", activation="selu").hidden
        64
    """
    registry = {**NETWORKS, **FLOWS}
    if name not in registry:
        raise ValueError(f"unknown network {name!r}; valid names: {sorted(registry)}")
    cls = registry[name]
    valid = network_options(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"network {name!r} has no option(s) {unknown}; valid options: {valid}")
    return cls(**options)
