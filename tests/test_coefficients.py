"""Multistep coefficient tables against independent formulas: the DEIS paper's t-integral by adaptive quadrature,
closed-form polynomial integrals, and the DPM-Solver++ and iPNDM update rules written out directly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.samplers.multistep import IPNDM_WEIGHTS
from sweep import one_per_kind


def _lagrange(nodes, j, u):
    return np.prod([(u - nodes[m]) / (nodes[j] - nodes[m]) for m in range(len(nodes)) if m != j])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_tab_matches_the_paper_integral(order):
    """C_ij = int_{t_i}^{t_i+1} alpha(t_i+1)/alpha(tau) * (-1/2 dlog alpha^2/dtau) / sqrt(1 - alpha^2) * L_j(tau) dtau
    (DEIS, VP form), by scipy's adaptive quadrature."""
    p = schedules.get_process("vp_linear")
    ts = np.asarray(schedules.get_timesteps("quadratic", p, 6))
    b = np.asarray(samplers.get_solver("deis_tab", order=order).coefficients(p, jnp.asarray(ts)).b)
    alpha = lambda t: float(p.alpha(t))
    half_beta = lambda t: 0.5 * (p.beta_min + t * (p.beta_max - p.beta_min))  # -1/2 dlog alpha^2 / dt
    for i in range(6):
        nodes = [ts[i - j] for j in range(min(i + 1, order))]
        for j in range(order):
            if j >= len(nodes):
                assert b[i, j] == 0.0
                continue
            integrand = lambda tau: (alpha(ts[i + 1]) / alpha(tau) * half_beta(tau) / np.sqrt(1 - alpha(tau) ** 2)
                                     * _lagrange(nodes, j, tau))
            expected = integrate.quad(integrand, ts[i], ts[i + 1], epsabs=1e-13, epsrel=1e-12, limit=200)[0]
            assert b[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-11), (i, j)


@pytest.mark.parametrize("process_name", ["vp_linear", "edm", "ot"])
def test_deis_rhoab_is_the_exact_polynomial_integral_in_gamma(process_name):
    p = schedules.get_process(process_name)
    ts = schedules.get_timesteps("logsnr", p, 7)
    g, alpha = np.asarray(p.gamma(ts)), np.asarray(p.alpha(ts))
    coef = samplers.get_solver("deis_rhoab", order=4).coefficients(p, ts)
    for i in range(7):
        nodes = [g[i - j] for j in range(min(i + 1, 4))]
        for j, _ in enumerate(nodes):
            others = [nodes[m] for m in range(len(nodes)) if m != j]
            poly = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
            poly = poly / np.prod([nodes[j] - o for o in others])
            antiderivative = poly.integ()
            expected = alpha[i + 1] * (antiderivative(g[i + 1]) - antiderivative(g[i]))
            assert float(coef.b[i, j]) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(coef.a, alpha[1:] / alpha[:-1], rtol=1e-14)


@pytest.mark.parametrize("name", ["deis_tab", "deis_rhoab", "ipndm"])
def test_first_order_eps_solvers_are_ddim(name):
    p = schedules.get_process("vp_cosine")
    ts = schedules.get_timesteps("edm", p, 9)
    ddim = samplers.get_solver("ddim").coefficients(p, ts)
    other = samplers.get_solver(name, order=1).coefficients(p, ts)
    np.testing.assert_allclose(other.a, ddim.a, rtol=1e-13)
    np.testing.assert_allclose(other.b, ddim.b, rtol=1e-9)
    a, s = np.asarray(p.alpha(ts)), np.asarray(p.sigma(ts))
    np.testing.assert_allclose(ddim.b[:, 0], s[1:] - a[1:] * s[:-1] / a[:-1], rtol=1e-9)  # DDIM, eta = 0


def test_ipndm_uses_the_fixed_adams_bashforth_weights():
    p = schedules.get_process("edm")
    ts = schedules.get_timesteps("uniform", p, 6)
    b = np.asarray(samplers.get_solver("ipndm", order=4).coefficients(p, ts).b)
    dg = np.diff(np.asarray(ts))
    for i in range(6):
        np.testing.assert_allclose(b[i] / dg[i], IPNDM_WEIGHTS[min(i, 3)], rtol=1e-13)
    assert IPNDM_WEIGHTS.sum(axis=1) == pytest.approx(np.ones(4))


def _dpmpp_reference(lam, alpha, sigma, i, order, variant="published"):
    """The DPM-Solver++ multistep update of step i, written as in the paper, as weights on (m_i, m_i-1, m_i-2)."""
    h = lam[i + 1] - lam[i]
    phi1 = np.expm1(-h)
    if order == 1:
        return sigma[i + 1] / sigma[i], -alpha[i + 1] * phi1 * np.array([1.0, 0, 0])
    r0 = (lam[i] - lam[i - 1]) / h
    if order == 2:  # x_t = sigma_t/sigma_s x - alpha_t phi1 ((1 + 1/(2 r0)) m0 - 1/(2 r0) m1)
        return sigma[i + 1] / sigma[i], -alpha[i + 1] * phi1 * np.array([1 + 0.5 / r0, -0.5 / r0, 0])
    r1 = (lam[i - 1] - lam[i - 2]) / h
    phi2, m = phi1 / h + 1, np.eye(3)
    phi3 = phi2 / h - 0.5
    d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
    d1, d2 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
    weight = 2.0 if variant == "third_order" else 1.0
    return sigma[i + 1] / sigma[i], alpha[i + 1] * (-phi1 * m[0] + phi2 * d1 - weight * phi3 * d2)


@pytest.mark.parametrize("name, variant", [("dpmpp_2m", "published"), ("dpmpp_3m", "published"),
                                           ("dpmpp_3m", "third_order")])
@pytest.mark.parametrize("num_steps", [6, 20])
def test_dpm_solver_pp_update(name, variant, num_steps):
    p = schedules.get_process("vp_linear")
    ts = schedules.get_timesteps("quadratic", p, num_steps)
    solver = samplers.get_solver(name, variant=variant)
    coef = solver.coefficients(p, ts)
    lam, alpha, sigma = (np.asarray(f(ts)) for f in (p.log_snr, p.alpha, p.sigma))
    orders = solver.step_orders(num_steps)
    if num_steps < 15:  # lower-order final steps: ..., 2, 1
        assert orders[-1] == 1 and (solver.order < 3 or orders[-2] == 2)
    for i in range(num_steps):
        a, b = _dpmpp_reference(lam, alpha, sigma, i, orders[i], variant)
        assert float(coef.a[i]) == pytest.approx(a, rel=1e-12)
        np.testing.assert_allclose(coef.b[i], b[: solver.order], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name, order", [("dpmpp_3m", 3), ("deis_tab", 4), ("ipndm", 4)])
def test_lower_order_final_rules(name, order):
    """True: the last steps drop to 1, 2, ... below 15 steps only (DPM-Solver's rule); "always": at every step count;
    False: never. Warm-up is the same in all three."""
    solver = lambda lof: samplers.get_solver(name, order=order, lower_order_final=lof)
    warm = list(range(1, order))
    for n in (8, 20):
        assert list(solver(False).step_orders(n)) == warm + [order] * (n - order + 1)
        assert list(solver("always").step_orders(n)) == warm + [order] * (n - 2 * order + 2) + warm[::-1]
        assert list(solver(True).step_orders(n)) == list(solver("always" if n < 15 else False).step_orders(n))
    with pytest.raises(ValueError, match="'always' or False"):
        solver(2)


def test_dpm_solver_pp_final_step_to_zero_returns_x0_hat():
    p = schedules.get_process("vp_linear")
    ts = schedules.get_timesteps("logsnr", p, 8, append_zero=True)
    for name in ("dpmpp_2m", "dpmpp_3m"):
        coef = samplers.get_solver(name, lower_order_final=False).coefficients(p, ts)
        assert float(coef.a[-1]) == 0.0
        np.testing.assert_allclose(coef.b[-1], np.eye(3)[0][: coef.b.shape[1]], atol=1e-15)
        assert bool(jnp.all(jnp.isfinite(coef.b)))


# Every registered fixed-step solver in every variant, by the prediction it consumes (read from the registry).
# AMED's afs replaces the first model call by the direction of unit-Gaussian data, x / sqrt(alpha^2 + sigma^2), so a
# constant prediction is not what its first step sees: its variants without afs are tested.
_VARIANTS = [(name, opts) for name, cls in samplers.SOLVERS.items() for opts in cls.variants()
             if samplers.get_solver(name, **opts).static_nfe and not samplers.get_solver(name, **opts).stochastic
             and not opts.get("afs")]
EPS_SOLVERS = [(n, o) for n, o in _VARIANTS if samplers.get_solver(n, **o).native == "eps"]
X0_SOLVERS = [(n, o) for n, o in _VARIANTS if samplers.get_solver(n, **o).native == "x0"]
VELOCITY_SOLVERS = [(n, o) for n, o in _VARIANTS if samplers.get_solver(n, **o).native == "velocity"]


def test_every_fixed_step_solver_has_a_constant_prediction_test():
    assert len(EPS_SOLVERS) + len(X0_SOLVERS) + len(VELOCITY_SOLVERS) == len(_VARIANTS)


@pytest.mark.parametrize("name, opts", one_per_kind(EPS_SOLVERS))  # every variant in the slow set
@pytest.mark.parametrize("process_name", ["vp_linear", "ve", "ot"])
def test_eps_solvers_are_exact_for_constant_noise(name, opts, process_name):
    """With eps(x, t) = c, dy/dgamma = c and y moves by c (gamma_end - gamma_start): exact for every eps solver."""
    p = schedules.get_process(process_name)
    ts = schedules.get_timesteps("edm", p, 7)
    c = jnp.linspace(-1.0, 1.0, 6)
    x_init = jnp.ones((3, 6))
    x, _ = samplers.sample(lambda x, t: jnp.broadcast_to(c, x.shape), samplers.get_solver(name, **opts), p, x_init,
                           ts)
    g, alpha = p.gamma(ts), p.alpha(ts)
    expected = alpha[-1] * (x_init / alpha[0] + c[None, :] * (g[-1] - g[0]))
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, opts", one_per_kind(X0_SOLVERS))
def test_data_prediction_solvers_are_exact_for_constant_data(name, opts):
    p = schedules.get_process("vp_linear")
    ts = schedules.get_timesteps("logsnr", p, 9)
    c = jnp.linspace(-1.0, 1.0, 5)
    x_init = jnp.full((2, 5), 3.0)
    x, _ = samplers.sample(lambda x, t: jnp.broadcast_to(c, x.shape), samplers.get_solver(name, **opts), p, x_init,
                           ts, prediction="x0")
    # dx/dlambda with x0 = c: x_t = sigma_t/sigma_s x_s + alpha_t (1 - e^{-h}) c, exactly.
    s, a = p.sigma(ts), p.alpha(ts)
    expected = s[-1] / s[0] * x_init + (a[-1] - s[-1] / s[0] * a[0]) * c[None, :]
    np.testing.assert_allclose(x, expected, rtol=1e-11)


@pytest.mark.parametrize("name, opts", VELOCITY_SOLVERS)
def test_velocity_solvers_are_exact_for_constant_velocity(name, opts):
    p = schedules.get_process("ot")
    ts = schedules.get_timesteps("uniform", p, 6)
    c = jnp.linspace(-1.0, 1.0, 4)
    x_init = jnp.full((2, 4), 0.5)
    x, _ = samplers.sample(lambda x, t: jnp.broadcast_to(c, x.shape), samplers.get_solver(name, **opts), p, x_init,
                           ts, prediction="velocity")
    np.testing.assert_allclose(x, x_init + c[None, :] * (ts[-1] - ts[0]), rtol=1e-12, atol=1e-12)


def test_coefficients_are_differentiable_in_the_grid():
    p = schedules.get_process("vp_linear")
    ts = schedules.get_timesteps("logsnr", p, 6)
    for solver in (samplers.get_solver("deis_tab", order=3), samplers.get_solver("dpmpp_2m")):
        grad = jax.grad(lambda t: jnp.sum(solver.coefficients(p, t).b ** 2))(ts)
        assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
