"""The registry of networks. Those of `NETWORKS` are called as `net.apply(params, x, t)` and return x's shape and
dtype (a prediction); those of `FLOWS` are normalizing flows, `net.apply(params, x, labels) -> (z, logdet)`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from fastsamplers.core import Registry
from fastsamplers.models.dit import DiT
from fastsamplers.models.mlp import MLP
from fastsamplers.models.tarflow import TarFlow
from fastsamplers.models.unet import UNet

NETWORKS = Registry("network", {"mlp": MLP, "unet": UNet, "dit": DiT})
FLOWS = Registry("network", {"tarflow": TarFlow})
_ALL = Registry("network", {**NETWORKS, **FLOWS})


def get_network(name: str, **options: Any) -> nn.Module:
    """The network registered under `name` ("mlp", "unet", "dit", "tarflow"), built with keyword options.

    Args:
      name: a key of `NETWORKS` (prediction networks) or `FLOWS` (normalizing flows).
      **options: the module's dataclass fields.

    Returns:
      The flax module (unbound; `init` / `apply` it).

    Example:
        >>> get_network("mlp", hidden=64, depth=3, time_input="concat", activation="selu").hidden
        64
    """
    return _ALL.build(name, **options)
