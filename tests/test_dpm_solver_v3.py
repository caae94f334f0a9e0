"""DPM-Solver-v3 (samplers/dpm_solver_v3.py) and its statistics (schedules/optimal/ems.py): degenerate statistics are
DPM-Solver++, the estimator is exact on a Gaussian, the sampler equals the reference implementation given the same
statistics (a recorded fixture, and live where torch and DPM_SOLVER_V3_REPO are there), learned files round-trip, and
the order on the 8-d oracle (slow)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.schedules.optimal.ems import estimate_statistics, roughness
from script_loader import ROOT, load_script

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "dpm_solver_v3_reference.npz")
PROCESS = schedules.get_process("vp_linear")
# The fixture's cases (scripts/make_dpm_solver_v3_fixture.py CASES) as our options; the reference's rule.
CASES = {
    "o1": dict(order=1), "o2": dict(order=2), "o3": dict(order=3), "o3_pseudo": dict(order=3, predictor_pseudo=True),
    "o2_corrector": dict(order=2, corrector=True),
    "o3_corrector": dict(order=3, corrector=True, lower_order_final=False),
    "o3_pseudo_corrector_pseudo": dict(order=3, predictor_pseudo=True, corrector=True, corrector_pseudo=True),
}
DEFAULT_CASES = ("o3_corrector", "o3_pseudo_corrector_pseudo")  # the most demanding; the others in the slow set


@pytest.fixture(scope="module")
def oracle():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    return gm, gm.model_fn(PROCESS), gm.marginal_sample(jax.random.PRNGKey(1), 4, 1.0, PROCESS)


@pytest.mark.parametrize("order, baseline", [
    (1, ("ddim", {})),
    # Order 2 expands g to first order with the exact phi_2 weight: DPM-Solver++(2M)'s "heun" rule.
    (2, ("dpmpp_2m_sde", dict(eta=0.0, solver_type="heun"))),
    # Order 3 solves the Vandermonde system: the 3M with the Taylor weight of D2 (and "heun" warm-up steps).
    (3, ("dpmpp_3m_sde", dict(eta=0.0, variant="third_order"))),
])
def test_degenerate_statistics_are_dpm_solver_pp(oracle, order, baseline):
    """l = 1, s = b = 0 on a 61-point grid, 6 steps on it: DPM-Solver++ of the same order on the same grid to 1e-12
    (the exponential rule integrates e^{L+S} = e^{lambda - lambda_0} exactly)."""
    _, model, x = oracle
    lam = np.linspace(float(PROCESS.log_snr(1.0)), float(PROCESS.log_snr(PROCESS.t_min)), 61)
    ones = np.ones((61, 3))
    solver = samplers.get_solver("dpm_solver_v3", order=order, lambdas=lam, l=ones, s=0 * ones, b=0 * ones)
    ts = solver.grid_times(PROCESS, np.asarray(PROCESS.t_of_log_snr(jnp.asarray(lam[::10]))))
    ours, _ = samplers.sample(model, solver, PROCESS, x, ts)
    theirs, _ = samplers.sample(model, samplers.get_solver(baseline[0], **baseline[1]), PROCESS, x, ts)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_statistics_of_a_gaussian_are_its_closed_form():
    """Data N(mu, diag(v)): eps = sigma (x - alpha mu) / (alpha^2 v + sigma^2) is affine with a diagonal Jacobian, so

      l = sigma^2 / (alpha^2 v + sigma^2)   (the Rademacher estimator is exact: v_i^2 = 1),
      f = (sigma eps - l x) / alpha = -sigma^2 mu / (alpha^2 v + sigma^2)   (constant in x: Var f = 0, s = 0),
      b = E f^(1) = df/dlambda - (l'_fd - l') E[x / alpha],

    the last term because the estimator takes l' by finite differences on the grid (l'_fd) where f^(1) has the
    exact l'; E[x/alpha] is mu up to the batch's sampling error, whose bound (5 standard errors of x / alpha) sets
    the tolerance on b."""
    mu, std = jnp.array([0.5, -1.0, 0.2]), jnp.array([0.3, 0.8, 1.5])
    gm = GaussianMixture.create(jnp.ones(1), mu[None], std[None])
    k = 64
    stats, info = estimate_statistics(gm.model_fn(PROCESS), PROCESS, gm.sample(jax.random.PRNGKey(1), k), 33,
                                      key=jax.random.PRNGKey(2), chunk_size=32)
    assert info["model_evaluations"] == 33 * k and info["jvps"] == 2 * 33 * k
    lam = jnp.asarray(stats["lambdas"])

    def closed(u):
        t = PROCESS.t_of_log_snr(u)
        alpha, sigma = PROCESS.alpha(t), PROCESS.sigma(t)
        return sigma**2 / (alpha**2 * std**2 + sigma**2), -sigma**2 * mu / (alpha**2 * std**2 + sigma**2)

    (l, _), (l_dot, f_dot) = jax.vmap(lambda u: jax.jvp(closed, (u,), (jnp.ones_like(u),)))(lam)
    alpha, sigma = PROCESS.alpha(PROCESS.t_of_log_snr(lam)), PROCESS.sigma(PROCESS.t_of_log_snr(lam))
    l_dot_fd = np.gradient(np.asarray(l), np.asarray(lam), axis=0, edge_order=2)
    b = f_dot - (l_dot_fd - l_dot) * mu[None]
    y_error = 5 * jnp.sqrt((std[None] ** 2 + (sigma / alpha)[:, None] ** 2) / k)
    np.testing.assert_allclose(stats["l"], l, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stats["s"], 0.0)
    assert np.all(np.abs(stats["b"] - b) <= np.abs(l_dot_fd - l_dot) * y_error + 1e-10)


def _reference_case(d, name):
    def model(x, t):
        alpha, sigma = PROCESS.alpha(t), PROCESS.sigma(t)
        return sigma * (x - alpha * d["mu"][None]) / (alpha**2 * d["var"][None] + sigma**2)

    solver = samplers.get_solver("dpm_solver_v3", quadrature="trapezoid", lambdas=d["lambdas"], l=d["l"], s=d["s"],
                                 b=d["b"], **CASES[name])
    x, _ = samplers.sample(model, solver, PROCESS, d["x_init"], d["timesteps"])
    return np.asarray(x)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_CASES else pytest.mark.slow)
                                  for n in CASES])
def test_matches_the_reference_implementation(name):
    """The authors' sampler (dpm_solver_v3.py, run in float64 by scripts/make_dpm_solver_v3_fixture.py) with the same
    statistics, grid and snapped times: equal to 1e-6 (measured: ~1e-14)."""
    d = dict(np.load(FIXTURE))
    np.testing.assert_allclose(_reference_case(d, name), d[name], rtol=0, atol=1e-6)


def test_matches_the_reference_live():
    pytest.importorskip("torch")
    repo = os.environ.get("DPM_SOLVER_V3_REPO")
    if not repo or not os.path.exists(os.path.join(repo, "dpm_solver_v3.py")):
        pytest.skip("set DPM_SOLVER_V3_REPO to a DPM-Solver-v3 checkout")
    record = load_script("make_dpm_solver_v3_fixture").run(repo)
    for name in DEFAULT_CASES:
        np.testing.assert_allclose(_reference_case(record, name), record[name], rtol=0, atol=1e-6)


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_learned_file_round_trips_with_its_statistics(tmp_path, oracle):
    """schedules.learn -> save_learned (statistics in an .npz beside the JSON) -> get_solver("file"): the same
    samples; a snapped grid's times off the statistics grid are refused before compute."""
    gm, model, x = oracle
    solver, ts, info = schedules.learn("dpm_solver_v3", model, PROCESS, x, 3, x0=gm.sample(jax.random.PRNGKey(3), 8),
                                       num_points=13, chunk_size=8, teacher_steps=12, return_info=True)
    assert info["model_evaluations_per_sample"] == 13 and info["teacher_calls_per_sample"] == 0
    path = schedules.save_learned(str(tmp_path / "v3.json"), solver, ts, process=PROCESS, method="dpm_solver_v3",
                                  calibration=info)
    assert os.path.exists(tmp_path / "v3.arrays.npz")
    loaded = samplers.get_solver("file", path=path)
    np.testing.assert_array_equal(loaded.l, solver.l)
    a, _ = samplers.sample(model, solver, PROCESS, x, ts)
    b, _ = samplers.sample(model, loaded, PROCESS, x, ts)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="statistics grid"):
        samplers.sample(model, solver, PROCESS, x, np.asarray(ts) * 0.97)


@pytest.mark.parametrize("options, match", [
    (dict(order=4), "order in"), (dict(l=np.ones(3)), "all of the statistics"),
    (dict(quadrature="simpson"), "quadrature"),
    (dict(lambdas=np.array([1.0, 0.0]), l=np.ones(2), s=np.zeros(2), b=np.zeros(2)), "increasing"),
])
def test_bad_options_are_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        samplers.get_solver("dpm_solver_v3", **options)


@pytest.mark.slow
def test_order_on_the_8d_oracle_with_estimated_statistics():
    """The estimated statistics of the 8-d oracle (learned_benchmark's problem) on a 241-point grid; steps 12 to 48 on
    it from t = 0.8 to 0.05: the global order of the third-order predictor with lower-order warm-up is >= 2 - 0.5
    (the first-order first step bounds it by 2, as for every multistep solver: tests/test_order.py). With fresh
    noise at every grid point (no common random numbers) the estimated l is rough and the fitted order was 0.87:
    errors 0.158, 0.036, 0.033, 0.021 at 12 to 96 steps; with them, errors 6.9e-2, 5.1e-3, 6.6e-4."""
    gm = GaussianMixture.random(jax.random.PRNGKey(0))
    model = gm.model_fn(PROCESS)
    x = gm.marginal_sample(jax.random.PRNGKey(2), 64, 0.8, PROCESS)
    stats, _ = estimate_statistics(model, PROCESS, gm.sample(jax.random.PRNGKey(1), 256), 241,
                                   key=jax.random.PRNGKey(3), t_min=0.05, t_max=0.8)
    assert max(roughness(stats).values()) < 0.5  # measured 0.02 / 0.08 / 0.06 for l / s / b; noise scores 1.7
    solver = samplers.get_solver("dpm_solver_v3", **stats)
    exact = samplers.exact_flow_map(gm, PROCESS, x, 0.8, 0.05)
    steps = np.array([12, 24, 48])
    errors = []
    for n in steps:
        ts = np.asarray(PROCESS.t_of_log_snr(jnp.asarray(stats["lambdas"][::240 // n])))
        y, _ = samplers.sample(model, solver, PROCESS, x, ts)
        errors.append(float(jnp.max(jnp.abs(y - exact))))
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert order >= 1.5, (order, errors)


def test_roughness_separates_smooth_statistics_from_noise():
    # mean |second difference| / mean |first difference|: about h |v''| / |v'| for a smooth curve, sqrt(3) for
    # independent noise (E|a - 2b + c| / E|a - b| = sqrt(6) / sqrt(2)); 2000 points make the noise ratio's
    # sampling error about 2%
    lam = np.linspace(-5.0, 5.0, 2001)
    noise = np.random.default_rng(0).normal(size=(2001, 3))
    r = roughness({"l": np.sin(lam)[:, None] * np.ones(3), "s": noise, "b": np.ones((2001, 3))})
    assert r["l"] < 0.01 and r["b"] == 0.0
    assert abs(r["s"] - np.sqrt(3)) < 0.1


@pytest.mark.parametrize("grid", ["logsnr", "uniform", "quadratic", "edm"])
def test_benchmark_grids_are_snapped_to_the_statistics_grid(grid):
    """The benchmark's times on any grid: nfe + 1 distinct points of the statistics grid, decreasing from its first
    point (t_max) to its last (t_min); "logsnr" hits every 24th point of a 121-point grid at NFE 5 exactly."""
    from fastsamplers.experiments.runs.dpm_solver_v3_benchmark import grid_times

    lam = np.linspace(float(PROCESS.log_snr(1.0)), float(PROCESS.log_snr(PROCESS.t_min)), 121)
    ones = np.ones((121, 3))
    solver = samplers.get_solver("dpm_solver_v3", lambdas=lam, l=ones, s=0 * ones, b=0 * ones)
    ts = grid_times(PROCESS, solver, grid, 5)
    on_grid = np.asarray(PROCESS.log_snr(jnp.asarray(ts)), np.float64)
    index = np.abs(on_grid[:, None] - lam[None, :]).argmin(axis=1)
    # log_snr in float32: |d lambda / dt| * t * 6e-8 is at most ~2e-6 on [t_min, 1] (vp_linear); off the grid a point
    # would be up to half a cell (0.08) away
    np.testing.assert_allclose(on_grid, lam[index], rtol=0, atol=1e-4)
    assert index[0] == 0 and index[-1] == 120 and np.all(np.diff(index) > 0)
    if grid == "logsnr":
        np.testing.assert_array_equal(index, np.arange(0, 121, 24))
