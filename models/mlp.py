"""A small MLP with a sinusoidal (or concatenated) time input, for low-dimensional data (2D sets, the oracle's dims)."""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike

ACTIVATIONS = Registry("activation", {"silu": nn.silu, "selu": nn.selu, "relu": nn.relu, "gelu": nn.gelu,
                                      "tanh": jnp.tanh})
# How the MLP sees t: a sinusoidal embedding added to the hidden units, or t concatenated to x.
TIME_INPUTS = Registry.of_names("time_input", ("sinusoidal", "concat"), ordered=True)


def _torch_frequencies(half, shift, max_period):
    # torch's float32 exponents, exp'ed in float64 and rounded once (XLA's float32 exp is an ulp off on some)
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half - shift)
    return jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))


def _score_sde_frequencies(half, shift, max_period):
    # score_sde's layers.get_timestep_embedding, on XLA's float32 exp as score_sde ran
    return jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_period) / (half - shift)))


def _edm_frequencies(half, shift, max_period):
    # EDM's PositionalEmbedding (training/networks.py:201-203): float32(1 / P) ** float32(i / (half - endpoint))
    exponent = np.arange(half, dtype=np.float32) / np.float32(half - shift)
    return jnp.asarray((np.float64(np.float32(1.0 / max_period)) ** exponent.astype(np.float64)).astype(np.float32))


# How the float32 frequencies exp(-log(max_period) i / (half - shift)) are formed, as each reference forms them, so
# that t ~ 1000 does not turn their ulps into 1e-5 errors against it: name -> fn(half, shift, max_period).
FREQUENCIES = Registry("frequency rule", {"torch": _torch_frequencies, "score_sde": _score_sde_frequencies,
                                          "edm": _edm_frequencies}, ordered=True,
                       unknown="unknown {kind} {name!r}; valid: {valid}")


def time_embedding(t: ArrayLike, dim: int, max_period: float = 10_000.0, *, flip_sin_to_cos: bool = False,
                   freq_shift: float = 0.0, frequencies: str = "torch") -> jax.Array:
    """Sinusoidal embedding of t (any shape) into (..., dim) features (Vaswani et al. 2017; DDPM): [sin, cos] of
    t * exp(-log(max_period) i / (dim // 2 - freq_shift)), i < dim // 2, zero-padded when dim is odd.

    `flip_sin_to_cos` gives [cos, sin] (DiT's TimestepEmbedder, DiT/models.py:41-56; diffusers' flip_sin_to_cos);
    `freq_shift` is diffusers' downscale_freq_shift (1 in DiTTransformer2DModel's time projection; EDM's endpoint);
    `frequencies` names how the float32 frequencies are formed (`FREQUENCIES`: "torch", diffusers' and DiT's and
    ours; "score_sde"; "edm").
    """
    half = dim // 2
    freqs = FREQUENCIES.lookup(frequencies)(half, freq_shift, max_period)
    t = jnp.asarray(t, jnp.float32)
    args = t[..., None] * jnp.reshape(freqs, (1,) * t.ndim + (half,))
    pair = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(pair, axis=-1)
    return jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, dim - 2 * half)])


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name`; an unknown name raises ValueError listing the valid ones."""
    return ACTIVATIONS.lookup(name)


class MLP(nn.Module):
    """x (..., d) and t (scalar or broadcastable to x.shape[:-1]) -> prediction (..., d).

    time_input="sinusoidal": t * `time_scale` (1000 for t in [0, 1], so that the embedding resolves small steps)
    goes through a sinusoidal embedding of width `embed_dim` and a 2-layer MLP, and is added before each of the
    `depth` hidden layers.

    time_input="concat": exactly TorchCFM's `MLP(d, w=hidden, time_varying=True)` (Tong et al. 2024):
    concat([x, t]) -> `depth` x [Dense(hidden) -> activation] -> Dense(d); `time_scale` and `embed_dim` are unused
    (t enters as given). Use activation="selu", hidden=64, depth=3 for TorchCFM's defaults, and
    zero_init_output=False for its (default, non-zero) initialisation of the last layer.

    `zero_init_output` zero-initialises the last layer (an untrained net predicts 0), in both modes.

    `second_time=True` makes it a function of two times, called as (x, t, s) (a flow map's network F(x, t, s),
    `models.flow_map`): the interval d = t - s enters through layers of its own, named "interval_*", whose last one
    is zero-initialised, added to what t feeds (the time embedding; with "concat", the first layer's pre-activation,
    as if d were one more concatenated input). Every other parameter keeps its name and shape, so a one-time net's
    parameters (a teacher's) are a sub-tree of it, and the two-time net started from them with its zero-initialised
    interval layers computes F(x, t, s) = the one-time net at (x, t) for every s.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = MLP(hidden=8, depth=1, time_input="concat")
        >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((3, 2)), 0.5)
        >>> net.apply(params, jnp.ones((3, 2)), jnp.full((3,), 0.5)).shape
        (3, 2)
    """

    hidden: int = 256
    depth: int = 3
    embed_dim: int = 64
    time_scale: float = 1000.0
    activation: str = "silu"
    time_input: str = "sinusoidal"
    zero_init_output: bool = True
    second_time: bool = False

    def __post_init__(self) -> None:
        # Wrong names fail when the net is built, not at its first call inside a jitted training step.
        get_activation(self.activation)
        TIME_INPUTS.check(self.time_input)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: ArrayLike, s: ArrayLike | None = None) -> jax.Array:
        act = get_activation(self.activation)
        out_init = nn.initializers.zeros if self.zero_init_output else nn.linear.default_kernel_init
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:-1])
        interval = interval_input(self, t, s)
        if self.time_input == "concat":
            h = jnp.concatenate([x, t[..., None].astype(x.dtype)], axis=-1)
            for i in range(self.depth):
                h = nn.Dense(self.hidden)(h)
                if i == 0 and interval is not None:  # d as one more input column, its weights zero at init
                    h = h + nn.Dense(self.hidden, use_bias=False, kernel_init=nn.initializers.zeros,
                                     name="interval_in")(interval[..., None].astype(x.dtype))
                h = act(h)
            return nn.Dense(x.shape[-1], kernel_init=out_init)(h).astype(x.dtype)
        emb = time_embedding(self.time_scale * t, self.embed_dim)
        emb = nn.Dense(self.hidden)(act(nn.Dense(self.hidden)(emb)))
        if interval is not None:
            emb = emb + interval_embedding(self, interval, self.embed_dim, self.hidden, self.time_scale, act)
        h = nn.Dense(self.hidden)(x)
        for _ in range(self.depth):
            h = act(h + emb)
            h = nn.Dense(self.hidden)(h)
        return nn.Dense(x.shape[-1], kernel_init=out_init)(act(h)).astype(x.dtype)


def interval_input(module: nn.Module, t: jax.Array, s: ArrayLike | None) -> jax.Array | None:
    """t - s for a two-time network (`second_time`), None for a one-time one; a mismatch is a ValueError."""
    name = type(module).__name__
    if not module.second_time:
        if s is not None:
            raise ValueError(f"{name}: a second time s was given to a one-time network (second_time=False)")
        return None
    if s is None:
        raise ValueError(f"{name}(second_time=True) is a function of two times: call it as (x, t, s)")
    return t - jnp.broadcast_to(jnp.asarray(s, jnp.float32), t.shape)


def interval_embedding(module: nn.Module, interval: jax.Array, features: int, width: int, time_scale: float,
                       act: Callable[[jax.Array], jax.Array] = nn.silu) -> jax.Array:
    """The embedding of a flow map's interval d = t - s (`second_time` networks): sinusoidal features of
    time_scale * d, a Dense, `act`, and a zero-initialised Dense to `width`, so that at initialisation the two-time
    network is its one-time network (MeanFlow, Geng et al. 2025, and shortcut models embed (t, t - s) the same way).
    `module` is the calling compact module, whose parameters "interval_embed_0/1" this creates."""
    emb = time_embedding(time_scale * interval, features)
    emb = nn.Dense(width, name="interval_embed_0", parent=module)(emb)
    return nn.Dense(width, kernel_init=nn.initializers.zeros, name="interval_embed_1", parent=module)(act(emb))
