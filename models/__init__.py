"""Networks, the analytic Gaussian-mixture oracle and exact prediction conversions."""

from models.dit import DiT
from models.mlp import MLP
from models.networks import FLOWS, NETWORKS, get_network
from models.oracle import GaussianMixture
from models import pretrained
from models.predictions import KINDS, convert, converted
from models.tarflow import TarFlow
from models.unet import UNet

__all__ = ["MLP", "UNet", "DiT", "TarFlow", "FLOWS", "NETWORKS", "get_network", "GaussianMixture", "KINDS", "convert",
           "converted", "pretrained"]
