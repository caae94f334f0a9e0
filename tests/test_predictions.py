import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.models import GaussianMixture, predictions

PROCESSES = ["vp_linear", "vp_cosine", "ve", "edm", "ot"]
KINDS = predictions.KINDS


def _point(process, oracle, key=0):
    t = 0.37 * process.t_max + 0.63 * process.t_min
    x = oracle.marginal_sample(jax.random.PRNGKey(key), 16, t, process)
    return x, t


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("a, b", list(itertools.permutations(KINDS, 2)))
def test_conversions_round_trip(name, a, b, oracle):
    p = schedules.get_process(name)
    x, t = _point(p, oracle)
    pred = oracle.predict(x, t, p, a)
    back = predictions.convert(predictions.convert(pred, a, b, x, t, p), b, a, x, t, p)
    np.testing.assert_allclose(back, pred, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("kind", KINDS)
def test_conversion_from_eps_agrees_with_the_oracle(name, kind, oracle):
    p = schedules.get_process(name)
    x, t = _point(p, oracle)
    eps = oracle.predict(x, t, p, "eps")
    np.testing.assert_allclose(predictions.convert(eps, "eps", kind, x, t, p), oracle.predict(x, t, p, kind),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
def test_oracle_score_is_the_gradient_of_its_log_density(name, oracle):
    p = schedules.get_process(name)
    x, t = _point(p, oracle)
    score = jax.vmap(jax.grad(lambda xi: oracle.log_prob(xi, t, p)))(x)
    np.testing.assert_allclose(oracle.predict(x, t, p, "score"), score, rtol=1e-9, atol=1e-9)
    # Tweedie: E[x0 | x] = (x + sigma^2 score) / alpha.
    x0 = (x + p.sigma(t) ** 2 * score) / p.alpha(t)
    np.testing.assert_allclose(oracle.predict(x, t, p, "x0"), x0, rtol=1e-8, atol=1e-8)


def test_oracle_velocity_transports_the_marginal():
    """The PF-ODE velocity satisfies the continuity equation: d/dt E[f(x_t)] = E[grad f . u] for f(x) = |x|^2."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(3), dim=2, num_components=3)
    t, dt = 0.4, 1e-4
    second_moment = lambda s: jnp.sum(p.alpha(s) ** 2 * (gm.means**2 + gm.stds**2) @ jnp.ones(2) * gm.weights) \
        + 2 * p.sigma(s) ** 2
    x = gm.marginal_sample(jax.random.PRNGKey(4), 400_000, t, p)
    u = gm.predict(x, t, p, "velocity")
    lhs = (second_moment(t + dt) - second_moment(t - dt)) / (2 * dt)
    rhs = jnp.mean(jnp.sum(2 * x * u, axis=-1))
    assert float(rhs) == pytest.approx(float(lhs), rel=2e-2)


def test_oracle_is_finite_at_the_ends():
    gm = GaussianMixture.random(jax.random.PRNGKey(1), dim=3, num_components=2)
    ot = schedules.get_process("ot")
    x = jnp.ones((4, 3))
    for t in (0.0, 1.0):
        x0, eps = gm.x0_eps(x, t, ot)
        assert bool(jnp.all(jnp.isfinite(x0)) & jnp.all(jnp.isfinite(eps)))
    np.testing.assert_allclose(gm.predict(x, 0.0, ot, "x0"), x, atol=1e-12)  # at sigma = 0 the data is x itself


def test_oracle_rejects_bad_shapes_and_kinds(oracle):
    p = schedules.get_process("vp_linear")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 8\)"):
        oracle.predict(jnp.ones((2, 3)), 0.5, p)
    with pytest.raises(ValueError, match="valid predictions"):
        oracle.predict(jnp.ones((2, 8)), 0.5, p, "noise")
    with pytest.raises(ValueError, match="stds must be positive"):
        GaussianMixture.create(jnp.ones(2), jnp.zeros((2, 3)), jnp.array([0.1, 0.0]))


def test_isotropic_and_diagonal_components():
    iso = GaussianMixture.create(jnp.ones(2), jnp.zeros((2, 3)), jnp.array([0.5, 1.0]))
    assert iso.stds.shape == (2, 3) and float(iso.stds[1, 2]) == 1.0
    data = iso.sample(jax.random.PRNGKey(0), 100_000)
    assert float(jnp.var(data)) == pytest.approx(0.5 * 0.25 + 0.5 * 1.0, rel=2e-2)
