"""Networks, the analytic Gaussian-mixture oracle, exact prediction conversions, the Light Schroedinger Bridge and
flow maps."""

from fastsamplers.models.dit import DiT
from fastsamplers.models import flow_map, light_sb
from fastsamplers.models.flow_map import FlowMapFn, FlowMapModel
from fastsamplers.models.light_sb import LightSB
from fastsamplers.models.mlp import MLP
from fastsamplers.models.networks import FLOWS, NETWORKS, get_network
from fastsamplers.models.oracle import GaussianMixture
from fastsamplers.models import pretrained
from fastsamplers.models.predictions import KINDS, convert, converted
from fastsamplers.models.tarflow import TarFlow
from fastsamplers.models.unet import UNet

__all__ = ["MLP", "UNet", "DiT", "TarFlow", "FLOWS", "NETWORKS", "get_network", "GaussianMixture", "KINDS", "convert",
           "converted", "pretrained", "light_sb", "LightSB", "flow_map", "FlowMapFn", "FlowMapModel"]
