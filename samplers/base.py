"""The solver contract: an immutable pytree in the shape of diffrax's solvers.

A solver is a frozen dataclass whose fields are its options, and a pytree (`samplers.pytrees.TracedOptions`): its
numeric options (`traced`: eta, tau, S_churn, ...) are leaves, traced under `jax.jit` and `jax.vmap`, and its
structural options (order, variant, lower_order_final, ...) are static metadata. `samplers.sample` compiles one
program per structure, with the leaves as traced arguments: a sweep over eta is one compilation, or one `jax.vmap`.
Whether a solver is stochastic is static: the rule for `switches` is written on `TracedOptions`. The driver calls

  on_grid(process, ts)          once, on the concrete grid before compute (itself, unless the solver's structure
                                depends on the grid's values: `samplers.restart`);
  coefficients(process, ts)     once per time grid, outside the loop;
  init(x)                       once, for the carried state;
  step(model, process, x, state, inp)
                                once per step, inside one `lax.scan` (via `integrate`), with `inp` a `StepInputs`
                                built by `step_inputs` — the one place the per-step inputs are made.

Metadata, for the driver and the tests: `order` (the method's nominal order: its name in the papers, and the number
of past points a multistep solver keeps), `convergence_order` (what the tests measure with exact starting values;
equal to `order` except where a published method falls short of its name), `stages` (model calls per step), `native`
(the prediction kind the solver consumes: the model's output is converted to it exactly), `evaluates_end` (whether
a step calls the model at its end time, which rules out a final step to sigma = 0), `static_nfe` (whether the model
calls are known from the grid alone), `predictions_per_call` (1; 2 for a solver that consumes a (guided,
unconditional) pair per call, CFG++: the model returns a tuple and the driver converts each member to `native`),
`learned_variance` (whether the model returns 2C channels, [prediction | a learned variance], of which the driver
converts the first half: `samplers.ancestral`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.samplers.pytrees import TracedOptions

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process

Model = Callable[[jax.Array, jax.Array], jax.Array]  # (x, t) -> the solver's native prediction


class StepInputs(NamedTuple):
    """What step i of the scan receives (each field but `noise` has a leading num_steps axis before the scan slices
    it).

    i: the step index; s, t: its start and end times (t < s); last: whether it is the final step;
    coef: the solver's slice of `coefficients(process, ts)` for this step (a pytree);
    noise: the solve's noise source (`samplers.noise.Noise`), None for a deterministic solve.
    """

    i: jax.Array
    s: jax.Array
    t: jax.Array
    last: jax.Array
    coef: Any
    noise: Any = None

    def normal(self, like: jax.Array, stream: int = 0) -> jax.Array:
        """Standard normal noise shaped like `like` for this step; further independent draws in the same step take
        stream = 1, 2, ... (stochastic solvers only: the driver gives them a noise source from `key`)."""
        if self.noise is None:
            raise ValueError("this step draws noise but the solve has no noise source: run stochastic solvers "
                             "through samplers.sample with a key")
        return self.noise.normal(self.i, self.s, self.t, like, stream)


def step_inputs(solver: Solver, process: Process, ts: jax.Array) -> StepInputs:
    """The inputs of every step of `solver` on the grid `ts`, stacked along a leading num_steps axis."""
    num_steps = ts.shape[0] - 1
    index = jnp.arange(num_steps)
    return StepInputs(i=index, s=ts[:-1], t=ts[1:], last=index == num_steps - 1,
                      coef=solver.coefficients(process, ts))


@dataclasses.dataclass(frozen=True)
class Solver(TracedOptions):
    """The abstract solver. Subclasses set `name` and `native`, and implement `step` (and usually `coefficients`,
    `init`); `integrate` is overridden only by solvers that choose their own steps (the adaptive reference). They
    list their numeric options in `traced` and the ones that make the method stochastic in `switches`, and check
    their options in `check`.

    Every solver takes `denoise_to_zero`: after the last step, one more model call at ts[-1] replaces the sample by
    its data prediction x0_hat (score_sde's final denoising step, a jump to sigma = 0); NFE + 1, and a saved
    trajectory still ends at ts[-1].
    """

    denoise_to_zero: bool = False
    name = "solver"
    # Predictions each model call returns: 1 (one array), or a tuple of this many arrays of x's shape, each converted
    # to `native` by the driver (CFG++'s (guided, unconditional) pair: `samplers.cfg_pp`).
    predictions_per_call = 1
    native = "eps"
    evaluates_end = False
    static_nfe = True
    learned_variance = False
    # Switches that change the structure without drawing noise (DualFast's coefficient: `samplers.dualfast`).
    deterministic_switches: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # A numeric option given as a Python int is held as a float: `samplers.pytrees.split` keeps ints static (a
        # shape, a count), and eta=1 must share the compiled program of eta=0.5.
        for field in self.traced:
            value = getattr(self, field)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field, float(value))
        self.check()

    def check(self) -> None:
        """Raise ValueError for an invalid option, before any compute. Only known values are checked
        (`samplers.pytrees.known`): a traced option is checked where it was a number."""

    @property
    def stochastic(self) -> bool:
        """Whether the solver draws noise (then `sample` needs a key); deterministic solvers ignore a key. Static:
        true when any switch is not a concrete zero (`TracedOptions`)."""
        return not all(self.is_static(field) for field in self.switches if field not in self.deterministic_switches)

    @property
    def order(self) -> int:
        """The method's nominal order."""
        raise NotImplementedError(f"{type(self).__name__} does not state its order")

    @property
    def convergence_order(self) -> int:
        """The global order the tests measure with exact starting values (default: `order`)."""
        return self.order

    @property
    def stages(self) -> int:
        """Model calls per step."""
        return 1

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        """Option sets selecting each distinct method of this class (every order, tableau or published variant):
        what the tests sweep for every registered solver, so a new solver is tested without being named."""
        return ({},)

    def spec(self) -> dict[str, Any]:
        """{"name": ..., "options": {...}}: the registered name and the options from which `samplers.get_solver(name,
        **options)` builds this solver again (what a learned-sampler file stores, `schedules.save_learned`). By
        default the name and every dataclass field.

        Raises:
          ValueError: where no registry entry builds this solver (the sentence says why).
        """
        return {"name": self.name, "options": {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                               if f.init}}

    def at_order(self, order: int) -> Solver:
        """The same method at another order. A multistep method's warm-up (step i of order min(i + 1, order)) on a
        grid of fewer steps than its order is the method of that lower order, which `check_grid` accepts.

        Raises:
          ValueError: the method has no form of that order.
        """
        if order == self.order:
            return self
        raise ValueError(f"{self.name} has no form of order {order}: its order {self.order} is fixed")

    def nfe(self, num_steps: int) -> int:
        """Model calls made for a grid of num_steps steps (the final denoising call included)."""
        return self.loop_nfe(num_steps) + int(self.denoise_to_zero)

    def loop_nfe(self, num_steps: int) -> int:
        """Model calls made by the steps themselves."""
        return self.stages * num_steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose model calls fit in a budget of `nfe` evaluations."""
        if self.nfe(1) > nfe:
            raise ValueError(f"{self.name} needs at least {self.nfe(1)} model calls for one step, got nfe={nfe}")
        num_steps = 1
        while self.nfe(num_steps + 1) <= nfe:
            num_steps += 1
        return num_steps

    def check_grid(self, num_steps: int) -> None:
        """Raise ValueError when the solver cannot run on a grid of num_steps steps (checked before compute)."""

    def check_times(self, process: Process, ts: HostArrayLike) -> None:
        """Raise ValueError when the solver cannot run on these concrete times of this process (checked before
        compute, after `check_grid`); by default every grid of an allowed length will do."""

    def on_grid(self, process: Process, ts: np.ndarray) -> Solver:
        """The solver that runs on these concrete times: itself, unless its structure depends on the grid's values
        (`samplers.restart` snaps its restart intervals to grid points, and the positions are static structure).
        `samplers.sample` calls it before compute, after `check_times`, where ts is concrete (not traced).

        Args:
          process: the `schedules.Process` being sampled.
          ts: the grid, (num_steps + 1,), a numpy array.
        """
        return self

    def coefficients(self, process: Process, ts: jax.Array) -> Any:
        """Everything that depends only on the time grid, as a pytree with a leading axis of num_steps: computed
        once, outside the loop, and differentiable with respect to ts.

        Args:
          process: the `schedules.Process` being sampled.
          ts: the grid, (num_steps + 1,), strictly decreasing.
        """
        return ()

    def init(self, x: jax.Array) -> Any:
        """The solver's carried state for a sample shaped like x (e.g. a fixed-shape history of predictions)."""
        return ()

    def past_state(self, xs: list[jax.Array], preds: list[jax.Array]) -> Any:
        """The state `step` carries into grid point k = len(xs) - 1 along a known trajectory, so that tests can start
        a multistep solver from exact values: xs[j] (j <= k) and preds[j] (j < k) are the state and the native
        prediction at ts[j]. None (the default): the state is the history of `order` predictions, newest first,
        zero-padded (the layout of samplers.multistep)."""
        return None

    def step(self, model: Model, process: Process, x: jax.Array, state: Any, inp: StepInputs) -> tuple[jax.Array, Any]:
        """One step, pure: from x at inp.s to the returned x at inp.t.

        Args:
          model: (x, t) -> the solver's `native` prediction (already converted from the model's own kind).
          process: the `schedules.Process`.
          x: the state at inp.s, any shape.
          state: the carried state from `init` or the previous step.
          inp: this step's `StepInputs`.

        Returns:
          (x at inp.t, in x's dtype; the new state).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    def integrate(self, model: Model, process: Process, x: jax.Array, ts: jax.Array, save_trajectory: bool = False,
                  noise: Any = None) -> tuple[jax.Array, Any, jax.Array | None]:
        """The whole solve from ts[0] to ts[-1]: one `lax.scan` of `step` over `step_inputs`.

        Args:
          noise: the noise source the steps draw from (`StepInputs.normal`), None for a deterministic solve.

        Returns:
          (x at ts[-1], the model calls the steps made, the state at every grid point (num_steps + 1, *x.shape)
          when save_trajectory else None).
        """
        def body(carry, inp):
            x, state = self.step(model, process, *carry, inp._replace(noise=noise))
            return (x, state), (x if save_trajectory else None)

        (x_end, _), states = jax.lax.scan(body, (x, self.init(x)), step_inputs(self, process, ts))
        trajectory = jnp.concatenate([x[None], states], axis=0) if save_trajectory else None
        return x_end, self.loop_nfe(ts.shape[0] - 1), trajectory


class WrapsBase:
    """Mixed into a `Solver` that wraps another, its field `base` (`samplers.restart`, `samplers.cfg_pp_solver`): the
    prediction it consumes, its end evaluations, its orders and its grid checks are the base's."""

    base: Solver

    @property
    def native(self) -> str:
        return self.base.native

    @property
    def evaluates_end(self) -> bool:
        return self.base.evaluates_end

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def convergence_order(self) -> int:
        return self.base.convergence_order

    def check_grid(self, num_steps: int) -> None:
        self.base.check_grid(num_steps)


def cast_like(value: jax.Array, x: jax.Array) -> jax.Array:
    """value in x's dtype (solvers keep the sample's dtype whatever the coefficients' precision)."""
    return value.astype(x.dtype)
