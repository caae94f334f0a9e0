"""Networks, the analytic Gaussian-mixture oracle and exact prediction conversions."""

from models.mlp import MLP
from models.oracle import GaussianMixture
from models.predictions import KINDS, convert, converted

__all__ = ["MLP", "GaussianMixture", "KINDS", "convert", "converted"]
