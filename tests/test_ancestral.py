"""DDPM's ancestral sampler (samplers.ancestral): its posterior against DDPM's respaced-beta formulas, "small" as
ddim with eta = 1, the learned variance's two ends as "large" and "small", and the model contract of a learned
variance (2C channels) in one sentence. The exact marginal, seeding and batch-split invariance are swept with every
stochastic solver in tests/test_stochastic.py; the learned variance against guided-diffusion's p_mean_variance in
tests/test_guided_diffusion.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models.oracle import GaussianMixture

PROCESS = schedules.get_process("vp_linear")
MIXTURE = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
X_INIT = PROCESS.prior(jax.random.PRNGKey(1), (8, 2))
TS = schedules.get_timesteps("uniform", PROCESS, 12)
KEY = jax.random.PRNGKey(3)


def _with_variance(v):
    return lambda x, t: jnp.concatenate([MIXTURE.predict(x, t, PROCESS), jnp.full_like(x, v)], axis=-1)


def test_posterior_is_ddpms_on_the_respaced_betas():
    """guided-diffusion's q_posterior on a respaced grid (gaussian_diffusion.py:140-160, respace.py:74-82):
    beta = 1 - abar_t / abar_prev, mean = coef1 x0 + coef2 x_t, variance beta (1 - abar_prev) / (1 - abar_t)."""
    process = schedules.get_process("vp_discrete", alphas_cumprod=np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    index = np.array([999, 749, 500, 250, 1])
    ts = (index + 1.0) / 1000.0
    coef = samplers.get_solver("ddpm").coefficients(process, jnp.asarray(ts))
    abar = np.asarray(process.alphas_cumprod)[index]
    abar_t, abar_prev = abar[:-1], abar[1:]
    beta = 1.0 - abar_t / abar_prev
    np.testing.assert_allclose(coef.b, beta * np.sqrt(abar_prev) / (1 - abar_t), rtol=1e-10)
    np.testing.assert_allclose(coef.a, (1 - abar_prev) * np.sqrt(1 - beta) / (1 - abar_t), rtol=1e-10)
    np.testing.assert_allclose(np.exp(coef.log_small), beta * (1 - abar_prev) / (1 - abar_t), rtol=1e-10)
    np.testing.assert_allclose(np.exp(coef.log_large), beta, rtol=1e-10)


def test_small_variance_is_ddim_with_eta_one():
    # the same step in two forms, on the same noise: equal to float64 rounding
    a, info = samplers.sample(MIXTURE.model_fn(PROCESS), "ddpm", PROCESS, X_INIT, TS, key=KEY)
    b, _ = samplers.sample(MIXTURE.model_fn(PROCESS), samplers.get_solver("ddim", eta=1.0), PROCESS, X_INIT, TS,
                           key=KEY)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert info["nfe"] == 12


@pytest.mark.parametrize("v, fixed", [(1.0, "large"), (-1.0, "small")])
def test_the_learned_variance_spans_small_to_large(v, fixed):
    learned = samplers.get_solver("ddpm", variance="learned", denoise_to_zero=True)
    a, info = samplers.sample(_with_variance(v), learned, PROCESS, X_INIT, TS, key=KEY)
    b, _ = samplers.sample(MIXTURE.model_fn(PROCESS), samplers.get_solver("ddpm", variance=fixed,
                                                                          denoise_to_zero=True),
                           PROCESS, X_INIT, TS, key=KEY)
    np.testing.assert_array_equal(a, b)
    assert info["nfe"] == 13


@pytest.mark.parametrize("variance, v", [("small", 0.0), ("large", 0.0), ("learned", 1.0), ("learned", -0.5)])
def test_a_step_to_sigma_zero_is_x0_hat_without_noise(variance, v):
    # guided-diffusion's last step (index 0 -> data): the posterior's point mass, whatever the variance
    ts = schedules.get_timesteps("uniform", PROCESS, 6, append_zero=True)
    solver = samplers.get_solver("ddpm", variance=variance)
    model = _with_variance(v) if variance == "learned" else MIXTURE.model_fn(PROCESS)
    x, info = samplers.sample(model, solver, PROCESS, X_INIT, ts, key=KEY, save_trajectory=True)
    before = info["trajectory"][-2]
    np.testing.assert_allclose(x, MIXTURE.predict(before, ts[-2], PROCESS, "x0"), rtol=0, atol=1e-12)


def test_the_learned_variance_takes_any_prediction_kind():
    # the first half is converted to eps, the second passed through: an x0 model gives the eps model's sample
    def x0_model(x, t):
        return jnp.concatenate([MIXTURE.predict(x, t, PROCESS, "x0"), jnp.zeros_like(x)], axis=-1)

    learned = samplers.get_solver("ddpm", variance="learned")
    a, _ = samplers.sample(x0_model, learned, PROCESS, X_INIT, TS, key=KEY, prediction="x0")
    b, _ = samplers.sample(_with_variance(0.0), learned, PROCESS, X_INIT, TS, key=KEY)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_clip_x0_clips_the_data_prediction():
    big = GaussianMixture.create([1.0], [[5.0, -5.0]], 0.1)
    clipped, _ = samplers.sample(big.model_fn(PROCESS), samplers.get_solver("ddpm", clip_x0=1.0), PROCESS, X_INIT,
                                 TS, key=KEY)
    assert np.all(np.abs(np.asarray(clipped)) < 1.5)  # the posterior's noise on top of |x0_hat| <= 1


def test_bad_options_and_models_are_one_sentence():
    with pytest.raises(ValueError, match="'small', 'large', 'learned'|small, large, learned"):
        samplers.get_solver("ddpm", variance="fixed")
    with pytest.raises(ValueError, match="clip_x0 must be a number >= 0"):
        samplers.get_solver("ddpm", clip_x0=-1.0)
    with pytest.raises(ValueError, match=r"shape \(8, 4\), \[prediction \| learned variance\]"):
        samplers.sample(MIXTURE.model_fn(PROCESS), samplers.get_solver("ddpm", variance="learned"), PROCESS, X_INIT,
                        TS, key=KEY)
    with pytest.raises(ValueError, match="stochastic: pass key="):
        samplers.sample(MIXTURE.model_fn(PROCESS), "ddpm", PROCESS, X_INIT, TS)
