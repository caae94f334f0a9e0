"""samplers.fk: Feynman-Kac correctors against exact targets on the Gaussian-mixture oracle (products of mixtures in
closed form, annealed / guided targets by inverse CDF on a fine 1-d grid; `experiments.runs.fk_benchmark`), and the
weights' invariants.

Distances: the energy distance of N = 2048 particles to N exact draws, against the floor (the largest distance between
two independent exact draws of N, over 3 pairs, measured here) and against the uncorrected sampler (the same SDE
without weights). 200 logSNR steps, ESS threshold 0.9: over 5 seeds the corrected distances are 0.5-5 times the floor
for guidance, 2-15 for annealing (beta 2), 2-28 for the 1-d product and 4-10 for the 2-d one, one seed's mode
proportions wandering (the particles are correlated through resampling: an SMC output is not N independent draws),
while the uncorrected sampler is 13-70 times the floor. The slow tests take the median over 3 seeds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.experiments.metrics import energy_distance
from fastsamplers.experiments.runs import fk_benchmark
from fastsamplers.models import GaussianMixture

N = 2048
STEPS = 200


@functools.lru_cache(maxsize=None)
def floor(name, param):
    prob = fk_benchmark.problem(name, N, param)
    return max(energy_distance(prob.exact(jax.random.PRNGKey(50 + 2 * k), N),
                               prob.exact(jax.random.PRNGKey(51 + 2 * k), N)) for k in range(3))


def distances(name, param, seed=0):
    p = fk_benchmark.process()
    prob = fk_benchmark.problem(name, N, param)
    exact = prob.exact(jax.random.PRNGKey(1), N)
    ts = schedules.get_timesteps("logsnr", p, STEPS)
    x_init = p.prior(jax.random.PRNGKey(10 + seed), (N, prob.dim))
    x, info = samplers.fk.sample(prob.target, p, x_init, ts, key=jax.random.PRNGKey(seed), args=prob.args)
    assert np.all(info["ess"] >= 1 - 1e-9) and np.all(info["ess"] <= N + 1e-6)
    y, _ = samplers.fk.sample(prob.target, p, x_init, ts, key=jax.random.PRNGKey(seed), args=prob.args,
                              resample="none")
    return energy_distance(x, exact), energy_distance(y, exact)


@pytest.mark.slow  # ~30 s: with the other targets below, in the slow set
def test_corrected_guided_particles_reach_the_exact_target():
    fk, uncorrected = distances("guided_1d", 2.0)
    assert fk < 4.0 * floor("guided_1d", 2.0)
    assert fk < 0.5 * uncorrected  # the uncorrected sampler samples another distribution


@pytest.mark.slow  # ~20-60 s each on 2 shared cores
@pytest.mark.parametrize("name,param,factor", [("tilt_1d", None, 3.0), ("anneal_1d", 2.0, 15.0),
                                               ("anneal_1d", 0.5, 15.0), ("product_1d", None, 30.0),
                                               ("product_2d", None, 15.0)])
def test_corrected_particles_reach_the_exact_target(name, param, factor):
    """The median over 3 seeds, below the largest ratio to the floor measured over 5 seeds (module docstring): the
    weights of annealing and products are heavy (without resampling the final ESS is 11-120 of 2048 for the 1-d
    product), so one run's mode proportions wander by 2-3 times their binomial error (the 1-d product's mass below 0:
    0.33-0.40 over 8 seeds, exact 0.39)."""
    fk, uncorrected = np.median(np.array([distances(name, param, seed) for seed in range(3)]), axis=0)
    assert fk < factor * floor(name, param)
    assert fk < 0.75 * uncorrected


@functools.lru_cache(maxsize=None)
def small():
    p = schedules.get_process("vp_linear", t_min=0.02)
    gm = GaussianMixture.create([0.3, 0.7], [[-1.5], [1.0]], [0.3, 0.5])
    x_init = p.prior(jax.random.PRNGKey(0), (64, 1))
    return p, gm, x_init, schedules.get_timesteps("logsnr", p, 20)


def test_unit_exponents_leave_the_weights_constant_and_no_resampling():
    p, gm, x_init, ts = small()
    labels, null = jnp.full((64,), 1), jnp.full((64,), gm.null_label)
    for target, args in ((samplers.fk.anneal(gm.model_fn(p), 1.0), None),
                         (samplers.fk.guided(gm.conditional_model_fn(p), 1.0, null), labels)):
        x, info = samplers.fk.sample(target, p, x_init, ts, key=jax.random.PRNGKey(1), args=args, num_particles=8,
                                     final_resample=False)
        assert info["ess"].shape == (20, 8) and np.allclose(info["ess"], 8.0)
        assert int(np.sum(info["num_resamples"])) == 0
        np.testing.assert_allclose(info["log_weights"], -np.log(8.0), atol=1e-12)  # CFG's combination: rounding


def test_uncorrected_is_the_plain_sde_and_a_flat_expert_is_the_other_expert():
    p, gm, x_init, ts = small()
    key = jax.random.PRNGKey(3)
    plain, _ = samplers.sample(gm.model_fn(p), samplers.get_solver("ddim", eta=1.0), p, x_init, ts, key=key)
    x, _ = samplers.fk.sample(samplers.fk.anneal(gm.model_fn(p), 1.0), p, x_init, ts, key=key, resample="none")
    np.testing.assert_allclose(x, plain, atol=1e-12)  # churn 1: DDPM's ancestral step (module docstring)
    ode, _ = samplers.sample(gm.model_fn(p), "ddim", p, x_init, ts)
    x, _ = samplers.fk.sample(samplers.fk.anneal(gm.model_fn(p), 1.0), p, x_init, ts, key=key, churn=0.0)
    np.testing.assert_allclose(x, ode, atol=1e-12)
    flat = samplers.fk.product(gm.model_fn(p), lambda x, t: jnp.zeros_like(x))
    x, info = samplers.fk.sample(flat, p, x_init, ts, key=key, final_resample=False)
    np.testing.assert_allclose(x, plain, atol=1e-12)
    np.testing.assert_allclose(info["log_weights"], -np.log(64.0), atol=1e-12)


def test_weights_are_invariant_to_a_constant_shift_of_the_log_density():
    p, gm, x_init, ts = small()
    reward = lambda x: -jnp.sum((x - 0.5) ** 2, -1)  # noqa: E731
    for schedule in ("linear", "constant"):
        runs = [samplers.fk.sample(samplers.fk.tilt(gm.model_fn(p), lambda x, c=c: reward(x) + c, 1.0, schedule),
                                   p, x_init, ts, key=jax.random.PRNGKey(4), final_resample=False)
                for c in (0.0, 5.0)]
        np.testing.assert_allclose(runs[0][1]["log_weights"], runs[1][1]["log_weights"], atol=1e-9)
        np.testing.assert_allclose(runs[0][0], runs[1][0], atol=1e-9)


def test_a_vmap_over_beta_is_one_program():
    p, gm, x_init, ts = small()
    traces = []

    def model(x, t):
        traces.append(1)
        return gm.model_fn(p)(x, t)

    def run(beta):
        return samplers.fk.sample(samplers.fk.anneal(model, beta), p, x_init, ts, key=jax.random.PRNGKey(5))[0]

    betas = jnp.asarray([0.5, 1.0, 2.0])
    xs = jax.jit(jax.vmap(run))(betas)
    assert len(traces) == 1
    np.testing.assert_allclose(xs[2], run(2.0), atol=1e-9)


def test_float32_and_other_processes_and_predictions():
    _, gm, _, _ = small()
    for name, kind in (("edm", "x0"), ("ot", "velocity")):
        p = schedules.get_process(name)
        ts = schedules.get_timesteps("logsnr", p, 10)
        with jax.enable_x64(False):
            x_init = p.prior(jax.random.PRNGKey(0), (32, 1)).astype(jnp.float32)
            x, info = samplers.fk.sample(samplers.fk.anneal(gm.model_fn(p, kind), 2.0), p, x_init, ts,
                                         key=jax.random.PRNGKey(1), prediction=kind)
            assert x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(x))) and info["nfe"] == 10


@pytest.mark.parametrize("options,match", [
    (dict(num_particles=5), "num_particles"),
    (dict(resample="stratified"), "valid names"),
    (dict(ess_threshold=1.5), "ess_threshold"),
    (dict(ts=np.array([0.5, 0.8])), "decreasing"),
    (dict(key=None), "key"),
    (dict(product_args=jnp.zeros(3)), "pair"),
    (dict(x_init=jnp.zeros(())), "leading particle axis"),
    (dict(churn=-1.0), "churn"),
])
def test_bad_inputs_fail_before_compute(options, match):
    p, gm, x_init, ts = small()
    target = samplers.fk.anneal(gm.model_fn(p), 2.0)
    kwargs = dict(key=jax.random.PRNGKey(0))
    if "product_args" in options:
        target, kwargs["args"] = samplers.fk.product(gm.model_fn(p), gm.model_fn(p)), options.pop("product_args")
    x_init, ts = options.pop("x_init", x_init), options.pop("ts", ts)
    kwargs.update(options)
    with pytest.raises(ValueError, match=match):
        samplers.fk.sample(target, p, x_init, ts, **kwargs)


def test_the_benchmark_runs_in_smoke_form(tmp_path):
    record = fk_benchmark.benchmark(str(tmp_path / "fk.json"), targets=("guided_1d", "product_2d"), steps=(5,),
                                    particles=(16,), floor_pairs=1, repeats=1, overhead_batch=32, overhead_steps=3,
                                    seeds=2)
    assert {r["target"] for r in record["rows"]} == {"guided_1d", "product_2d"}
    assert all(len(r["fk_per_seed"]) == 2 and r["fk"] == np.median(r["fk_per_seed"]) for r in record["rows"])
    assert all(r["nfe"] == 10 and np.isfinite(r["fk"]) and np.isfinite(r["ode"]) for r in record["rows"])
    assert record["overhead"]["nfe"] == 6 and record["overhead"]["fk_s"] > 0
