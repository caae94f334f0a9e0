"""The training targets are the path's exact predictions: a model that knows the data point has zero loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.experiments.train import losses
from fastsamplers.models import predictions
from fastsamplers.models.conditioning import network_fn

CASES = [
    ("ot", "velocity", {}),
    ("ot", "velocity", {"sigma_min": 1e-2}),
    ("vp_linear", "velocity", {}),
    ("vp_linear", "eps", {}),
    ("vp_cosine", "x0", {}),
    ("vp_cosine", "v", {}),
    ("edm", "x0", {}),
    ("edm", "eps", {}),
]


@pytest.mark.parametrize("process_name,prediction,options", CASES)
def test_exact_model_of_a_point_mass_has_zero_loss(process_name, prediction, options):
    # Data = one point c: given x_t, eps = (x_t - alpha c) / sigma exactly, so the exact model's regression error
    # is 0 for every prediction kind, and any other model's is not.
    process = schedules.get_process(process_name, **options)
    c = jnp.array([[0.7, -0.3, 0.2]])

    def exact(params, x, t):
        t = jnp.reshape(t, (-1, 1))
        eps = (x - process.alpha(t) * c) / process.sigma(t)
        return predictions.from_x0_eps(prediction, jnp.broadcast_to(c, x.shape), eps, t, process) * params

    for method in losses.TIME_SAMPLINGS:
        loss = losses.make_loss(exact, process, prediction, time_sampling=method, time_mean=-1.2, time_std=1.2)
        x0 = jnp.broadcast_to(c, (512, 3))
        assert float(loss(1.0, jax.random.PRNGKey(0), x0)) < 1e-10
        assert float(loss(1.1, jax.random.PRNGKey(0), x0)) > 1e-4


def test_ot_velocity_target_is_the_straight_line():
    # CFM on the OT path (Lipman et al. 2022): x_t = (1 - t) x0 + t eps, u = eps - x0 (in t = 0 data convention).
    process = schedules.get_process("ot")
    seen = {}

    def model(params, x, t):
        seen["x"], seen["t"] = x, t
        return jnp.zeros_like(x)

    key = jax.random.PRNGKey(3)
    x0 = jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    value = losses.make_loss(model, process, "velocity", t_min=0.0, t_max=1.0)(None, key, x0)
    key_eps, key_t, _ = jax.random.split(key, 3)
    eps = jax.random.normal(key_eps, x0.shape)
    t = losses.sample_times(key_t, 64, process, t_min=0.0, t_max=1.0)
    np.testing.assert_allclose(seen["t"], t, rtol=1e-6)
    np.testing.assert_allclose(seen["x"], (1 - t[:, None]) * x0 + t[:, None] * eps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, np.mean((eps - x0) ** 2), rtol=1e-5)


def test_coupling_pairs_are_what_the_model_sees():
    process = schedules.get_process("ot")
    flip = lambda key, eps, x0: (-eps, x0)  # a stand-in coupling: the target must use the paired noise
    model = lambda params, x, t: jnp.zeros_like(x)
    key, x0 = jax.random.PRNGKey(0), jnp.zeros((32, 2))
    plain = losses.make_loss(model, process, "eps")(None, key, x0)
    flipped = losses.make_loss(model, process, "eps", coupling=flip)(None, key, x0)
    np.testing.assert_allclose(plain, flipped, rtol=1e-6)  # |eps|^2 is unchanged by the sign ...
    seen = {}

    def recording(params, x, t):
        seen.setdefault("x", []).append(x)
        return jnp.zeros_like(x)

    losses.make_loss(recording, process, "eps")(None, key, x0)
    losses.make_loss(recording, process, "eps", coupling=flip)(None, key, x0)
    np.testing.assert_allclose(seen["x"][0], -seen["x"][1], rtol=1e-6)  # ... but x_t is built from the pair


def test_time_sampling_distributions():
    key = jax.random.PRNGKey(0)
    edm = schedules.get_process("edm")
    t = losses.sample_times(key, 100_000, edm, "log_normal", mean=-1.2, std=1.2)
    # EDM: log sigma ~ N(P_mean, P_std); sigma = t, clipped to [0.002, 80] (a 1e-4 tail).
    np.testing.assert_allclose(np.mean(np.log(t)), -1.2, atol=0.02)
    np.testing.assert_allclose(np.std(np.log(t)), 1.2, atol=0.02)
    ot = schedules.get_process("ot")
    t = losses.sample_times(key, 100_000, ot, "logit_normal", t_min=0.0, t_max=1.0)
    logit = np.log(t) - np.log1p(-t)
    np.testing.assert_allclose([np.mean(logit), np.std(logit)], [0.0, 1.0], atol=0.02)
    t = losses.sample_times(key, 1000, ot, "uniform", t_min=0.2, t_max=0.4)
    assert 0.2 <= float(t.min()) and float(t.max()) <= 0.4 and t.dtype == jnp.float32


def test_bad_arguments_fail_clearly():
    process = schedules.get_process("ot")
    model = lambda params, x, t: x
    with pytest.raises(ValueError, match="valid predictions"):
        losses.make_loss(model, process, "noise")
    with pytest.raises(ValueError, match="not a training target"):
        losses.make_loss(model, process, "score")
    with pytest.raises(ValueError, match="valid: \\['uniform'"):
        losses.make_loss(model, process, "eps", time_sampling="beta")


def test_edm_input_scaling_and_time_input():
    # EDM (Karras et al. 2022, Table 1): c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = log(sigma) / 4.
    class Probe:
        def apply(self, params, x, t):
            return x * 0 + jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1)) + 1000 * x

    edm = schedules.get_process("edm")
    fn = network_fn(Probe(), edm, input_scaling="edm", sigma_data=0.5)
    x = jnp.ones((2, 3))
    out = fn(None, x, jnp.array([2.0, 10.0]))
    sigma = np.array([2.0, 10.0])[:, None]
    np.testing.assert_allclose(out, np.log(sigma) / 4 + 1000 / np.sqrt(sigma**2 + 0.25) * np.ones((2, 3)), rtol=1e-5)
    ot_fn = network_fn(Probe(), schedules.get_process("ot"))
    np.testing.assert_allclose(ot_fn(None, x, 0.25), 0.25 + 1000 * np.ones((2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="input_scaling"):
        network_fn(Probe(), edm, input_scaling="karras")


def test_label_dropout_replaces_about_the_given_fraction_per_example():
    labels = jnp.arange(20_000, dtype=jnp.int32) % 10
    dropped = losses.drop_labels(jax.random.PRNGKey(0), labels, 0.1, 10)
    null = np.asarray(dropped) == 10
    assert abs(null.mean() - 0.1) < 0.01  # 4 standard deviations of a Binomial(20000, 0.1) fraction
    np.testing.assert_array_equal(np.asarray(dropped)[~null], np.asarray(labels)[~null])  # others kept
    np.testing.assert_array_equal(losses.drop_labels(jax.random.PRNGKey(0), labels, 0.0, 10), labels)


def test_conditional_loss_passes_the_dropped_labels_to_the_model():
    process = schedules.get_process("ot")
    seen = []
    model = lambda params, x, t, labels: seen.append(labels) or x * 0.0
    loss = losses.make_loss(model, process, "velocity", num_classes=10, label_dropout=0.5)
    labels = jnp.arange(64, dtype=jnp.int32) % 10
    x0 = jnp.ones((64, 3))
    eps, x, t, drawn = loss.draw(jax.random.PRNGKey(1), x0, labels)
    # The same key draws the same labels (resume is bit-exact), and the noise and times are the unconditional ones.
    np.testing.assert_array_equal(loss.draw(jax.random.PRNGKey(1), x0, labels)[3], drawn)
    plain = losses.make_loss(lambda params, x, t: x, process, "velocity").draw(jax.random.PRNGKey(1), x0)
    for a, b in zip(plain, (eps, x, t)):
        np.testing.assert_array_equal(a, b)
    assert 10 <= int(jnp.sum(drawn == 10)) <= 54 and bool(jnp.all((drawn == labels) | (drawn == 10)))
    loss.regress(None, eps, x, t, drawn)
    np.testing.assert_array_equal(seen[-1], drawn)
    with pytest.raises(ValueError, match="needs labels"):
        loss.draw(jax.random.PRNGKey(1), x0)
    with pytest.raises(ValueError, match="label_dropout"):
        losses.make_loss(model, process, "velocity", num_classes=10, label_dropout=1.0)
