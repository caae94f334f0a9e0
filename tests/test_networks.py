"""Networks: shapes and dtypes, zero output at init, gradient through the zero-init layer, batch independence,
resolution independence, TorchCFM's MLP, and the registry's errors. Tiny configs: the file runs in seconds."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.models import MLP, NETWORKS, DiT, UNet, get_network
from fastsamplers.models.dit import sincos_1d, sincos_2d
from fastsamplers.models.mlp import ACTIVATIONS, get_activation

# name -> (network, per-example shape); float32 throughout (the conftest turns x64 on).
CASES = {
    "mlp": (MLP(hidden=32, depth=2, embed_dim=16), (3,)),
    "mlp_concat": (MLP(hidden=16, depth=3, time_input="concat", activation="selu"), (3,)),
    "unet": (UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2), (16, 16, 1)),
    "dit": (DiT(patch_size=2, hidden=32, depth=2, num_heads=2), (16, 16, 1)),
}
BATCH = 3


def _key(seed):
    # "rbg" keys: XLA on CPU compiles a threefry draw per parameter slowly (seconds for a UNet); rbg is fast.
    return jax.random.key(seed, impl="rbg")


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.cache
def _setup(name):
    """(net, x, params, forward_backward) per case, built once: compiling, not computing, is what costs here, so
    every test of a case shares one compiled forward-backward pass (same shapes) and reads the output from it."""
    net, shape = CASES[name]
    x = _normal(0, (BATCH, *shape))
    params = jax.jit(net.init)(_key(0), x, jnp.float32(0.5))

    @jax.jit
    def forward_backward(params, x, t, target):
        """The output, and the gradient of the mean squared error to `target`."""

        def loss(p):
            y = net.apply(p, x, t)
            return jnp.mean((y - target) ** 2), y

        (_, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return y, grads

    return net, x, params, forward_backward


def _perturbed(params, seed=1, scale=0.05):
    """All parameters moved off their init (so zero-init layers and gates are live)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: (np.asarray(a) + scale * rng.standard_normal(a.shape)).astype(a.dtype), params)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_dtype_and_zero_at_init(name):
    net, x, params, forward_backward = _setup(name)
    t = jnp.linspace(-2.0, 2.0, BATCH, dtype=jnp.float32)
    y, _ = forward_backward(params, x, t, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, 0.0)
    # A scalar t broadcasts over the batch (run for real in the DiT resolution test).
    y = jax.eval_shape(net.apply, params, x, jnp.float32(0.3))
    assert y.shape == x.shape and y.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_the_zero_init_layer_and_every_parameter(name):
    net, x, params, forward_backward = _setup(name)
    t = jnp.full((BATCH,), 0.7, jnp.float32)
    target = _normal(5, x.shape)
    # One SGD step from init: the zero-init output layer gets a gradient, so the output is no longer zero.
    _, grads = forward_backward(params, x, t, target)
    params = jax.tree.map(lambda a, g: np.asarray(a) - 0.1 * np.asarray(g), params, grads)
    y, _ = forward_backward(params, x, t, target)
    y = np.asarray(y)
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 1e-4
    assert np.mean((y - target) ** 2) < np.mean(np.square(target))
    # Away from init (gates and zero-init layers live), every parameter gets a gradient: none is dead.
    _, grads = forward_backward(_perturbed(params), x, t, target)
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not np.any(np.asarray(g))]
    assert not dead


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_elements_are_independent(name):
    net, x, params, forward_backward = _setup(name)
    params = _perturbed(params)
    t = jnp.array([0.2, 0.5, 0.9], jnp.float32)
    y, _ = forward_backward(params, x, t, x)
    x2 = x.at[1].set(10.0 * x[1] + 1.0)
    y2, _ = forward_backward(params, x2, t.at[1].set(0.1), x)
    np.testing.assert_allclose(y2[0], y[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y2[2], y[2], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(y2[1] - y[1]))) > 1e-3


def test_dit_same_params_at_16_and_32_px():
    net, x16, params, _ = _setup("dit")
    params = _perturbed(params)
    for x in (_normal(1, (BATCH, 32, 32, 1)), _normal(2, (BATCH, 8, 16, 1))):
        y = jax.jit(net.apply)(params, x, jnp.float32(0.5))
        assert y.shape == x.shape and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


def test_unet_same_params_at_two_sizes():
    # Initialised at 16 px: the 8x8 level has attention; at 32 px that level is 16x16 and skips it. The params fit
    # both (eval_shape traces the whole net against them; the 16 px run is in the tests above).
    net, x16, params, _ = _setup("unet")
    assert "down_1_attn_0" in params["params"] and "down_0_attn_0" not in params["params"]
    y = jax.eval_shape(net.apply, params, jnp.zeros((BATCH, 32, 32, 1), jnp.float32), jnp.float32(0.5))
    assert y.shape == (BATCH, 32, 32, 1) and y.dtype == jnp.float32


def test_dit_positional_embedding_is_a_function_of_the_absolute_patch_index():
    dim = 8
    small, large, rows_cols = jax.jit(  # one compilation instead of one per eager op
        lambda: (sincos_2d(2, 3, dim), sincos_2d(4, 6, dim), sincos_1d(jnp.array([1, 2]), dim // 2)))()
    assert small.shape == (6, dim) and large.shape == (24, dim)
    # Patch (row 1, col 2) is token 1 * 3 + 2 on the 2x3 grid and 1 * 6 + 2 on the 4x6 grid: same embedding.
    np.testing.assert_allclose(small[5], large[8])
    np.testing.assert_allclose(small[5], jnp.concatenate([rows_cols[0], rows_cols[1]]))  # rows, then columns


def test_mlp_concat_is_torchcfm_mlp():
    # TorchCFM MLP(2, w=64, time_varying=True): Linear(3, 64), SELU, Linear(64, 64), SELU, Linear(64, 64), SELU,
    # Linear(64, 2).
    net = MLP(hidden=64, depth=3, time_input="concat", activation="selu", zero_init_output=False)
    params = jax.jit(net.init)(_key(0), jnp.zeros((4, 2), jnp.float32), 0.5)
    shapes = [p["kernel"].shape for p in params["params"].values()]
    assert shapes == [(3, 64), (64, 64), (64, 64), (64, 2)]
    assert sum(a.size for a in jax.tree.leaves(params)) == (3 * 64 + 64) + (64 * 64 + 64) * 2 + (64 * 2 + 2) == 8706
    # The network is selu(selu(selu([x, t] W0 + b0) W1 + b1) W2 + b2) W3 + b3, t entering unscaled.
    x = _normal(1, (4, 2))
    t = jnp.array([0.0, 0.25, 0.5, 1.0], jnp.float32)
    h = jnp.concatenate([x, t[:, None]], axis=-1)
    for layer in params["params"].values():
        h = h @ layer["kernel"] + layer["bias"][None, :]
        if layer["kernel"].shape[1] == 64:
            h = jax.nn.selu(h)
    np.testing.assert_allclose(jax.jit(net.apply)(params, x, t), h, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(h))) > 0.0  # default (non-zero) output init when asked


def test_mlp_default_architecture_unchanged():
    net = MLP(hidden=32, depth=2, embed_dim=16)
    params = jax.eval_shape(net.init, _key(0), jnp.zeros((1, 5), jnp.float32), 0.5)["params"]
    # Same names and shapes as before `activation` / `time_input` existed (checkpoints stay loadable).
    assert {name: p["kernel"].shape for name, p in params.items()} == {
        "Dense_0": (32, 32), "Dense_1": (16, 32), "Dense_2": (5, 32), "Dense_3": (32, 32), "Dense_4": (32, 32),
        "Dense_5": (32, 5)}


def test_activations_by_name():
    z = jnp.linspace(-3.0, 3.0, 7)
    expected = {"silu": jax.nn.silu(z), "selu": jax.nn.selu(z), "relu": jax.nn.relu(z), "gelu": jax.nn.gelu(z),
                "tanh": jnp.tanh(z)}
    assert sorted(ACTIVATIONS) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(get_activation(name)(z), value)
    # The net uses the one it is given: different activations, different outputs from the same params.
    x = jnp.asarray([[0.5, -1.0, 2.0]], jnp.float32)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(MLP(hidden=8, depth=1, embed_dim=8).init, _key(0), x, 0.5)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), shapes)
    outs = [jax.jit(MLP(hidden=8, depth=1, embed_dim=8, activation=a).apply)(params, x, 0.5) for a in ("silu", "tanh")]
    assert float(jnp.max(jnp.abs(outs[0] - outs[1]))) > 1e-3


def test_mlp_float64_in_float64_out():
    net = MLP(hidden=8, depth=1, embed_dim=8)
    x = jnp.ones((2, 3), jnp.float64)
    assert jax.eval_shape(net.apply, jax.eval_shape(net.init, _key(0), x, 0.5), x, 0.5).dtype == jnp.float64


def test_bad_image_sizes_raise_before_compute():
    x18 = jnp.zeros((1, 18, 18, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"18x18 is not divisible by 4"):
        UNet(channels=8, channel_mult=(1, 2, 2), num_groups=4).init(_key(0), x18, 0.5)
    with pytest.raises(ValueError, match=r"15x16 is not divisible by patch_size=2"):
        DiT(hidden=8, depth=1, num_heads=2).init(_key(0), jnp.zeros((1, 15, 16, 1)), 0.5)
    with pytest.raises(ValueError, match=r"num_groups=3 must divide channels=8"):
        UNet(channels=8, channel_mult=(1,), num_groups=3).init(_key(0), jnp.zeros((1, 4, 4, 1)), 0.5)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"unknown network 'resnet'; valid names: \['dit', 'mlp', 'tarflow', 'unet'\]"):
        get_network("resnet")
    with pytest.raises(ValueError, match=r"no option\(s\) \['chanels'\].*'channel_mult', 'channels'"):
        get_network("unet", chanels=16)
    # Bad option values fail when the net is built, before any call.
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; valid names: \['gelu', 'relu'"):
        get_network("mlp", activation="swish")
    with pytest.raises(ValueError, match=r"unknown time_input 'fourier'; valid names: \['sinusoidal', 'concat'\]"):
        MLP(time_input="fourier")
    with pytest.raises(ValueError, match=r"num_heads=3 must divide hidden=32"):
        DiT(hidden=32, num_heads=3)


def test_get_network_builds_the_registered_class():
    assert set(NETWORKS) == {"mlp", "unet", "dit"}
    net = get_network("dit", hidden=64, depth=2)
    assert isinstance(net, DiT) and net.hidden == 64 and net.depth == 2
    message = str(pytest.raises(ValueError, get_network, "mlp", bogus=1).value)
    assert "'time_input'" in message and "'parent'" not in message and "'name'" not in message


# Class conditioning: tiny 8 px nets, one forward each.
CONDITIONAL = {
    "unet": UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, num_groups=4,
                 attention_resolutions=(4,)),
    "dit": DiT(patch_size=2, hidden=16, depth=1, num_heads=2),
}


# the UNet case (12 s of CPU) in the slow set for CI's budget; the DiT case keeps the default suite's check
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "unet" else n
                                  for n in sorted(CONDITIONAL)])
def test_class_conditioning_adds_only_a_label_table_to_the_time_embedding(name):
    plain = CONDITIONAL[name]
    x, t = _normal(3, (BATCH, 8, 8, 1)), jnp.array([0.1, 0.5, 0.9], jnp.float32)
    params = jax.jit(plain.init)(_key(0), x, t)
    # num_classes=0 is the default: the same tree and values, and it refuses labels.
    same = jax.jit(dataclasses.replace(plain, num_classes=0).init)(_key(0), x, t)
    assert jax.tree.structure(same) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, same, params)
    with pytest.raises(ValueError, match="unconditional"):
        plain.apply(params, x, t, jnp.zeros(BATCH, jnp.int32))

    cond = dataclasses.replace(plain, num_classes=10)
    cond_params = jax.jit(cond.init)(_key(0), x, t)
    table = cond_params["params"]["label_embed"]["embedding"]
    assert table.shape[0] == 11  # 10 classes and the null label
    # Every other parameter is the unconditional net's, bit for bit (flax keys parameters by their path).
    rest = {"params": {k: v for k, v in cond_params["params"].items() if k != "label_embed"}}
    jax.tree.map(np.testing.assert_array_equal, rest, params)

    cond_perturbed = _perturbed(cond_params)
    apply = jax.jit(cond.apply)
    labels = jnp.array([3, 3, 3], jnp.int32)
    y3, y7 = apply(cond_perturbed, x, t, labels), apply(cond_perturbed, x, t, labels + 4)
    assert float(jnp.max(jnp.abs(y3 - y7))) > 1e-4  # the output depends on the label
    null = apply(cond_perturbed, x, t, jnp.full((BATCH,), 10, jnp.int32))
    np.testing.assert_array_equal(apply(cond_perturbed, x, t, None), null)  # no labels = the null label
    assert bool(jnp.all(jnp.isfinite(null)))
    # A zero label table is the unconditional net: the embedding is added to the time embedding, nothing else.
    zero = jax.tree.map(lambda a: a, cond_perturbed)
    zero["params"] = dict(zero["params"], label_embed={"embedding": jnp.zeros_like(table)})
    unperturbed_rest = {"params": {k: v for k, v in zero["params"].items() if k != "label_embed"}}
    np.testing.assert_allclose(apply(zero, x, t, labels), jax.jit(plain.apply)(unperturbed_rest, x, t),
                               rtol=1e-6, atol=1e-6)
