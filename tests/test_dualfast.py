"""DualFast (`samplers.dualfast`) as an option of the linear multistep solvers: zero is the base solver bit for bit,
the correction is eps_new = (1 + c) eps - c eps_tau in DDIM's first-order term (checked against a hand-written
loop), and the coefficient is traced (a vmap over it is one program)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models.oracle import GaussianMixture

SOLVERS = ("ddim", "deis_tab", "deis_rhoab", "ipndm", "dpmpp_2m", "dpmpp_3m")


@pytest.fixture(scope="module")
def problem():
    process = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
    x_init = process.prior(jax.random.PRNGKey(1), (4, 2))
    ts = schedules.get_timesteps("logsnr", process, 6)
    return process, gm.model_fn(process, "eps"), x_init, ts


@pytest.mark.parametrize("name", SOLVERS)
def test_zero_coefficient_is_the_base_solver_bitwise(problem, name):
    process, model, x_init, ts = problem
    base, _ = samplers.sample(model, samplers.get_solver(name), process, x_init, ts)
    zero, _ = samplers.sample(model, samplers.get_solver(name, dualfast=0.0, dualfast_ref="first"), process,
                              x_init, ts)
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(base))
    moved, _ = samplers.sample(model, samplers.get_solver(name, dualfast=0.5), process, x_init, ts)
    assert np.all(np.isfinite(np.asarray(moved))) and not np.array_equal(np.asarray(moved), np.asarray(base))


@pytest.mark.parametrize("ref", ("previous", "first"))
def test_ddim_correction_by_hand(problem, ref):
    process, model, x_init, ts = problem
    coef = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    x, _ = samplers.sample(model, samplers.get_solver("ddim", dualfast=jnp.asarray(coef), dualfast_ref=ref),
                           process, x_init, ts)
    y, eps_ref = x_init, None
    for i in range(6):
        s, t = ts[i], ts[i + 1]
        eps = model(y, s)
        eps_tau = eps if eps_ref is None else eps_ref
        eps_new = (1 + coef[i]) * eps - coef[i] * eps_tau
        y = process.alpha(t) / process.alpha(s) * y + process.alpha(t) * (process.gamma(t) - process.gamma(s)) * eps_new
        eps_ref = eps if (ref == "previous" or eps_ref is None) else eps_ref
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


def test_coefficient_is_traced_and_checked(problem):
    process, model, x_init, ts = problem
    run = jax.vmap(lambda c: samplers.sample(model, samplers.get_solver("dpmpp_2m", dualfast=c), process, x_init,
                                             ts)[0])
    out = run(jnp.asarray([0.0, 0.5]))
    base, _ = samplers.sample(model, "dpmpp_2m", process, x_init, ts)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(base), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dualfast must be a number >= 0"):
        samplers.get_solver("ddim", dualfast=-1.0)
    with pytest.raises(ValueError, match="dualfast_ref must be"):
        samplers.get_solver("ddim", dualfast=1.0, dualfast_ref="last")
    with pytest.raises(ValueError, match="eta = 0"):
        samplers.get_solver("ddim", dualfast=1.0, eta=1.0)
    with pytest.raises(NotImplementedError, match="UniC"):
        samplers.get_solver("dpmpp_2m", dualfast=1.0, corrector=True)
    assert not samplers.get_solver("ddim", dualfast=1.0).stochastic
