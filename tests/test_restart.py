"""Restart sampling (samplers.restart): K = 0 is its base bitwise, the forward jump is the exact transition, samples
match exact draws of the oracle (a two-sample energy distance against the exact-vs-exact floor measured here), the
NFE is exact, per-sample keys give split-invariant samples, and bad input is one sentence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.restart import PRESETS, forward_jump

N = 1500
INTERVAL = ((3, 2, 0.1, 1.0),)  # one restart interval that covers the coarse grid's last steps


@functools.lru_cache(maxsize=None)
def problem():
    gm = GaussianMixture.random(jax.random.PRNGKey(3), dim=2, num_components=3, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear", t_min=0.02)
    return gm, p, gm.marginal_sample(jax.random.PRNGKey(4), N, p.t_max, p)


@functools.lru_cache(maxsize=None)
def floor(t):
    """Twice the largest energy distance between two independent exact samples of N at time t, over 6 pairs: what
    a sampler of the exact marginal may reach whatever the seeds."""
    gm, p, _ = problem()
    return 2.0 * max(energy_distance(gm.marginal_sample(jax.random.PRNGKey(100 + 2 * k), N, t, p),
                                     gm.marginal_sample(jax.random.PRNGKey(101 + 2 * k), N, t, p)) for k in range(6))


def test_the_presets_count_their_published_nfe():
    heun = samplers.get_solver("heun")
    assert samplers.restart(heun, "cifar10_vp").nfe(PRESETS["cifar10_vp"].num_steps) == 43
    assert samplers.restart(heun, "imagenet64_edm").nfe(PRESETS["imagenet64_edm"].num_steps) == 203
    solver = samplers.get_solver("restart", base="deis_tab", intervals=((4, 3, 0.1, 1.0),))
    assert solver.nfe(10) == 10 + 3 * 3 and solver.order == 3 and solver.native == "eps" and solver.stochastic
    again = samplers.get_solver("restart", **solver.spec()["options"])
    assert again.spec() == solver.spec()


@pytest.mark.parametrize("base", ["heun", "dpmpp_2m"])
def test_no_restarts_is_the_base_solver_bitwise(base):
    gm, p, x_init = problem()
    ts = schedules.get_timesteps("edm", p, 6)
    solver = samplers.get_solver("restart", base=base, intervals=((3, 0, 0.1, 1.0),))
    assert not solver.stochastic
    plain, _ = samplers.sample(gm.model_fn(p), base, p, x_init[:64], ts)
    ours, info = samplers.sample(gm.model_fn(p), solver, p, x_init[:64], ts)
    np.testing.assert_array_equal(ours, plain)
    assert info["nfe"] == samplers.get_solver(base).nfe(6)


@pytest.mark.parametrize("process_name", ["vp_linear", "ot"])
def test_the_forward_jump_is_the_exact_forward_transition(process_name):
    """Exact draws at t_min jumped to t_max (S_noise = 1) are exact draws at t_max."""
    gm, _, _ = problem()
    p = schedules.get_process(process_name)
    t_min, t_max = p.t_of_gamma(0.2), p.t_of_gamma(2.0)
    x = gm.marginal_sample(jax.random.PRNGKey(20), N, t_min, p)
    jumped = forward_jump(p, x, t_min, t_max, jax.random.normal(jax.random.PRNGKey(21), x.shape))
    exact = gm.marginal_sample(jax.random.PRNGKey(22), N, t_max, p)
    assert energy_distance(jumped, exact) < floor(1.0) * 4  # the marginal at t_max: wider, a larger floor
    stale = gm.marginal_sample(jax.random.PRNGKey(22), N, t_min, p) * p.alpha(t_max) / p.alpha(t_min)
    assert energy_distance(stale, exact) > 10 * energy_distance(jumped, exact)  # the statistic sees a missing jump


def test_restart_reaches_the_exact_marginal_and_repairs_a_coarse_grid():
    """On a coarse main grid (4 Heun steps) the ODE sample is visibly off; Restart brings it to the floor, at the
    floor's noise of Heun's at the same NFE (on an exact model both are discretisation error only)."""
    gm, p, x_init = problem()
    exact = gm.marginal_sample(jax.random.PRNGKey(8), N, p.t_min, p)
    heun, solver = samplers.get_solver("heun"), samplers.get_solver("restart", base="heun", intervals=INTERVAL)
    ts = schedules.get_timesteps("edm", p, 4)
    x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(0))
    coarse, _ = samplers.sample(gm.model_fn(p), heun, p, x_init, ts)
    steps = heun.steps_for_nfe(info["nfe"])
    assert heun.nfe(steps) == info["nfe"] == 7 + 2 * 2 * 2
    equal_nfe, _ = samplers.sample(gm.model_fn(p), heun, p, x_init, schedules.get_timesteps("edm", p, steps))
    ours, theirs, bad = (energy_distance(a, exact) for a in (x, equal_nfe, coarse))
    assert ours < floor(p.t_min) and ours <= theirs + floor(p.t_min), (ours, theirs, floor(p.t_min))
    assert bad > 2 * floor(p.t_min), bad  # the coarse grid's error is well above the floor: Restart repaired it


def counting(model_fn):
    counts = {"calls": 0}

    def bump():
        counts["calls"] += 1

    def wrapped(x, t):
        jax.debug.callback(bump)
        return model_fn(x, t)

    return wrapped, counts


@pytest.mark.parametrize("base", ["heun", "dpmpp_2m"])
def test_the_nfe_is_exact(base):
    gm, p, x_init = problem()
    model, counts = counting(gm.model_fn(p))
    solver = samplers.get_solver("restart", base=base, intervals=((3, 2, 0.1, 1.0), (4, 1, 1.5, 5.0)))
    _, info = samplers.sample(model, solver, p, x_init[:8], schedules.get_timesteps("edm", p, 8),
                              key=jax.random.PRNGKey(1))
    jax.effects_barrier()
    assert info["nfe"] == counts["calls"] == samplers.get_solver(base).nfe(8) + solver.stages * (2 * 2 + 1 * 3)


@pytest.mark.slow  # four compilations (~10 s); the registry sweep of tests/test_stochastic.py runs its key check
def test_seeded_by_key_and_batch_split_invariant():
    gm, p, x_init = problem()
    x_init = x_init[:12]
    ts = schedules.get_timesteps("edm", p, 6)
    solver = samplers.get_solver("restart", base="dpmpp_2m", intervals=INTERVAL)
    run = lambda key, x: samplers.sample(gm.model_fn(p), solver, p, x, ts, key=key)[0]
    keys = jax.random.split(jax.random.PRNGKey(11), 12)
    whole = run(keys, x_init)
    np.testing.assert_array_equal(run(keys, x_init), whole)
    assert float(jnp.max(jnp.abs(whole - run(jax.random.split(jax.random.PRNGKey(12), 12), x_init)))) > 1e-3
    pieces = jnp.concatenate([run(keys[i:i + 4], x_init[i:i + 4]) for i in (0, 4, 8)])
    np.testing.assert_allclose(pieces, whole, rtol=1e-13, atol=1e-13)
    jitted = jax.jit(run)(keys, x_init)
    np.testing.assert_allclose(jitted, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options, match", [
    (dict(intervals=((3, 2, 1.0, 0.5),)), "0 < gamma_min < gamma_max"),
    (dict(intervals=((1, 2, 0.1, 0.5),)), "integers N >= 2, K >= 0"),
    (dict(intervals=((3, -1, 0.1, 0.5),)), "integers N >= 2, K >= 0"),
    (dict(intervals=()), "must be a preset"),
    (dict(intervals="cifar10"), "unknown restart preset 'cifar10'"),
    (dict(s_noise=-1.0), "s_noise must be a finite number >= 0"),
    (dict(base="euler_ancestral"), "deterministic fixed-step solver"),
    (dict(base="adaptive"), "deterministic fixed-step solver"),
    (dict(grid="edmm"), "unknown time grid 'edmm'"),
    (dict(grid="list"), "places its own ends"),
    (dict(grid_options={"rhoo": 7.0}), "rhoo"),
])
def test_bad_options_are_one_sentence(options, match):
    with pytest.raises(ValueError, match=match):
        samplers.get_solver("restart", **options)


def test_bad_grids_and_missing_keys_are_one_sentence():
    gm, p, x_init = problem()
    ts = schedules.get_timesteps("edm", p, 6)
    run = lambda solver, ts=ts, **kw: samplers.sample(gm.model_fn(p), solver, p, x_init[:4], ts, **kw)
    with pytest.raises(ValueError, match="stochastic: pass key="):
        run(samplers.get_solver("restart", intervals=INTERVAL))
    with pytest.raises(ValueError, match="the start of the grid"):
        run(samplers.get_solver("restart", intervals=((3, 1, 150.0, 160.0),)), key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="as does interval 0"):
        run(samplers.get_solver("restart", intervals=INTERVAL * 2), key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="beyond the noise level"):
        run(samplers.get_solver("restart", intervals=((3, 1, 0.1, 1e6),)), key=jax.random.PRNGKey(0))
    edm = schedules.get_process("edm")
    with pytest.raises(ValueError, match="where sigma = 0"):
        samplers.sample(gm.model_fn(edm), samplers.get_solver("restart", intervals=((3, 1, 0.001, 1.0),)), edm,
                        x_init[:4], schedules.get_timesteps("edm", edm, 6, append_zero=True), key=jax.random.PRNGKey(0))
