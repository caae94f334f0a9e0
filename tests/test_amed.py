"""AMED (samplers/amed.py, schedules/optimal/amed_fit.py): the midpoint solver at r = 1/2, its order, NFE counts,
a trained predictor against the untrained step, and the learned file's round trip."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.amed import AMED, init_params, student_states
from fastsamplers.schedules.optimal.amed_fit import refined

P = schedules.get_process("vp_linear")


@pytest.fixture(scope="module")
def oracle():
    return GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)


def midpoint_by_hand(model, x, ts):
    """The geometric-midpoint solver written out: y = x / alpha, gamma_mid = sqrt(gamma_n gamma_{n+1}),
    y_{n+1} = y_n + (gamma_{n+1} - gamma_n) eps(alpha_mid (y_n + (gamma_mid - gamma_n) eps_n), t_mid)."""
    for s, t in zip(ts[:-1], ts[1:]):
        g_s, g_t = P.gamma(s), P.gamma(t)
        g_mid = jnp.sqrt(g_s * g_t)
        t_mid = P.t_of_gamma(g_mid)
        y = x / P.alpha(s)
        y_mid = y + (g_mid - g_s) * model(x, s)
        x = P.alpha(t) * (y + (g_t - g_s) * model(P.alpha(t_mid) * y_mid, t_mid))
    return x


def test_half_is_the_geometric_midpoint_solver(oracle):
    model = oracle.model_fn(P)
    x = P.prior(jax.random.PRNGKey(1), (16, 2))
    ts = schedules.get_timesteps("logsnr", P, 5, t_min=1e-3)
    out, info = samplers.sample(model, AMED(), P, x, ts)
    np.testing.assert_allclose(out, midpoint_by_hand(model, x, ts), rtol=0, atol=1e-12)
    assert info["nfe"] == 10
    _, info = samplers.sample(model, AMED(afs=True), P, x, ts)
    assert info["nfe"] == 9  # the analytic first direction saves a call


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_order_two_on_the_oracle(oracle):
    x = P.prior(jax.random.PRNGKey(2), (32, 2))
    ts = [schedules.get_timesteps("logsnr", P, n, t_min=1e-2) for n in (16, 32)]
    exact = samplers.exact_flow_map(oracle, P, x, float(ts[0][0]), float(ts[0][-1]))
    err = [float(jnp.max(jnp.abs(samplers.sample(oracle.model_fn(P), AMED(), P, x, t)[0] - exact))) for t in ts]
    assert 1.8 < np.log2(err[0] / err[1]) < 2.3, err


@pytest.mark.slow
def test_plugins_run_with_a_predictor(oracle):
    """Every base with a predictor: finite, the NFE counted, and r = 1/2 without scales is the same as no predictor
    whose output is 1/2 (the fc_r head zeroed)."""
    model = oracle.model_fn(P)
    x = P.prior(jax.random.PRNGKey(3), (8, 2))
    ts = schedules.get_timesteps("logsnr", P, 3, t_min=1e-3)
    for base in ("euler", "ipndm", "dpmpp"):
        params = init_params(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
        params = dict(params, **{"fc_r/kernel": jnp.zeros_like(params["fc_r/kernel"]),
                                 "fc_r/bias": jnp.zeros_like(params["fc_r/bias"])})
        plain, info = samplers.sample(model, AMED(base=base, afs=True), P, x, ts, prediction="eps")
        learned, _ = samplers.sample(model, AMED(base=base, afs=True, params=params), P, x, ts)
        assert info["nfe"] == 5
        np.testing.assert_allclose(learned, plain, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def trained(oracle):
    with jax.enable_x64(False):
        x_cal = oracle.marginal_sample(jax.random.PRNGKey(4), 128, P.t_max, P)
        solver, ts, info = schedules.learn("amed", oracle.model_fn(P), P, x_cal, 2, t_min=1e-3, return_info=True,
                                           base="ipndm", afs=True, scale_dir=0.1, iterations=200,
                                           teacher_kind="given", insert=8)
    return solver, ts, info


@pytest.mark.slow
def test_trained_predictor_lowers_the_teacher_distance(oracle, trained):
    """On held-out noise the trained step is closer to the teacher than the step with r = 1/2, c = 1 (NFE 3)."""
    solver, ts, info = trained
    assert info["loss"] < info["loss_initial"]
    with jax.enable_x64(False):
        model = oracle.model_fn(P)
        x = oracle.marginal_sample(jax.random.PRNGKey(5), 256, P.t_max, P)
        teacher = samplers.sample(model, samplers.get_solver("deis_tab", order=3), P, x, refined(P, ts, 8))[0]
        dist = {name: float(jnp.sqrt(jnp.mean((samplers.sample(model, s, P, x, ts)[0] - teacher) ** 2)))
                for name, s in (("trained", solver), ("untrained", dataclasses.replace(solver, params=None)))}
    assert dist["trained"] < 0.7 * dist["untrained"], dist


@pytest.fixture(scope="module")
def student_case(oracle):
    """A dpmpp plugin with a predictor (AFS, float32) and its own trajectory from `samplers.sample`."""
    with jax.enable_x64(False):
        model = oracle.model_fn(P, "x0")
        solver = AMED(base="dpmpp", afs=True, scale_dir=0.1, params=init_params(jax.random.PRNGKey(8), 2, 0.1))
        ts = schedules.get_timesteps("logsnr", P, 3, t_min=1e-3)
        x = P.prior(jax.random.PRNGKey(9), (8, 2))
        _, info = samplers.sample(model, solver, P, x, ts, prediction="x0", save_trajectory=True)
    return model, solver, ts, x, info["trajectory"]


def test_student_modes_follow_the_sampler(student_case):
    """The training's student paths run the sampler: "chained" from the common start and "single" restarted from
    the sampler's own states give its states bitwise ("unrolled" is "chained" without the stop_gradient)."""
    model, solver, ts, x, xs = student_case
    with jax.enable_x64(False):
        for mode, start in (("chained", jnp.broadcast_to(x, xs.shape)), ("single", xs)):
            out, _ = student_states(solver, model, P, start, ts, mode)
            np.testing.assert_array_equal(out, xs[1:], err_msg=mode)


@pytest.mark.slow
def test_unrolled_students_differentiate_through_the_trajectory(student_case):
    """The same forward pass; the gradient of the last state differs: "unrolled" goes through every earlier step,
    "chained" through the last step alone."""
    model, solver, ts, x, xs = student_case

    def last(params, mode):
        out, _ = student_states(dataclasses.replace(solver, params=params), model, P, jnp.broadcast_to(x, xs.shape),
                                ts, mode)
        return jnp.sum(out[-1] ** 2)

    with jax.enable_x64(False):
        grads = {m: jax.grad(last)(solver.params, m)["map_layer0/kernel"] for m in ("chained", "unrolled")}
    assert np.all(np.isfinite(grads["unrolled"])) and not np.allclose(grads["chained"], grads["unrolled"])


@pytest.mark.slow  # the default suite's CI budget: scripts/test_slow.sh runs it
def test_learned_file_round_trip_is_bitwise(oracle, tmp_path):
    with jax.enable_x64(False):
        solver = AMED(base="dpmpp", afs=True, scale_time=0.05, params=init_params(jax.random.PRNGKey(7), 2, 0.0, 0.05))
    ts = schedules.get_timesteps("logsnr", P, 2, t_min=1e-3)
    path = schedules.save_learned(str(tmp_path / "amed.json"), solver, ts, process=P, method="amed")
    loaded = samplers.get_solver("file", path=path)
    assert sorted(loaded.params) == sorted(solver.params)
    for k, v in solver.params.items():
        assert loaded.params[k].dtype == v.dtype and np.array_equal(loaded.params[k], v), k
    with jax.enable_x64(False):
        x = P.prior(jax.random.PRNGKey(6), (8, 2))
        a, b = (samplers.sample(oracle.model_fn(P), s, P, x, ts)[0] for s in (solver, loaded))
    assert np.array_equal(a, b)


def test_bad_options_are_refused_before_compute():
    with pytest.raises(ValueError, match="valid bases"):
        AMED(base="heun")
    with pytest.raises(ValueError, match="order"):
        AMED(base="dpmpp", order=4)
    with pytest.raises(ValueError, match="r must lie"):
        AMED(r=1.5)
    with pytest.raises(ValueError, match="sigma / alpha"):
        samplers.sample(lambda x, t: x, AMED(), P, jnp.zeros((2, 2)), jnp.array([1.0, 0.0]))
