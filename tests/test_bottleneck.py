"""Bottleneck sampling: one stage is the plain sampler, re-noising gives the process marginal, resizing, NFE
bookkeeping, any prediction kind and process, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.models import predictions
from fastsamplers.samplers import bottleneck, get_solver, sample
from fastsamplers.samplers.bottleneck import Stage

KEY = jax.random.PRNGKey(0)


def gaussian_eps_model(process, mean=0.0):
    """The exact eps prediction for data N(mean, 1) per pixel, at any resolution."""

    def model(x, t):
        a, s = process.alpha(t), process.sigma(t)
        return (s * (x - a * mean) / (a**2 + s**2)).astype(x.dtype)

    return model


@pytest.mark.parametrize("process_name, grid", [("vp_linear", "logsnr"), ("ot", "flow_shift")])
def test_one_full_resolution_stage_equals_the_plain_sampler(process_name, grid):
    process = schedules.get_process(process_name)
    model = gaussian_eps_model(process, 0.3)
    x_init = process.prior(KEY, (4, 8, 8, 1), dtype=jnp.float32)
    stage = Stage(8, 6, grid=grid, solver="deis_tab", solver_options=(("order", 3),))
    x, info = bottleneck.bottleneck_sample(model, [stage], process, x_init, KEY)
    ts = schedules.get_timesteps(grid, process, 6)
    ref, ref_info = sample(model, get_solver("deis_tab", order=3), process, x_init, ts)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    assert info["nfe"] == ref_info["nfe"] == 6


@pytest.mark.parametrize("process_name", ["vp_linear", "ot"])
def test_renoise_gives_the_process_marginal(process_name):
    process = schedules.get_process(process_name)
    t = 0.6 * process.t_max
    x0 = jnp.full((20_000, 2, 2, 1), 1.5, jnp.float32)  # a point mass: x_t ~ N(alpha x0, sigma^2)
    xt = np.asarray(bottleneck.renoise(KEY, x0, t, process), np.float64)
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    assert xt.mean() == pytest.approx(alpha * 1.5, abs=4 * sigma / np.sqrt(xt.size))
    assert xt.std() == pytest.approx(sigma, rel=0.02)
    np.testing.assert_array_equal(bottleneck.renoise(KEY, x0, t, process, "none"), x0)


@pytest.mark.parametrize("method", ["lanczos", "bilinear", "bicubic"])
def test_resize_down_and_up_preserves_a_smooth_image(method):
    u = np.linspace(0, 1, 32)
    image = np.sin(2 * np.pi * u)[:, None] * np.cos(np.pi * u)[None, :]  # two periods at most: smooth at 16 px
    x = jnp.asarray(image[None, :, :, None], jnp.float32)
    back = bottleneck.resize(bottleneck.resize(x, (16, 16), method), (32, 32), method)
    interior = np.abs(np.asarray(back - x))[0, 2:-2, 2:-2, 0]  # the borders depend on the edge handling
    assert interior.max() < 0.05


@pytest.mark.parametrize("prediction", ["eps", "x0", "velocity"])
def test_three_stages_nfe_and_convergence_to_the_data_law(prediction):
    # high -> low -> high on the exact model of i.i.d. N(0.5, 1) pixels: the mean survives resizing exactly; the
    # low-resolution stage averages independent pixels away, and re-noising at strength 0.6 restores only part of
    # that variance, so the std ends between the blurred and the data's.
    process = schedules.get_process("ot")
    model = predictions.converted(gaussian_eps_model(process, 0.5), "eps", prediction, process)
    stages = [Stage(16, 3, 1.0, end=0.5, grid="flow_shift", grid_options=(("shift", 3.0),)),
              Stage(8, 8, 0.8, grid="flow_shift", solver="dpmpp_2m"),
              Stage(16, 4, 0.6, grid="flow_shift", solver="heun")]
    x_init = process.prior(KEY, (512, 16, 16, 1), dtype=jnp.float32)
    x, info = bottleneck.bottleneck_sample(model, stages, process, x_init, KEY, prediction=prediction, total_steps=15)
    # stage 0: 3 DDIM calls + 1 x0 estimate (ended above t_min); stage 1: 8; stage 2: Heun 2 calls a step but 1 at
    # the final step to t_min = 0 (EDM's last Euler step): 7.
    assert info["stage_nfe"] == [4, 8, 7] and info["nfe"] == 19
    assert x.shape == (512, 16, 16, 1)
    x = np.asarray(x, np.float64)
    assert x.mean() == pytest.approx(0.5, abs=0.03)
    assert 0.7 < x.std() < 0.97


def test_clear_errors():
    process = schedules.get_process("ot")
    model = gaussian_eps_model(process)
    x_init = jnp.zeros((2, 8, 8, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        bottleneck.plan([Stage(8, 4, strength=1.5)], process)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        bottleneck.plan([Stage(8, 4, strength=0.0)], process)
    with pytest.raises(ValueError, match="add up to 7, not total_steps=8"):
        bottleneck.plan([Stage(8, 4), Stage(4, 3, 0.8)], process, total_steps=8)
    with pytest.raises(ValueError, match="unknown resize method"):
        bottleneck.bottleneck_sample(model, [Stage(8, 4)], process, x_init, KEY, resize_method="area")
    with pytest.raises(ValueError, match="x_init must be"):
        bottleneck.bottleneck_sample(model, [Stage(16, 4)], process, x_init, KEY)

    def patch_model(x, t):  # a patch-4 model: 6 px is not a whole number of patches
        if x.shape[1] % 4:
            raise ValueError(f"image side {x.shape[1]} is not divisible by the patch size 4")
        return x

    with pytest.raises(ValueError, match=r"stage 1: the model cannot take images of \(6, 6\)"):
        bottleneck.bottleneck_sample(patch_model, [Stage(8, 2), Stage(6, 2, 0.8)], process, x_init, KEY)


def test_args_are_traced_the_same_samples_and_one_trace_for_new_parameter_values():
    """model_fn(x, t, args) with args=params gives the closure's samples; new parameter values of the same shapes
    reuse the plan's compiled program (the model is traced on the first call only)."""
    process = schedules.get_process("vp_linear")
    traces = []

    def model_fn(x, t, params):
        traces.append(1)
        a, s = process.alpha(t), process.sigma(t)
        return (s * (x - a * params["mean"]) / (a**2 + s**2) * params["scale"]).astype(x.dtype)

    stages = [Stage(8, 3, grid="logsnr"), Stage(4, 2, 0.7, end=0.2, solver="dpmpp_2m"), Stage(8, 3, 0.5)]
    x_init = process.prior(KEY, (3, 8, 8, 1))
    params = [{"mean": jnp.asarray(0.1 * k), "scale": jnp.asarray(1.0 - 0.05 * k)} for k in range(3)]
    outs = []
    for k, p in enumerate(params):
        x, info = bottleneck.bottleneck_sample(model_fn, stages, process, x_init, KEY, args=p)
        assert info["stage_nfe"] == [3, 3, 3] and info["nfe"] == 9  # 2 + 1 clean estimate in the middle stage
        outs.append(np.asarray(x))
        if k == 0:
            first = len(traces)
    assert len(traces) == first  # one trace of the plan, not one per parameter value
    assert not np.allclose(outs[0], outs[1])
    for p, out in zip(params, outs):
        closed, _ = bottleneck.bottleneck_sample(lambda x, t: model_fn(x, t, p), stages, process, x_init, KEY)
        np.testing.assert_allclose(out, np.asarray(closed), rtol=1e-12, atol=1e-12)
