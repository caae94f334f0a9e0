"""Kinetic-optimal Gaussian paths (`schedules.kinetic`): the closed-form limits, the kinetic energy against cond-OT and
against Monte Carlo with the oracle's exact velocity, and the Process contract."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.experiments.runs import kinetic_benchmark
from fastsamplers.models import GaussianMixture

EDM = schedules.get_process("edm")
T = np.linspace(0.0, 1.0, 101)


def _polar(process, t):
    """(r, theta) of (sigma, c alpha) at t, one compiled call."""
    a, s = jax.jit(lambda t: (process.alpha(t), process.sigma(t)))(t)
    a = np.asarray(a) * process.data_scale
    return np.hypot(np.asarray(s), a), np.arctan2(a, np.asarray(s))


def test_separated_data_give_cond_ot_exactly():
    # lambda = 1: w = 1, Phi = pi / 2, the geodesic is sigma = 1 - tau, alpha = tau (the paper's time)
    p = schedules.kinetic_optimal_process(lambda s: np.ones_like(s))
    r, theta = _polar(p, T)
    np.testing.assert_allclose(r * np.sin(theta), 1 - T, atol=1e-12)
    np.testing.assert_allclose(r * np.cos(theta), T, atol=1e-12)
    assert p.kinetic_energy(3) == pytest.approx(6.0)  # 2 d: the conditional energy, nothing to subtract


def test_gaussian_data_give_the_zero_energy_unit_circle():
    # N(0, I): lambda = s^2 / (1 + s^2) = sin^2 theta, w = 0, KE = d int r'^2: r = 1 (alpha^2 + sigma^2 = 1).
    # The floor w_f gives Phi = sqrt(w_f) pi / 2, so r >= cos(Phi / 2) and theta = pi tau / 2 up to O(Phi^2).
    w_floor = 1e-8
    p = schedules.kinetic_optimal_process(lambda s: s**2 / (1 + s**2), w_floor=w_floor)
    big_phi = math.sqrt(w_floor) * math.pi / 2
    assert p.big_phi == pytest.approx(big_phi, rel=1e-12)
    r, theta = _polar(p, T)
    assert np.all(r <= 1 + 1e-14) and np.all(r >= math.cos(big_phi / 2) - 1e-14)
    np.testing.assert_allclose(theta, 0.5 * math.pi * (1 - T), atol=big_phi**2)  # the cosine path
    assert p.kinetic_energy(5) <= 5 * big_phi**2
    # the general formula on cond-OT for the same data: KE / d = int 2 - 1 / ((1 - t)^2 + t^2) dt = 2 - pi / 2
    sep = schedules.Separation(s=np.tan(np.linspace(0, 1.5, 400)), lam=np.sin(np.linspace(0, 1.5, 400)) ** 2, dim=5)
    ot = schedules.kinetic_energy(sep, schedules.get_process("ot"))
    assert ot == pytest.approx(5 * (2 - math.pi / 2), rel=1e-6)


def test_denoiser_estimates_are_unbiased_on_gaussian_data():
    # exact D for N(0, I): the error per coordinate is N(0, 1 / (1 + s^2)), so (1 + s^2)(1 - lambda_hat) =
    # chi^2_{dn} / (dn), standard deviation sqrt(2 / (d n)) at every s
    dim, n = 3, 4000
    gm = GaussianMixture.create(np.ones(1), np.zeros((1, dim)), 1.0)
    samples = gm.sample(jax.random.PRNGKey(1), n)
    denoiser = kinetic_benchmark.oracle_denoiser(gm)
    for estimator, atol in (("error", 5 * math.sqrt(2 / (dim * n))), ("divergence", 1e-12)):
        # the divergence estimator is the posterior covariance itself: d / (1 + s^2) with no error for N(0, I)
        sep = schedules.separation_from_denoiser(jax.random.PRNGKey(2), denoiser, samples, num_s=16,
                                                 estimator=estimator)
        s, lam = np.asarray(sep.s) / sep.data_scale, np.asarray(sep.lam)  # raw s: the samples' scale c ~ 1
        np.testing.assert_allclose((1 - lam[1:]) * sep.data_scale**2 * (1 + s[1:] ** 2), 1.0, atol=atol)
    with pytest.raises(ValueError, match="divergence"):
        schedules.separation_from_denoiser(jax.random.PRNGKey(2), denoiser, samples, estimator="tweedie")


def _two_points_lam(s, dim):
    """lambda(s) of two orthogonal points sqrt(d) e_1, sqrt(d) e_2 (normalised: E||x1||^2 = d), exact up to a 1-d
    quadrature. Given x1 = sqrt(d) e_1 and y = s x1 + eps the posterior weight of e_1 is sigmoid(a^2 + sqrt(2) a z),
    a = s sqrt(d), z ~ N(0, 1) (the logits s y . x_j differ by a (a + eps_1 - eps_2)), and E[x1 | y] / sqrt(d) =
    (w, 1 - w): lambda = E[w^2 + (1 - w)^2], by the trapezoid rule on a z grid (spectrally accurate here)."""
    z = np.linspace(-12.0, 12.0, 1601)
    a = np.asarray(s)[:, None] * math.sqrt(dim)
    w = 0.5 * (1.0 + np.tanh(0.5 * (a**2 + math.sqrt(2.0) * a * z)))  # the sigmoid without overflow
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return np.trapezoid((w**2 + (1 - w) ** 2) * density, z, axis=-1)


def _two_points(dim, num_s=1024):
    s = np.tan(0.5 * math.pi * np.arange(num_s) / num_s)
    return schedules.Separation(s=s, lam=_two_points_lam(s, dim), dim=dim)


@pytest.fixture(scope="module")
def two_points_1d():
    sep = _two_points(1)
    return sep, schedules.kinetic_optimal_process(sep, num_nodes=513)


def test_well_separated_data_tend_to_cond_ot_and_beat_it():
    # the posterior depends on a = s sqrt(d) alone, so w -> 1 except for theta = O(1 / sqrt(d)): pi / 2 - Phi ~
    # C / sqrt(d) (a quarter for 16 times the dimension) and the path tends to cond-OT sigma = 1 - tau, alpha = tau
    gaps, devs = [], []
    ot = schedules.get_process("ot")
    for dim in (64, 1024):
        sep = _two_points(dim)
        p = schedules.kinetic_optimal_process(sep, num_nodes=513)
        r, theta = _polar(p, T)
        gaps.append(math.pi / 2 - p.big_phi)
        devs.append(max(np.max(np.abs(r * np.sin(theta) - (1 - T))), np.max(np.abs(r * np.cos(theta) - T))))
        # the closed-form minimum is the general formula on the fitted path, and not above cond-OT's energy
        ke_min, ke_ot = p.kinetic_energy(dim), schedules.kinetic_energy(sep, ot)
        assert ke_min < ke_ot < 2 * dim  # measured 121.6 < 122.2 at d = 64
        if dim == 64:  # one compile: the general formula on the fitted path is its closed-form minimum
            assert ke_min == pytest.approx(schedules.kinetic_energy(sep, p), rel=1e-5)
    # measured gaps 0.0499, 0.01246 (and 0.00312 at d = 16384); deviations 0.038, 0.011 (0.0030)
    assert gaps[1] / gaps[0] == pytest.approx(0.25, abs=0.03)
    assert devs[1] < 0.35 * devs[0] and devs[1] < 0.015


def _exact_separation_1d(gm, num_s=96, num_grid=4001):
    """lambda(s) of a 1-d mixture by quadrature on a fine grid: v = M - int p_gamma(y) D(y, gamma)^2 dy."""
    scale = math.sqrt(float(jnp.sum(gm.weights * (gm.means[:, 0] ** 2 + gm.stds[:, 0] ** 2))))
    s = np.tan(0.5 * math.pi * np.arange(num_s) / num_s)
    lo, hi = float(gm.means.min()), float(gm.means.max())

    @jax.jit
    def v_at(gamma):
        width = jnp.sqrt(jnp.max(gm.stds) ** 2 + gamma**2)
        y = jnp.linspace(lo - 12 * width, hi + 12 * width, num_grid)[:, None]
        density = jnp.exp(gm.marginal(gamma, EDM).log_prob(y, 0.0, EDM))
        d = gm.predict(y, gamma, EDM, "x0")[:, 0]
        return scale**2 - jnp.trapezoid(density * d**2, y[:, 0])

    v = np.asarray(jax.lax.map(v_at, jnp.asarray(scale / s[1:])))
    v0 = scale**2 - float(jnp.sum(gm.weights * gm.means[:, 0])) ** 2
    return schedules.Separation(s=s, lam=1 - np.concatenate([[v0], v]) / scale**2, data_scale=scale, dim=1)


@pytest.fixture(scope="module")
def mixture_1d():
    gm = GaussianMixture.create([0.3, 0.7], [[-1.5], [1.0]], [0.3, 0.5])
    sep = _exact_separation_1d(gm)
    return gm, sep, schedules.kinetic_optimal_process(sep)


@pytest.mark.slow  # 20-40 s of CPU (compiles): scripts/test_slow.sh
def test_kinetic_energy_formula_matches_monte_carlo_and_beats_cond_ot(mixture_1d):
    # the sheet's KE = int d sigma'^2 + M alpha'^2 - v sigma^2 s'^2 against E||u||^2 with the oracle's exact velocity
    # (the same draws on both paths), within 5 Monte Carlo standard errors
    gm, sep, kinetic = mixture_1d
    ot = schedules.get_process("ot")
    mc = kinetic_benchmark.kinetic_energy_mc(jax.random.PRNGKey(3), gm, {"ot": ot, "kinetic": kinetic}, num=4096)
    for name, process in (("ot", ot), ("kinetic", kinetic)):
        assert schedules.kinetic_energy(sep, process) == pytest.approx(mc[name][0], abs=5 * mc[name][1])
    assert kinetic.kinetic_energy(1) == pytest.approx(schedules.kinetic_energy(sep, kinetic), rel=1e-4)
    assert mc["kinetic"][0] <= mc["ot"][0] + 3 * mc["se_diff"]["kinetic"]
    assert kinetic.kinetic_energy(1) < schedules.kinetic_energy(sep, ot)


def test_process_contract(two_points_1d):
    _, p = two_points_1d
    t = np.linspace(p.t_min, p.t_max, 101)

    @jax.jit
    def values(t):
        h = 1e-6
        return (p.alpha(t), p.sigma(t), p.log_snr(t), p.t_of_log_snr(p.log_snr(t)), p.d_alpha(t), p.d_sigma(t),
                (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h))

    a, s, lam, t_back, da, ds, fd_a, fd_s = map(np.asarray, values(t))
    np.testing.assert_allclose(t_back, t, atol=1e-12)
    np.testing.assert_allclose(lam, np.log(a / s), atol=1e-12)
    assert np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(da, fd_a, atol=1e-6)
    np.testing.assert_allclose(ds, fd_s, atol=1e-6)
    assert float(p.alpha(0.0)) == pytest.approx(1.0) and float(p.sigma(0.0)) == pytest.approx(0.0, abs=1e-15)
    assert float(p.alpha(1.0)) == pytest.approx(0.0, abs=1e-15) and float(p.sigma(1.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs the option"):
        schedules.get_process("kinetic_optimal")


@pytest.mark.slow  # 20-40 s of CPU (compiles): scripts/test_slow.sh
def test_solvers_sample_the_kinetic_path(mixture_1d):
    # the probability-flow ODE is process-free in (gamma, y): the exact flow map is the reference on any process
    gm, _, p = mixture_1d
    x_init = np.asarray(p.prior(jax.random.PRNGKey(4), (64, 1), t=p.t_max))
    exact = samplers.exact_flow_map(gm, p, x_init, p.t_max, p.t_min)
    ts = schedules.get_timesteps("logsnr", p, 40, t_min=p.t_min, t_max=p.t_max)
    for solver, kind in (("dpmpp_2m", "x0"), ("heun", "velocity")):
        x, _ = samplers.sample(gm.model_fn(p, kind), solver, p, x_init, ts, prediction=kind)
        assert np.max(np.abs(np.asarray(x) - exact)) < 5e-2, solver  # dpmpp_2m measured 0.019 at 40 steps


@pytest.mark.slow  # about 10 s of CPU (the training chunk's compile): over the default suite's budget
def test_flow_matching_trains_and_samples_on_the_kinetic_path(tmp_path):
    # toy2d_fm.py:path=kinetic: the separation is estimated at the first build, kept in the workdir, and the
    # checkpoint's target rebuilds the same process from it (no second estimate)
    from fastsamplers.experiments import train
    from fastsamplers.experiments.train.experiment import SEPARATION_FILE

    spec = f"{train.__file__.rsplit('/experiments/', 1)[0]}/experiments/configs/toy2d_fm.py:path=kinetic,smoke"
    config = train.load_config(spec)
    config.unlock()
    config.train.num_steps, config.eval.num_samples = 100, 200
    config.lock()
    with jax.enable_x64(False):
        result = train.train(config, str(tmp_path))
        assert os.path.exists(tmp_path / SEPARATION_FILE)
        experiment = train.build(config, str(tmp_path))
        assert isinstance(experiment.process, schedules.KineticOptimal)
        assert 0.2 < experiment.process.big_phi < 0.5 * math.pi
        assert result["resolutions"]["2"]["w2"] < 2.0, result  # N(0, I) to moons is about 2.2
    with pytest.raises(ValueError, match="'ot', 'kinetic'"):
        train.load_config(spec.replace("path=kinetic", "path=vp"))


def test_digits_config_names_the_kinetic_path():
    from fastsamplers.experiments import train

    root = train.__file__.rsplit("/experiments/", 1)[0]
    assert train.load_config(f"{root}/experiments/configs/digits_fm.py:path=kinetic,smoke").process.name == (
        "kinetic_optimal")
    assert train.load_config(f"{root}/experiments/configs/digits_fm.py:smoke").process.name == "ot"
