import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.schedules.processes import ddpm_alphas_cumprod

NAMES = ["vp_linear", "vp_cosine", "vp_discrete", "ve", "edm", "ot"]


def _ts(process, n=101):
    return np.linspace(process.t_min, process.t_max, n)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete"])
def test_vp_is_variance_preserving(name):
    p = schedules.get_process(name)
    t = _ts(p)
    np.testing.assert_allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_round_trip(name):
    p = schedules.get_process(name)
    t = _ts(p)
    np.testing.assert_allclose(p.t_of_log_snr(p.log_snr(t)), t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.t_of_gamma(p.gamma(t)), t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.log_snr(t), np.log(p.alpha(t) / p.sigma(t)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_strictly_decreasing(name):
    p = schedules.get_process(name)
    assert np.all(np.diff(np.asarray(p.log_snr(_ts(p, 1001)))) < 0)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    p = schedules.get_process(name)
    t = _ts(p, 21)[1:-1]
    eps = 1e-6 * (p.t_max - p.t_min)
    fd_alpha = (p.alpha(t + eps) - p.alpha(t - eps)) / (2 * eps)
    fd_sigma = (p.sigma(t + eps) - p.sigma(t - eps)) / (2 * eps)
    tol = 1e-3 if name == "vp_discrete" else 1e-6  # piecewise linear log alpha: one-sided at the nodes
    np.testing.assert_allclose(p.d_alpha(t), fd_alpha, rtol=tol, atol=tol)
    np.testing.assert_allclose(p.d_sigma(t), fd_sigma, rtol=tol, atol=tol)


def test_closed_forms():
    vp = schedules.get_process("vp_linear")
    assert float(vp.alpha(1.0)) == pytest.approx(math.exp(-0.25 * 19.9 - 0.05), rel=1e-14)
    assert float(vp.alpha(0.0)) == 1.0 and float(vp.sigma(0.0)) == 0.0
    edm = schedules.get_process("edm")
    assert float(edm.sigma(3.0)) == 3.0 and float(edm.gamma(3.0)) == pytest.approx(3.0, rel=1e-14)
    ve = schedules.get_process("ve")
    assert float(ve.sigma(1.0)) == pytest.approx(50.0, rel=1e-12)
    assert float(ve.sigma(0.0)) == pytest.approx(0.01, rel=1e-12)
    ot = schedules.get_process("ot", sigma_min=0.1)
    assert float(ot.alpha(0.25)) == 0.75 and float(ot.sigma(0.25)) == pytest.approx(0.1 + 0.9 * 0.25)
    cos = schedules.get_process("vp_cosine")
    s = 0.008
    expected = math.cos(0.5 * math.pi * (0.5 + s) / (1 + s)) / math.cos(0.5 * math.pi * s / (1 + s))
    assert float(cos.alpha(0.5)) == pytest.approx(expected, rel=1e-13)


def test_discrete_matches_its_table():
    p = schedules.get_process("vp_discrete")
    table = ddpm_alphas_cumprod()
    t = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(p.alpha(t) ** 2, table, rtol=1e-12)
    np.testing.assert_allclose(p.discrete_index(t), np.arange(1000), atol=1e-9)
    assert p.t_min == pytest.approx(1e-3)


def test_discrete_custom_table_and_bad_tables():
    table = np.cumprod(1 - np.linspace(1e-3, 0.05, 50))
    p = schedules.get_process("vp_discrete", alphas_cumprod=tuple(table))
    assert p.t_min == pytest.approx(1 / 50)
    with pytest.raises(ValueError, match="strictly decrease"):
        schedules.get_process("vp_discrete", alphas_cumprod=tuple(table[::-1]))


def test_marginal_has_the_right_moments():
    p = schedules.get_process("vp_linear")
    n = 200_000
    xt = p.marginal(jax.random.PRNGKey(0), jnp.full((n,), 2.0), 0.5)
    sigma = float(p.sigma(0.5))
    # Five standard errors of the sample mean and of the sample standard deviation.
    assert float(jnp.mean(xt)) == pytest.approx(2.0 * float(p.alpha(0.5)), abs=5 * sigma / n**0.5)
    assert float(jnp.std(xt)) == pytest.approx(sigma, abs=5 * sigma / (2 * n) ** 0.5)


def test_unknown_process_lists_valid_names():
    with pytest.raises(ValueError, match="valid names:.*vp_linear"):
        schedules.get_process("vp_quadratic")
    with pytest.raises(ValueError, match="valid options"):
        schedules.get_process("vp_linear", beta_maxx=10.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        schedules.get_process("edm", t_min=5.0, t_max=1.0)
