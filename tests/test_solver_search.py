"""schedules.learn("search"): a schedule of one strategy everywhere is that fixed solver; the search never returns
worse on the calibration batch than the fixed solvers it starts from (recomputed through `sample`), keeps to its
budget, and its file round-trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.linear_table import LinearTable, table_of
from fastsamplers.schedules.optimal import solver_search
from fastsamplers.schedules.optimal.solver_search import Strategy

P = schedules.get_process("vp_linear")
M = 6
# One strategy everywhere and the registered solver it is (the lower-order final steps written out where the solver
# applies them: dpmpp_2m's default below 15 steps).
FIXED = [
    (lambda i: ("eps", 1, False), "ddim", {}),
    (lambda i: ("x0", 1, False), "ddim", {}),
    (lambda i: ("eps", 2, False), "deis_tab", {"order": 2}),
    (lambda i: ("eps", 3, False), "deis_tab", {"order": 3}),
    (lambda i: ("x0", 2, False), "dpmpp_2m", {"lower_order_final": False}),
    (lambda i: ("x0", 3, False), "dpmpp_3m", {"lower_order_final": False}),
    (lambda i: ("x0", min(2, M - i), False), "dpmpp_2m", {}),
    (lambda i: ("x0", min(3, M - i), False), "dpmpp_3m", {}),
    (lambda i: ("x0", 2, True), "dpmpp_2m", {"lower_order_final": False, "corrector": True}),
    (lambda i: ("x0", 3, True), "dpmpp_3m", {"lower_order_final": False, "corrector": True}),
    (lambda i: ("x0", min(2, M - i), True), "dpmpp_2m", {"corrector": True}),
]


@pytest.fixture(scope="module")
def mixture():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3)
    return gm, P.prior(jax.random.PRNGKey(1), (128, 4)), P.prior(jax.random.PRNGKey(2), (128, 4))


def test_one_strategy_everywhere_is_that_fixed_solver():
    """The schedule's table, built from local rows, against the solver's own table (from its own step). Equal to
    rounding, not bit for bit: a table re-associates the solver's sums. The EDM grid: unequal log-SNR steps."""
    ts = schedules.get_timesteps("edm", P, M)
    for strategy, name, opts in FIXED:
        ours = solver_search.strategy_table(P, ts, [strategy(i) for i in range(M)])
        theirs = table_of(samplers.get_solver(name, **opts), P, ts)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-11, err_msg=f"{name} {opts}")


def test_the_search_is_never_worse_than_the_fixed_solvers_it_starts_from(mixture):
    gm, x_cal, x_eval = mixture
    budget = 80
    solver, ts, info = schedules.learn("search", gm.model_fn(P), P, x_cal, M, teacher_steps=60, budget=budget,
                                       grids=("quadratic",), return_info=True)
    assert isinstance(solver, LinearTable) and solver.method == "search" and info["candidates"] <= budget
    target = samplers.sample(gm.model_fn(P), samplers.get_solver("deis_tab", order=3), P, x_cal,
                             schedules.get_timesteps("logsnr", P, 60))[0]
    mse = lambda x: float(jnp.mean((x - target) ** 2))
    found = mse(samplers.sample(gm.model_fn(P), solver, P, x_cal, ts)[0])
    np.testing.assert_allclose(found, info["mse"], rtol=1e-8)
    assert found <= info["start"]["mse"] < np.inf
    for grid in ("quadratic",):  # every start with a registered twin, run by that solver itself
        grid_ts = schedules.get_timesteps(grid, P, M)
        for _, name, opts in FIXED:
            fixed = mse(samplers.sample(gm.model_fn(P), samplers.get_solver(name, **opts), P, x_cal, grid_ts)[0])
            assert found <= fixed * (1 + 1e-9), (name, opts, grid, found, fixed)
    assert found < 0.95 * info["start"]["mse"]  # the coordinate descent did improve on this problem
    x, nfe = samplers.sample(gm.model_fn(P), solver, P, x_eval, ts)[0], M
    jitted = jax.jit(lambda z: samplers.sample(gm.model_fn(P), solver, P, z, ts)[0])(x_eval)
    np.testing.assert_allclose(jitted, x, rtol=1e-12, atol=1e-12)
    assert info["model_calls"] == 60 + info["candidates"] * nfe
    # The found schedule, rebuilt from its strategies and grid, is the returned table.
    np.testing.assert_allclose(solver_search.strategy_table(P, ts, info["strategies"]), np.asarray(solver.weights),
                               rtol=1e-12, atol=1e-12)


def test_the_solver_schedule_file_round_trips(mixture, tmp_path):
    gm, x_cal, x_eval = mixture
    solver, ts, info = schedules.learn("search", gm.model_fn(P), P, x_cal, 4, teacher_steps=40, budget=30,
                                       grids=("logsnr",), return_info=True)
    path = str(tmp_path / "search4.json")
    schedules.save_learned(path, solver, ts, process=P, method="search", strategies=info["strategies"],
                           start=info["start"])
    loaded = samplers.get_solver("solver_schedule", path=path)
    assert loaded == solver
    np.testing.assert_array_equal(np.asarray(samplers.sample(gm.model_fn(P), loaded, P, x_eval, ts)[0]),
                                  np.asarray(samplers.sample(gm.model_fn(P), solver, P, x_eval, ts)[0]))
    assert json.load(open(path))["strategies"] == info["strategies"]
    with pytest.raises(ValueError, match="not 'olss'"):
        samplers.get_solver("olss", path=path)


def test_bad_input(mixture):
    gm, x_cal, _ = mixture
    f = gm.model_fn(P)
    ts = schedules.get_timesteps("logsnr", P, 3)
    with pytest.raises(ValueError, match="one strategy per step"):
        solver_search.strategy_table(P, ts, [("eps", 1, False)] * 2)
    with pytest.raises(ValueError, match="a strategy is"):
        solver_search.strategy_table(P, ts, [("v", 1, False)] * 3)
    with pytest.raises(ValueError, match="a strategy is"):
        solver_search.strategy_table(P, ts, [Strategy("eps", 4)] * 3)
    with pytest.raises(ValueError, match="budget must be"):
        schedules.learn("search", f, P, x_cal, 3, teacher_steps=30, budget=0)
    with pytest.raises(ValueError, match="orders must be a subset"):
        schedules.learn("search", f, P, x_cal, 3, teacher_steps=30, orders=(4,))
    with pytest.raises(ValueError, match="has no option"):
        schedules.learn("search", f, P, x_cal, 3, teacher_steps=30, window=3)
