"""The semi-discrete OT map (`samplers.SemiDiscreteOT`) and DPM-OT sampling (`samplers.dpm_ot_sample`).

Tolerances of the fitted masses, derived once here. The fit stops when its estimate g_hat of the gradient
g = mu(C) - nu has ||g_hat|| < tol. g_hat is a multinomial frequency of M_fit draws minus nu, so g_hat - g has
covariance (diag(nu) - nu nu^T) / M_fit and E||g_hat - g||^2 = (1 - sum nu^2) / M_fit; the norm of that (N - 1)-dim
Gaussian vector exceeds 4 times its root mean square with probability below 1e-12 (a chi^2 with 7 degrees of freedom
past 16 x 7), even over the thousands of iterations where the fit may stop. So ||g|| < tol + 4 sqrt((1 - sum nu^2) /
M_fit) =: G. A fresh Monte Carlo mass of cell i from M_test draws then differs from nu_i by at most
G + 5 sqrt(nu_i (1 - nu_i) / M_test). No tolerance depends on a seed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models.oracle import GaussianMixture

NU = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])  # unequal masses of the 2-d targets
M_FIT, TOL, M_TEST = 2**16, 0.008, 2**19
LINE = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])  # the 1-d targets


def uniform(key, n):
    """The 1-d source U[0, 1] (one function, so the 1-d tests share one compiled fit)."""
    return jax.random.uniform(key, (n, 1))


def gradient_bound(nu, m_fit, tol):
    """G of the module docstring: ||mu(C) - nu|| < G once the fit has converged."""
    return tol + 4 * np.sqrt((1 - np.sum(nu**2)) / m_fit)


@pytest.fixture(scope="module")
def fitted_2d():
    with jax.enable_x64(False):
        targets = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (NU.size, 2))
        ot, info = samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(2), targets, NU, tol=TOL,
                                               samples_per_iteration=M_FIT, max_iter=2000)
    return ot, info


def test_the_fitted_cells_carry_the_target_masses(fitted_2d):
    ot, info = fitted_2d
    assert info["converged"] and info["num_empty"] == 0 and info["grad_norm"] < TOL
    assert info["samples_drawn"] == info["iterations"] * M_FIT  # no doubling needed
    with jax.enable_x64(False):
        masses = np.asarray(ot.cell_masses(jax.random.normal(jax.random.PRNGKey(3), (M_TEST, 2))), np.float64)
    bound = gradient_bound(NU, info["samples_per_iteration"], TOL) + 5 * np.sqrt(NU * (1 - NU) / M_TEST)
    np.testing.assert_array_less(np.abs(masses - NU), bound)
    assert np.isclose(np.mean(np.asarray(ot.h)), 0.0, atol=1e-5)  # h is kept at zero mean


def test_the_map_is_piecewise_constant_on_the_cells(fitted_2d):
    ot, _ = fitted_2d
    y, h = np.asarray(ot.targets, np.float64), np.asarray(ot.h, np.float64)
    with jax.enable_x64(False):
        x = 2.0 * jax.random.normal(jax.random.PRNGKey(4), (301, 2))  # 301: chunks of 1024 and of 7 below
        cells = np.asarray(ot.assign(x))
        scores = np.asarray(x, np.float64) @ y.T + h
        np.testing.assert_array_equal(cells, np.argmax(scores, -1))  # T(x) = y_argmax <x, y_i> + h_i
        np.testing.assert_array_equal(np.asarray(ot.map(x)), y[cells].astype(np.float32))
        small_chunks = samplers.SemiDiscreteOT(ot.targets, ot.h, chunk_size=7)
        np.testing.assert_array_equal(np.asarray(small_chunks.assign(x)), cells)
        # Inside a cell: moving x by delta changes score i - score j by <delta, y_i - y_j>, at most |delta| times
        # max_j |y_i - y_j|; a step under the margin to the second-best cell keeps the cell, so the map does not move.
        top2 = np.sort(scores, -1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        reach = np.max(np.linalg.norm(y[cells][:, None] - y[None], axis=-1), -1)
        direction = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (301, 2)), np.float64)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        moved = x + jnp.asarray(0.45 * (margin / reach)[:, None] * direction, jnp.float32)
        np.testing.assert_array_equal(np.asarray(ot.map(moved)), np.asarray(ot.map(x)))
        assert len(np.unique(cells)) > 4  # the points cover several cells


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_in_1d_the_cell_boundaries_are_the_source_quantiles():
    """Uniform source on [0, 1], targets on a line: the monotone map's cells are intervals with boundaries
    b_i = (h_i - h_{i+1}) / (y_{i+1} - y_i), and the OT map puts them at the quantiles sum_{j <= i} nu_j. With unit
    density, |b_i - q_i| = |sum_{j <= i} (mu_j - nu_j)| <= sqrt(i) ||mu(C) - nu|| < sqrt(i) G."""
    y, nu = LINE, np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    m_fit, tol = 2**17, 0.004
    with jax.enable_x64(False):
        ot, info = samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(6), y[:, None], nu, uniform, tol=tol,
                                               samples_per_iteration=m_fit, max_iter=2000)
    assert info["converged"]
    h = np.asarray(ot.h, np.float64)
    boundaries = (h[:-1] - h[1:]) / np.diff(y)
    i = np.arange(1, y.size)
    np.testing.assert_array_less(np.abs(boundaries - np.cumsum(nu)[:-1]),
                                 np.sqrt(i) * gradient_bound(nu, info["samples_per_iteration"], tol))


def test_empty_cells_are_reported():
    """At h = 0 every x in [0, 1] scores highest with the largest target: the other four cells are empty, and one
    iteration cannot fill them."""
    with jax.enable_x64(False):
        _, info = samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(0), LINE[:, None], None, uniform, max_iter=1,
                                              samples_per_iteration=2**17)
    assert info["num_empty"] == 4 and not info["converged"] and info["iterations"] == 1


@pytest.mark.parametrize("masses, message", [(np.array([0.5, 0.6]), "summing to 1"),
                                             (np.array([1.0]), "2 finite")])
def test_bad_masses_are_refused(masses, message):
    with pytest.raises(ValueError, match=message):
        samplers.SemiDiscreteOT.fit(jax.random.PRNGKey(0), jnp.zeros((2, 1)), masses)


@pytest.fixture(scope="module")
def oracle():
    """(process, mixture, its eps model): one model function, so the compiled solves are shared."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
    return p, gm, gm.model_fn(p)


def test_without_a_map_from_t_max_it_is_plain_sampling(oracle):
    p, gm, model = oracle
    ts = schedules.get_timesteps("logsnr", p, 2)
    key = jax.random.PRNGKey(7)
    noise_key, solver_key = jax.random.split(key)
    for solver in ("dpmpp_2m", samplers.get_solver("ddim", eta=1.0)):
        x, info = samplers.dpm_ot_sample(model, solver, p, None, key, (16, 2), ts)
        plain, plain_info = samplers.sample(model, solver, p, p.prior(noise_key, (16, 2)), ts, key=solver_key)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(plain))
        assert info["nfe"] == plain_info["nfe"] == 2 and info["cells"] is None


def test_with_a_map_it_starts_at_the_mapped_points(oracle):
    """x_init = T(eps) with eps the whitened prior from split(key)[0], then the solver from t_k = ts[0]."""
    p, gm, model = oracle
    t_k = 0.3
    targets = p.marginal(jax.random.PRNGKey(8), gm.sample(jax.random.PRNGKey(9), 12), t_k)
    ot = samplers.SemiDiscreteOT(targets, jnp.linspace(-1.0, 1.0, 12))
    ts = schedules.get_timesteps("logsnr", p, 2, t_max=t_k)
    key = jax.random.PRNGKey(10)
    x, info = samplers.dpm_ot_sample(model, "dpmpp_2m", p, ot, key, (16, 2), ts)
    eps = jax.random.normal(jax.random.split(key)[0], (16, 2))
    np.testing.assert_array_equal(np.asarray(info["cells"]), np.asarray(ot.assign(eps)))
    plain, _ = samplers.sample(model, "dpmpp_2m", p, ot.map(eps), ts)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(plain))
    assert info["nfe"] == 2
    with pytest.raises(ValueError, match=r"targets are of shape \(2,\)"):
        samplers.dpm_ot_sample(model, "dpmpp_2m", p, ot, key, (16, 3), ts)
    with pytest.raises(ValueError, match="dpmpp_2m"):  # an unknown solver lists the valid names
        samplers.dpm_ot_sample(model, "dpmpp_9m", p, ot, key, (16, 2), ts)
