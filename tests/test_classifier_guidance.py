"""samplers.classifier_guided against the exact Gaussian-mixture oracle: with the exact classifier p(y | x_t) (the
components are the classes), scale 1 is the class-conditional oracle and scale s the oracle's guided mixture, for
every prediction kind; sampled, it converges to the guided oracle's exact flow map; the scale is traced (one
compilation for a vmap over it); bad input is one sentence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture

P = schedules.get_process("vp_linear")


@pytest.fixture(scope="module")
def problem():
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=4, std_range=(0.3, 0.8))
    x = gm.marginal_sample(jax.random.PRNGKey(1), 16, 0.6, P)
    labels = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 4)
    return gm, x, labels


def exact_classifier(gm, process):
    """Logits of p(component | x_t) written out here: log w_k + log N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))
    (the classifier's parameters are unused: None)."""

    def classifier_fn(x, t, params):
        t = jnp.reshape(jnp.asarray(t, x.dtype), (-1, 1, 1))
        alpha, sigma = process.alpha(t), process.sigma(t)
        var = alpha**2 * gm.stds[None] ** 2 + sigma**2  # (batch or 1, K, d)
        diff = x[:, None, :] - alpha * gm.means[None]
        return jnp.log(gm.weights)[None] - 0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1)

    return classifier_fn


def oracle(gm, kind, x, t, labels=None):
    """The exact prediction at a scalar t, or at a time per sample (t of shape (batch,))."""
    if jnp.ndim(t) == 0:
        return gm.predict(x, t, P, kind, labels)
    one = lambda x, t, y: gm.predict(x[None], t, P, kind, None if y is None else y[None])[0]
    return jax.vmap(one, in_axes=(0, 0, None if labels is None else 0))(x, t, labels)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity", "score"])
@pytest.mark.parametrize("t", [0.3, "batch"])
def test_scale_one_is_the_conditional_oracle_and_scale_s_its_guided_mixture(problem, kind, t):
    gm, x, labels = problem
    t = jnp.linspace(0.2, 0.9, 16) if t == "batch" else t
    model = lambda x, t, params: oracle(gm, kind, x, t)
    args = (None, (None, labels))
    one = samplers.classifier_guided(model, exact_classifier(gm, P), 1.0, process=P, prediction=kind)
    cond, uncond = oracle(gm, kind, x, t, labels), oracle(gm, kind, x, t)
    np.testing.assert_allclose(one(x, t, args), cond, rtol=1e-9, atol=1e-9)
    three = samplers.classifier_guided(model, exact_classifier(gm, P), 3.0, process=P, prediction=kind)
    np.testing.assert_allclose(three(x, t, args), uncond + 3.0 * (cond - uncond), rtol=1e-9, atol=1e-9)


def test_sampled_it_converges_to_the_guided_oracles_flow_map(problem):
    """Heun on the classifier-guided model against the exact flow map of the guided mixture: second order (the error
    falls by more than 3x from 10 to 20 steps) and small at 20 steps."""
    gm, _, labels = problem
    x_init = P.prior(jax.random.PRNGKey(3), (16, 3))
    scale = 2.5
    guided = samplers.classifier_guided(lambda x, t, params: gm.predict(x, t, P), exact_classifier(gm, P), scale,
                                        process=P)
    exact = samplers.exact_flow_map(gm.guided(labels, scale), P, x_init, P.t_max, 0.05)
    errors = []
    for n in (10, 20):
        ts = schedules.get_timesteps("logsnr", P, n, t_min=0.05)
        x, _ = samplers.sample(guided, "heun", P, x_init, ts, args=(None, (None, labels)))
        errors.append(float(np.max(np.abs(np.asarray(x) - exact))))
    assert errors[0] / errors[1] > 3.0 and errors[1] < 1e-2, errors


def test_the_scale_is_traced_one_compilation_for_a_vmap(problem):
    gm, _, labels = problem
    x_init = P.prior(jax.random.PRNGKey(4), (16, 3))
    ts = schedules.get_timesteps("logsnr", P, 6)
    traces = []

    def model(x, t, params):
        traces.append(1)
        return gm.predict(x, t, P)

    classifier = exact_classifier(gm, P)
    run = lambda s: samplers.sample(samplers.classifier_guided(model, classifier, s, process=P), "dpmpp_2m", P,
                                    x_init, ts, args=(None, (None, labels)))[0]
    scales = jnp.array([0.0, 1.0, 4.0])
    swept = jax.jit(jax.vmap(run))(scales)
    assert len(traces) == 1
    for scale, x in zip(scales, swept):
        np.testing.assert_allclose(x, run(float(scale)), rtol=1e-12, atol=1e-12)
    plain, _ = samplers.sample(lambda x, t: gm.predict(x, t, P), "dpmpp_2m", P, x_init, ts)
    np.testing.assert_allclose(swept[0], plain, rtol=1e-12, atol=1e-12)  # scale 0: the unconditional model


def test_bad_input_is_one_sentence(problem):
    gm, x, labels = problem
    model = lambda x, t, params: gm.predict(x, t, P)
    with pytest.raises(ValueError, match="classifier guidance scale must be a finite number, got nan"):
        samplers.classifier_guided(model, exact_classifier(gm, P), float("nan"), process=P)
    with pytest.raises(ValueError, match="valid"):
        samplers.classifier_guided(model, exact_classifier(gm, P), 1.0, process=P, prediction="noise")
    guided = samplers.classifier_guided(model, exact_classifier(gm, P), 1.0, process=P)
    with pytest.raises(ValueError, match=r"args=\(model_args, \(classifier_params, labels\)\), not a dict"):
        guided(x, 0.5, {"w": 1.0})
    with pytest.raises(ValueError, match=r"pass args=\(params, labels\)"):
        guided(x, 0.5, (None, {"w": 1.0}))
    flat = samplers.classifier_guided(model, lambda x, t, params: jnp.sum(x, axis=-1), 1.0, process=P)
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes\) = \(16, K\), got \(16,\)"):
        flat(x, 0.5, (None, (None, labels)))
