"""The `sample` driver: compilation, transformations, batching, NFE accounting, non-finite reporting, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import MLP, GaussianMixture
from sweep import one_per_kind, slow_unless

# Read from the registry, so a new solver gets these tests without being named: every variant for the NFE count,
# each solver's defaults for the rest; FIXED leaves out the error-controlled ones (no fixed trajectory on ts).
# Stochastic solvers' own checks (key, batch splits, distribution) are in tests/test_stochastic.py; they get the NFE
# count here, with a key.
VARIANTS = [(name, opts) for name, cls in samplers.SOLVERS.items() for opts in cls.variants()]
# (flow_map samples only a flow-map model, not the oracle's eps: its driver properties are in tests/test_flow_map.py)
ALL = [(name, {}) for name in samplers.SOLVERS if not samplers.get_solver(name).stochastic and name != "flow_map"]
FIXED = [(name, opts) for name, opts in ALL if samplers.get_solver(name).static_nfe]
# The driver's properties (jit, batching, gradients, prediction kinds) are the same code for every solver: the default
# suite checks them on one solver of each way of stepping, single-step (ddim), multistage (heun), multistep (dpmpp_2m)
# and, where it applies, error-controlled (adaptive); the slow set on every solver. The NFE count runs on each
# solver's most demanding variant there, on every variant in the slow set.
SAMPLE = ("ddim", "heun", "dpmpp_2m", "adaptive")
in_sample = lambda case: case[0] in SAMPLE
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def setup(oracle):
    p = schedules.get_process("vp_linear")
    x_init = oracle.marginal_sample(jax.random.PRNGKey(2), 12, p.t_max, p)
    return oracle, p, x_init, schedules.get_timesteps("logsnr", p, 8)


def counting(model_fn):
    """model_fn that counts its executions at run time (a host callback) and its traces (a Python counter)."""
    counts = {"calls": 0, "traces": 0}

    def bump():
        counts["calls"] += 1

    def wrapped(x, t):
        counts["traces"] += 1
        jax.debug.callback(bump)
        return model_fn(x, t)

    return wrapped, counts


@pytest.mark.parametrize("name, opts", one_per_kind(VARIANTS))
def test_reported_nfe_is_the_number_of_model_calls(name, opts, setup):
    oracle, p, x_init, ts = setup
    model, counts = counting(oracle.model_fn(p))
    _, info = samplers.sample(model, samplers.get_solver(name, **opts), p, x_init, ts, key=KEY)
    jax.effects_barrier()
    assert int(info["nfe"]) == counts["calls"]


def test_nfe_formulas():
    ts_steps = 8
    assert samplers.get_solver("heun").nfe(ts_steps) == 2 * ts_steps - 1
    assert samplers.get_solver("deis_rhork", method="4rk").nfe(ts_steps) == 4 * ts_steps
    assert samplers.get_solver("deis_tab").nfe(ts_steps) == ts_steps
    assert samplers.get_solver("heun").steps_for_nfe(10) == 5
    assert samplers.get_solver("deis_rhork", method="3kutta").steps_for_nfe(10) == 3


def test_compiles_once_for_repeated_calls(setup):
    oracle, p, x_init, ts = setup
    model, counts = counting(oracle.model_fn(p))
    solver = samplers.get_solver("deis_tab", order=3)
    samplers.sample(model, solver, p, x_init, ts)
    traces = counts["traces"]
    # New batch values and a new grid of the same length: no new trace.
    samplers.sample(model, solver, p, x_init + 0.1, schedules.get_timesteps("quadratic", p, 8))
    samplers.sample(model, solver, p, x_init * 0.5, ts)
    assert counts["traces"] == traces


@pytest.mark.parametrize("name, opts", slow_unless(FIXED, in_sample))
def test_works_under_jit_and_equals_eager(name, opts, setup):
    oracle, p, x_init, ts = setup
    solver = samplers.get_solver(name, **opts)
    model = oracle.model_fn(p)
    eager, _ = samplers.sample(model, solver, p, x_init, ts)
    jitted, info = jax.jit(lambda x, t: samplers.sample(model, solver, p, x, t))(x_init, ts)
    np.testing.assert_allclose(jitted, eager, rtol=1e-12, atol=1e-12)
    assert int(info["num_nonfinite"]) == 0


@pytest.mark.parametrize("name, opts", slow_unless(ALL, in_sample))
def test_gradient_with_respect_to_the_initial_noise(name, opts, setup):
    oracle, p, x_init, ts = setup
    solver = samplers.get_solver(name, **opts)
    model = oracle.model_fn(p)
    direction = jax.random.normal(jax.random.PRNGKey(5), x_init.shape)
    loss = lambda x: jnp.sum(jnp.sin(samplers.sample(model, solver, p, x, ts)[0]))
    grad = jax.grad(loss)(x_init)
    eps = 1e-6
    fd = (loss(x_init + eps * direction) - loss(x_init - eps * direction)) / (2 * eps)
    tol = 1e-3 if name == "adaptive" else 1e-6  # adaptive step sizes move with the state: FD sees that too
    assert float(jnp.vdot(grad, direction)) == pytest.approx(float(fd), rel=tol, abs=tol)


def test_gradient_with_respect_to_model_parameters_and_grid():
    p = schedules.get_process("vp_linear")
    net = MLP(hidden=32, depth=2)
    x_init = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    params = net.init(jax.random.PRNGKey(1), x_init, 0.5)
    params = jax.tree.map(lambda a: a + 0.01, params)  # the zero output layer would make most gradients zero
    ts = schedules.get_timesteps("logsnr", p, 6)
    solver = samplers.get_solver("dpmpp_2m")

    def loss(params, ts):
        x, _ = samplers.sample(lambda x, t: net.apply(params, x, t), solver, p, x_init, ts)
        return jnp.mean(x**2)

    g_params, g_ts = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, ts)
    leaves = jax.tree.leaves(g_params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    assert bool(jnp.all(jnp.isfinite(g_ts)))


@pytest.mark.parametrize("name, opts", slow_unless(FIXED, in_sample))
def test_a_batch_equals_its_pieces_and_any_batch_shape_works(name, opts, setup):
    oracle, p, x_init, ts = setup
    solver = samplers.get_solver(name, **opts)
    model = oracle.model_fn(p)
    whole, _ = samplers.sample(model, solver, p, x_init, ts)
    pieces = jnp.concatenate([samplers.sample(model, solver, p, x_init[i:i + 4], ts)[0] for i in (0, 4, 8)])
    np.testing.assert_allclose(pieces, whole, rtol=1e-13, atol=1e-13)
    grid_shaped, _ = samplers.sample(model, solver, p, x_init.reshape(3, 4, 8), ts)
    np.testing.assert_allclose(grid_shaped.reshape(12, 8), whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name, kind", slow_unless(
    [(name, kind) for name in ["ddim", "heun", "dpmpp_2m", "deis_rhork"] for kind in ["x0", "v", "velocity", "score"]],
    lambda case: case[0] == "dpmpp_2m" or case == ("heun", "velocity")))
def test_every_prediction_kind_gives_the_same_sample(name, kind, setup):
    oracle, p, x_init, ts = setup
    solver = samplers.get_solver(name)
    reference, _ = samplers.sample(oracle.model_fn(p, "eps"), solver, p, x_init, ts, prediction="eps")
    x, _ = samplers.sample(oracle.model_fn(p, kind), solver, p, x_init, ts, prediction=kind)
    np.testing.assert_allclose(x, reference, rtol=1e-9, atol=1e-9)


def test_heun_is_edm_algorithm_1():
    """On the EDM process (sigma = t) heun is Karras et al.'s Algorithm 1, written out here."""
    p = schedules.get_process("edm")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    ts = schedules.get_timesteps("edm", p, 6, append_zero=True)
    x = gm.marginal_sample(jax.random.PRNGKey(1), 5, ts[0], p)
    denoise = lambda x, s: gm.predict(x, s, p, "x0")
    y = x
    for i in range(6):
        d = (y - denoise(y, ts[i])) / ts[i]
        y_next = y + (ts[i + 1] - ts[i]) * d
        if ts[i + 1] != 0:
            d_next = (y_next - denoise(y_next, ts[i + 1])) / ts[i + 1]
            y_next = y + (ts[i + 1] - ts[i]) * (0.5 * d + 0.5 * d_next)
        y = y_next
    out, info = samplers.sample(lambda x, t: denoise(x, t), "heun", p, x, ts, prediction="x0")
    np.testing.assert_allclose(out, y, rtol=1e-12, atol=1e-12)
    assert int(info["nfe"]) == 11


@pytest.mark.parametrize("name", slow_unless(["ddim", "heun", "euler", "deis_tab", "deis_rhoab", "ipndm", "dpmpp_2m",
                                              "dpmpp_3m"], lambda name: name in ("heun", "dpmpp_3m"), unpack=False))
def test_a_final_step_to_sigma_zero(name):
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    x_init = gm.marginal_sample(jax.random.PRNGKey(1), 64, p.t_max, p)
    ts = schedules.get_timesteps("logsnr", p, 12, append_zero=True)
    x, _ = samplers.sample(gm.model_fn(p, "x0"), name, p, x_init, ts, prediction="x0")
    exact = samplers.exact_flow_map(gm, p, x_init, ts[0], 0.0)
    assert np.sqrt(np.mean((np.asarray(x) - exact) ** 2)) < 0.2


def test_float32_sampling_keeps_its_dtype_and_accuracy(setup):
    oracle, p, x_init, ts = setup
    reference, _ = samplers.sample(oracle.model_fn(p), "deis_tab", p, x_init, ts)
    with jax.enable_x64(False):
        gm32 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float32), oracle)
        x32 = jnp.asarray(np.asarray(x_init), jnp.float32)
        x, _ = samplers.sample(gm32.model_fn(p), "deis_tab", p, x32, np.asarray(ts))
        assert x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), reference, rtol=2e-4, atol=2e-4)


def test_non_finite_model_output_is_reported(setup):
    oracle, p, x_init, ts = setup
    bad = lambda x, t: jnp.where(t < 0.5, jnp.nan, 1.0) * x
    with pytest.raises(FloatingPointError, match="non-finite"):
        samplers.sample(bad, "ddim", p, x_init, ts)
    x, info = samplers.sample(bad, "ddim", p, x_init, ts, check_finite=False)
    assert int(info["num_nonfinite"]) == x.size
    _, info = jax.jit(lambda x: samplers.sample(bad, "ddim", p, x, ts))(x_init)
    assert int(info["num_nonfinite"]) == x.size


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, p, x, ts: samplers.sample(m, "deis_tabb", p, x, ts), ValueError, "valid names:.*deis_tab"),
        (lambda m, p, x, ts: samplers.get_solver("deis_tab", ordr=3), ValueError, "valid options"),
        (lambda m, p, x, ts: samplers.get_solver("deis_tab", order=7), ValueError, r"order in \[1, 2, 3, 4\]"),
        (lambda m, p, x, ts: samplers.get_solver("deis_rhork", method="rk45"), ValueError, "2heun"),
        (lambda m, p, x, ts: samplers.get_solver("adaptive", rtol=0.0), ValueError, "positive"),
        (lambda m, p, x, ts: samplers.get_solver("dpmpp_2m", variant="third_order"), ValueError, "dpmpp_3m"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x, ts, prediction="noise"), ValueError,
         "valid predictions"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x, ts[:1]), ValueError, "at least 2"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x, ts[::-1]), ValueError, "strictly decreasing"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x, np.array([0.5, 0.5, 0.1])), ValueError,
         "strictly decreasing"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x, np.array([0.5, 0.1, -0.1])), ValueError, "t >= 0"),
        (lambda m, p, x, ts: samplers.sample(m, "deis_tab", p, x, ts[:3]), ValueError, "at least 3 steps"),
        (lambda m, p, x, ts: samplers.sample(m, "deis_rhork", p, x, np.array([1.0, 0.5, 0.0])), ValueError,
         "sigma = 0"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", "ot", x, np.array([1.0, 0.5, 0.1])), ValueError,
         "alpha = 0"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", "vp_lin", x, ts), ValueError, "valid names"),
        (lambda m, p, x, ts: samplers.sample(m, "ddim", p, x.astype(jnp.int32), ts), TypeError, "floating"),
        (lambda m, p, x, ts: samplers.sample(None, "ddim", p, x, ts), TypeError, "callable"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_compute(call, error, match, setup):
    oracle, p, x_init, ts = setup
    model, counts = counting(oracle.model_fn(p))
    with pytest.raises(error, match=match):
        call(model, p, x_init, ts)
    assert counts["traces"] == 0


def test_velocity_solvers_may_start_at_alpha_zero_with_a_velocity_model():
    p = schedules.get_process("ot")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=2)
    ts = schedules.get_timesteps("uniform", p, 20, t_min=0.0, t_max=1.0)
    x_init = jax.random.normal(jax.random.PRNGKey(1), (64, 2))  # exactly the marginal at t = 1
    x, _ = samplers.sample(gm.model_fn(p, "velocity"), "heun", p, x_init, ts, prediction="velocity")
    exact = samplers.exact_flow_map(gm, p, x_init, 1.0 - 1e-9, 0.0)
    assert np.sqrt(np.mean((np.asarray(x) - exact) ** 2)) < 0.05


def test_args_are_traced_one_compilation_for_a_hundred_parameter_values():
    """Parameters passed as args are an argument of the compiled program, not constants baked into it."""
    p = schedules.get_process("vp_linear")
    net = MLP(hidden=16, depth=2)
    x_init = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    params = net.init(jax.random.PRNGKey(1), x_init, 0.5)
    traces = []

    def model_fn(x, t, params):
        traces.append(1)
        return net.apply(params, x, t)

    ts = schedules.get_timesteps("logsnr", p, 5)
    outs = [samplers.sample(model_fn, "dpmpp_2m", p, x_init, ts, args=jax.tree.map(lambda a: a + 0.01 * k, params))[0]
            for k in range(100)]
    assert len(traces) == 1
    closed, _ = samplers.sample(lambda x, t: net.apply(jax.tree.map(lambda a: a + 0.99, params), x, t), "dpmpp_2m",
                                p, x_init, ts)
    np.testing.assert_allclose(outs[-1], closed, rtol=1e-12, atol=1e-12)


def test_args_of_the_wrong_structure_or_shape_are_a_clear_error_before_compute(setup):
    oracle, p, x_init, ts = setup
    model = lambda x, t, args: oracle.predict(x, t, p) * args["scale"][:, None]
    samplers.sample(model, "ddim", p, x_init, ts, args={"scale": jnp.ones(12)})
    with pytest.raises(ValueError, match=r"model_fn\(x, t, args\) failed for x of shape \(12, 8\).*args"):
        samplers.sample(model, "ddim", p, x_init, ts, args={"factor": jnp.ones(12)})
    with pytest.raises(ValueError, match=r"model_fn\(x, t, args\) failed .*shape=\(3,\)"):
        samplers.sample(model, "ddim", p, x_init, ts, args={"scale": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"model_fn\(x, t, args\) must return .* \(12, 8\)"):
        samplers.sample(lambda x, t, a: x[:, :2], "ddim", p, x_init, ts, args=())
    with pytest.raises(ValueError, match=r"model_fn\(x, t\) failed"):  # a three-argument model given no args
        samplers.sample(model, "ddim", p, x_init, ts)


@pytest.mark.parametrize("name", slow_unless(["ddim", "dpmpp_2m", "heun", "unipc", "adaptive"],
                                             lambda name: name in ("dpmpp_2m", "adaptive"), unpack=False))
def test_denoise_to_zero(name, setup):
    """One more model call at ts[-1] gives the data prediction there: exactly x0_hat of the plain sample. The step
    is the driver's, the same for every solver: one solver of each native prediction kind, and the adaptive one."""
    oracle, p, x_init, ts = setup
    plain, info = samplers.sample(oracle.model_fn(p), name, p, x_init, ts)
    denoised, info_d = samplers.sample(oracle.model_fn(p), samplers.get_solver(name, denoise_to_zero=True), p,
                                       x_init, ts)
    np.testing.assert_allclose(denoised, oracle.predict(plain, ts[-1], p, "x0"), rtol=1e-10, atol=1e-10)
    assert int(info_d["nfe"]) == int(info["nfe"]) + 1
    with pytest.raises(ValueError, match="already ends at sigma = 0"):
        samplers.sample(oracle.model_fn(p), samplers.get_solver(name, denoise_to_zero=True), p, x_init,
                        np.array([1.0, 0.6, 0.3, 0.1, 0.0]))


# (but flow_map, which steps to sigma = 0 itself and calls no prediction model there: it refuses denoise_to_zero,
# tests/test_flow_map.py)
@pytest.mark.parametrize("name", [name for name in samplers.SOLVERS if name != "flow_map"])
def test_every_solver_takes_denoise_to_zero_and_counts_its_call(name):
    solver, denoised = samplers.get_solver(name), samplers.get_solver(name, denoise_to_zero=True)
    assert [denoised.nfe(n) for n in (4, 7)] == [solver.nfe(n) + 1 for n in (4, 7)]
