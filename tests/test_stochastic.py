"""Stochastic samplers (ddim with eta, euler_ancestral, edm_stochastic, dpmpp_2m_sde, dpmpp_3m_sde): seeded by key,
batch-split invariant with per-sample keys, and distributed as the exact marginal of the oracle (a two-sample
energy distance whose threshold comes from pairs of independent exact samples of the same size)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.multistep import DDIM
from sweep import one_per_kind, slow_unless

STOCHASTIC = [(name, opts) for name, cls in samplers.SOLVERS.items() for opts in cls.variants()
              if samplers.get_solver(name, **opts).stochastic]
N_SAMPLES = 1500


def _id(config):
    name, opts = config
    return name + "".join(f"-{v}" for v in opts.values())


@functools.lru_cache(maxsize=None)
def problem():
    gm = GaussianMixture.random(jax.random.PRNGKey(3), dim=2, num_components=3, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear", t_min=0.02)
    x_init = gm.marginal_sample(jax.random.PRNGKey(4), N_SAMPLES, p.t_max, p)
    return gm, p, x_init


@functools.lru_cache(maxsize=None)
def threshold():
    """Twice the largest energy distance between two independent exact samples of N_SAMPLES, over 10 pairs."""
    gm, p, _ = problem()
    values = [energy_distance(gm.marginal_sample(jax.random.PRNGKey(100 + 2 * k), N_SAMPLES, p.t_min, p),
                              gm.marginal_sample(jax.random.PRNGKey(101 + 2 * k), N_SAMPLES, p.t_min, p))
              for k in range(10)]
    return 2.0 * max(values)


def _sample(solver, num_steps, key, x_init=None, noise="fold_in"):
    gm, p, x0 = problem()
    ts = schedules.get_timesteps("logsnr", p, num_steps)
    return samplers.sample(gm.model_fn(p), solver, p, x0 if x_init is None else x_init, ts, key=key, noise=noise)[0]


@pytest.mark.parametrize("config", one_per_kind(STOCHASTIC, unpack=False), ids=_id)  # every variant: slow set
def test_the_samples_follow_the_exact_marginal(config):
    gm, p, _ = problem()
    x = _sample(samplers.get_solver(config[0], **config[1]), 200, jax.random.PRNGKey(7))
    exact = gm.marginal_sample(jax.random.PRNGKey(8), N_SAMPLES, p.t_min, p)
    assert energy_distance(x, exact) < threshold()


@dataclasses.dataclass(frozen=True)
class _Louder(DDIM):
    """DDPM with the noise weight scaled by `factor`: a deliberately wrong sampler."""

    factor: float = 1.5

    def table(self, process, ts, orders):
        a, b, c = super().table(process, ts, orders)
        return a, b, self.factor * c


def test_a_wrong_noise_scale_fails_the_same_statistic():
    gm, p, _ = problem()
    x = _sample(_Louder(eta=1.0), 200, jax.random.PRNGKey(7))
    exact = gm.marginal_sample(jax.random.PRNGKey(8), N_SAMPLES, p.t_min, p)
    assert energy_distance(x, exact) > threshold()


# One variant per class: the noise reaches every variant of a class through the same code.
ONE_PER_CLASS = list({type(samplers.get_solver(n, **o)): (n, o) for n, o in reversed(STOCHASTIC)}.values())


@pytest.mark.parametrize("config", slow_unless(ONE_PER_CLASS, lambda c: c[0] in ("ddim", "sa_solver"), unpack=False),
                         ids=_id)
def test_seeded_by_key_and_batch_split_invariant(config):
    solver = samplers.get_solver(config[0], **config[1])
    _, _, x_init = problem()
    x_init = x_init[:12]
    key = jax.random.PRNGKey(11)
    a, b = _sample(solver, 8, key, x_init), _sample(solver, 8, key, x_init)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - _sample(solver, 8, jax.random.PRNGKey(12), x_init)))) > 1e-3
    keys = jax.random.split(key, 12)
    whole = _sample(solver, 8, keys, x_init)
    pieces = jnp.concatenate([_sample(solver, 8, keys[i:i + 4], x_init[i:i + 4]) for i in (0, 4, 8)])
    np.testing.assert_allclose(pieces, whole, rtol=1e-13, atol=1e-13)
    gm, p, _ = problem()
    ts = schedules.get_timesteps("logsnr", p, 8)
    jitted, _ = jax.jit(lambda x, k: samplers.sample(gm.model_fn(p), solver, p, x, ts, key=k))(x_init, keys)
    np.testing.assert_allclose(jitted, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", STOCHASTIC, ids=_id)
def test_a_stochastic_solver_refuses_to_run_without_a_key(config):
    gm, p, x_init = problem()
    with pytest.raises(ValueError, match="stochastic: pass key="):
        samplers.sample(gm.model_fn(p), samplers.get_solver(config[0], **config[1]), p, x_init,
                        schedules.get_timesteps("logsnr", p, 4))


def test_zero_noise_is_the_deterministic_solver():
    gm, p, x_init = problem()
    ts = schedules.get_timesteps("logsnr", p, 10)
    model = gm.model_fn(p)
    run = lambda solver, **kw: samplers.sample(model, solver, p, x_init, ts, **kw)[0]
    np.testing.assert_array_equal(run(samplers.get_solver("dpmpp_2m_sde", eta=0.0)), run("dpmpp_2m"))
    np.testing.assert_allclose(run(samplers.get_solver("euler_ancestral", eta=0.0)), run("ddim"), atol=1e-12)
    # a deterministic solver ignores a key
    np.testing.assert_array_equal(run("ddim", key=jax.random.PRNGKey(0)), run("ddim"))


def test_the_brownian_tree_gives_nearly_the_same_sample_at_another_step_count():
    solver = samplers.get_solver("ddim", eta=1.0)
    _, _, x_init = problem()
    key = jax.random.PRNGKey(5)
    gap = {}
    for noise in ("fold_in", "brownian"):
        coarse, fine = (_sample(solver, n, key, x_init[:256], noise=noise) for n in (100, 400))
        gap[noise] = float(jnp.sqrt(jnp.mean((coarse - fine) ** 2)))
    assert gap["brownian"] < 0.25 * gap["fold_in"], gap


def test_bad_keys_and_noise_are_clear_errors():
    gm, p, x_init = problem()
    ts = schedules.get_timesteps("logsnr", p, 4)
    solver = samplers.get_solver("euler_ancestral")
    with pytest.raises(ValueError, match="per-sample keys for a batch of"):
        samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.split(jax.random.PRNGKey(0), 3))
    with pytest.raises(ValueError, match="unknown noise 'sobol'"):
        samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(0), noise="sobol")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0 and at most 1"):
        samplers.get_solver("ddim", eta=1.5)
    with pytest.raises(ValueError, match="S_min <= S_max"):
        samplers.get_solver("edm_stochastic", S_min=5.0, S_max=1.0)
    with pytest.raises(ValueError, match="solver_type"):
        samplers.get_solver("dpmpp_2m_sde", solver_type="rk4")


@pytest.mark.slow  # 200,000 samples at 32-128 steps, six times; the default suite checks DDPM's marginal above
def test_ddpm_is_weakly_first_order():
    """DDPM ancestral sampling (ddim, eta = 1) is an exponential Euler-Maruyama step of the reverse SDE: weak order
    1. On one Gaussian in 1-d everything is linear, the exact marginal at t_min is N(alpha mu, alpha^2 s^2 + sigma^2)
    and the weak error |mean - exact| + |var - exact| of 200,000 samples halves with the step (measured slopes 0.74
    and 0.91 from 16 to 32 to 64 steps, approaching 1; the Monte Carlo error, about 2e-3, is 10x below the error
    at 128 steps). A sampler with a 10% wrong noise weight does not converge (its error grows with N)."""
    gm = GaussianMixture(weights=jnp.ones(1), means=jnp.array([[1.0]]), stds=jnp.array([[0.5]]))
    p = schedules.get_process("vp_linear", t_min=0.02)
    x_init = gm.marginal_sample(jax.random.PRNGKey(0), 200_000, p.t_max, p)
    alpha, sigma = float(p.alpha(p.t_min)), float(p.sigma(p.t_min))

    def weak_errors(solver):
        errors = []
        for n in (32, 64, 128):
            x, _ = samplers.sample(gm.model_fn(p), solver, p, x_init, schedules.get_timesteps("logsnr", p, n),
                                   key=jax.random.PRNGKey(n))
            errors.append(abs(float(jnp.var(x)) - (alpha**2 * 0.25 + sigma**2)) + abs(float(jnp.mean(x)) - alpha))
        return np.array(errors)

    errors = weak_errors(samplers.get_solver("ddim", eta=1.0))
    slope = -np.polyfit(np.log([32, 64, 128]), np.log(errors), 1)[0]
    assert 0.75 < slope < 1.3, (errors, slope)
    wrong = weak_errors(_Louder(eta=1.0, factor=1.1))  # 10% too much noise per step: more steps, more excess
    assert -np.polyfit(np.log([32, 64, 128]), np.log(wrong), 1)[0] < 0.25, wrong
