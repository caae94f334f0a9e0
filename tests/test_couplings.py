"""Minibatch couplings: exactness of OT, agreement of the two solvers, Sinkhorn limits, shapes, jit/vmap, sharding."""

import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.experiments.train import couplings

KEY = jax.random.PRNGKey(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pair_cost(x_noise, x_data):
    """Mean squared distance of the pairs (row i with row i)."""
    diff = np.asarray(x_noise, np.float64) - np.asarray(x_data, np.float64)
    return float(np.mean(np.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1)))


def batches(seed, n, shape=(2,), dtype=np.float64):
    """Noise N(0, I) and "data" N(1, 0.25 I), drawn with numpy (no compilation per shape)."""
    rng = np.random.default_rng(seed)
    x_noise = rng.standard_normal((n,) + shape).astype(dtype)
    x_data = (1.0 + 0.5 * rng.standard_normal((n,) + shape)).astype(dtype)
    return jnp.asarray(x_noise), jnp.asarray(x_data)


def brute_force_cost(x_noise, x_data):
    x_noise, x_data = np.asarray(x_noise), np.asarray(x_data)  # numpy indexing: no device op per permutation
    n = x_noise.shape[0]
    return min(pair_cost(x_noise, x_data[np.array(perm)]) for perm in itertools.permutations(range(n)))


@pytest.mark.parametrize("solver", couplings.OT_SOLVERS)
def test_ot_matches_brute_force_and_beats_independent(solver):
    coupling = couplings.get_coupling("ot", solver=solver)
    for seed in range(3):
        x_noise, x_data = batches(seed, 6, (3,))
        out_noise, out_data = coupling(KEY, x_noise, x_data)
        np.testing.assert_array_equal(out_noise, x_noise)
        # x_data is permuted, not altered.
        np.testing.assert_array_equal(np.sort(np.asarray(out_data), axis=0), np.sort(np.asarray(x_data), axis=0))
        cost = pair_cost(out_noise, out_data)
        assert cost == pytest.approx(brute_force_cost(x_noise, x_data), rel=1e-12)
        assert cost <= pair_cost(*couplings.get_coupling("independent")(KEY, x_noise, x_data))


def test_optax_and_scipy_solvers_agree():
    # One shape (one compilation of the Hungarian loop), several random problems.
    for seed in range(4):
        x_noise, x_data = batches(seed, 32, (3,))
        outs = [couplings.ot(KEY, x_noise, x_data, solver=solver)[1] for solver in couplings.OT_SOLVERS]
        assert pair_cost(x_noise, outs[0]) == pytest.approx(pair_cost(x_noise, outs[1]), rel=1e-10)
        for out in outs:  # a permutation of the data rows
            np.testing.assert_array_equal(np.sort(np.asarray(out), axis=0), np.sort(np.asarray(x_data), axis=0))


@pytest.mark.parametrize("dim", [2, 16])
def test_warm_started_assignment_is_exact_and_its_reduced_cost_is_tight(dim):
    # The Sinkhorn warm start only shifts rows and columns: the same optimal cost as the plain solve, every time.
    for seed in range(4):
        x_noise, x_data = batches(seed, 96, (dim,))
        cost = np.asarray(couplings.squared_distances(x_noise, x_data), np.float64)
        plain = couplings._linear_sum_assignment(cost, 0)
        for warm_start in (1, 30, 200):
            warm = couplings._linear_sum_assignment(cost, warm_start)
            assert cost[np.arange(96), warm].sum() == pytest.approx(cost[np.arange(96), plain].sum(), rel=1e-12)
        # The potentials are what make the warm start fast: on the optimal assignment the reduced cost is within a
        # few epsilon of 0 (entropic potentials, epsilon log n), against about 2 for an average entry.
        reduced = couplings._sinkhorn_reduced_cost(cost, 200)
        epsilon = couplings.WARM_START_EPSILON * cost.mean()
        assert reduced[np.arange(96), plain].mean() < min(epsilon * np.log(96), 0.2 * reduced.mean())
        np.testing.assert_allclose(reduced - cost, (reduced - cost)[:, :1] + (reduced - cost)[:1, :]
                                   - (reduced - cost)[0, 0], atol=1e-8 * np.abs(cost).max())


def test_ot_warm_start_options():
    x_noise, x_data = batches(5, 24)
    outs = [couplings.get_coupling("ot", warm_start=w)(KEY, x_noise, x_data)[1] for w in (0, 5)]
    assert pair_cost(x_noise, outs[0]) == pytest.approx(pair_cost(x_noise, outs[1]), rel=1e-12)
    with pytest.raises(ValueError, match="needs solver='scipy'"):
        couplings.get_coupling("ot", solver="optax", warm_start=10)
    with pytest.raises(ValueError, match="integer >= 0"):
        couplings.get_coupling("ot", warm_start=-1)
    couplings.get_coupling("ot", solver="optax", warm_start=0)  # explicit "off" is fine for either solver


def test_inverse_cdf_draw_frequencies():
    logits = jnp.log(jnp.array([[0.5, 0.0, 0.3, 0.2], [0.1, 0.1, 0.0, 0.8]]))  # log 0 = -inf: never drawn
    n = 200_000
    many = np.asarray(couplings._inverse_cdf_draw(KEY, logits[0], (n,)))  # many draws from one row
    per_row = np.asarray(couplings._inverse_cdf_draw(KEY, jnp.repeat(logits, n // 2, axis=0), (n,)))  # one a row
    for draws, probs in ((many, np.exp(logits[0])), (per_row[: n // 2], np.exp(logits[0])),
                         (per_row[n // 2:], np.exp(logits[1]))):
        freq = np.bincount(draws, minlength=4) / draws.size
        assert np.all(freq[probs == 0] == 0)
        # 5 standard errors of a binomial proportion.
        np.testing.assert_allclose(freq, probs, atol=5 * np.sqrt(0.25 / draws.size))


@pytest.mark.parametrize("lse_mode", [False, True])
def test_sinkhorn_plan_matches_otts_pointcloud_plan(lse_mode):
    # The row/column shifts and the fixed-kernel geometry leave ott's plan unchanged (up to the tolerance).
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    x_noise, x_data = batches(6, 48)
    cost = couplings.squared_distances(x_noise, x_data)
    epsilon = 0.05 * float(jnp.mean(cost))
    ours = np.exp(np.asarray(couplings.sinkhorn_log_plan(cost, epsilon, threshold=1e-6, lse_mode=lse_mode)))
    with jax.numpy_rank_promotion("allow"):
        geom = pointcloud.PointCloud(x_noise, x_data, epsilon=epsilon)
        reference = np.asarray(ott_sinkhorn.Sinkhorn(threshold=1e-6)(linear_problem.LinearProblem(geom)).matrix)
    assert np.abs(ours - reference).sum() < 1e-4
    np.testing.assert_allclose(ours.sum(axis=1), 1 / 48, rtol=1e-4)


def test_sinkhorn_failure_gives_nan_pairs_not_wrong_ones():
    # Two far clusters with unequal counts: 16 of the 64 noise draws near 0 must travel to data near 100. At a
    # small epsilon the kernel updates underflow and stall: the pairs must be NaN, not a plan with wrong marginals.
    rng = np.random.default_rng(0)
    x_noise = np.concatenate([rng.normal(0, 1, (32, 2)), rng.normal(100, 1, (32, 2))]).astype(np.float32)
    x_data = np.concatenate([rng.normal(0, 1, (48, 2)), rng.normal(100, 1, (16, 2))]).astype(np.float32)
    stalled = couplings.sinkhorn(KEY, x_noise, x_data, epsilon=0.01, max_iterations=200)
    assert np.all(np.isnan(np.asarray(stalled[1])))
    robust = couplings.sinkhorn(KEY, x_noise, x_data, epsilon=0.01, max_iterations=200, lse_mode=True)
    assert np.all(np.isfinite(np.asarray(robust[1])))
    # Moving 16 / 64 of the mass a distance of about 100 * sqrt(2): mean pair cost about 5000, give or take the
    # binomial spread of drawing 64 pairs (the stalled plan kept every pair local: a cost of about 4).
    assert 2500 < pair_cost(*robust) < 9000


@pytest.fixture(scope="module")
def sinkhorn_draws():
    """For each sampling mode and epsilon: the inputs and 8 draws of pairs, as lists (noise draws, data draws)."""
    x_noise, x_data = batches(0, 64)
    draws = {}
    for sampling in couplings.SINKHORN_SAMPLING:
        for epsilon in (1e-2, 100.0):  # epsilon is traced: one compilation per sampling mode
            coupling = couplings.get_coupling("sinkhorn", epsilon=epsilon, sampling=sampling)
            pairs = [coupling(key, x_noise, x_data) for key in jax.random.split(KEY, 8)]
            draws[sampling, epsilon] = [np.stack([np.asarray(p[k]) for p in pairs]) for k in (0, 1)]
    return x_noise, x_data, draws


def test_sinkhorn_interpolates_between_exact_ot_and_independent(sinkhorn_draws):
    x_noise, x_data, draws = sinkhorn_draws
    exact = pair_cost(*couplings.ot(KEY, x_noise, x_data))
    all_pairs = float(np.mean(couplings.squared_distances(x_noise, x_data)))  # the independent coupling's mean
    assert exact < 0.8 * all_pairs  # the two limits are far apart, so the checks below discriminate
    for sampling in couplings.SINKHORN_SAMPLING:
        sharp, blurred = ([pair_cost(a, b) for a, b in zip(*draws[sampling, eps])] for eps in (1e-2, 100.0))
        assert np.mean(sharp) == pytest.approx(exact, rel=0.05)
        assert np.mean(blurred) == pytest.approx(all_pairs, rel=0.1)


def test_sinkhorn_sampling_modes(sinkhorn_draws):
    x_noise, x_data, draws = sinkhorn_draws
    data_rows = {tuple(row) for row in np.asarray(x_data)}
    noise_rows = [tuple(row) for row in np.asarray(x_noise)]
    for out_noise in draws["conditional", 100.0][0]:
        np.testing.assert_array_equal(out_noise, x_noise)  # every noise row exactly once, in order
    for out_noise, out_data in zip(*draws["joint", 100.0]):
        drawn = [noise_rows.index(tuple(row)) for row in np.asarray(out_noise)]  # drawn from the batch ...
        assert len(set(drawn)) < len(drawn)  # ... with replacement: at this epsilon some noise rows repeat
    for sampling in couplings.SINKHORN_SAMPLING:
        assert all(tuple(row) in data_rows for row in np.asarray(draws[sampling, 100.0][1]).reshape(-1, 2))


def test_sinkhorn_absolute_epsilon_equals_relative_times_mean_cost():
    x_noise, x_data = batches(0, 64)  # the fixture's inputs: "mean" / "conditional" is compiled already
    mean_cost = float(np.mean(couplings.squared_distances(x_noise, x_data)))
    relative = couplings.sinkhorn(KEY, x_noise, x_data, epsilon=0.05, sampling="conditional")
    absolute = couplings.sinkhorn(KEY, x_noise, x_data, epsilon=0.05 * mean_cost, relative_epsilon=None,
                                  sampling="conditional")
    np.testing.assert_array_equal(relative[1], absolute[1])


# Sinkhorn in "joint" mode only: it gathers both sides, and each Sinkhorn compilation takes seconds.
CASES = [("independent", {}), ("ot", {"solver": "scipy"}), ("ot", {"solver": "optax"}),
         ("sinkhorn", {"sampling": "joint"})]


@pytest.mark.parametrize("name, options", CASES)
def test_image_shapes_dtypes_and_jit(name, options):
    coupling = couplings.get_coupling(name, **options)
    x_noise, x_data = batches(2, 8, (4, 4, 3), np.float32)
    jitted = jax.jit(coupling)(KEY, x_noise, x_data)
    for out, ref in zip(jitted, (x_noise, x_data)):
        assert out.shape == ref.shape and out.dtype == jnp.float32
    if name != "sinkhorn":  # sinkhorn's body is jitted inside anyway; skipping it saves a slow compilation
        for a, b in zip(coupling(KEY, x_noise, x_data), jitted):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("solver", ["scipy"])  # the host callback's batching rule; optax's Hungarian is pure JAX
def test_ot_under_vmap(solver):
    x_noise, x_data = batches(3, 10)
    stacked_noise, stacked_data = jnp.stack([x_noise, x_data]), jnp.stack([x_data, x_noise])
    coupled = jax.jit(jax.vmap(couplings.get_coupling("ot", solver=solver), in_axes=(None, 0, 0)))
    out_noise, out_data = coupled(KEY, stacked_noise, stacked_data)
    for k in range(2):
        single = couplings.ot(KEY, stacked_noise[k], stacked_data[k], solver=solver)
        np.testing.assert_array_equal(out_data[k], single[1])


def test_gradients_flow_through_the_pairs_not_the_solver():
    # The host callback has no derivative; the coupling must still be differentiable in its inputs (via the gather).
    x_noise, x_data = batches(4, 6)
    loss = lambda a, b: jnp.sum((lambda pair: (pair[0] - pair[1]) ** 2)(couplings.ot(KEY, a, b)))
    grad_noise, grad_data = jax.grad(loss, argnums=(0, 1))(x_noise, x_data)
    matched = couplings.ot(KEY, x_noise, x_data)[1]
    np.testing.assert_allclose(grad_noise, 2.0 * (x_noise - matched), rtol=1e-12)
    assert grad_data.shape == x_data.shape


def test_clear_errors():
    with pytest.raises(ValueError, match=r"valid names: \['independent', 'ot', 'sinkhorn'\]"):
        couplings.get_coupling("emd")
    with pytest.raises(ValueError, match="solver"):
        couplings.get_coupling("ot", epsilon=0.1)
    with pytest.raises(ValueError, match="scipy, optax"):
        couplings.get_coupling("ot", solver="lapjv")
    with pytest.raises(ValueError, match="joint, conditional"):
        couplings.get_coupling("sinkhorn", sampling="rows")
    with pytest.raises(ValueError, match="epsilon"):
        couplings.get_coupling("sinkhorn", epsilon=0.0)
    with pytest.raises(ValueError, match="lse_mode|option"):
        couplings.get_coupling("sinkhorn", lse=True)
    with pytest.raises(ValueError, match="mean, std, None"):
        couplings.get_coupling("sinkhorn", relative_epsilon="max")
    with pytest.raises(ValueError, match="one shape"):
        couplings.ot(KEY, jnp.zeros((4, 2)), jnp.zeros((5, 2)))


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    from fastsamplers.experiments.train import couplings
    assert jax.device_count() == 4
    x_noise = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    x_data = 1.0 + jax.random.normal(jax.random.PRNGKey(1), (16, 2))
    reference = couplings.ot(None, x_noise, x_data, solver="scipy")[1]
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(axis_type,))
        sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (x_noise, x_data)]
        out = jax.jit(couplings.get_coupling("ot", solver="scipy"))(None, *sharded)
        np.testing.assert_allclose(out[1], reference, rtol=1e-6)
        if axis_type == AxisType.Explicit:  # the coupling gathers by itself and restores the inputs' sharding
            assert out[1].sharding.is_equivalent_to(sharded[1].sharding, 2)
    print("sharded ok")
""")


def test_couplings_run_under_jit_with_inputs_sharded_over_devices(device_flags):
    env = dict(os.environ, XLA_FLAGS=device_flags(4), JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", SHARDED], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
