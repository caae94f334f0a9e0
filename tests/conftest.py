"""Test setup: float64 everywhere (numerical methods are tested against float64 truth) and no silent rank
promotion. Tests that need float32 say so with `jax.enable_x64(False)`."""

import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def oracle():
    from models import GaussianMixture

    return GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
