"""Process transforms (schedules/process_transform.py): a model of one process, exactly a model of another."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture, predictions
from fastsamplers.schedules.process_transform import matched_time, matching_range

PROCESSES = ["vp_linear", "vp_cosine", "ve", "edm", "ot"]


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=3)


def _time(process):
    return {"ve": 2.0, "edm": 2.0}.get(process.name, 0.3)


@pytest.mark.parametrize("trained, target", list(itertools.permutations(PROCESSES, 2)))
@pytest.mark.parametrize("kind", predictions.KINDS)
def test_the_transformed_oracle_is_the_target_oracle(trained, target, kind, gm):
    a, b = schedules.get_process(trained), schedules.get_process(target)
    model = schedules.transform(gm.model_fn(a, kind), kind, a, b)
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
    for t in (_time(b), 0.5 * _time(b)):
        expected = gm.predict(x, t, b, kind)
        np.testing.assert_allclose(model(x, t), expected, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(expected))))


def test_a_transformed_model_has_the_original_flow_map(gm):
    """A VP eps model on the OT path and an OT velocity model on VP, each solved to tight tolerance by the adaptive
    reference in the target process, reach the original process's exact flow map (the ODE is one curve in
    (gamma, y)); and the target's own solvers (Heun on OT, DEIS on VP) give what they give the target's exact
    model."""
    tight = samplers.get_solver("adaptive", rtol=1e-10, atol=1e-10)
    vp, ot = schedules.get_process("vp_linear"), schedules.get_process("ot")
    x_vp = gm.marginal_sample(jax.random.PRNGKey(2), 64, 0.8, vp)
    exact_vp = samplers.exact_flow_map(gm, vp, x_vp, 0.8, 0.05)
    t_ot_hi, t_ot_lo = (float(matched_time(ot, vp, t)) for t in (0.8, 0.05))
    x_ot = x_vp * (ot.alpha(t_ot_hi) / vp.alpha(0.8))
    on_ot = schedules.transform(gm.model_fn(vp, "eps"), "eps", vp, ot)
    to_vp = float(vp.alpha(0.05) / ot.alpha(t_ot_lo))
    x, _ = samplers.sample(on_ot, tight, ot, x_ot, np.array([t_ot_hi, t_ot_lo]), prediction="eps")
    np.testing.assert_allclose(np.asarray(x) * to_vp, exact_vp, atol=1e-8)
    ts = schedules.get_timesteps("logsnr", ot, 20, t_min=t_ot_lo, t_max=t_ot_hi)  # the target's own solvers
    x, _ = samplers.sample(on_ot, "heun", ot, x_ot, ts, prediction="eps")
    native, _ = samplers.sample(gm.model_fn(ot, "eps"), "heun", ot, x_ot, ts, prediction="eps")
    np.testing.assert_allclose(x, native, atol=1e-12)

    on_vp = schedules.transform(gm.model_fn(ot, "velocity"), "velocity", ot, vp)
    x, _ = samplers.sample(on_vp, tight, vp, x_vp, np.array([0.8, 0.05]), prediction="velocity")
    np.testing.assert_allclose(x, exact_vp, atol=1e-8)
    ts = schedules.get_timesteps("logsnr", vp, 20, t_min=0.05, t_max=0.8)
    x, _ = samplers.sample(on_vp, "deis_tab", vp, x_vp, ts, prediction="velocity")
    native, _ = samplers.sample(gm.model_fn(vp, "eps"), "deis_tab", vp, x_vp, ts)
    np.testing.assert_allclose(x, native, atol=1e-12)


def test_matching_range_maps_the_trained_ends():
    vp, ot = schedules.get_process("vp_linear"), schedules.get_process("ot")
    lo, hi = matching_range(vp, ot)
    np.testing.assert_allclose([ot.log_snr(lo), ot.log_snr(hi)], [vp.log_snr(vp.t_min), vp.log_snr(vp.t_max)],
                               rtol=1e-9)


def test_same_process_is_the_identity(gm):
    vp = schedules.get_process("vp_linear")
    fn = gm.model_fn(vp)
    assert schedules.transform(fn, "eps", vp, "vp_linear") is fn


def test_bad_input():
    vp = schedules.get_process("vp_linear")
    with pytest.raises(ValueError, match="valid predictions"):
        schedules.transform(lambda x, t: x, "noise", vp, "ot")
    with pytest.raises(ValueError, match="valid names"):
        schedules.transform(lambda x, t: x, "eps", vp, "flow")

    class Scaled(type(vp)):
        name = "scaled_vp"

        def alpha(self, t):
            return 2.0 * super().alpha(t)

    with pytest.raises(ValueError, match="data scale"):
        schedules.transform(lambda x, t: x, "eps", Scaled(), "ot")
