"""EDM's sampler as a config: our solvers reproduce NVlabs/edm's `edm_sampler` (generate.py) in float64.

tests/fixtures/edm_sampler.npz (scripts/make_edm_sampler_fixture.py) holds EDM's own edm_sampler run on the exact
denoiser of the `oracle` mixture, with the noise its randn_like returned at each step. EDM's deterministic sampler
is `heun` on `get_timesteps("edm", process, N, append_zero=True)` (rho = 7 from sigma_max to sigma_min, then
t_N = 0, the last step Euler: NFE 2N - 1) with an x0 model; its stochastic one is `edm_stochastic` with the same
S_churn, S_min, S_max, S_noise on the same grid. EDM draws its noise with torch, so the stochastic solve is fed
EDM's draws through the solver's noise source (`Solver.integrate(..., noise=...)`, whose `normal(i, ...)` gives
step i's draw): `samplers.sample` itself draws from a JAX key.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models import GaussianMixture, predictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = np.load(os.path.join(ROOT, "tests", "fixtures", "edm_sampler.npz"))
PROCESS = schedules.get_process("edm")  # alpha = 1, sigma = t in [0.002, 80]: EDM's defaults
STOCHASTIC = dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
MIXTURE = GaussianMixture.create(FIXTURE["weights"], FIXTURE["means"], FIXTURE["stds"])


def _relative_error(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


def _edm_grid(num_steps):
    return schedules.get_timesteps("edm", PROCESS, num_steps=num_steps, append_zero=True)


class EDMNoise:
    """A noise source that returns EDM's recorded draw of step i (the `samplers.noise.Noise` interface)."""

    def __init__(self, draws):
        self.draws = jnp.asarray(draws)

    def normal(self, i, s, t, like, stream=0):
        assert stream == 0  # edm_stochastic draws once per step, as EDM does
        return self.draws[i].astype(like.dtype)


def test_the_fixture_mixture_is_the_oracle(oracle):
    """The mixture EDM ran on is the tests' `oracle` (equal to rounding: XLA's settings may move the last bit of a
    draw); the comparisons below use the recorded parameters themselves."""
    for name in ("weights", "means", "stds"):
        np.testing.assert_allclose(np.asarray(getattr(oracle, name)), FIXTURE[name], rtol=1e-14, atol=0)


def test_the_grid_is_edms():
    """EDM's t_steps: (sigma_max^(1/7) + i / (N - 1) (sigma_min^(1/7) - sigma_max^(1/7)))^7, i < N, then 0."""
    i = np.arange(18)
    theirs = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.asarray(_edm_grid(18)), np.append(theirs, 0.0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("num_steps", [6, 18])
@pytest.mark.parametrize("solver", ["heun", "edm_stochastic_churn0"])
def test_deterministic_edm_sampler(solver, num_steps):
    """`heun` (and `edm_stochastic` with S_churn = 0) on EDM's grid with the final step to sigma = 0."""
    chosen = samplers.get_solver("edm_stochastic", S_churn=0.0) if solver.endswith("churn0") else solver
    x_init = jnp.asarray(FIXTURE["latents"]) * PROCESS.t_max  # edm_sampler: latents * t_steps[0]
    x, info = samplers.sample(MIXTURE.model_fn(PROCESS, "x0"), chosen, PROCESS, x_init, _edm_grid(num_steps),
                              prediction="x0")
    assert int(info["nfe"]) == 2 * num_steps - 1
    assert _relative_error(x, FIXTURE[f"out_heun_{num_steps}"]) < 1e-10


@pytest.mark.parametrize("num_steps", [6, 18])
def test_edm_stochastic_with_edms_noise(num_steps):
    solver = samplers.get_solver("edm_stochastic", **STOCHASTIC)
    model = predictions.converted(MIXTURE.model_fn(PROCESS, "x0"), "x0", solver.native, PROCESS)
    x_init = jnp.asarray(FIXTURE["latents"]) * PROCESS.t_max
    noise = FIXTURE[f"noise_churn_{num_steps}"]
    x, nfe, _ = solver.integrate(model, PROCESS, x_init, _edm_grid(num_steps), noise=EDMNoise(noise))
    assert int(nfe) == 2 * num_steps - 1
    theirs = FIXTURE[f"out_churn_{num_steps}"]
    assert _relative_error(x, theirs) < 1e-10
    # the noise matters: the deterministic result is far from it
    assert _relative_error(FIXTURE[f"out_heun_{num_steps}"], theirs) > 1e-3
