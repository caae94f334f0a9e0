"""The flow-map solver: each step jumps with a learned flow map, x <- f(x, t_i, t_{i+1}) (FreeFlow, Tong et al.
2025; reference sheet section 9). One model call per step: NFE = steps.

The model contract (prediction "flow_map", `models.predictions.FLOW_MAP`): the solver calls model(x, ts) with
ts = jnp.stack([t_i, t_{i+1}]), a (2,) array holding the step's start and end, and the model returns f(x, t_i,
t_{i+1}), the state at t_{i+1} (`models.flow_map.FlowMapModel` adapts a trained `FlowMapFn`). A flow map is no
prediction at (x, t), so it converts to no other kind: `samplers.sample` refuses "flow_map" with any other solver
and this solver with any other prediction, before compute. Unlike the ODE solvers it may start where alpha = 0
(t = 1 on the OT path) and end at sigma = 0: the map never divides by either.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like
from fastsamplers.schedules.processes import Process


@dataclasses.dataclass(frozen=True)
class FlowMap(Solver):
    """x <- f(x, t_i, t_{i+1}) on any grid; exact when the model is the exact flow map (an exact map composes:
    f(f(x, t, u), u, s) = f(x, t, s)), whatever the number of steps.

    Example:
        >>> import jax.numpy as jnp
        >>> from fastsamplers import samplers
        >>> shift = lambda x, ts: x + (ts[1] - ts[0])  # the flow of dx/dt = 1
        >>> x, info = samplers.sample(shift, "flow_map", "ot", jnp.zeros(2), jnp.array([1.0, 0.5, 0.0]),
        ...                           prediction="flow_map")
        >>> x.tolist(), info["nfe"]
        ([-1.0, -1.0], 2)
    """

    name = "flow_map"
    native = "flow_map"

    def check(self) -> None:
        if self.denoise_to_zero:
            raise ValueError("flow_map steps to any time, sigma = 0 included; denoise_to_zero (a call of a "
                             "prediction model at ts[-1]) does not apply: end the grid at t = 0 instead")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        # None for the ODE sweeps (tests/test_order.py, test_coefficients.py, ...): they feed the solvers the
        # oracle's pointwise predictions, which a flow map is not; tests/test_flow_map.py tests it on exact maps.
        return ()

    @property
    def order(self) -> int:
        # No truncation order: the step is the learned map itself; its error is the map's, not the grid's.
        return 1

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple,
             inp: StepInputs) -> tuple[jax.Array, tuple]:
        return cast_like(model(x, jnp.stack([inp.s, inp.t])), x), state
