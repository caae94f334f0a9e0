"""TarFlow and its inversions: exactness of sequential / Jacobi / GS-Jacobi against each other and against a
cache-free reference, the log-determinant against autodiff, guidance, CRM / IGM, training and the scripts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.experiments import train
from fastsamplers.experiments.runs import causal_inversion
from fastsamplers.experiments.train import data, losses
from fastsamplers.experiments.train.experiment import data_batch
from fastsamplers.experiments.configs import digits_tarflow
from fastsamplers.models.tarflow import TarFlow, block_order, denoise, nll, patchify, unpatchify
from fastsamplers.samplers import causal, causal_metrics
from script_loader import load_script

SIZE, P = 8, 2
T = (SIZE // P) ** 2  # 16 tokens


def _flow(num_classes=3, blocks=2):
    return TarFlow(image_size=SIZE, channels=1, patch_size=P, num_blocks=blocks, layers_per_block=1, hidden=16,
                   num_heads=2, num_classes=num_classes)


def _init(flow, seed=0):
    # one compiled program with the rbg generator: XLA's CPU compiler is slow on threefry draws
    return jax.jit(flow.init)(jax.random.key(seed, impl="rbg"), jnp.zeros((1, SIZE, SIZE, 1), jnp.float32))


def _params(flow, scale=0.15, seed=0):
    """Random parameters with a non-zero output projection (at init every block is the identity)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), _init(flow, seed))


@pytest.fixture(scope="module")
def setup():
    flow = _flow()
    params = _params(flow)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, SIZE, SIZE, 1), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    z, logdet = jax.jit(flow.apply)(params, x, y)
    return flow, params, x, y, z, logdet


def _invert(flow, params, z, y, plan, **kw):
    return jax.jit(lambda z: causal.invert(flow, params, z, y, plan, **kw))(z)


def test_patchify_round_trip():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 24, 12)
    np.testing.assert_array_equal(tokens[0, 1], np.asarray(x[0, 0:2, 2:4]).reshape(-1))  # row-major patches
    np.testing.assert_array_equal(unpatchify(tokens, 2, 8, 12), x)


def test_identity_at_init():
    flow = _flow()
    params = _init(flow)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, SIZE, SIZE, 1))
    z, logdet = jax.jit(flow.apply)(params, x, jnp.array([0, 1, 2]))
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(logdet, 0.0)


def test_logdet_equals_autodiff_jacobian(setup):
    flow, params, x, y, _, logdet = setup
    xd = x.astype(jnp.float64)
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    f = lambda v: flow.apply(params64, v.reshape(1, SIZE, SIZE, 1), y[:1])[0].reshape(-1)
    sign, expected = np.linalg.slogdet(np.asarray(jax.jacfwd(f)(xd[0].reshape(-1))))
    assert sign != 0
    _, ours = flow.apply(params64, xd[:1], y[:1])
    np.testing.assert_allclose(float(ours[0]), expected, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(float(logdet[0]), expected, rtol=1e-4)  # the float32 forward pass


def test_sequential_inverse_reconstructs(setup):
    flow, params, x, y, z, _ = setup
    x_rec, info = _invert(flow, params, z, y, "sequential")
    np.testing.assert_allclose(x_rec, x, atol=2e-4)
    np.testing.assert_array_equal(info["passes"], [T, T])


def _naive_block_inverse(flow, params, k, z, y):
    """Token by token, each step a full cache-free forward pass of the block on the tokens found so far."""
    x = jnp.zeros_like(z)
    for t in range(z.shape[1]):
        _, a, b = flow.apply(params, k, x, y, method=TarFlow.block_forward)
        x = x.at[:, t].set(z[:, t] * jnp.exp(a[:, t]) + b[:, t])
    return x


def test_cached_sequential_equals_cache_free_reference(setup):
    flow, params, _, y, z, _ = setup
    tokens = patchify(z, P)
    for k in reversed(range(flow.num_blocks)):
        tokens = block_order(k, _naive_block_inverse(flow, params, k, block_order(k, tokens), y))
    x_naive = unpatchify(tokens, P, SIZE, SIZE)
    x_seq, _ = _invert(flow, params, z, y, "sequential")
    np.testing.assert_allclose(x_seq, x_naive, atol=1e-5)


@pytest.mark.parametrize("init", ["z", "z0"])
def test_jacobi_with_T_minus_1_iterations_is_exact(setup, init):
    flow, params, x, y, z, _ = setup
    x_seq, _ = _invert(flow, params, z, y, "sequential")
    x_jac, info = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": T - 1, "init": init})
    np.testing.assert_allclose(x_jac, x_seq, atol=1e-5)
    np.testing.assert_array_equal(info["passes"], [T - 1, T - 1])
    # and it needs them: too few iterations leave an error far above float tolerance
    x_few, _ = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": 4, "init": init})
    assert float(jnp.max(jnp.abs(x_few - x_seq))) > 1e-2


def test_jacobi_makes_one_more_token_exact_per_iteration(setup):
    flow, params, _, y, z, _ = setup
    k = 1
    tokens = block_order(k, patchify(z, P))
    exact = _naive_block_inverse(flow, params, k, tokens, y)
    labels = flow.apply({}, y, 4, method=TarFlow.labels)
    for n in (1, 3, 7):
        x, _, _ = causal._invert_block(flow, params, k, tokens, labels, causal.BlockPlan("jacobi", max_iterations=n),
                                       0.0, False, None)
        np.testing.assert_allclose(x[:, :n + 1], exact[:, :n + 1], atol=1e-5)
        assert float(jnp.max(jnp.abs(x[:, n + 1:] - exact[:, n + 1:]))) > 1e-4


def test_gs_jacobi_limits(setup):
    flow, params, _, y, z, _ = setup
    x_seq, _ = _invert(flow, params, z, y, "sequential")
    x_tokens, info = _invert(flow, params, z, y, {"mode": "gs_jacobi", "segments": T, "max_iterations": 1})
    np.testing.assert_allclose(x_tokens, x_seq, atol=1e-6)
    np.testing.assert_array_equal(info["passes"], [T, T])
    x_one, info_one = _invert(flow, params, z, y, {"mode": "gs_jacobi", "segments": 1, "max_iterations": 5})
    x_jac, info_jac = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": 5})
    np.testing.assert_allclose(x_one, x_jac, atol=1e-6)
    np.testing.assert_array_equal(info_one["passes"], info_jac["passes"])
    # four segments of four tokens, each solved exactly (max_iterations 0 = the segment length)
    x_gs, info = _invert(flow, params, z, y, {"mode": "gs_jacobi", "segments": 4})
    np.testing.assert_allclose(x_gs, x_seq, atol=1e-5)
    assert all(int(p) <= T for p in info["passes"])


def test_tolerance_stops_early_and_stays_close(setup):
    flow, params, _, y, z, _ = setup
    x_seq, _ = _invert(flow, params, z, y, "sequential")
    x_tol, info = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": 100, "tol": 1e-3})
    assert all(int(p) < 100 for p in info["passes"])
    assert float(jnp.max(jnp.abs(x_tol - x_seq))) < 0.1
    x_exact, info = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": 100, "tol": 0.0})
    np.testing.assert_allclose(x_exact, x_seq, atol=1e-5)
    assert all(int(p) <= T for p in info["passes"])  # stops once an iteration changes nothing


def test_per_block_plan_and_clamp(setup):
    flow, params, _, y, z, _ = setup
    x_seq, _ = _invert(flow, params, z, y, "sequential")
    plan = [{"mode": "gs_jacobi", "segments": 2, "init": "z0"}, {"mode": "jacobi", "max_iterations": T - 1}]
    x, info = _invert(flow, params, z, y, plan)
    np.testing.assert_allclose(x, x_seq, atol=1e-5)
    np.testing.assert_array_equal(info["passes"], [T, T - 1])
    tokens = block_order(0, patchify(z * 10, P))
    labels = flow.apply({}, y, 4, method=TarFlow.labels)
    x_b, _, _ = causal._invert_block(flow, params, 0, tokens, labels, causal.BlockPlan("jacobi", max_iterations=3),
                                     0.0, False, 0.5)
    assert float(jnp.max(jnp.abs(x_b[:, 1:]))) <= 0.5 + 1e-6


@pytest.mark.parametrize("annealed", [False, True])
def test_guidance_same_answer_in_every_mode(setup, annealed):
    flow, params, _, y, z, _ = setup
    kw = dict(guidance=1.5, annealed_guidance=annealed)
    x_seq, _ = _invert(flow, params, z, y, "sequential", **kw)
    x_jac, _ = _invert(flow, params, z, y, {"mode": "jacobi", "max_iterations": T - 1}, **kw)
    x_gs, _ = _invert(flow, params, z, y, {"mode": "gs_jacobi", "segments": 4}, **kw)
    np.testing.assert_allclose(x_jac, x_seq, atol=1e-4)
    np.testing.assert_allclose(x_gs, x_seq, atol=1e-4)
    x_plain, _ = _invert(flow, params, z, y, "sequential")
    assert float(jnp.max(jnp.abs(x_seq - x_plain))) > 1e-2  # guidance changes the sample
    x_zero, _ = _invert(flow, params, z, y, "sequential", guidance=0.0)
    np.testing.assert_array_equal(x_zero, x_plain)


def test_guidance_by_hand_on_one_token(setup):
    """Token 1 of the last block inverted first: a + w (a - a_u), b + w (b - b_u) from the first output."""
    flow, params, _, y, z, _ = setup
    k, w = flow.num_blocks - 1, 2.0
    tokens = block_order(k, patchify(z, P))
    labels = flow.apply({}, y, 4, method=TarFlow.labels)
    null = jnp.full_like(labels, flow.num_classes)
    u = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :1]], axis=1)
    a_c, b_c, _ = flow.apply(params, k, u, 0, labels, None, method=TarFlow.block_outputs)
    a_u, b_u, _ = flow.apply(params, k, u, 0, null, None, method=TarFlow.block_outputs)
    a, b = a_c + w * (a_c - a_u), b_c + w * (b_c - b_u)
    expected = tokens[:, 1] * jnp.exp(a[:, 1]) + b[:, 1]
    x, _, _ = causal._invert_block(flow, params, k, tokens, labels, causal.BlockPlan(), w, False, None)
    np.testing.assert_allclose(x[:, 1], expected, atol=1e-5)
    np.testing.assert_array_equal(x[:, 0], tokens[:, 0])


def test_plan_errors(setup):
    flow, params, _, y, z, _ = setup
    with pytest.raises(ValueError, match="unknown inversion mode 'newton'.*sequential"):
        causal.invert(flow, params, z, y, "newton")
    with pytest.raises(ValueError, match="segments=5 does not divide the 16 tokens"):
        causal.invert(flow, params, z, y, {"mode": "gs_jacobi", "segments": 5})
    with pytest.raises(ValueError, match="lists 3 blocks but the flow has 2"):
        causal.invert(flow, params, z, y, ["sequential"] * 3)
    with pytest.raises(ValueError, match="no key.*'iters'"):
        causal.invert(flow, params, z, y, {"mode": "jacobi", "iters": 3})
    with pytest.raises(ValueError, match="unknown initial guess"):
        causal.invert(flow, params, z, y, {"mode": "jacobi", "init": "ones"})
    with pytest.raises(ValueError, match="guidance needs labels"):
        causal.invert(flow, params, z, None, "sequential", guidance=1.0)
    unconditional = _flow(num_classes=0)
    with pytest.raises(ValueError, match="class-conditional"):
        causal.invert(unconditional, _params(unconditional), z, None, "sequential", guidance=1.0)
    with pytest.raises(ValueError, match="expects images"):
        causal.invert(flow, params, z[..., :4, :], y, "sequential")
    with pytest.raises(ValueError, match="unknown matmul precision 'fp8'"):
        causal.invert(flow, params, z, y, "sequential", precision="fp8")
    assert causal.parse_plan(' [{"mode": "jacobi"}] ') == [{"mode": "jacobi"}]
    assert causal.parse_plan("gs_jacobi") == "gs_jacobi"


def test_passes_run_at_the_requested_matmul_precision(setup):
    """Full float32 products by default (TF32, the GPU default, keeps Jacobi from meeting its tolerance)."""
    flow, params, _, y, z, _ = setup
    program = lambda precision: str(jax.make_jaxpr(
        lambda z: causal.invert(flow, params, z, y, "jacobi", precision=precision)[0])(z))
    assert "HIGHEST" in program("highest")
    assert "HIGHEST" not in program(None)


def test_sampling_is_deterministic_and_denoise_is_tweedie(setup):
    flow, params, _, _, _, _ = setup
    y = jnp.arange(5) % 3
    draw = jax.jit(lambda key: causal.sample(flow, params, key, 5, y, "sequential", denoise_sigma=0.05)[0])
    a, b, c = draw(jax.random.PRNGKey(3)), draw(jax.random.PRNGKey(3)), draw(jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 0.1
    # the identity flow is N(0, I): grad log p(x) = -x
    identity = _init(flow)
    x = jax.random.normal(jax.random.PRNGKey(5), (3, SIZE, SIZE, 1))
    np.testing.assert_allclose(jax.jit(lambda x: denoise(flow, identity, x, 0.1, y[:3]))(x), x * (1 - 0.01),
                               rtol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda x: nll(flow, identity, x, y[:3]))(x),
                               0.5 * jnp.mean(x.reshape(3, -1) ** 2, axis=1) + 0.5 * np.log(2 * np.pi), rtol=1e-5)


def test_crm_igm_and_recommended_plan():
    flow = _flow(blocks=3)
    params = _params(flow, scale=0.05)
    # make block 1 the tough one: a large output projection, the others small
    for k, factor in ((0, 0.1), (1, 10.0), (2, 0.1)):
        kernel = params["params"][f"block_{k}"]["proj_out"]["kernel"]
        params["params"][f"block_{k}"]["proj_out"]["kernel"] = kernel * factor
    x = jax.random.normal(jax.random.PRNGKey(1), (64, SIZE, SIZE, 1)) * 0.5
    y = jnp.arange(64) % 3
    metrics = causal_metrics.block_metrics(flow, params, x, y)
    assert [m["block"] for m in metrics] == [0, 1, 2]
    np.testing.assert_allclose(sum(m["crm_share"] for m in metrics), 1.0)
    assert max(metrics, key=lambda m: m["crm"])["block"] == 1
    for m in metrics:
        assert m["crm"] == pytest.approx(m["crm_state"] * m["w_a"] + m["w_b"])
        assert m["init"] == ("z" if m["igm_z"] <= m["igm_z0"] else "z0")
    plan = causal_metrics.recommend_plan(metrics, T, segments=4, other_iterations=5, tol=1e-5)
    assert plan[1]["mode"] == "gs_jacobi" and plan[1]["segments"] == 4
    assert plan[0]["mode"] == plan[2]["mode"] == "jacobi" and plan[0]["max_iterations"] == 5
    causal.make_plan(plan, flow.num_blocks)  # a valid plan
    assert "| 1 |" in causal_metrics.format_metrics(metrics)
    # the identity block: one Jacobi step from x = z is exact, so IGM(z) = 0
    identity = _init(flow)
    for m in causal_metrics.block_metrics(flow, identity, x, y):
        assert m["igm_z"] == pytest.approx(0.0, abs=1e-6) and m["init"] == "z"
    with pytest.raises(ValueError, match="segments=5 does not divide"):
        causal_metrics.recommend_plan(metrics, T, segments=5)


def test_flow_loss_and_labels(tmp_path):
    digits = data.get_dataset("digits", image_size=8)
    assert digits.num_classes == 10
    key = jax.random.PRNGKey(0)
    idx = digits.indices(key, 3, 32)
    np.testing.assert_array_equal(digits.batch_labels(key, 3, 32), digits.labels[idx])
    with pytest.raises(ValueError, match="no labels"):
        np.savez(tmp_path / "x.npz", x=np.zeros((4, 8, 8, 1), np.float32))
        data.get_dataset("npz", path=str(tmp_path / "x.npz"), key="x").batch_labels(key, 0, 2)
    with pytest.raises(ValueError, match="labels must be 3 non-negative integers"):
        data.ArrayDataset.from_array(np.zeros((3, 2)), labels=np.array([0.5, 1, 2]))
    flow = _flow(num_classes=10)
    loss = losses.make_flow_loss(flow, 0.05, label_dropout=0.5)
    x0 = digits.batch(key, 0, 32)
    x, labels = loss.draw(key, x0, digits.batch_labels(key, 0, 32))
    assert 0.02 < float(jnp.std(x - x0)) < 0.08
    assert 5 < int(jnp.sum(labels == 10)) < 27  # about half dropped to "no label"
    with pytest.raises(ValueError, match="needs labels"):
        loss.draw(key, x0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tarflow"))
    config = digits_tarflow.get_config("smoke")
    with config.unlocked():
        config.train.num_steps = 60
        config.train.log_every = 30
        config.train.checkpoint_every = 30
        config.train.lr = 3e-3
    experiment = train.build(config)
    state = train.init_state(experiment)
    batch = data_batch(experiment, experiment.datasets[0], jax.random.PRNGKey(9), 0, 64)
    before = float(experiment.loss_fn(state["params"], jax.random.PRNGKey(1), *batch))
    result = train.train(config, workdir)
    return config, workdir, experiment, batch, before, result


def test_training_decreases_nll_and_samples(smoke_run):
    config, workdir, experiment, batch, before, result = smoke_run
    _, _, params, step = train.restore_run("experiments/configs/digits_tarflow.py:smoke", workdir, use_ema=False)
    with pytest.raises(ValueError, match="does not fit|holds"):  # a config of another size refuses the checkpoint
        train.restore_run("experiments/configs/digits_dit.py:smoke", workdir)
    assert step == 60
    after = float(experiment.loss_fn(params, jax.random.PRNGKey(1), *batch))
    assert after < before - 0.1, (before, after)
    lines = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert result["resolutions"]["8"]["num_samples"] == 16 and np.isfinite(result["eval_loss"])
    assert result["sampler"]["plan"] == "sequential"


@pytest.mark.slow  # 10 s of CPU (three scripts in smoke form), over CI's budget
def test_scripts_metrics_and_benchmark(smoke_run, tmp_path):
    _, workdir, *_ = smoke_run

    plan_path, json_path = str(tmp_path / "plan.json"), str(tmp_path / "bench.json")
    spec = "experiments/configs/digits_tarflow.py:smoke"
    plan, metrics = load_script("causal_metrics").main(["--config", spec, "--workdir", workdir, "--plan", plan_path,
                                                 "--num-examples", "64", "--segments", "4"])
    assert len(plan) == len(metrics) == 2 and json.load(open(plan_path))["plan"] == plan
    rows = load_script("benchmark_causal").main(["--config", spec, "--workdir", workdir, "--json", json_path,
                                          "--plan-file", plan_path, "--num-samples", "24", "--batch-size", "16",
                                          "--latency-batch", "4", "--segments", "4", "--tol", "0", "--no-fd"])
    assert [r["plan"] for r in rows] == ["sequential", "jacobi", "gs_jacobi x4", "CRM/IGM plan"]
    assert rows[0]["passes"] == 2 * T and rows[0]["max_abs_diff"] == 0.0
    assert rows[1]["max_abs_diff"] < 1e-4 and rows[2]["max_abs_diff"] < 1e-4  # tol 0: exact inversions
    assert json.load(open(json_path))["rows"][1]["passes"] == rows[1]["passes"]
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        causal_inversion.load_flow(spec, str(tmp_path / "nothing"))
