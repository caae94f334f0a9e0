"""Test setup: float64 everywhere (numerical methods are tested against float64 truth) and no silent rank
promotion. Tests that need float32 say so with `jax.enable_x64(False)`.

One persistent XLA compilation cache for the whole session: on a CPU most of a smoke run is compilation (a digits
UNet's training step and sampler: ~80% of the run), and the same programs are compiled again and again, by a
resumed run, by a script rerun in a subprocess, by the other pytest-xdist worker. The first process (xdist's
controller, or pytest alone) makes the directory and removes it at the end; the workers and the scripts the tests
start inherit it through JAX_COMPILATION_CACHE_DIR. Every program is cached, however fast it compiled (JAX's default
keeps only those that took a second or more; most of the suite's are small solver loops of 0.3-1 s, compiled again
by other tests of the same solver and grid). A cached executable is the executable the compiler made, so no result
changes. A JAX_COMPILATION_CACHE_DIR set by the caller is used and kept.

The suite's programs are small and most run once, so it compiles with XLA's optimisations mostly off
(JAX_DISABLE_MOST_OPTIMIZATIONS; XLA:CPU's loop emitters in place of its newer fusion emitters) and each program's
machine code made in one piece, not split over threads the two workers' cores cannot give. Measured here: a
third to a half of the CPU time of XLA's defaults (linear-table tests 47 s -> 16 s, a UNet training test 68 s ->
31 s). The arithmetic is the same operations, so results
agree to rounding, which every tolerance here already allows (a reduction order). The tests' subprocesses inherit
the settings through the environment. FASTSAMPLERS_TEST_XLA=default runs the suite as users' programs compile.

Checks too slow for the suite that CI runs (the README's test command) are marked `slow` and left out by default
(pyproject.toml's addopts); `scripts/test_slow.sh` runs them (`pytest -m slow`)."""

import os
import shutil
import sys
import tempfile

if os.environ.get("FASTSAMPLERS_TEST_XLA", "fast") == "fast":
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_use_fusion_emitters=false"
                               " --xla_cpu_parallel_codegen_split_count=1").strip()

import jax  # noqa: E402 (after the environment it reads)
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fastsamplers
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsamplers-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the scripts the tests start, too
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ[
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_sessionfinish(session):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def oracle():
    from fastsamplers.models import GaussianMixture

    return GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)


@pytest.fixture(scope="session")
def device_flags():
    """XLA_FLAGS for a subprocess on n simulated CPU devices, the session's own flags kept: device_flags(4)."""
    return lambda n: f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


@pytest.fixture
def guided_calls(monkeypatch):
    """`samplers.guided` spied on for one test: the keyword arguments of each call, in order (the real wrapper is
    returned, so what is sampled does not change)."""
    from fastsamplers import samplers

    calls, real = [], samplers.guided

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(samplers, "guided", spy)
    return calls
