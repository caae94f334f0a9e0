"""experiments.metrics.flops: model FLOPs read off the jaxpr, against hand counts and XLA's own count on the CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from fastsamplers.experiments.metrics.flops import count_flops


def _struct(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_dense_and_batched_matmul_exact():
    w = jnp.ones((5, 7))
    assert count_flops(lambda x: x @ w, _struct(3, 5)) == 2 * 3 * 5 * 7
    assert count_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), _struct(4, 2, 3), _struct(4, 3, 6)) == \
        2 * 4 * 2 * 3 * 6


def test_conv_exact_with_groups_and_padding():
    conv = nn.Conv(features=8, kernel_size=(3, 3), feature_group_count=2, padding="SAME")
    x = _struct(2, 6, 6, 4)
    params = jax.eval_shape(conv.init, jax.random.key(0), x)
    flops = count_flops(lambda p, x: conv.apply(p, x), params, x)
    # out 2x6x6x8, each output element: (4 / 2 input features) x 3 x 3 window multiply-adds
    assert flops == 2 * (2 * 6 * 6 * 8) * (2 * 3 * 3)


def test_scan_cond_and_nesting():
    w = jnp.ones((4, 4), jnp.float32)

    def body(x, _):
        return jax.checkpoint(lambda y: jnp.tanh(y @ w))(x), None

    scanned = lambda x: jax.lax.scan(body, x, None, length=5)[0]
    assert count_flops(jax.jit(scanned), _struct(2, 4)) == 5 * 2 * 2 * 4 * 4
    branchy = lambda x, p: jax.lax.cond(p, lambda x: x @ w @ w, lambda x: x @ w, x)
    assert count_flops(branchy, _struct(2, 4), jax.ShapeDtypeStruct((), jnp.bool_)) == 2 * (2 * 2 * 4 * 4)
    with pytest.raises(ValueError, match="while_loop"):
        count_flops(lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 3, lambda c: c @ w, x), _struct(2, 4))


def test_close_to_xla_on_a_transformer_block():
    """On the CPU, XLA's cost analysis also counts the element-wise work: the two agree to a few percent on a
    transformer layer, where matrix products dominate."""

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=64)(h, h)
            h = nn.LayerNorm()(x)
            return x + nn.Dense(64)(nn.gelu(nn.Dense(256)(h)))

    block = Block()
    x = _struct(8, 64, 64)
    params = jax.eval_shape(block.init, jax.random.key(0), x)
    apply = lambda p, x: block.apply(p, x)
    ours = count_flops(apply, params, x)
    cost = jax.jit(apply).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert 0.9 < ours / cost["flops"] <= 1.0
