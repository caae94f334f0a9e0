"""SA-Solver (Xue et al. 2023): parity with diffusers' `SASolverScheduler` (a recorded fixture, with the scheduler's
noise replaced by recorded draws that our solver is fed too), its special cases (tau = 0 without a corrector is
DPM-Solver++(2M) with the phi_2 rule; order 1 with tau = 1 is DDPM ancestral sampling on the same noise) and bad
options. Its orders are measured with every solver's in tests/test_order.py, its distribution in
tests/test_stochastic.py (both through `SASolver.variants`)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "sasolver_diffusers.npz")

# Fixture case name -> our options (scripts/make_sasolver_fixture.py's CASES; diffusers' default tau_func is 1 on
# timesteps 200..800, i.e. step start times t = (n + 1) / 1000 in [0.201, 0.801]).
DEFAULT_TAU = dict(tau=1.0, tau_interval=(0.201, 0.801))
DIFFUSERS_CASES = {
    "p2c2_default": dict(predictor_order=2, corrector_order=2, **DEFAULT_TAU),
    "p3c4_default": dict(predictor_order=3, corrector_order=4, **DEFAULT_TAU),
    "p3c3_zero": dict(predictor_order=3, corrector_order=3, tau=0.0),
    "p2c2_zero_nolof": dict(predictor_order=2, corrector_order=2, tau=0.0, lower_order_final=False),
    "p1c1_one": dict(predictor_order=1, corrector_order=1, tau=1.0),
    "p4c3_one": dict(predictor_order=4, corrector_order=3, tau=1.0),
}


class _Recorded:
    """A noise source returning recorded draws: step i gets noises[i] (the fixture's, which diffusers drew)."""

    def __init__(self, noises):
        self.noises = jnp.asarray(noises)

    def normal(self, i, s, t, like, stream=0):
        return self.noises[i].astype(like.dtype)


def _ours(d, opts):
    """Our sa_solver on diffusers' grid (vp_discrete on the same alphas_cumprod; timestep n at t = (n + 1) / 1000,
    diffusers' final sigma of timestep 0 at t = 1/1000), on the fixture's toy noise prediction converted to x0."""
    alphas_cumprod = d["alphas_cumprod"]
    p = schedules.get_process("vp_discrete", alphas_cumprod=tuple(float(a) for a in alphas_cumprod))
    n = len(alphas_cumprod)
    ts = jnp.asarray(np.concatenate([(d["timesteps"] + 1.0) / n, [1.0 / n]]))
    mu, std, w = (jnp.asarray(d[f"param_{k}"]) for k in ("mu", "std", "w"))

    def x0(x, t):
        alpha, sigma = p.alpha(t), p.sigma(t)
        eps = sigma * (x - alpha * mu[None]) / (alpha**2 * std[None] ** 2 + sigma**2) + 0.1 * sigma * jnp.tanh(x @ w)
        return (x - sigma * eps) / alpha

    solver = samplers.get_solver("sa_solver", **opts)
    noise = _Recorded(d["noises"]) if solver.stochastic else None
    _, _, trajectory = solver.integrate(x0, p, jnp.asarray(d["param_x_init"]), ts, save_trajectory=True, noise=noise)
    return np.asarray(trajectory)


def _rel(ours, ref):
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CASES))
def test_matches_the_recorded_diffusers_trajectory(name):
    """Every state of the 10-step trajectory equals diffusers' (recorded by scripts/make_sasolver_fixture.py): to
    float64 precision on float64 sigmas, to the rounding of the stock float32 sigma table otherwise."""
    d = np.load(FIXTURE)
    ours = _ours(d, DIFFUSERS_CASES[name])
    assert _rel(ours, d[f"{name}_f64_states"]) < 1e-12
    assert _rel(ours, d[f"{name}_stock_states"]) < 5e-6


def test_the_fixture_is_small_and_covers_every_case():
    assert os.path.getsize(FIXTURE) < 100_000
    d = np.load(FIXTURE)
    assert {k[: -len("_f64_states")] for k in d.files if k.endswith("_f64_states")} == set(DIFFUSERS_CASES)


def _problem(num_steps=12):
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    return p, gm.model_fn(p, "x0"), p.prior(jax.random.PRNGKey(1), (8, 3)), schedules.get_timesteps("logsnr", p,
                                                                                                     num_steps)


def test_tau_zero_without_a_corrector_is_dpm_solver_pp_2m_heun():
    """The exact integral of the linear interpolant in lambda is DPM-Solver++(2M) with the phi_2 ("heun") rule."""
    p, model, x_init, ts = _problem()
    ours, info = samplers.sample(model, samplers.get_solver("sa_solver", predictor_order=2, corrector_order=0,
                                                            tau=0.0, variant="exact", lower_order_final=False),
                                 p, x_init, ts, prediction="x0")
    theirs, _ = samplers.sample(model, samplers.get_solver("dpmpp_2m_sde", eta=0.0, solver_type="heun",
                                                           lower_order_final=False), p, x_init, ts, prediction="x0")
    assert info["nfe"] == 12
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13)


def test_order_one_with_tau_one_is_ddpm_on_the_same_noise():
    """SA-Predictor 1 with tau = 1 is the posterior step of DDPM (ddim, eta = 1), and both draw step i's noise from
    the same key: the samples agree to rounding."""
    p, model, x_init, ts = _problem()
    key = jax.random.PRNGKey(3)
    ours, _ = samplers.sample(model, samplers.get_solver("sa_solver", predictor_order=1, corrector_order=0),
                              p, x_init, ts, prediction="x0", key=key)
    theirs, _ = samplers.sample(model, samplers.get_solver("ddim", eta=1.0), p, x_init, ts, prediction="x0", key=key)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_a_final_step_to_sigma_zero_returns_x0_hat():
    p, model, x_init, _ = _problem()
    ts = schedules.get_timesteps("logsnr", p, 6, append_zero=True)
    solver = samplers.get_solver("sa_solver", predictor_order=3, corrector_order=3)
    x, info = samplers.sample(model, solver, p, x_init, ts, prediction="x0", key=jax.random.PRNGKey(0),
                              save_trajectory=True)
    np.testing.assert_allclose(x, model(info["trajectory"][-2], ts[-2]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("opts, match", [
    (dict(predictor_order=5), r"predictor_order in \[1, 2, 3, 4\]"),
    (dict(corrector_order=-1), r"corrector_order in \[0, 1, 2, 3, 4\]"),
    (dict(predictor_order=True), "predictor_order"),
    (dict(tau=-1.0), "tau must be a finite number >= 0"),
    (dict(tau=float("nan")), "tau must be a finite number >= 0"),
    (dict(tau_interval=(0.8, 0.2)), "t_lo <= t_hi"),
    (dict(tau_interval=(0.2,)), "tau_interval"),
    (dict(variant="paper"), "'published', 'exact'"),
    (dict(lower_order_final="yes"), "lower_order_final must be True or False"),
])
def test_bad_options_are_clear_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        samplers.get_solver("sa_solver", **opts)
