"""Align Your Steps (`schedules.optimal.ays`, `schedules.distill("ays", ...)`) against closed forms on Gaussian data.

For data N(0, c^2 I) with the exact denoiser, E||Delta D||^2 / dim = c^4 g(sigma) (derived in the module docstring),
so the KLUB is c^4 sum Z(lo, hi) in closed form and each sample's importance ratio is c^4 chi^2_dim / dim: the
estimator's relative standard deviation over B samples is sqrt(2 / (dim B)) per interval, which sets the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from fastsamplers import samplers, schedules
from fastsamplers.models.oracle import GaussianMixture
from fastsamplers.schedules.optimal import ays

C = ays.PROPOSAL_C  # the data's std equals the proposal's c: the case the paper's Gaussian analysis treats
DIM, BATCH = 16, 64


@pytest.fixture(scope="module")
def gaussian():
    process = schedules.get_process("edm")
    gm = GaussianMixture.create(jnp.ones(1), jnp.zeros((1, DIM)), C)
    return process, gm.model_fn(process, "eps"), gm.sample(jax.random.PRNGKey(3), BATCH)


@pytest.fixture(scope="module")
def fitted(gaussian):
    """The real fit (slow tests): both levels, to the early stop."""
    process, model, data = gaussian
    return ays.fit(model, process, data, (10, 20), key=jax.random.PRNGKey(5))


@pytest.fixture(scope="module")
def small():
    """A cheap fit for the structural checks of the default suite: 2-d data, 8 samples, one sweep a level (the
    same compiled programs for every test that fits this model)."""
    process = schedules.get_process("edm")
    gm = GaussianMixture.create(jnp.ones(1), jnp.zeros((1, 2)), C)
    model, data = gm.model_fn(process, "eps"), gm.sample(jax.random.PRNGKey(3), 8)
    return process, model, data, ays.fit(model, process, data, (10, 20), key=jax.random.PRNGKey(5), max_sweeps=1)


def _optimal_gaussian_klub(sigma_min, sigma_max, n):
    """The closed-form KLUB minimised over n-step schedules (log gaps by a softmax, BFGS): (its minimum, the
    schedule)."""
    lo, hi = np.log(sigma_min), np.log(sigma_max)

    def schedule(z):
        p = np.exp(z - z.max())
        return np.exp(hi - (hi - lo) * np.concatenate([[0.0], np.cumsum(p / p.sum())]))

    klub = jax.jit(ays.gaussian_klub)  # one compile, not an eager dispatch per BFGS evaluation
    res = optimize.minimize(lambda z: float(klub(schedule(z))), np.zeros(n), method="BFGS", options=dict(gtol=1e-12))
    return res.fun, schedule(res.x)


def test_interval_mass_is_the_integral():
    lo, hi = 0.01, 3.0
    f = lambda s: s**-3 * (1 / (s * s + C * C) - 1 / (hi * hi + C * C))
    for upper in (0.05, 1.0, hi):
        expected, _ = integrate.quad(f, lo, upper, epsabs=0, epsrel=1e-12, limit=200)
        np.testing.assert_allclose(float(ays.interval_mass(lo, upper, hi)), expected, rtol=1e-10)


def test_proposal_draws_follow_its_cdf():
    """The bisection inverts the CDF: CDF(sample(u)) = u."""
    lo, hi = jnp.asarray(0.002), jnp.asarray(80.0)
    u = jnp.linspace(0.01, 0.99, 9)
    s = ays.sample_sigma(u, lo, hi)
    cdf = ays.interval_mass(lo, s, hi) / ays.interval_mass(lo, hi, hi)
    np.testing.assert_allclose(np.asarray(cdf), np.asarray(u), atol=1e-9)


def test_estimator_matches_closed_form_on_gaussian_data(gaussian):
    process, model, data = gaussian
    denoiser = ays.edm_denoiser(model, "eps", process)
    key = jax.random.PRNGKey(7)
    klub = jax.jit(ays.interval_klub, static_argnums=0)  # one compile for the three intervals
    sigmas = [(0.002, 0.05), (0.05, 1.0), (1.0, 80.0)]
    for k, (lo, hi) in enumerate(sigmas):
        ku, ke, ke2 = jax.random.split(jax.random.fold_in(key, k), 3)
        u = jax.random.uniform(ku, (BATCH,))
        eps, eps2 = jax.random.normal(ke, data.shape), jax.random.normal(ke2, data.shape)
        estimate = float(klub(denoiser, jnp.asarray(lo), jnp.asarray(hi), data, u, eps, eps2))
        exact = C**4 * float(ays.interval_mass(lo, hi, hi))
        # c^4 chi^2_dim / dim per sample: relative std sqrt(2 / (dim B)); 5 of them
        assert abs(estimate / exact - 1) < 5 * np.sqrt(2 / (DIM * BATCH))


def test_descent_never_increases_the_klub(small):
    """Common random numbers: every candidate is scored on the same draws and the current point is one of them, so
    the estimated KLUB of a level never increases (both levels of the cheap fit; the subdivided level's history
    starts again on its own draws)."""
    info = small[3][10][1]
    history, sweeps = np.asarray(info["klub_history"]), info["sweeps"]
    for level in np.split(history, np.cumsum([n + 1 for n in sweeps])[:-1]):
        assert np.all(np.diff(level) <= 1e-12 * level[:-1])
    assert history[sweeps[0]] < history[0]  # the first level moved from the EDM grid


@pytest.mark.slow
def test_descent_reaches_the_optimum(fitted):
    _, info = fitted[10]
    history = np.asarray(info["klub_history"][: info["sweeps"][0] + 1])  # the 10-step level
    assert np.all(np.diff(history) <= 1e-12 * history[:-1])
    assert history[-1] < 0.2 * history[0]  # from the EDM grid
    sig = info["fitted_sigmas"][10]
    best, _ = _optimal_gaussian_klub(sig[-1], sig[0], 10)
    # The fit minimises a Monte Carlo estimate whose relative noise is sqrt(2 / (dim B)) = 4.4% per interval (the
    # same draws for every candidate), so its minimiser's closed-form KLUB exceeds the optimum by about that much.
    assert float(ays.gaussian_klub(sig)) < (1 + 2 * np.sqrt(2 / (DIM * BATCH))) * best
    # and it is not the arctan-linear rule (test_klub_optimum_is_not_arctan_linear_but_ddim_shrink_is)
    arctan = C * np.tan(np.linspace(np.arctan(sig[0] / C), np.arctan(sig[-1] / C), 11))
    assert float(ays.gaussian_klub(arctan)) > 10 * float(ays.gaussian_klub(sig))


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_klub_optimum_is_not_arctan_linear_but_ddim_shrink_is(gaussian):
    """The sheet's Gaussian rule (arctan(sigma_i / c) linear in i) maximises the deterministic DDIM's shrink factor
    prod cos(Delta theta) (its error on Gaussian data), not the KLUB, whose optimum (the closed form minimised here;
    the fit reaches it: test_descent_reaches_the_optimum) is near geometric at small sigma. Both derived in the
    module docstring; the shrink factor is checked against DDIM itself."""
    process, model, _ = gaussian
    sig_min, sig_max = float(process.gamma(process.t_min)), float(process.gamma(process.t_max))
    best, optimum = _optimal_gaussian_klub(sig_min, sig_max, 10)
    arctan = C * np.tan(np.linspace(np.arctan(sig_max / C), np.arctan(sig_min / C), 11))
    assert float(ays.gaussian_klub(arctan)) > 10 * best
    assert float(ays.ddim_gaussian_shrink(arctan, C)) > float(ays.ddim_gaussian_shrink(optimum, C))
    rng = np.random.default_rng(0)
    for _ in range(5):  # any perturbation of the interior lowers the shrink factor (it is the maximum)
        moved = arctan * np.exp(np.concatenate([[0], 0.05 * rng.standard_normal(9), [0]]))
        assert float(ays.ddim_gaussian_shrink(moved, C)) < float(ays.ddim_gaussian_shrink(arctan, C))
    # DDIM on a Gaussian is linear: x_end / x_start = exact flow ratio * prod cos(Delta theta).
    ts = jnp.asarray(arctan)  # edm: t = sigma
    x, _ = samplers.sample(model, "ddim", process, jnp.ones((1, DIM)), ts)
    exact = np.sqrt((C**2 + arctan[-1] ** 2) / (C**2 + arctan[0] ** 2))
    np.testing.assert_allclose(np.asarray(x), exact * float(ays.ddim_gaussian_shrink(arctan, C)), rtol=1e-10)


def test_subdivision_keeps_the_old_points(small):
    info = small[3][20][1]
    np.testing.assert_array_equal(info["fitted_sigmas"][20][::2], info["fitted_sigmas"][10])
    np.testing.assert_allclose(np.asarray(process_gamma_of(small[3][20][0])), info["fitted_sigmas"][20], rtol=1e-12)


def process_gamma_of(ts):
    return schedules.get_process("edm").gamma(ts)


def test_distill_ays_entry_point(small):
    process, model, data, _ = small
    ts = schedules.distill("ays", model, "ddim", process, data, 5, key=jax.random.PRNGKey(5))
    assert ts.shape == (6,) and np.all(np.diff(np.asarray(ts)) < 0)
    assert float(ts[0]) == process.t_max and float(ts[-1]) == pytest.approx(process.t_min)
    with pytest.raises(ValueError, match="teacher_steps.*mean nothing"):
        schedules.distill("ays", model, "ddim", process, data, 5, teacher_steps=50)
    with pytest.raises(ValueError, match="key is for method 'ays'"):
        schedules.distill("oss", model, "ddim", process, data, 5, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="'ays'"):
        schedules.distill("ayss", model, "ddim", process, data, 5)
