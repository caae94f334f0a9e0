"""Flow maps: f(x, t, s), the state at time s of the probability-flow ODE started from x at time t.

A flow map network is parametrised as (FreeFlow, Tong et al. 2025; MeanFlow, Geng et al. 2025; reference sheet
section 9)

    f_theta(x, t, s) = x + (s - t) F_theta(x, t, s),

so f(x, t, t) = x exactly whatever the parameters, and F(x, t, t) is the instantaneous velocity dx/dt at (x, t).
F is a two-time network (`MLP` / `UNet` with `second_time=True`, through `conditioning.network_fn`).

The sampler contract (`samplers.sample`, prediction "flow_map", `models.predictions.FLOW_MAP`): the model is called
as model(x, ts[, args]) with ts = jnp.stack([t, s]), the interval's start and end, and returns f(x, t, s), the state
at s; `FlowMapModel` adapts a `FlowMapFn` to it, and `samplers.get_solver("flow_map")` steps x <- f(x, t_i, t_{i+1}).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike, PyTree
from fastsamplers.models.conditioning import NetworkFn


@dataclasses.dataclass(frozen=True)
class FlowMapFn:
    """fn(params, x, t, s, labels=None) = x + (s - t) F(x, t, s): the flow map of a two-time network function
    `network` (a `conditioning.NetworkFn` of a `second_time=True` net). Equal and hashable by value.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fastsamplers import schedules
        >>> from fastsamplers.models import MLP
        >>> from fastsamplers.models.conditioning import network_fn
        >>> net = MLP(hidden=8, depth=1, second_time=True, zero_init_output=False)
        >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), 0.5, 0.5)
        >>> f = FlowMapFn(network_fn(net, schedules.get_process("ot")))
        >>> x = jnp.ones((3, 2))
        >>> bool(jnp.all(f(params, x, 0.7, 0.7) == x))
        True
    """

    network: NetworkFn

    def __post_init__(self) -> None:
        if not getattr(self.network.net, "second_time", False):
            raise ValueError(f"a flow map needs a two-time network (second_time=True); got "
                             f"{type(self.network.net).__name__} without it")
        if self.network.process.t_max > 1.0:
            raise NotImplementedError(f"flow maps are built for processes on [0, 1] (the OT / VP paths); process "
                                      f"{self.network.process.name!r} runs to t = {self.network.process.t_max}, where "
                                      f"the network's time input is log sigma, undefined at the data end s = 0")

    def average_velocity(self, params: PyTree, x: jax.Array, t: ArrayLike, s: ArrayLike,
                         labels: ArrayLike | None = None) -> jax.Array:
        """F(x, t, s), the average velocity (f(x, t, s) - x) / (s - t) over the interval."""
        return self.network(params, x, t, labels, s=s)

    def __call__(self, params: PyTree, x: jax.Array, t: ArrayLike, s: ArrayLike,
                 labels: ArrayLike | None = None) -> jax.Array:
        """f(x, t, s), x's shape and dtype; t and s scalars or (batch,)."""
        step = jnp.asarray(s, jnp.float32) - jnp.asarray(t, jnp.float32)
        step = jnp.reshape(jnp.broadcast_to(step, x.shape[:1]), x.shape[:1] + (1,) * (x.ndim - 1))
        return (x + step.astype(x.dtype) * self.average_velocity(params, x, t, s, labels)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class FlowMapModel:
    """A `FlowMapFn` as the samplers call it (prediction "flow_map"): model(x, ts, params) = f(x, ts[0], ts[1]),
    or model(x, ts, (params, labels)) when `conditional`. Equal and hashable by value: two checkpoints of one
    architecture share the compiled sampler (their parameters are `args`)."""

    fn: FlowMapFn
    conditional: bool = False

    def __call__(self, x: jax.Array, ts: jax.Array, args: PyTree) -> jax.Array:
        params, labels = args if self.conditional else (args, None)
        return self.fn(params, x, ts[0], ts[1], labels)
