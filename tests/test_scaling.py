"""samplers.scaling against exact targets: the SDE twin of a velocity model keeps the oracle's marginals, the score
from the velocity and the linear -> VP conversion are the oracle's own, and the searches spend at most their budget
and find the rewarded mode more often as the budget grows (RBF and SMC at least as often as best-of-N).

Tolerances. Distributions: the two-sample energy distance to exact draws, against 5x the mean distance between pairs
of independent exact samples of the same size, measured here (over 40 such pairs the largest was 3.7x their mean; a
sampler with the score term at the wrong weight lands at ~16x). Mode fractions over B independent searches: each has
standard error <= sqrt(0.25 / B), so a difference of two has standard error <= sqrt(0.5 / B), and the comparisons
allow 3 of those (a one-sided false failure below 0.2%, whatever the seed stream)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers import scaling

N_SAMPLES = 1500
OT = schedules.get_process("ot")
VP = schedules.get_process("vp_linear")


def floor(gm, process, t):
    """5x the mean energy distance between 5 pairs of independent exact samples of N_SAMPLES at time t."""
    draws = [gm.marginal_sample(jax.random.PRNGKey(100 + k), N_SAMPLES, t, process) for k in range(10)]
    return 5.0 * float(np.mean([energy_distance(draws[2 * k], draws[2 * k + 1]) for k in range(5)]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WrongWeight(scaling.FlowSDE):
    """The score term at weight g^2 instead of g^2 / 2: a twin that does not keep the marginals."""

    def update(self, process, x, u, s, t, xi):
        extra = (s - t) * 0.5 * self.g(process, s) ** 2 * scaling.score_from_velocity(u, x, s, process)
        return super().update(process, x, u, s, t, xi) + extra


def test_the_sde_twin_keeps_the_marginals_of_a_2d_mixture():
    gm = GaussianMixture.random(jax.random.PRNGKey(3), dim=2, num_components=3, std_range=(0.3, 0.6))
    t_end = 1e-3
    x_init = jax.random.normal(jax.random.PRNGKey(4), (N_SAMPLES, 2))  # the exact marginal at t = 1 on OT
    ts = jnp.linspace(1.0, t_end, 201)
    exact = gm.marginal_sample(jax.random.PRNGKey(8), N_SAMPLES, t_end, OT)
    threshold = floor(gm, OT, t_end)
    sample = lambda sde: samplers.sample(gm.model_fn(OT, "velocity"), sde, OT, x_init, ts,  # noqa: E731
                                         prediction="velocity", key=jax.random.PRNGKey(7))[0]
    assert energy_distance(sample(scaling.FlowSDE(diffusion="square")), exact) < threshold
    assert energy_distance(sample(_WrongWeight(diffusion="square")), exact) > threshold  # the test has power


def test_the_sde_twin_of_the_converted_linear_flow_keeps_the_marginals_on_vp():
    # 1-d, the process's own reverse SDE as g ("sde"), on the VP path the linear model is converted to.
    gm = GaussianMixture.create([0.3, 0.7], [[-1.5], [1.0]], [0.3, 0.5])
    model = schedules.transform(gm.model_fn(OT, "velocity"), "velocity", OT, VP)
    x_init = gm.marginal_sample(jax.random.PRNGKey(4), N_SAMPLES, 1.0, VP)
    ts = jnp.linspace(1.0, VP.t_min, 201)
    x = samplers.sample(model, scaling.FlowSDE(diffusion="sde"), VP, x_init, ts, prediction="velocity",
                        key=jax.random.PRNGKey(7))[0]
    exact = gm.marginal_sample(jax.random.PRNGKey(8), N_SAMPLES, VP.t_min, VP)
    assert energy_distance(x, exact) < floor(gm, VP, VP.t_min)


def test_the_score_and_tweedie_estimate_from_the_velocity_are_the_oracles():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 2)) * 2
    for process in (OT, VP, schedules.get_process("edm")):
        for t in (0.05, 0.5, 0.9):
            u = gm.predict(x, t, process, "velocity")
            np.testing.assert_allclose(scaling.score_from_velocity(u, x, t, process),
                                       gm.predict(x, t, process, "score"), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(scaling.tweedie(u, x, t, process), gm.predict(x, t, process, "x0"),
                                       rtol=1e-9, atol=1e-9)
    for t in (0.05, 0.5, 1.0):  # sheet B's closed form on the linear interpolant, t = 1 (alpha = 0) included
        u = gm.predict(x, t, OT, "velocity")
        np.testing.assert_allclose(scaling.score_from_velocity(u, x, t, OT), -(x + (1 - t) * u) / t, rtol=1e-9)


def test_the_linear_to_vp_conversion_is_the_vp_oracle_and_the_sheets_formulas():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
    u_ot = gm.model_fn(OT, "velocity")
    converted = schedules.transform(u_ot, "velocity", OT, VP)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
    for r in (0.02, 0.3, 0.7, 1.0):
        np.testing.assert_allclose(converted(x, r), gm.predict(x, r, VP, "velocity"), rtol=1e-8, atol=1e-10)
        # Sheet B: t(r) = s / (a + s), c = a + s, u_r(x) = (c'/c) x + c t' u_t(x / c), with a, s VP's alpha, sigma.
        a, s = VP.alpha(r), VP.sigma(r)
        time_map = lambda r: VP.sigma(r) / (VP.alpha(r) + VP.sigma(r))  # noqa: E731
        scale = lambda r: VP.alpha(r) + VP.sigma(r)  # noqa: E731
        t, c = time_map(r), a + s
        dt, dc = jax.jvp(time_map, (r,), (1.0,))[1], jax.jvp(scale, (r,), (1.0,))[1]
        np.testing.assert_allclose(t, OT.t_of_log_snr(VP.log_snr(r)), rtol=1e-12)
        np.testing.assert_allclose(converted(x, r), dc / c * x + c * dt * u_ot(x / c, t), rtol=1e-8, atol=1e-10)


@functools.lru_cache(maxsize=None)
def mode_problem():
    """A 1-d two-mode mixture whose rare mode (weight 0.1, at +2) the reward x prefers, and the 8-step grid."""
    gm = GaussianMixture.create([0.9, 0.1], [[-2.0], [2.0]], 0.5)
    return gm.model_fn(OT, "velocity"), jnp.linspace(1.0, 1e-3, 9)


def reward_x(x):
    return x[:, 0]


def run(strategy, budget, batch=1000, seed=0, **options):
    model, ts = mode_problem()
    return scaling.search(strategy, model, OT, ts, reward_x, budget=budget, batch=batch, shape=(1,),
                          key=jax.random.PRNGKey(seed), **options)


def test_searches_find_the_rewarded_mode_more_often_with_budget_rbf_and_smc_at_least_as_often_as_best_of_n():
    batch = 1000
    margin = 3 * math.sqrt(0.5 / batch)  # module docstring
    fraction = {}
    for strategy, options in (("best_of_n", {}), ("smc", {}), ("rbf", {"init": 2})):
        for budget in (36, 72):
            x, info = run(strategy, budget, batch, **options)
            assert info["nfe"] <= budget and x.shape == (batch, 1)
            np.testing.assert_allclose(info["reward"], x[:, 0])
            fraction[strategy, budget] = float(jnp.mean(x[:, 0] > 0))
    # One trajectory finds the rare mode with probability ~0.1, so best-of-N with N = budget // 9 = 4, 8: ~0.34, 0.57
    # (a little more: 8 Euler-Maruyama steps); measured RBF 0.81, 0.99 and SMC 0.68, 0.93.
    for strategy in ("best_of_n", "smc", "rbf"):
        assert fraction[strategy, 72] > fraction[strategy, 36] + margin or fraction[strategy, 36] > 1 - margin
    for budget in (36, 72):
        assert fraction["rbf", budget] >= fraction["best_of_n", budget] - margin, fraction
        assert fraction["smc", budget] >= fraction["best_of_n", budget] - margin, fraction
    assert 0.34 - margin < fraction["best_of_n", 36] < 0.34 + 2 * margin  # 1 - 0.9^4, the discretisation bias above


def reward_peaked(x):
    return -jnp.sum((x - 2.0) ** 2, axis=1)


def reward_flat(x):
    return jnp.zeros(x.shape[0], x.dtype)


@pytest.mark.parametrize("budget,init,chains,reward", [(36, 2, 2, reward_x), (41, 3, 3, reward_peaked),
                                                       (100, 5, 1, reward_flat)])
def test_rbf_never_exceeds_its_budget_and_spends_every_whole_round(budget, init, chains, reward):
    model, ts = mode_problem()
    num_steps = ts.shape[0] - 1
    x, info = scaling.rbf(model, OT, ts, reward, budget=budget, batch=4, shape=(1,), key=jax.random.PRNGKey(1),
                          init=init, chains=chains)
    assert info["nfe"] == init * chains + chains * ((budget - init * chains) // chains) <= budget
    assert info["quota"] == (budget - init * chains) // (num_steps * chains)
    assert np.all(np.asarray(info["levels"]) <= num_steps - 1) and np.all(np.isfinite(x))
    if reward is reward_flat:  # never beats the best seen: every advance is quota-driven, Q proposals a step
        assert np.all(np.asarray(info["accepted"]) == 0)
        spent = (budget - init * chains) // chains
        assert np.all(np.asarray(info["levels"]) == min(spent // info["quota"], num_steps - 1))


def test_particle_methods_spend_whole_trajectories_and_smc_reports_its_ess():
    x, info = run("smc", 41, batch=8, resample="systematic", ess_threshold=0.5)
    assert info["nfe"] == (41 // 9) * 9 and info["rewards"].shape == (8, 4)
    ess = np.asarray(info["ess"])
    assert ess.shape == (8, 8) and np.all((ess >= 1 - 1e-9) & (ess <= 4 + 1e-9))
    x, info = run("best_of_n", 9, batch=8)  # exactly one trajectory: best-of-1
    assert info["nfe"] == 9 and info["rewards"].shape == (8, 1)


def test_smc_options_are_traced_a_vmap_over_lambda_is_one_program():
    model, ts = mode_problem()
    fn = lambda lam: scaling.smc(model, OT, ts, reward_x, budget=18, batch=4, shape=(1,),  # noqa: E731
                                 key=jax.random.PRNGKey(0), lam=lam)[1]["reward"]
    rewards = jax.vmap(fn)(jnp.array([0.1, 1.0, 10.0]))
    assert rewards.shape == (3, 4) and np.all(np.isfinite(rewards))


def test_bad_input_is_refused_in_one_sentence_before_compute():
    model, ts = mode_problem()
    kw = dict(batch=2, shape=(1,), key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="too small for rbf: it needs at least 24 .* initial draws"):
        scaling.rbf(model, OT, ts, reward_x, budget=20, init=4, **kw)
    with pytest.raises(ValueError, match="too small for best_of_n"):
        scaling.best_of_n(model, OT, ts, reward_x, budget=8, **kw)
    with pytest.raises(ValueError, match=r"unknown search strategy 'beam'; valid names: \['best_of_n', 'smc', 'rbf'\]"):
        scaling.search("beam", model, OT, ts, reward_x, budget=40, **kw)
    with pytest.raises(ValueError, match="unknown diffusion coefficient 'cubic'.*'square', 'constant', 'sde'"):
        scaling.search("rbf", model, OT, ts, reward_x, budget=40, sde="cubic", **kw)
    with pytest.raises(ValueError, match="unknown resampling method"):
        scaling.smc(model, OT, ts, reward_x, budget=40, resample="stratified", **kw)
    with pytest.raises(ValueError, match=r"reward must return one float per estimate, shape \(\d+,\)"):
        scaling.smc(model, OT, ts, lambda x: x, budget=40, **kw)  # (n, 1), not (n,)
    with pytest.raises(ValueError, match="pass key="):
        scaling.rbf(model, OT, ts, reward_x, budget=40, batch=2, shape=(1,), key=None)
    with pytest.raises(ValueError, match="has no option"):
        scaling.rbf(model, OT, ts, reward_x, budget=40, lam=1.0, **kw)
    with pytest.raises(ValueError, match="norm must be a finite number >= 0"):
        scaling.FlowSDE(diffusion="square", norm=-1.0)


def test_the_benchmark_runs_on_the_oracle_and_renders(tmp_path):
    from fastsamplers.experiments.runs import scaling_benchmark

    record = scaling_benchmark.benchmark(str(tmp_path / "s.json"), budgets=(12, 20), strategies=("rbf",),
                                         paths=("vp",), batch=8, num_steps=4)
    assert [row["budget"] for row in record["rows"]] == [12, 20]  # RBF needs 2 * 2 + 4 * 2 = 12 at least
    assert all(row["nfe"] <= row["budget"] and 0 <= row["mode_fraction"] <= 1 for row in record["rows"])
    with pytest.raises(ValueError, match="unknown path 'cosine'"):
        scaling_benchmark.benchmark(str(tmp_path / "s.json"), paths=("cosine",))


@pytest.mark.slow  # trains two steps of the digits_fm smoke UNet
def test_the_benchmark_searches_a_trained_digits_flow_with_the_class_reward(tmp_path):
    import os

    from fastsamplers.experiments import train
    from fastsamplers.experiments.configs import digits_fm
    from fastsamplers.experiments.metrics import digits_classifier
    from fastsamplers.experiments.runs import scaling_benchmark

    config = digits_fm.get_config("smoke")
    config.unlock()
    config.train.num_steps = 2
    config.train.progress = False
    config.lock()
    train.train(config, str(tmp_path / "run"))
    reward = digits_classifier.ClassReward(8)  # an untrained classifier: the path, not the numbers
    classifier = digits_classifier.Classifier(8, digits_classifier.DigitsClassifier(8),
                                              reward.init(jax.random.PRNGKey(0)), {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with jax.enable_x64(False):
        record = scaling_benchmark.benchmark(
            str(tmp_path / "d.json"), source="checkpoint", budgets=(15,), paths=("linear", "vp"), batch=2,
            num_steps=4, init=1, train_config=os.path.join(root, "experiments/configs/digits_fm.py:smoke"),
            checkpoint_dir=str(tmp_path / "run"), label=3, classifier=classifier)
    assert len(record["rows"]) == 6 and all(row["nfe"] <= 15 for row in record["rows"])
    assert all(np.isfinite(row["mean_reward"]) and row["mean_reward"] <= 0 for row in record["rows"])
