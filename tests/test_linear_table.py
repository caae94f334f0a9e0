"""samplers.linear_table: the exact table of every registered single-evaluation solver reproduces the solver, in float64
and in float32; a table runs under jit and refuses another grid, process or step count; bad tables fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.linear_table import LinearTable, table_of
from sweep import one_per_kind

P = schedules.get_process("vp_linear")
# Every registered deterministic solver variant with one model call per step at its start: the ones with a table.
TABULAR = [(name, opts) for name, cls in samplers.SOLVERS.items() for opts in cls.variants()
           if (lambda s: not s.stochastic and s.stages == 1 and s.static_nfe and not s.evaluates_end)(
               samplers.get_solver(name, **opts))]


@pytest.fixture(scope="module")
def problem():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3)
    x_init = P.prior(jax.random.PRNGKey(1), (32, 4))
    ts = schedules.get_timesteps("logsnr", P, 7)
    return gm, x_init, ts


def test_the_sweep_covers_the_multistep_families():
    names = {name for name, _ in TABULAR}
    assert {"ddim", "deis_tab", "deis_rhoab", "ipndm", "dpmpp_2m", "dpmpp_3m", "unipc", "sa_solver"} <= names


@pytest.mark.parametrize("name, opts", one_per_kind(TABULAR))  # every variant in the slow set
def test_a_solvers_table_reproduces_the_solver(problem, name, opts):
    gm, x_init, ts = problem
    solver = samplers.get_solver(name, **opts)
    table = LinearTable.from_array(table_of(solver, P, ts), ts, P, method=name)
    direct, _ = samplers.sample(gm.model_fn(P), solver, P, x_init, ts)
    tabled, info = samplers.sample(gm.model_fn(P), table, P, x_init, ts)
    np.testing.assert_allclose(tabled, direct, rtol=1e-11, atol=1e-11)
    assert info["nfe"] == 7


@pytest.mark.parametrize("name, opts", [("ddim", {}), ("dpmpp_2m", {}), ("unipc", {})])
def test_in_float32_a_table_is_as_accurate_as_its_solver(problem, name, opts):
    """Rows carry weights of about 150 (alpha_1 / alpha_0 from t = 1) that nearly cancel, as the solvers' own
    coefficients do: in float32 the table's deviation from the float64 solve is of the solver's own float32 size."""
    gm, x_init, ts = problem
    solver = samplers.get_solver(name, **opts)
    table = LinearTable.from_array(table_of(solver, P, ts), ts, P)
    truth, _ = samplers.sample(gm.model_fn(P), solver, P, x_init, ts)
    with jax.enable_x64(False):
        x32 = jnp.asarray(np.asarray(x_init, np.float32))
        own, _ = samplers.sample(gm.model_fn(P), solver, P, x32, ts)
        tabled, _ = samplers.sample(gm.model_fn(P), table, P, x32, ts)
    assert tabled.dtype == jnp.float32
    own_err = float(np.max(np.abs(np.asarray(own, np.float64) - truth)))
    table_err = float(np.max(np.abs(np.asarray(tabled, np.float64) - truth)))
    assert table_err < 1e-4 and table_err <= 10 * own_err + 1e-6, (table_err, own_err)


def test_a_table_runs_under_jit_and_differentiates(problem):
    gm, x_init, ts = problem
    table = LinearTable.from_array(table_of(samplers.get_solver("dpmpp_2m"), P, ts), ts, P)
    eager, _ = samplers.sample(gm.model_fn(P), table, P, x_init, ts)
    jitted, _ = jax.jit(lambda x: samplers.sample(gm.model_fn(P), table, P, x, ts))(x_init)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13, atol=1e-13)
    loss = lambda x: jnp.sum(jnp.sin(samplers.sample(gm.model_fn(P), table, P, x, ts)[0]))
    direction = jax.random.normal(jax.random.PRNGKey(3), x_init.shape)
    fd = (loss(x_init + 1e-6 * direction) - loss(x_init - 1e-6 * direction)) / 2e-6
    assert float(jnp.vdot(jax.grad(loss)(x_init), direction)) == pytest.approx(float(fd), rel=1e-6)


def test_a_table_refuses_another_grid_process_or_length(problem):
    gm, x_init, ts = problem
    table = LinearTable.from_array(table_of(samplers.get_solver("ddim"), P, ts), ts, P, method="olss")
    with pytest.raises(ValueError, match="made for the grid"):
        samplers.sample(gm.model_fn(P), table, P, x_init, schedules.get_timesteps("quadratic", P, 7))
    with pytest.raises(ValueError, match="made for 7 steps"):
        samplers.sample(gm.model_fn(P), table, P, x_init, schedules.get_timesteps("logsnr", P, 6))
    with pytest.raises(ValueError, match="made for process 'vp_linear'"):
        samplers.sample(gm.model_fn(P), table, "vp_cosine", x_init, ts)


def test_bad_tables_and_untabulable_solvers_fail_clearly(problem):
    _, _, ts = problem
    w = table_of(samplers.get_solver("ddim"), P, ts)
    with pytest.raises(ValueError, match="weights of shape"):
        LinearTable.from_array(w[:, :-1], ts, P)
    upper = w.copy()
    upper[0, 3] = 1.0
    with pytest.raises(ValueError, match="lower triangular"):
        LinearTable.from_array(upper, ts, P)
    with pytest.raises(ValueError, match="finite"):
        LinearTable.from_array(w * np.nan, ts, P)
    with pytest.raises(ValueError, match="name of the process"):
        LinearTable.from_array(w, ts, "")
    for solver in (samplers.get_solver("heun"), samplers.get_solver("ddim", eta=1.0)):
        with pytest.raises(ValueError, match="no table"):
            table_of(solver, P, ts)
    # One call per step, but not at the step's start: its weights would not be a table on (d_0, e_0, ...).
    class Late(type(samplers.get_solver("ddim"))):
        def step(self, model, *args):
            return super().step(lambda x, t: model(x, 0.9 * t), *args)

    with pytest.raises(ValueError, match="not at its steps' starts"):
        table_of(Late(), P, ts)
