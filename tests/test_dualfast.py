"""DualFast (`samplers.dualfast`) as an option of the linear multistep solvers and of UniPC: zero is the base solver
bit for bit, the correction is eps_new = (1 + c) eps - c eps_tau in the first-order terms (DDIM's, and UniP's and
UniC's, checked against hand-written loops), and the coefficient is traced (a vmap over it is one program)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models.oracle import GaussianMixture

SOLVERS = ("ddim", "deis_tab", "deis_rhoab", "ipndm", "dpmpp_2m", "dpmpp_3m", "unipc")


@pytest.fixture(scope="module")
def problem():
    process = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
    x_init = process.prior(jax.random.PRNGKey(1), (4, 2))
    ts = schedules.get_timesteps("logsnr", process, 6)
    return process, gm.model_fn(process, "eps"), x_init, ts


# DualFast's correction is checked by hand for ddim (an eps solver) and UniPC-1 (UniP and UniC, x0), traced for
# ddim; "moved" checks that the others' programs take it: UniP alone and UniC around DPM-Solver++ (the two other
# ways PCSteps finds its options), and dpmpp_3m (x0, the LinearMultistep path).
MOVED = {("unipc", False), ("dpmpp_2m", True), ("dpmpp_3m", None)}


@pytest.mark.parametrize("name, corrector", [(name, None) for name in SOLVERS] + [("dpmpp_2m", True),
                                                                                  ("unipc", False)])
def test_zero_coefficient_is_the_base_solver_bitwise(problem, name, corrector):
    process, model, x_init, ts = problem
    options = {} if corrector is None else dict(corrector=corrector)
    base, _ = samplers.sample(model, samplers.get_solver(name, **options), process, x_init, ts)
    zero, _ = samplers.sample(model, samplers.get_solver(name, dualfast=0.0, dualfast_ref="first", **options),
                              process, x_init, ts)
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(base))
    if (name, corrector) in MOVED:
        moved, _ = samplers.sample(model, samplers.get_solver(name, dualfast=0.5, **options), process, x_init, ts)
        assert np.all(np.isfinite(np.asarray(moved))) and not np.array_equal(np.asarray(moved), np.asarray(base))


def test_ddim_correction_by_hand_and_traced(problem):
    """DDIM with eps_new = (1 + c_i) eps - c_i eps_tau (tau the previous step) against a hand-written loop, and the
    coefficient traced: one program for a vmap over two schedules of it, the zero one the base solver."""
    process, model, x_init, ts = problem
    coef = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    run = jax.vmap(lambda c: samplers.sample(model, samplers.get_solver("ddim", dualfast=c), process, x_init,
                                             ts)[0])
    x, x_zero = run(jnp.asarray(np.stack([coef, 0 * coef])))
    base, _ = samplers.sample(model, "ddim", process, x_init, ts)
    np.testing.assert_allclose(np.asarray(x_zero), np.asarray(base), rtol=1e-12, atol=1e-12)
    y, eps_prev = x_init, None
    for i in range(6):
        s, t = ts[i], ts[i + 1]
        eps = model(y, s)
        eps_tau = eps if eps_prev is None else eps_prev
        eps_new = (1 + coef[i]) * eps - coef[i] * eps_tau
        y = process.alpha(t) / process.alpha(s) * y + process.alpha(t) * (process.gamma(t) - process.gamma(s)) * eps_new
        eps_prev = eps
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_unipc1_correction_by_hand(problem):
    """UniPC-1 (UniP-1 + UniC-1, bh2: rho^c_1 = 1/2) with DualFast, tau the first step's:
    x0_new = m_i - (sigma_i / alpha_i) c_i (eps_i -
    eps_tau) in the first-order term of the predictor and of the corrector, the UniC difference m_{i+1} - m_i on
    the model's own predictions (samplers/unipc.py's formulas, written out)."""
    process, model_eps, x_init, ts = problem
    coef = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    solver = samplers.get_solver("unipc", order=1, dualfast=jnp.asarray(coef), dualfast_ref="first")
    x, _ = samplers.sample(model_eps, solver, process, x_init, ts)
    alpha, sigma, lam = process.alpha(ts), process.sigma(ts), process.log_snr(ts)
    x_c, eps_ref, m_prev, step_prev = x_init, None, None, None
    y = x_init
    for i in range(6):
        eps = model_eps(y, ts[i])
        m = (y - sigma[i] * eps) / alpha[i]
        if i > 0:  # UniC-1 of the point step i - 1 predicted, with m_i at that (uncorrected) point
            h = lam[i] - lam[i - 1]
            x_c = step_prev - alpha[i] * jnp.expm1(-h) * 0.5 * (m - m_prev)
        else:
            x_c = y
        eps_tau = eps if eps_ref is None else eps_ref
        m_new = m - sigma[i] / alpha[i] * coef[i] * (eps - eps_tau)
        h = lam[i + 1] - lam[i]
        # the predictor x_{i+1} = (sigma_{i+1} / sigma_i) x_i^c - alpha_{i+1} (e^{-h} - 1) m_new, which is also
        # the part of the next corrector before its UniC term
        step_prev = sigma[i + 1] / sigma[i] * x_c - alpha[i + 1] * jnp.expm1(-h) * m_new
        y, m_prev = step_prev, m
        eps_ref = eps if eps_ref is None else eps_ref
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


def test_options_are_checked():
    with pytest.raises(ValueError, match="dualfast must be a number >= 0"):
        samplers.get_solver("ddim", dualfast=-1.0)
    with pytest.raises(ValueError, match="dualfast_ref must be"):
        samplers.get_solver("ddim", dualfast=1.0, dualfast_ref="last")
    with pytest.raises(ValueError, match="eta = 0"):
        samplers.get_solver("ddim", dualfast=1.0, eta=1.0)
    with pytest.raises(ValueError, match="dualfast must be a number >= 0"):
        samplers.get_solver("unipc", dualfast=-1.0)
    assert not samplers.get_solver("ddim", dualfast=1.0).stochastic
