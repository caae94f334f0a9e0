"""Sampling a loaded checkpoint equals diffusers' pipeline loop: our `ddim` and `dpmpp_2m` on the ddpm fixture UNet
(tests/fixtures/pretrained/ddpm: diffusers' UNet2DModel with random weights) against `DDIMScheduler` and
`DPMSolverMultistepScheduler` (dpmsolver++, order 2) at 10 steps, recorded by
scripts/make_pretrained_sampling_fixture.py in tests/fixtures/pretrained/sampling_diffusers.npz, and live where torch
and diffusers import.

The grid. The loader's process is `vp_discrete` on the checkpoint's alphas_cumprod, where discrete timestep n sits at
t = (n + 1) / N exactly (alpha(t)^2 = alphas_cumprod[n]) and the network is fed N t - 1 = n. Each diffusers timestep
n_i is therefore the grid point t_i = (n_i + 1) / N; the network sees the same integer timesteps, and both sides take
alpha and sigma from the same table. The last step's target:
  - DDIM goes to `final_alpha_cumprod`: 1 when set_alpha_to_one (the default, and what google/ddpm-cifar10-32's
    config gives), which is alpha = 1, sigma = 0, i.e. t = 0 in our time (the step returns x0_hat); otherwise
    alphas_cumprod[0], i.e. t = 1 / N (the first discrete time, the process's t_min).
  - DPM-Solver++ goes to its final sigma: 0 ("zero", the default) is t = 0; "sigma_min" (sigma of timestep 0) is
    t = 1 / N.
DDIM's "leading" spacing with steps_offset = k visits 900 + k, 800 + k, ..., k (its previous timestep is always the
next one in the list, N // 10 below), so ts = (901 + k, ..., 1 + k) / N followed by the final target.

Precision: the network runs in float32 on both sides (our model function rounds the sample to float32 for it); the
sampler arithmetic runs in float64 here and, for the "f64" reference, in diffusers too (the script swaps in the
float64 table). Every state of the trajectory agrees to 1e-5 of the sample's scale (max |ours - theirs| /
max |theirs|, per state); against diffusers as shipped (float32 tables and sample), the final samples agree to 1e-5
as well.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.models import pretrained
from fastsamplers import samplers
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pretrained", "sampling_diffusers.npz")
TOLERANCE = 1e-5

# Fixture case -> our solver (scripts/make_pretrained_sampling_fixture.py's CASES).
SOLVERS = {"ddim": samplers.get_solver("ddim"), "ddim_offset1_a0": samplers.get_solver("ddim"),
           "dpmpp_2m": samplers.get_solver("dpmpp_2m")}


def _script():
    return load_script("make_pretrained_sampling_fixture")


@pytest.fixture(scope="module")
def model():
    return pretrained.load(MODEL)


@pytest.fixture(scope="module")
def recorded():
    return np.load(FIXTURE)


def grid(timesteps, final_alpha_cumprod, alphas_cumprod):
    """Our ts for diffusers' timesteps and the alpha_prod of its last step's target (see the module docstring)."""
    n = len(alphas_cumprod)
    if final_alpha_cumprod == 1.0:
        last = 0.0
    elif final_alpha_cumprod == pytest.approx(float(alphas_cumprod[0]), rel=1e-6):
        last = 1.0 / n
    else:
        raise AssertionError(f"unexpected final alpha_prod {final_alpha_cumprod}")
    return np.concatenate([(np.asarray(timesteps, np.float64) + 1.0) / n, [last]])


def float32_network(m):
    """m.model_fn with the network in float32 whatever the sampler's dtype."""
    def model_fn(x, t, params):
        return m.model_fn(x.astype(jnp.float32), t, params).astype(x.dtype)
    return model_fn


_FLOAT32_FNS = {}


def ours(m, name, timesteps, final_alpha_cumprod, x_init):
    """Our trajectory (N + 1, B, H, W, C), float64 sampler on the float32 network."""
    fn = _FLOAT32_FNS.setdefault(id(m), float32_network(m))  # one function object: one compile per solver
    ts = grid(timesteps, final_alpha_cumprod, m.process.alphas_cumprod)
    _, info = samplers.sample(fn, SOLVERS[name], m.process, jnp.asarray(x_init, jnp.float64), ts,
                              prediction=m.prediction, args=m.params, save_trajectory=True)
    return np.asarray(info["trajectory"])


def rel_errors(ours_states, their_states):
    """Per state max |ours - theirs| / max |theirs|."""
    diff = np.abs(ours_states - np.asarray(their_states, np.float64)).reshape(len(ours_states), -1).max(axis=1)
    return diff / np.abs(np.asarray(their_states, np.float64)).reshape(len(their_states), -1).max(axis=1)


def test_the_loader_process_is_the_fixture_table(model, recorded):
    """The f64 reference ran on the table our loader builds from the same scheduler config."""
    assert jax.config.jax_enable_x64
    np.testing.assert_array_equal(np.asarray(model.process.alphas_cumprod), recorded["alphas_cumprod"])
    assert model.prediction == "eps"


def test_the_grids_are_the_documented_ones(recorded):
    table = recorded["alphas_cumprod"]
    ts = {name: grid(recorded[f"{name}_timesteps"], float(recorded[f"{name}_final_alpha_cumprod"]), table)
          for name in SOLVERS}
    np.testing.assert_allclose(ts["ddim"], np.r_[np.arange(901, 0, -100) / 1000, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ts["ddim_offset1_a0"], np.r_[np.arange(902, 1, -100) / 1000, 1e-3], rtol=0,
                               atol=1e-15)
    np.testing.assert_allclose(ts["dpmpp_2m"], np.r_[[1.0, 0.9, 0.8, 0.7, 0.6, 0.501, 0.401, 0.301, 0.201, 0.101],
                                                     0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_matches_the_recorded_diffusers_loop(model, recorded, name):
    states = recorded[f"{name}_f64_states"]
    traj = ours(model, name, recorded[f"{name}_timesteps"], float(recorded[f"{name}_final_alpha_cumprod"]),
                recorded["x_init"])
    assert traj.shape == states.shape == (11, 4, 8, 8, 3)
    np.testing.assert_array_equal(traj[0], recorded["x_init"])
    errors = rel_errors(traj, states)
    assert errors.max() < TOLERANCE, errors
    # The trajectory moves far from where it started (a check that can fail: not a copy of x_init).
    assert rel_errors(traj[-1:], traj[:1]).max() > 1.0
    stock = rel_errors(traj[-1:], recorded[f"{name}_stock_final"][None])
    assert stock.max() < TOLERANCE, stock


def test_the_fixture_is_small_and_covers_every_case(recorded):
    assert os.path.getsize(FIXTURE) < 200_000
    assert {k[: -len("_f64_states")] for k in recorded.files if k.endswith("_f64_states")} == set(SOLVERS)


def test_a_wrong_grid_is_detected(model, recorded):
    """The comparison is sharp: with set_alpha_to_one = False, a last step to t = 0 instead of t = 1/N (the target
    alphas_cumprod[0] taken for 1) fails on the last state only."""
    name = "ddim_offset1_a0"
    traj = ours(model, name, recorded[f"{name}_timesteps"], 1.0, recorded["x_init"])
    errors = rel_errors(traj, recorded[f"{name}_f64_states"])
    assert errors[:-1].max() < TOLERANCE and errors[-1] > 5 * TOLERANCE, errors


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_matches_diffusers_live(model, name):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    script = _script()
    case = next(c for c in script.CASES if c[0] == name)
    unet = script.load_unet(MODEL)
    x_init = script.initial_sample(unet, seed=1)  # a fresh sample, not the recorded one
    timesteps, final, states = script.run_case(case, unet, x_init, float64=True)
    errors = rel_errors(ours(model, name, timesteps, final, x_init), states)
    assert errors.max() < TOLERANCE, errors
