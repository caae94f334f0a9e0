"""Empirical convergence order of every solver, against the exact flow map of the Gaussian-mixture oracle.

Problem: a 4-dimensional, 3-component oracle (stds 0.5-1.0), the VP-linear process, from t = 0.8 down to t = 0.05
(log-SNR from -3.2 to 1.6), on a grid uniform in log-SNR; iPNDM, whose fixed weights assume equal steps, on the EDM
process with a uniform grid (uniform in gamma) from gamma = 2 to 0.2. The order is the least-squares slope of
log(max error) against log(N) over N = 32, 64, 128, 256 steps, where every solver here is in its asymptotic regime,
and must lie within 0.5 of the solver's `convergence_order`.

Multistep solvers warm up with lower orders, as in their papers; the first step is then first order and its O(h^2)
local error bounds the global order by 2. Their formula order is therefore measured with exact starting values
(history from the exact trajectory, driven through the solver's own init/step contract), and the global order
through `sample` is asserted to be at least min(order, 2) - 0.5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.base import step_inputs
from fastsamplers.samplers.multistep import IPNDM
from sweep import one_per_kind

STEPS = np.array([32, 64, 128, 256])
# Every registered solver, in every variant it declares (`Solver.variants`): a new solver is tested unnamed.
CONFIGS = [(name, opts) for name, cls in samplers.SOLVERS.items() for opts in cls.variants()]
# Stochastic variants have no pathwise order: tests/test_stochastic.py checks their distribution instead.
STOCHASTIC = [c for c in CONFIGS if samplers.get_solver(c[0], **c[1]).stochastic]
FIXED = [c for c in CONFIGS if samplers.get_solver(c[0], **c[1]).static_nfe and c not in STOCHASTIC]
# Multistep: the solvers that carry a state (a history) from step to step.
MULTISTEP = [c for c in FIXED if jax.tree.leaves(samplers.get_solver(c[0], **c[1]).init(jnp.zeros(1)))]
SINGLE_STEP = [c for c in FIXED if c not in MULTISTEP]
# DPM-Solver-v3 is left out of the grid-refinement sweeps: its coefficients integrate over its statistics grid,
# which without statistics is the step grid, so a 256-step solve costs minutes (about N^2 work). Without statistics
# it equals DPM-Solver++ to 1e-12 (tests/test_dpm_solver_v3.py), whose orders are swept here, and its own order on
# the oracle is tests/test_dpm_solver_v3.py's slow test.
ORDER_SWEPT = [c for c in MULTISTEP if c[0] != "dpm_solver_v3"]
# Each multistep solver's last (most demanding) variant in the default suite, its others in the slow set.
MULTISTEP_SWEEP = one_per_kind(ORDER_SWEPT, unpack=False)
ADAPTIVE = [c for c in CONFIGS if c not in FIXED and c not in STOCHASTIC]


def process_for(solver):
    """iPNDM's fixed weights assume equal steps: it is measured where the grid is uniform in gamma."""
    return "edm" if isinstance(solver, IPNDM) else "vp_linear"


@functools.lru_cache(maxsize=None)
def problem(process_name):
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3, std_range=(0.5, 1.0))
    process = schedules.get_process(process_name)
    t_hi, t_lo, grid = (0.8, 0.05, "logsnr") if process_name == "vp_linear" else (2.0, 0.2, "uniform")
    x_init = gm.marginal_sample(jax.random.PRNGKey(1), 32, t_hi, process)
    exact = samplers.exact_flow_map(gm, process, x_init, t_hi, t_lo)
    grids = {int(n): schedules.get_timesteps(grid, process, int(n), t_min=t_lo, t_max=t_hi) for n in STEPS}
    return gm, process, x_init, exact, grids


def fitted_order(errors):
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


def global_errors(solver, process_name):
    gm, process, x_init, exact, grids = problem(process_name)
    errors = []
    for n in STEPS:
        x, _ = samplers.sample(gm.model_fn(process), solver, process, x_init, grids[int(n)])
        errors.append(np.max(np.abs(np.asarray(x) - exact)))
    return np.array(errors)


def exact_start_errors(solver, process_name):
    """Start the multistep solver at grid point order - 1 with the exact state and the exact past predictions (its
    state from `Solver.past_state`, or by default the history of predictions, newest first)."""
    gm, process, x_init, exact, grids = problem(process_name)
    k = solver.order  # points of history
    model = gm.model_fn(process, solver.native)

    @jax.jit  # one program per grid, as `sample` compiles it (step by step, eagerly, it is ~100 small compilations)
    def from_grid_point(x, state, ts):
        inputs = jax.tree.map(lambda a: a[k - 1:], step_inputs(solver, process, ts))
        step = lambda carry, inp: (solver.step(model, process, *carry, inp), None)
        (x, _), _ = jax.lax.scan(step, (x, state), inputs)
        return x

    errors = []
    for n in STEPS:
        ts = grids[int(n)]
        past = [jnp.asarray(samplers.exact_flow_map(gm, process, x_init, ts[0], ts[j])) for j in range(k)]
        preds = [model(past[j], ts[j]) for j in range(k - 1)]
        state = solver.past_state(past, preds)
        if state is None:
            state = jnp.stack(preds[::-1] + [jnp.zeros_like(x_init)])
        x = from_grid_point(past[k - 1], state, ts)
        errors.append(np.max(np.abs(np.asarray(x) - exact)))
    return np.array(errors)


def _id(config):
    name, opts = config
    return name + "".join(f"-{v}" for v in opts.values())


@pytest.mark.parametrize("config", SINGLE_STEP, ids=_id)
def test_single_step_solvers_reach_their_order(config):
    solver = samplers.get_solver(config[0], **config[1])
    order = fitted_order(global_errors(solver, process_for(solver)))
    assert abs(order - solver.convergence_order) <= 0.5, (solver, order)


# AMED's plugins keep per-sample log-SNRs of their inserted points in the history; `past_state(xs, preds)` is not
# told the grid, so no exact start exists for them (their global order is tested below).
EXACT_START = one_per_kind([c for c in ORDER_SWEPT if c[0] != "amed"], unpack=False)


@pytest.mark.parametrize("config", EXACT_START, ids=_id)
def test_multistep_formula_order_with_exact_start(config):
    solver = samplers.get_solver(config[0], **config[1])
    order = fitted_order(exact_start_errors(solver, process_for(solver)))
    assert abs(order - solver.convergence_order) <= 0.5, (solver, order)


@pytest.mark.parametrize("config", MULTISTEP_SWEEP, ids=_id)
def test_multistep_global_order_with_lower_order_warm_up(config):
    solver = samplers.get_solver(config[0], **config[1])
    order = fitted_order(global_errors(solver, process_for(solver)))
    assert order >= min(solver.convergence_order, 2) - 0.5, (solver, order)
    assert order <= solver.convergence_order + 0.5, (solver, order)


@pytest.mark.parametrize("config", ADAPTIVE, ids=_id)
def test_adaptive_error_follows_its_tolerance(config):
    """An error-controlled solver has no grid order: its error must fall with the tolerance, about in proportion
    (slope of log error against log tolerance between 0.5 and 1.5) and stay within 100x of it."""
    gm, process, x_init, exact, grids = problem("vp_linear")
    tols = np.array([1e-4, 1e-5, 1e-6, 1e-7])
    errors = []
    for tol in tols:
        solver = samplers.get_solver(config[0], **dict(config[1], rtol=float(tol), atol=float(tol)))
        x, _ = samplers.sample(gm.model_fn(process), solver, process, x_init, grids[32])
        errors.append(np.max(np.abs(np.asarray(x) - exact)))
    slope = np.polyfit(np.log(tols), np.log(errors), 1)[0]
    assert 0.5 <= slope <= 1.5 and np.all(np.array(errors) <= 100 * tols), (slope, errors)


def test_every_registered_solver_is_swept():
    # (but flow_map, which steps with a learned map, not an ODE: tests/test_flow_map.py)
    assert {name for name, _ in CONFIGS} == set(samplers.SOLVERS) - {"flow_map"}
    assert len(MULTISTEP) + len(SINGLE_STEP) + len(ADAPTIVE) + len(STOCHASTIC) == len(CONFIGS)
