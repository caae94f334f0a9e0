"""Classifier-free guidance (samplers/guidance.py) against the exact conditional oracle: the Gaussian mixture with
the component index as the label, whose conditional, unconditional and guided predictions and guided flow map are
exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture


@pytest.fixture(scope="module")
def setup():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=4, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(1), (64, 3))
    labels = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4)
    null = jnp.full((64,), gm.null_label)
    return gm, p, x_init, labels, null


def test_the_conditional_oracle(setup):
    gm, p, x_init, labels, null = setup
    fn = gm.conditional_model_fn(p)
    x, t = x_init * 0.3, 0.4
    np.testing.assert_allclose(fn(x, t, null), gm.predict(x, t, p), atol=1e-12)  # the null label: unconditional
    for k in range(4):  # label k: the k-th component alone
        single = GaussianMixture.create(jnp.ones(1), gm.means[k:k + 1], gm.stds[k:k + 1])
        np.testing.assert_allclose(fn(x, t, jnp.full((64,), k)), single.predict(x, t, p), atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guided_predictions_are_the_oracle_guided_predictions(scale, setup):
    gm, p, x_init, labels, null = setup
    fn = gm.conditional_model_fn(p)
    guided = samplers.guided(fn, scale, null)
    x, t = x_init * 0.3, 0.4
    expected = fn(x, t, null) + scale * (fn(x, t, labels) - fn(x, t, null))
    np.testing.assert_allclose(guided(x, t, labels), expected, atol=1e-12)
    one_call = samplers.guided(fn, scale, null, batch_axes=0)
    np.testing.assert_allclose(one_call(x, t, labels), expected, atol=1e-12)


def test_one_batched_call_with_shared_parameters():
    calls = []

    def model(x, t, args):
        calls.append(x.shape)
        return x * args["w"] + args["label"][:, None]

    args = {"w": jnp.float64(2.0), "label": jnp.arange(3.0)}
    uncond = {"w": jnp.float64(2.0), "label": jnp.zeros(3)}
    x = jnp.ones((3, 2))
    two = samplers.guided(model, 3.0, uncond)(x, 0.5, args)
    one = samplers.guided(model, 3.0, uncond, batch_axes={"w": None, "label": 0})(x, 0.5, args)
    np.testing.assert_allclose(one, two)
    assert calls == [(3, 2), (3, 2), (6, 2)]


@pytest.mark.parametrize("kind", ["x0", "v", "velocity", "score"])
def test_guidance_gives_the_same_sample_in_every_prediction_space(kind, setup):
    gm, p, x_init, labels, null = setup
    ts = schedules.get_timesteps("logsnr", p, 10)
    reference, _ = samplers.sample(samplers.guided(gm.conditional_model_fn(p, "eps"), 3.0, null), "dpmpp_2m", p,
                                   x_init, ts, prediction="eps", args=labels)
    x, _ = samplers.sample(samplers.guided(gm.conditional_model_fn(p, kind), 3.0, null), "dpmpp_2m", p, x_init, ts,
                           prediction=kind, args=labels)
    np.testing.assert_allclose(x, reference, atol=1e-9)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guided_sampling_converges_to_the_exact_guided_map(scale, setup):
    gm, p, x_init, labels, null = setup
    exact = samplers.exact_flow_map(gm.guided(labels, scale), p, x_init, p.t_max, p.t_min)
    guided = samplers.guided(gm.conditional_model_fn(p), scale, null)
    errors = []
    for n in (10, 40):
        ts = schedules.get_timesteps("logsnr", p, n)
        x, _ = samplers.sample(guided, "dpmpp_2m", p, x_init, ts, args=labels)
        errors.append(float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2))))
    assert errors[1] < 1e-2 and errors[1] < errors[0] / 4, errors  # second order: 16x for 4x the steps


def test_the_guidance_interval(setup):
    gm, p, x_init, labels, null = setup
    fn = gm.conditional_model_fn(p)
    g = samplers.guided(fn, 4.0, null, interval=(0.2, 0.6), process=p)
    x = x_init * 0.3
    np.testing.assert_allclose(g(x, 0.8, labels), fn(x, 0.8, labels), atol=1e-12)  # outside: conditional
    np.testing.assert_allclose(g(x, 0.4, labels), samplers.guided(fn, 4.0, null)(x, 0.4, labels), atol=1e-12)
    toy = lambda x, t, label: x * label + t[:, None]  # per-sample times: guided sample by sample
    t = jnp.array([0.1, 0.4, 0.7])
    out = samplers.guided(toy, 4.0, 0.0, interval=(0.2, 0.6))(jnp.ones((3, 2)), t, 1.0)
    np.testing.assert_allclose(out, jnp.array([[1.1] * 2, [4.4] * 2, [1.7] * 2]), atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=float("nan")), "finite"),
    (dict(scale=float("inf")), "finite"),
    (dict(scale="3"), "finite"),
    (dict(scale=2.0, interval=(0.6, 0.2)), "t_lo < t_hi"),
    (dict(scale=2.0, interval=(-0.1, 0.2)), "t_lo < t_hi"),
    (dict(scale=2.0, interval=(1.5, 2.0), process=schedules.get_process("vp_linear")), "outside the times"),
    (dict(scale=2.0, interval=0.5), "pair"),
])
def test_bad_guidance_input_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        samplers.guided(lambda x, t, a: x, uncond_args=None, **kwargs)

