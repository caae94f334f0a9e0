"""Light Schroedinger Bridge (`models.light_sb`) against exact targets.

- Gaussian to Gaussian: the entropic OT plan is Gaussian in closed form (`gaussian_eot_slope`'s docstring); the K = 1
  LightSB set by hand equals it to 1e-10, and its parameters make the population loss stationary (Gauss-Hermite
  quadrature). With K = 1 the empirical loss depends on the samples only through their first two moments, so a
  full-batch fit must land on the closed-form plan of the *empirical* Gaussians: the tolerance is the optimiser's.
- The closed-form drift against autodiff of the sheet's log-integral formula (section 6; light_sb.py 108-155) and
  against numerical quadrature of eps d/dx log int N(y | x, eps (1 - t)) phi(y) dy in 1-d.
- Euler-Maruyama of the bridge SDE: terminal samples against `sample`, the path at t = 1/2 against the Brownian-bridge
  mixture, by the energy distance against its exact-vs-exact floor (the largest of 3 pairs of independent exact draws
  of the same size, times 2: the module docstring of tests/test_restart.py does the same).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.models import light_sb
from fastsamplers.models.light_sb import LightSB

M0, S0, M1, S1, EPS = -0.5, 0.8, 2.0, 1.7, 0.6  # 1-d Gaussians N(M0, S0^2) -> N(M1, S1^2)


def _random_sb(key, k=4, d=2, eps=0.5, full=False):
    """A LightSB with random parameters (a Cayley-orthogonal Q when full)."""
    ka, kr, ks, kq = jax.random.split(key, 4)
    rotation = None
    if full:
        w = jax.random.normal(kq, (k, d, d))
        rotation = light_sb._cayley(w)
    return LightSB(log_alpha=jax.random.normal(ka, (k,)), r=2 * jax.random.normal(kr, (k, d)),
                   log_s=0.5 * jax.random.normal(ks, (k, d)), rotation=rotation, eps=jnp.asarray(eps))


def test_exact_gaussian_plan_is_the_closed_form_eot_plan():
    sb = LightSB.gaussian(M0, S0**2, M1, S1**2, EPS)
    c = (np.sqrt(4 * S0**2 * S1**2 + EPS**2) - EPS) / 2  # the plan's covariance (docstring of gaussian_eot_slope)
    x = jnp.linspace(-3.0, 3.0, 7)[:, None]
    np.testing.assert_allclose(sb.conditional_mean(x)[:, 0], M1 + c / S0**2 * (x[:, 0] - M0), rtol=0, atol=1e-10)
    _, _, stds = sb._posterior(x, 0.0)
    np.testing.assert_allclose(stds[..., 0, 0] ** 2, S1**2 - c**2 / S0**2, rtol=0, atol=1e-10)
    # The joint Gaussian's precision has the cross term of exp(x y / eps): -1 / eps.
    precision = np.linalg.inv(np.array([[S0**2, c], [c, S1**2]]))
    assert precision[0, 1] == pytest.approx(-1 / EPS, rel=1e-12)
    # The population loss E log C(x0) - E log v(x1) is stationary at these parameters (Gauss-Hermite, exact here).
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()

    def loss(model):
        return (jnp.sum(weights * model.log_normaliser((M0 + S0 * nodes)[:, None]))
                - jnp.sum(weights * model.log_potential((M1 + S1 * nodes)[:, None])))

    grads = jax.jit(jax.grad(loss))(sb)
    for leaf in (grads.r, grads.log_s, grads.log_alpha):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-10)


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_full_covariance_eot_slope_solves_the_riccati_equation_and_matches_diagonal():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 3))
    cov0, cov1 = a @ a.T + np.eye(3), b @ b.T + np.eye(3)
    s = np.asarray(light_sb.gaussian_eot_slope(cov0, cov1, EPS))
    np.testing.assert_allclose(s @ cov0 @ s + EPS * s, cov1, atol=1e-10)
    joint = np.block([[cov0, cov0 @ s], [s @ cov0, cov1]])  # cov(x, y) = cov0 S
    np.testing.assert_allclose(np.linalg.inv(joint)[:3, 3:], -np.eye(3) / EPS, atol=1e-10)
    # Full and diagonal parametrisations agree on diagonal covariances.
    var0, var1 = np.array([0.5, 1.0, 2.0]), np.array([3.0, 0.2, 1.0])
    full = LightSB.gaussian(np.zeros(3), np.diag(var0), np.ones(3), np.diag(var1), EPS)
    diag = LightSB.gaussian(np.zeros(3), var0, np.ones(3), var1, EPS)
    assert full.covariance == "full" and diag.covariance == "diagonal"
    x = jnp.asarray(rng.normal(size=(5, 3)))
    for method in ("log_normaliser", "log_potential", "conditional_mean"):
        np.testing.assert_allclose(getattr(full, method)(x), getattr(diag, method)(x), atol=1e-10)
    np.testing.assert_allclose(full.drift(x, 0.7), diag.drift(x, 0.7), atol=1e-10)


def test_full_batch_fit_lands_on_the_empirical_gaussian_plan():
    """K = 1: the empirical loss is the population loss of the Gaussians with the samples' mean and (1/n) variance,
    so the fit's optimum is their closed-form plan, and the only error is the optimiser's."""
    k0, k1, kf = jax.random.split(jax.random.PRNGKey(1), 3)
    x0 = M0 + S0 * jax.random.normal(k0, (1000, 1))
    x1 = M1 + S1 * jax.random.normal(k1, (1000, 1))
    sb, losses = light_sb.fit(kf, x0, x1, EPS, num_potentials=1, steps=1500, lr=0.05, batch_size=None,
                              return_losses=True)
    exact = LightSB.gaussian(jnp.mean(x0), jnp.var(x0), jnp.mean(x1), jnp.var(x1), EPS)
    np.testing.assert_allclose(sb.log_s, exact.log_s, atol=1e-8)
    np.testing.assert_allclose(sb.r, exact.r, atol=1e-8)
    assert losses[-1] <= losses[0] and np.all(np.isfinite(losses))


def _sheet_log_integral(sb, x, t):
    """The sheet's exponent logsumexp_k[log alpha_k - 1/2 log|S_k| - 1/2 log|A_k| - r^T S^-1 r / (2 eps)
    + 1/2 c^T A^-1 c], A_k = t / (eps (1 - t)) I + (eps S_k)^-1, c_k = x / (eps (1 - t)) + (eps S_k)^-1 r_k, with
    dense matrices (section 6; light_sb.py 132-150)."""
    eps, d = sb.eps, sb.dim
    s = sb.scale if sb.rotation is not None else jax.vmap(jnp.diag)(sb.scale)
    s_inv = jnp.linalg.inv(s)
    a = t / (eps * (1 - t)) * jnp.eye(d)[None] + s_inv / eps
    c = x[None] / (eps * (1 - t)) + jnp.einsum("kij,kj->ki", s_inv, sb.r) / eps
    quad = jnp.einsum("ki,ki->k", c, jnp.linalg.solve(a, c[..., None])[..., 0])
    terms = (sb.log_alpha - 0.5 * jnp.linalg.slogdet(s)[1] - 0.5 * jnp.linalg.slogdet(a)[1]
             - jnp.einsum("ki,kij,kj->k", sb.r, s_inv, sb.r) / (2 * eps) + 0.5 * quad)
    return jax.nn.logsumexp(terms)


@pytest.mark.parametrize("full", [False, True])
def test_drift_is_the_sheets_closed_form(full):
    sb = _random_sb(jax.random.PRNGKey(2), full=full)
    xs = jax.random.normal(jax.random.PRNGKey(3), (6, 2)) * 2
    ts = jnp.array([0.0, 0.3, 0.9, 0.999])
    grad = jax.jit(jax.vmap(jax.vmap(jax.grad(lambda x, t: _sheet_log_integral(sb, x, t)), (0, None)), (None, 0)))(
        xs, ts)  # (4, 6, 2)
    expected = -xs[None] / (1 - ts)[:, None, None] + sb.eps * grad
    closed = jax.jit(jax.vmap(sb.drift, (None, 0)))(xs, ts)
    np.testing.assert_allclose(closed, expected, rtol=1e-9, atol=1e-9 / (1 - 0.999))


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_drift_against_quadrature_1d():
    """eps d/dx log int N(y | x, eps (1 - t)) e^{y^2 / (2 eps)} v(y) dy on a fine grid (the log-integrand is
    concave-quadratic per component, so a grid of step 1e-3 over +-12 is exact to far below the tolerance), and
    d/dx by central differences (h = 1e-4: error O(h^2) ~ 1e-8 relative)."""
    sb = _random_sb(jax.random.PRNGKey(4), k=3, d=1, eps=0.4)
    y = jnp.arange(-12.0, 12.0, 1e-3)
    dy = 1e-3

    def log_integral(x, t):
        var = sb.eps * (1 - t)
        log_kernel = -0.5 * (y - x) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)
        return jax.nn.logsumexp(log_kernel + y**2 / (2 * sb.eps) + sb.log_potential(y[:, None])) + jnp.log(dy)

    h = 1e-4
    ts, xs = jnp.meshgrid(jnp.array([0.1, 0.5, 0.8]), jnp.array([-1.5, 0.2, 2.0]))
    numeric = jax.jit(jax.vmap(lambda x, t: sb.eps * (log_integral(x + h, t) - log_integral(x - h, t)) / (2 * h)))(
        xs.ravel(), ts.ravel())
    closed = jax.jit(sb.drift)(xs.reshape(-1, 1), ts.ravel())[:, 0]
    np.testing.assert_allclose(closed, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_sde_integrates_to_the_plan_and_its_path_is_the_bridge_mixture():
    """N = 1024 particles of a random 2-d K = 4 LightSB (full covariance), 200 Euler-Maruyama steps."""
    with jax.enable_x64(False):
        sb = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _random_sb(jax.random.PRNGKey(5), full=True))
        n = 1024
        x0 = jax.random.normal(jax.random.PRNGKey(6), (n, 2))
        _, path = jax.jit(sb.sde_sample, static_argnums=(2, 3))(jax.random.PRNGKey(7), x0, 200, True)
        sample = jax.jit(sb.sample)
        exact = [np.asarray(sample(jax.random.PRNGKey(10 + i), x0)) for i in range(8)]
        bridge = jax.jit(sb.bridge)
        mid = [np.asarray(bridge(jax.random.PRNGKey(20 + i), x0, y, 0.5)) for i, y in enumerate(exact)]
    floor_1 = 2 * max(energy_distance(exact[2 * i], exact[2 * i + 1]) for i in range(3))
    floor_half = 2 * max(energy_distance(mid[2 * i], mid[2 * i + 1]) for i in range(3))
    assert energy_distance(np.asarray(path[-1]), exact[6]) < floor_1
    assert energy_distance(np.asarray(path[100]), mid[6]) < floor_half
    # The statistic sees a small error: the plan shifted by 1 (against the spread of the r_k, 2) is far above it.
    assert energy_distance(exact[7] + 1.0, exact[6]) > 10 * floor_1


def test_bad_input_fails_before_compute_and_non_finite_fits_are_reported():
    x = jnp.zeros((8, 2))
    with pytest.raises(ValueError, match="valid names.*diagonal"):
        light_sb.fit(jax.random.PRNGKey(0), x, x, 0.1, covariance="dense")
    with pytest.raises(ValueError, match="one dimension"):
        light_sb.fit(jax.random.PRNGKey(0), x, jnp.zeros((8, 3)), 0.1)
    with pytest.raises(ValueError, match="eps"):
        light_sb.fit(jax.random.PRNGKey(0), x, x, 0.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        LightSB.gaussian(0.0, np.ones(2), 1.0, np.ones(2), 0.1).sample(jax.random.PRNGKey(0), jnp.zeros((4, 3)))
    with pytest.raises(FloatingPointError, match="non-finite"):
        light_sb.fit(jax.random.PRNGKey(0), x, x.at[0, 0].set(jnp.nan), 0.1, num_potentials=2, steps=2,
                     batch_size=None)


@pytest.mark.slow
def test_fitted_plan_carries_the_source_to_the_target_2d():
    """Standard normal -> 8 Gaussians, eps 0.1, K = 50 diagonal potentials: the plan's target marginal (exact draws
    from pi(y | x0) on held-out x0) matches held-out target samples within twice the exact-vs-exact floor."""
    from fastsamplers.experiments.train import data

    with jax.enable_x64(False):
        target = data.get_dataset("8gaussians")
        x1 = np.asarray(target.sample(jax.random.PRNGKey(0), 4096))
        x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (4096, 2)))
        sb = light_sb.fit(jax.random.PRNGKey(2), x0, x1, 0.1, num_potentials=50, steps=3000, lr=1e-2)
        test0 = jax.random.normal(jax.random.PRNGKey(3), (1024, 2))
        y = np.asarray(sb.sample(jax.random.PRNGKey(4), test0))
        held = [np.asarray(target.sample(jax.random.PRNGKey(10 + i), 1024)) for i in range(7)]
    floor = 2 * max(energy_distance(held[2 * i], held[2 * i + 1]) for i in range(3))
    assert energy_distance(y, held[6]) < floor
