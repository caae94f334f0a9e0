"""Resampling: ancestor counts follow the weights (systematic exactly within one copy, multinomial in law), the ESS
formula, populations resampled within themselves, one sentence for an unknown method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.samplers import resampling


def test_ess_bounds_and_shift_invariance():
    log_w = jnp.log(jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]]) + 1e-300)
    got = resampling.ess(log_w)
    np.testing.assert_allclose(got, [4.0, 1.0, 16.0 / 6.0], rtol=1e-12)
    np.testing.assert_allclose(resampling.ess(log_w + 123.0), got, rtol=1e-12)


def test_systematic_copies_each_particle_floor_or_ceil_of_k_w():
    k = 50
    w = jax.random.dirichlet(jax.random.PRNGKey(0), jnp.ones(k))
    for seed in range(20):
        index = resampling.resample(jax.random.PRNGKey(seed), jnp.log(w), "systematic")
        counts = np.bincount(np.asarray(index), minlength=k)
        assert np.all(counts >= np.floor(k * np.asarray(w)) - 1e-9)
        assert np.all(counts <= np.ceil(k * np.asarray(w)) + 1e-9)
        assert np.all(np.diff(np.asarray(index)) >= 0)


def test_multinomial_counts_follow_the_weights():
    # mean counts over R repetitions: each count is binomial(K, w), so the mean's standard error is
    # sqrt(K w (1 - w) / R); 5 of them bound it
    k, reps = 8, 4000
    w = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    keys = jax.random.split(jax.random.PRNGKey(1), reps)
    index = jax.vmap(lambda key: resampling.resample(key, jnp.log(w), "multinomial"))(keys)
    counts = np.stack([np.bincount(np.asarray(row), minlength=k) for row in index]).mean(0)
    np.testing.assert_array_less(np.abs(counts - k * w), 5 * np.sqrt(k * w * (1 - w) / reps))


def test_populations_are_resampled_within_themselves():
    log_w = jnp.log(jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) + 1e-300)
    index = resampling.resample(jax.random.PRNGKey(0), log_w)
    np.testing.assert_array_equal(index, [[1, 1, 1], [0, 0, 0]])
    x = jnp.arange(6.0)[:, None]
    np.testing.assert_array_equal(resampling.gather(x, index)[:, 0], [1, 1, 1, 3, 3, 3])


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="multinomial, systematic|'multinomial', 'systematic'"):
        resampling.resample(jax.random.PRNGKey(0), jnp.zeros(3), "stratified")


def test_small_and_large_populations_find_the_same_ancestors():
    """Populations up to 64 count comparisons, larger ones binary-search the cdf: the same ancestors."""
    log_w = jax.random.normal(jax.random.PRNGKey(2), (5, 64))
    u = jnp.sort(jax.random.uniform(jax.random.PRNGKey(3), (5, 64)), axis=-1)
    dense = resampling._from_uniforms(log_w, u)
    cdf = jnp.cumsum(jax.nn.softmax(log_w, axis=-1), axis=-1)
    cdf = cdf / cdf[:, -1:]
    searched = jnp.stack([jnp.searchsorted(c, v) for c, v in zip(cdf, u)])
    np.testing.assert_array_equal(dense, jnp.minimum(searched, 63))
