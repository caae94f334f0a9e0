"""Test setup: float64 everywhere (numerical methods are tested against float64 truth) and no silent rank
promotion. Tests that need float32 say so with `jax.enable_x64(False)`.

One persistent XLA compilation cache for the whole session: on a CPU most of a smoke run is compilation (a digits
UNet's training step and sampler: ~80% of the run), and the same programs are compiled again and again, by a
resumed run, by a script rerun in a subprocess, by the other pytest-xdist worker. The first process (xdist's
controller, or pytest alone) makes the directory and removes it at the end; the workers and the scripts the tests
start inherit it through JAX_COMPILATION_CACHE_DIR. A cached executable is the executable the compiler made, so no
result changes. A JAX_COMPILATION_CACHE_DIR set by the caller is used and kept."""

import os
import shutil
import sys
import tempfile

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fastsamplers
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsamplers-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_sessionfinish(session):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def oracle():
    from fastsamplers.models import GaussianMixture

    return GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
