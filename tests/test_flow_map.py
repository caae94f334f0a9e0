"""Flow maps (issue 28 item 4): f(x, t, t) = x for any parameters; the two-time networks keep the one-time ones'
parameters and outputs; the flow_map solver is exact on exact maps and refuses pointwise predictions; the prediction
loss's JVP is a finite difference in s; the correction surrogate's gradient is (v_psi - u_T) chained through the
student; with a Gaussian teacher the learned one-step map is the exact one; the smoke run resumes bit for bit.

The exact map of Gaussian data N(m, diag(S)) on the OT path x_t = (1 - t) x0 + t eps (derived here; checked against
`samplers.exact_flow_map`): the marginal is N(mu_t, sigma_t^2), mu_t = (1 - t) m, sigma_t^2 = (1 - t)^2 S + t^2, and
the probability-flow ODE maps quantiles to quantiles, f(x, t, s) = mu_s + (sigma_s / sigma_t)(x - mu_t)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from fastsamplers import models, samplers, schedules
from fastsamplers.experiments import train
from fastsamplers.experiments.configs import flow_map_distill as flow_map_config, toy2d_fm
from fastsamplers.experiments.train import losses
from fastsamplers.models.conditioning import network_fn
from fastsamplers.models.flow_map import FlowMapFn, FlowMapModel

OT = schedules.get_process("ot")
MEAN, VAR = np.array([1.0, -0.5]), np.array([0.25, 2.0])
GM = models.GaussianMixture.create(jnp.ones(1), MEAN[None], np.sqrt(VAR)[None])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def exact_map(x, t, s):
    """The Gaussian's flow map (module docstring), float64."""
    sd = lambda u: np.sqrt((1 - u) ** 2 * VAR + u**2)
    return (1 - s) * MEAN + sd(s) / sd(t) * (np.asarray(x, np.float64) - (1 - t) * MEAN)


@pytest.mark.slow  # the float64 reference ODE: ~2 s of CPU (the default suite keeps its flow-map tests to 15 s)
def test_the_gaussian_map_is_the_reference_flow():
    x = GM.marginal_sample(jax.random.PRNGKey(0), 8, 0.9, OT)
    np.testing.assert_allclose(exact_map(x, 0.9, 0.0), samplers.exact_flow_map(GM, OT, x, 0.9, 0.0), atol=1e-9)


NETS = {"mlp": (models.MLP(hidden=16, depth=2), (4, 2)),
        "mlp_concat": (models.MLP(hidden=16, depth=2, time_input="concat", activation="selu",
                                  zero_init_output=False), (4, 2)),
        "unet": (models.UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                             num_heads=2, num_groups=4), (2, 8, 8, 1))}


@pytest.mark.parametrize("name", [*NETS][:2] + [pytest.param("unet", marks=pytest.mark.slow)])  # the UNet: ~1 min
def test_two_time_networks_keep_the_one_time_parameters_and_map_x_to_itself_at_equal_times(name):
    net, shape = NETS[name]
    x, t = jax.random.normal(jax.random.PRNGKey(1), shape), jnp.full((shape[0],), 0.7)
    key = jax.random.PRNGKey(0)
    one = net.init(key, x, t)
    two_net = net.clone(second_time=True)
    two = two_net.init(key, x, t, s=t)
    # every one-time parameter, by name and value; the rest are the interval layers
    flat_one, flat_two = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (one, two))
    assert all(np.array_equal(v, flat_two[k]) for k, v in flat_one.items())
    assert all("interval" in jax.tree_util.keystr(k) for k in set(flat_two) - set(flat_one))
    # zero-initialised: the two-time net is the one-time net for every s
    np.testing.assert_array_equal(two_net.apply(two, x, t, s=0.2 * t), net.apply(one, x, t))
    # and f(x, t, t) = x exactly for any parameters (here all perturbed, the interval layers included)
    noisy = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), two)
    f = FlowMapFn(network_fn(two_net, OT))
    np.testing.assert_array_equal(f(noisy, x, t, t), x)
    assert not np.allclose(f(noisy, x, t, 0.2 * t), f(two, x, t, 0.2 * t))  # the interval layers do act
    with pytest.raises(ValueError, match="call it as"):
        two_net.apply(two, x, t)
    with pytest.raises(ValueError, match="one-time network"):
        net.apply(one, x, t, s=t)


def test_the_flow_map_solver_is_exact_on_an_exact_map_at_any_step_count_and_refuses_other_kinds():
    model = lambda x, ts: jnp.asarray(exact_map(x, ts[0], ts[1]), x.dtype)
    z = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    want = exact_map(z, 1.0, 0.0)
    for steps in (1, 2, 4):
        ts = schedules.get_timesteps("uniform", OT, steps, t_min=0.0, t_max=1.0)
        x, info = samplers.sample(_exact, "flow_map", OT, z, ts,
                                  prediction="flow_map")
        assert info["nfe"] == steps
        np.testing.assert_allclose(x, want, atol=1e-12)
    ts = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="sampled only by the flow_map solver"):
        samplers.sample(model, "euler", OT, z, ts, prediction="flow_map")
    with pytest.raises(ValueError, match="sampled only by the flow_map solver"):
        samplers.sample(GM.model_fn(OT, "velocity"), "flow_map", OT, z, ts, prediction="velocity")
    with pytest.raises(ValueError, match="denoise_to_zero"):
        samplers.get_solver("flow_map", denoise_to_zero=True)
    with pytest.raises(ValueError, match="does not convert"):
        models.predictions.converted(model, "flow_map", "velocity", OT)


def _exact(x, ts):
    """The Gaussian's flow map in jnp (traceable), x <- mu_s + sigma_s / sigma_t (x - mu_t)."""
    sd = lambda u: jnp.sqrt((1 - u) ** 2 * VAR + u**2)
    t, s = ts[0], ts[1]  # scalars
    return (1 - s) * MEAN[None] + sd(s)[None] / sd(t)[None] * (x - (1 - t) * MEAN[None])


def _teacher(params, x, t):
    """The exact velocity, each sample at its own time."""
    return jax.vmap(lambda xi, ti: GM.predict(xi[None], ti, OT, "velocity")[0])(x, t)


@pytest.fixture(scope="module")
def tiny():
    """A tiny two-time MLP student and a one-time MLP aux net, float64, with the interval layers perturbed."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(0), (6, 2), jnp.float64)
        # time_scale 1: smooth in s at the finite difference's step (the default 1000 oscillates within 1e-3)
        net = models.MLP(hidden=8, depth=1, time_scale=1.0, second_time=True, zero_init_output=False)
        aux_net = models.MLP(hidden=8, depth=1, time_scale=1.0, zero_init_output=False)
        student = net.init(jax.random.PRNGKey(1), x, jnp.ones(6), s=jnp.zeros(6))
        student = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype),
                               student)
        params = {"student": student, "aux": aux_net.init(jax.random.PRNGKey(3), x, jnp.ones(6))}
        fn = FlowMapFn(network_fn(net, OT))
        aux = network_fn(aux_net, OT)
    return fn, aux, params, x


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_the_prediction_loss_jvp_is_the_finite_difference_in_s(tiny):
    fn, aux, params, z = tiny
    with jax.enable_x64(True):
        loss = losses.make_flow_map_loss(fn, _teacher, aux, OT, correction_weight=0.0, start_at_prior=1.0, t_min=0.0,
                                         t_max=1.0)
        _, t, s, r, eps = loss.draw(jax.random.PRNGKey(4), z)
        t, s = t.astype(jnp.float64), s.astype(jnp.float64)
        assert np.all(t == 1.0) and np.all((0 <= s) & (s <= t))
        pred = jax.jit(lambda p: loss.terms(p, z, t, s, r, eps, None)["pred"])(params)
        # the networks see times in float32 (NetworkFn casts them): the central difference carries rounding
        # ~eps32 / h = 6e-5 relative and truncation ~h^2 = 1e-6; rtol 1e-3 is 10x the two
        h = 1e-3
        fd = (fn(params["student"], z, t, s + h) - fn(params["student"], z, t, s - h)) / (2 * h)
        target = _teacher(None, fn(params["student"], z, t, s), s)
        np.testing.assert_allclose(pred, np.mean((fd - target) ** 2), rtol=1e-3)


def test_the_correction_gradient_is_the_velocity_difference_through_the_student(tiny):
    fn, aux, params, z = tiny
    with jax.enable_x64(True):
        loss = losses.make_flow_map_loss(fn, _teacher, aux, OT, correction_weight=0.7, t_min=0.0, t_max=1.0)
        pairs = loss.draw(jax.random.PRNGKey(5), z)
        _, _, _, r, eps = (jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a for a in pairs)
        pairs = tuple(jnp.asarray(a, jnp.float64) for a in pairs)
        # the three gradients in one compiled program (op-by-op dispatch of three float64 grads costs more CPU)
        grad, total, aux_grad = jax.jit(lambda p: (
            jax.grad(lambda q: loss.terms(q, *pairs, None)["corr"])(p),
            jax.grad(lambda q: loss.regress(q, *pairs))(p),
            jax.grad(lambda q: loss.terms(q, *pairs, None)["aux"])(p)))(params)
        x_hat, pullback = jax.vjp(lambda th: fn(th, z, jnp.ones(6), jnp.zeros(6)), params["student"])
        x_r = (1 - r)[:, None] * x_hat + r[:, None] * eps
        g = aux(params["aux"], x_r, r) - _teacher(None, x_r, r)
        want = pullback(-g / g.size)[0]
        for a, b in zip(jax.tree.leaves(grad["student"]), jax.tree.leaves(want)):
            # the loss's squares are averaged in float32 (make_flow_map_loss): eps32 (6e-8) of the gradient's
            # scale (~0.1) apart, atol 1e-7 is 10x that
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(grad["aux"]))  # psi sees only its own loss
        # the total: theta gets pred + w corr, psi gets w aux (flow matching on the student's re-noised samples)
        assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(aux_grad["student"]))
        for a, b in zip(jax.tree.leaves(total["aux"]), jax.tree.leaves(aux_grad["aux"])):
            np.testing.assert_allclose(a, 0.7 * b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # 4000 optimiser steps: ~3 s of CPU
def test_with_a_gaussian_teacher_the_learned_one_step_map_is_the_exact_map():
    """A student affine in x given s: F(z, 1, s) = a(s) z + b(s), a and b polynomials of degree 6 in s per
    dimension; the exact F = ((sigma_s - 1) z - (1 - s) m... ) / (s - 1) is smooth in s, and a degree-6 fit of it is
    within 6e-4 on [0, 1] (measured below on the exact coefficients' least-squares fit), so the trained one-step
    map must be within a few times that of the exact map."""
    degree = 6

    def basis(s):
        return jnp.stack([s**k for k in range(degree + 1)], -1)  # (n, degree + 1)

    def student(params, x, t, s):
        a = basis(s) @ params["a"]  # (n, d)
        b = basis(s) @ params["b"]
        return x + (s - t)[:, None] * (a * x + b)

    # the best the family can do: least squares of the exact map's F on a fine s grid
    s_fine = np.linspace(0.0, 0.999, 400)
    sd = np.sqrt((1 - s_fine[:, None]) ** 2 * VAR + s_fine[:, None] ** 2)
    a_exact = (sd - 1) / (s_fine[:, None] - 1)
    fit = np.linalg.lstsq(np.asarray(basis(jnp.asarray(s_fine))), a_exact, rcond=None)[0]
    floor = np.max(np.abs(np.asarray(basis(jnp.asarray(s_fine))) @ fit - a_exact))
    assert floor < 1e-3

    loss = losses.make_flow_map_loss(student, _teacher, None, OT, correction_weight=0.0, start_at_prior=1.0,
                                     t_min=0.0, t_max=1.0)
    params = {"student": {"a": jnp.zeros((degree + 1, 2)), "b": jnp.zeros((degree + 1, 2))}, "aux": None}
    opt = optax.adam(optax.cosine_decay_schedule(3e-2, 4000))

    @jax.jit
    def run(params):
        def step(carry, key):
            params, state = carry
            z = jax.random.normal(key, (256, 2))
            grads = jax.grad(lambda p: loss.regress(p, *loss.draw(jax.random.fold_in(key, 1), z)))(params)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), None

        keys = jax.random.split(jax.random.PRNGKey(0), 4000)
        return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

    params = run(params)
    z = jax.random.normal(jax.random.PRNGKey(9), (512, 2))
    x, info = samplers.sample(FlowMapModel(lambda p, x, t, s, labels=None: student(
        p, x, jnp.full(x.shape[:1], t), jnp.full(x.shape[:1], s))), "flow_map", OT, z, np.array([1.0, 0.0]),
        prediction="flow_map", args=params["student"])
    error = np.max(np.abs(np.asarray(x) - exact_map(z, 1.0, 0.0)) / np.sqrt(VAR))
    # untrained (F = 0) the one-step map is the identity: error O(1)
    assert info["nfe"] == 1 and error < 20 * floor + 2e-3, (error, floor)


# ------------------------------------------------------------------------------------------- the training run


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    config = toy2d_fm.get_config("smoke")
    config.eval.num_samples = config.sample.num_samples = 100
    train.train(config, str(workdir))
    return workdir


def _config(teacher_dir):
    config = flow_map_config.get_config(f"smoke,teacher=toy2d_fm,teacher_workdir={teacher_dir}")
    config.flow_map.teacher_config = os.path.join(CONFIGS, "toy2d_fm.py:smoke")  # any working directory
    return config


def _state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))


@pytest.mark.slow  # the teacher's smoke run, then 60 + 30 student steps (three compiles): ~60 s of CPU
def test_the_smoke_run_checkpoints_both_networks_and_resumes_bit_for_bit(teacher_dir, tmp_path):
    config = _config(teacher_dir)
    whole = tmp_path / "whole"
    result = train.train(config, str(whole))
    assert result["sampler"]["solver"] == "flow_map" and result["sampler"]["nfe"] == 1
    state = _state(whole, 60)
    assert set(state["params"]) == set(state["ema_params"]) == {"student", "aux"}
    assert any("interval" in jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(
        state["params"]["student"])[0])
    moments = jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]  # adamw's moments of both networks
    assert {"student", "aux"} <= {str(getattr(k, "key", "")) for path, _ in moments for k in path}
    # killed after its step-30 checkpoint: the same workdir without the later checkpoint and log lines
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "60")
    with open(killed / "metrics.jsonl") as f:
        lines = [line for line in f if json.loads(line)["step"] <= 30]
    with open(killed / "metrics.jsonl", "w") as f:
        f.writelines(lines)
    assert train.train(config, str(killed)) == result
    a, b = (jax.tree_util.tree_flatten_with_path(_state(w, 60))[0] for w in (whole, killed))
    for (name, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(name))
