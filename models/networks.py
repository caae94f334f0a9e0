"""The registry of networks: every one is called as `net.apply(params, x, t)` and returns x's shape and dtype."""

from __future__ import annotations

import dataclasses

from models.dit import DiT
from models.mlp import MLP
from models.unet import UNet

NETWORKS = {"mlp": MLP, "unet": UNet, "dit": DiT}


def network_options(cls):
    """The keyword options (dataclass fields) of a network class, without flax's `parent` and `name`."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def get_network(name, **options):
    """The network registered under `name` ("mlp", "unet", "dit"), built with keyword options.

    Example:
        >>> get_network("mlp", hidden=64, depth=3, time_input="concat", activation="selu").hidden
        64
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {sorted(NETWORKS)}")
    cls = NETWORKS[name]
    valid = network_options(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"network {name!r} has no option(s) {unknown}; valid options: {valid}")
    return cls(**options)
