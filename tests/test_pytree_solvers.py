"""Solvers and model wrappers as pytrees (samplers/pytrees.py): numeric options are traced leaves, so a sweep over
eta, tau, S_churn, rtol or the guidance scale is one `jax.vmap` and one compilation, equal to the per-value runs;
`sample` compiles once per structure; UniC is a wrapper solver; `lower_order_final` and `step_orders` mean one thing
in every multistep solver."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.pytrees import TracedOptions, split
from fastsamplers.samplers.unipc import UniC
from sweep import slow_unless

P = schedules.get_process("vp_linear")
KEY = jax.random.PRNGKey(5)
# The batched and the per-value programs differ only in how XLA orders their float64 sums (vmap batches the
# oracle's matrix products): a few ulps (2.2e-16 each) per operation, over 8 steps of tens of operations on values of
# order 1, amplified by the flow's Lipschitz constant (at most ~10 here): well under 1e-12.
TOL = 1e-12


@pytest.fixture(scope="module")
def problem():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=3, std_range=(0.3, 0.8))
    x_init = P.prior(jax.random.PRNGKey(1), (16, 3))
    return gm, x_init, schedules.get_timesteps("logsnr", P, 8)


def counting(model_fn):
    """model_fn and a list that grows by one each time it is traced (called in Python)."""
    traces = []

    def wrapped(*args):
        traces.append(1)
        return model_fn(*args)

    return wrapped, traces


# (solver, option, values): each traced option over values that keep the solver stochastic.
SWEEPS = [
    ("ddim", "eta", (0.25, 0.5, 1.0)),
    ("euler_ancestral", "eta", (0.3, 0.7, 1.0)),
    ("dpmpp_2m_sde", "eta", (0.5, 1.0, 1.5)),
    ("dpmpp_3m_sde", "eta", (0.5, 1.0)),
    ("sa_solver", "tau", (0.5, 1.0, 1.5)),
    ("edm_stochastic", "S_churn", (10.0, 40.0, 80.0)),
    ("edm_stochastic", "S_noise", (1.0, 1.003, 1.05)),
]
SWEPT_FAST = ("ddim", "euler_ancestral", "dpmpp_2m_sde", "sa_solver")  # the others in the slow set


@pytest.mark.parametrize("name, option, values", slow_unless(SWEEPS, lambda case: case[0] in SWEPT_FAST),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_vmap_over_a_numeric_option_equals_the_per_value_runs(name, option, values, problem):
    gm, x_init, ts = problem
    model, traces = counting(gm.model_fn(P))

    def run(value):
        return samplers.sample(model, samplers.get_solver(name, **{option: value}), P, x_init, ts, key=KEY)[0]

    sweep = jax.jit(jax.vmap(run))
    swept = sweep(jnp.asarray(values))
    calls_per_trace = len(traces)  # the model's call sites in one trace of the solver (2 for EDM's Heun step)
    assert calls_per_trace == samplers.get_solver(name).stages
    sweep(jnp.asarray(values) * 0.9)  # other values: the same program, no new trace
    assert len(traces) == calls_per_trace
    for value, row in zip(values, swept):
        np.testing.assert_allclose(row, run(value), rtol=TOL, atol=TOL)


def test_a_jitted_function_of_eta_traces_the_model_once(problem):
    gm, x_init, ts = problem
    model, traces = counting(gm.model_fn(P))
    run = jax.jit(lambda eta: samplers.sample(model, samplers.get_solver("ddim", eta=eta), P, x_init, ts,
                                              key=KEY)[0])
    out = [run(eta) for eta in (0.1, 0.4, 0.7, 1.0)]
    assert len(traces) == 1
    assert float(jnp.max(jnp.abs(out[0] - out[-1]))) > 1e-2  # eta does reach the program


def test_sample_compiles_once_per_structure_and_takes_array_leaves(problem):
    """Two solvers that differ only in eta share the compiled program; eta = 0 given as a number is another
    structure (the deterministic DDIM, bit for bit); an array eta (unhashable) works and is traced too."""
    gm, x_init, ts = problem
    model, traces = counting(gm.model_fn(P))
    a = samplers.sample(model, samplers.get_solver("ddim", eta=0.3), P, x_init, ts, key=KEY)[0]
    b = samplers.sample(model, samplers.get_solver("ddim", eta=0.8), P, x_init, ts, key=KEY)[0]
    assert len(traces) == 1 and float(jnp.max(jnp.abs(a - b))) > 1e-2
    key_a, _ = split(samplers.get_solver("ddim", eta=0.3))
    assert key_a == split(samplers.get_solver("ddim", eta=0.8))[0] != split(samplers.get_solver("ddim"))[0]
    deterministic = samplers.sample(model, samplers.get_solver("ddim", eta=0.0), P, x_init, ts)[0]
    assert len(traces) == 2 and not samplers.get_solver("ddim", eta=np.float64(0.0)).stochastic
    np.testing.assert_array_equal(deterministic, samplers.sample(gm.model_fn(P), "ddim", P, x_init, ts)[0])
    counts = []
    for eta in (0.3, 0.8):  # array leaves (unhashable): traced like numbers, a new value does not retrace
        solver = samplers.get_solver("ddim", eta=jnp.asarray(eta))
        with pytest.raises(TypeError):
            hash(solver)  # what a cache keyed on the solver would have needed
        out = samplers.sample(model, solver, P, x_init, ts, key=KEY)[0]
        np.testing.assert_allclose(out, a if eta == 0.3 else b, rtol=TOL, atol=TOL)
        counts.append(len(traces))
    assert counts[0] == counts[1]


@dataclasses.dataclass(frozen=True)
class Repeated(TracedOptions):
    """A model wrapper with an int leaf that makes a shape and a float leaf that scales the prediction."""

    model_fn: Callable
    repeats: int
    weight: float
    traced = ("repeats", "weight")

    def __call__(self, x, t):
        copies = jnp.broadcast_to(self.model_fn(x, t), (self.repeats,) + x.shape)  # a tracer cannot be a shape
        return self.weight * jnp.mean(copies, axis=0)


def test_split_traces_floats_and_arrays_and_keeps_python_ints_static(problem):
    """samplers.pytrees.split's rule: Python ints and bools are static (a wrapper may make a shape of one), floats,
    NumPy scalars and arrays traced; a solver holds an option given as an int as a float, so eta=1 shares the program
    of eta=0.5."""
    tree = {"count": 3, "flag": True, "scale": 2.5, "weight": np.float32(1.0), "x": np.ones(2)}
    key, leaves = split(tree)
    assert [leaf is None for leaf in leaves] == [True, True, False, False, False]  # the dict's keys in sorted order
    assert key == split(dict(tree, scale=3.5, x=np.zeros(2)))[0] != split(dict(tree, count=4))[0]
    gm, x_init, ts = problem
    model, traces = counting(gm.model_fn(P))
    out = [samplers.sample(Repeated(model, repeats, weight), "ddim", P, x_init, ts)[0]
           for repeats, weight in ((2, 0.5), (2, 1.5), (3, 0.5))]
    assert len(traces) == 2  # a new weight reuses the program; a new count (a shape) compiles its own
    np.testing.assert_allclose(out[2], out[0], rtol=TOL, atol=TOL)
    eta_one = samplers.get_solver("ddim", eta=1)
    assert isinstance(eta_one.eta, float) and split(eta_one)[0] == split(samplers.get_solver("ddim", eta=0.5))[0]
    samplers.sample(model, eta_one, P, x_init, ts, key=KEY)
    samplers.sample(model, samplers.get_solver("ddim", eta=0.5), P, x_init, ts, key=KEY)
    assert len(traces) == 3


def test_a_traced_zero_is_the_stochastic_method_with_zero_noise(problem):
    """The switch rule: a traced eta is stochastic whatever its value; at 0 its noise weight is 0, so it is the
    deterministic DDIM to rounding (not bit for bit: the stochastic formulas), and it still needs a key."""
    gm, x_init, ts = problem
    run = jax.jit(lambda eta: samplers.sample(gm.model_fn(P), samplers.get_solver("ddim", eta=eta), P, x_init, ts,
                                              key=KEY)[0])
    np.testing.assert_allclose(run(0.0), samplers.sample(gm.model_fn(P), "ddim", P, x_init, ts)[0], rtol=TOL,
                               atol=TOL)
    with pytest.raises(ValueError, match="stochastic: pass key="):
        jax.jit(lambda eta: samplers.sample(gm.model_fn(P), samplers.get_solver("ddim", eta=eta), P, x_init,
                                            ts)[0])(0.0)


def test_options_are_checked_where_they_are_known():
    """Tracers pass the checks (they are checked where they were numbers); known arrays are checked element-wise."""
    jax.jit(lambda eta: samplers.get_solver("ddim", eta=eta).eta)(2.0)  # no error on a tracer
    with pytest.raises(ValueError, match="eta must be a finite number >= 0 and at most 1"):
        samplers.get_solver("ddim", eta=jnp.asarray([0.5, 1.5]))
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        samplers.get_solver("sa_solver", tau=np.asarray([1.0, np.nan]))
    with pytest.raises(ValueError, match="S_min <= S_max"):
        samplers.get_solver("edm_stochastic", S_min=jnp.asarray(2.0), S_max=1.0)
    # JAX's own tree operations never re-run the checks: a tree of placeholders unflattens
    solver = samplers.get_solver("edm_stochastic")
    assert jax.tree.structure(jax.tree.map(lambda _: object(), solver)) == jax.tree.structure(solver)


def test_adaptive_tolerances_are_traced(problem):
    gm, x_init, ts = problem
    model, traces = counting(gm.model_fn(P))
    run = jax.jit(lambda rtol: samplers.sample(model, samplers.get_solver("adaptive", rtol=rtol, atol=rtol), P,
                                               x_init, ts)[0])
    loose = run(1e-3)
    traced = len(traces)
    tight = run(1e-7)
    assert len(traces) == traced  # one trace serves every tolerance
    exact = samplers.exact_flow_map(gm, P, x_init, ts[0], ts[-1])
    assert np.max(np.abs(np.asarray(tight) - exact)) < np.max(np.abs(np.asarray(loose) - exact))


# ---- the guidance wrapper -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conditional():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=4, std_range=(0.3, 0.6))
    x_init = P.prior(jax.random.PRNGKey(1), (32, 3))
    labels = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 4)
    return gm, x_init, labels, jnp.full((32,), gm.null_label), schedules.get_timesteps("logsnr", P, 8)


@pytest.mark.parametrize("batch_axes", [None, 0])
def test_vmap_over_the_guidance_scale_equals_the_per_value_runs(batch_axes, conditional):
    gm, x_init, labels, null, ts = conditional
    model, traces = counting(gm.conditional_model_fn(P))
    calls = 1 if batch_axes == 0 else 2  # call sites per trace: one on the doubled batch, or two

    def run(scale):
        guided = samplers.guided(model, scale, null, batch_axes=batch_axes)
        return samplers.sample(guided, "dpmpp_2m", P, x_init, ts, args=labels)[0]

    scales = jnp.linspace(0.0, 4.0, 5)
    swept = jax.jit(jax.vmap(run))(scales)
    assert len(traces) == calls
    per_value = [run(float(s)) for s in scales]  # through sample's own cache: one more program, shared by all
    assert len(traces) == 2 * calls
    for row, expected in zip(swept, per_value):
        np.testing.assert_allclose(row, expected, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(per_value[1], samplers.sample(  # scale 1 is the conditional model
        gm.conditional_model_fn(P), "dpmpp_2m", P, x_init, ts, args=labels)[0], rtol=TOL, atol=TOL)


def test_a_traced_guidance_interval(conditional):
    gm, x_init, labels, null, ts = conditional
    model, traces = counting(gm.conditional_model_fn(P))

    def run(t_lo):
        guided = samplers.guided(model, 3.0, null, interval=(t_lo, 0.7))
        return samplers.sample(guided, "dpmpp_2m", P, x_init, ts, args=labels)[0]

    jitted = jax.jit(run)
    for t_lo in (0.1, 0.4):
        np.testing.assert_allclose(jitted(t_lo), run(t_lo), rtol=TOL, atol=TOL)
    assert len(traces) == 3 * 2  # per program, the conditional call of each branch and the unconditional one
    with pytest.raises(ValueError, match="pair"):
        jax.jit(lambda t: samplers.guided(model, 3.0, null, interval=(t, 0.7, 0.9)))(0.1)


# ---- UniC as a wrapper, one lower_order_final, one shape of step_orders ---------------------------------------------

def test_unic_is_a_wrapper_and_the_corrector_option_builds_it():
    corrected = samplers.get_solver("dpmpp_2m", corrector=True)
    assert isinstance(corrected, UniC) and corrected == samplers.unic(samplers.get_solver("dpmpp_2m"))
    assert samplers.get_solver("unipc") == samplers.unic(samplers.get_solver("unipc", corrector=False))
    assert samplers.get_solver("unipc", variant="bh1") == samplers.unic(
        samplers.get_solver("unipc", variant="bh1", corrector=False))
    denoised = samplers.unic(samplers.get_solver("dpmpp_3m", denoise_to_zero=True))
    assert denoised.denoise_to_zero and not denoised.predictor.denoise_to_zero
    assert (corrected.name, corrected.order, corrected.convergence_order) == ("dpmpp_2m", 2, 3)
    with pytest.raises(ValueError, match="data-prediction multistep predictor"):
        samplers.unic(samplers.get_solver("deis_tab"))
    with pytest.raises(ValueError, match="probability-flow ODE"):
        samplers.unic(samplers.get_solver("dpmpp_2m_sde", eta=0.5))
    assert not samplers.get_solver("dpmpp_2m_sde", eta=0.0, corrector=True).stochastic
    with pytest.raises(ValueError, match="corrector must be True or False"):
        samplers.get_solver("dpmpp_2m", corrector="yes")


MULTISTEP = [("deis_tab", {"order": 3}), ("deis_rhoab", {"order": 3}), ("ipndm", {"order": 3}),
             ("dpmpp_3m", {}), ("unipc", {}), ("unipc", {"corrector": False}), ("dpmpp_2m", {"corrector": True}),
             ("sa_solver", {"predictor_order": 3, "corrector_order": 3})]


@pytest.mark.parametrize("name, opts", MULTISTEP, ids=lambda v: v if isinstance(v, str) else str(v))
def test_lower_order_final_means_one_thing_everywhere(name, opts):
    """Every multistep solver takes False, True and "always": True lowers the final orders below 15 steps only,
    "always" at every step count; step_orders is one (num_steps,) array of each step's (predictor) order."""
    solver = lambda lof: samplers.get_solver(name, **opts, lower_order_final=lof)
    order = solver(False).order
    warm = list(range(1, order))
    for n in (8, 20):
        never = solver(False).step_orders(n)
        assert isinstance(never, np.ndarray) and never.shape == (n,)
        assert list(never) == warm + [order] * (n - order + 1)
        assert list(solver("always").step_orders(n)) == warm + [order] * (n - 2 * order + 2) + warm[::-1]
        assert list(solver(True).step_orders(n)) == list(solver("always" if n < 15 else False).step_orders(n))
    with pytest.raises(ValueError, match="valid values: True, 'always' or False"):
        solver(2)


def test_each_solver_keeps_its_published_lower_order_final_default():
    defaults = {name: samplers.SOLVERS.options(name).get("lower_order_final") for name in samplers.SOLVERS}
    assert defaults["dpmpp_2m"] is True and defaults["dpmpp_3m"] is True  # DPM-Solver's rule, below 15 steps
    assert defaults["unipc"] == "always" and defaults["sa_solver"] == "always"  # their published codes'
    assert defaults["deis_tab"] is False and defaults["ipndm"] is False
