"""DualFast (Yu et al. 2025, arXiv 2506.13058; reference sheet F, **unverified** against the paper's method section):
a training-free correction of the model's approximation error at no extra model call,

  eps_new(x_s, s) = (1 + c_s) eps(x_s, s) - c_s eps(x_tau, tau),   tau > s a cached earlier (noisier) prediction,

put in place of the prediction in the *explicit first-order term* of the base solver only (the DDIM part of its
update), c_s >= 0 growing as the noise decreases. `dualfast_ref` picks tau: "previous" (the last step's prediction)
or "first" (the first step's).

The first-order term of every solver here is DDIM's, x_t = (alpha_t / alpha_s) x_s + alpha_t (gamma_t - gamma_s) eps,
so the correction adds alpha_t (gamma_t - gamma_s) c_s (eps_s - eps_tau) to the base step (`correction`). Derived
for the data-prediction solvers (DPM-Solver++): their first-order term is alpha_t (1 - e^{-h}) x0_hat; replacing
eps by eps_new in x0_hat = (x_s - sigma_s eps) / alpha_s gives x0_new = x0_hat - (sigma_s / alpha_s) c (eps_s -
eps_tau), with eps_tau the earlier *noise* prediction (not the earlier x0_hat: the two differ by (x_s - x_tau)
terms), and alpha_t (1 - e^{-h}) sigma_s / alpha_s = alpha_t (gamma_s - gamma_t): the same increment as in eps form.
So one formula serves both kinds; the cached reference is always an eps (converted from the native prediction with
`models.predictions.convert`).

The coefficient schedule: `dualfast` is a scalar times the linear ramp from `dualfast_ramp[0]` at the first step to
`dualfast_ramp[1]` at the last (in the step index; default (0, 1), growing as noise decreases), or an array of one
coefficient per step. Step 0 has no earlier prediction: its correction is zero whatever c_0.

UniPC (`samplers.exponential.PCSteps`): UniP's first-order term is the same alpha_t (1 - e^{-h}) m_i, and UniC's
correction of the point x_{i+1} repeats it with the same m_i, so the same increment goes into both (carried in the
state from the predictor to the next step's corrector); checked against a hand-written UniPC-1 in
tests/test_dualfast.py.

Defaults: ref "previous" and the ramp (0, 1), the unverified sheet's reading of the paper, kept after the digits
sweep (`scripts/benchmark_dualfast.py`, experiments/results/dualfast.json: DDIM, DPM-Solver++(2M), UniPC-3 at NFE 5
and 10 on digits_vp and digits_fm, 2000 samples). The geometric mean FD-digits ratio to the base solver over its 18
cells is 0.56x with the defaults and c = 1; the sweep's best, "previous" with the constant ramp and c = 0.5, is
0.55x; "first" with the defaults and c = 0.5 is 0.57x and has the smallest worst cell (1.21x, against 1.68x). The
coefficient is the user's (default 0: off). On the exact oracle (no approximation error to remove) it can only
change the discretisation error, and it does not help the second-order solvers there
(experiments/results/dualfast_oracle.json).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.models import predictions
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

REFERENCES = Registry.of_names("dualfast_ref", ("previous", "first"), ordered=True,
                               unknown="{where}: {kind} must be {alternatives}, got {name!r}")
DEFAULT_RAMP = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DualFastOptions:
    """DualFast's options, mixed into a deterministic multistep solver (`LinearMultistep`, `UniP`; UniC takes its
    predictor's): `dualfast` (>= 0, a number times the ramp `dualfast_ramp`, or one coefficient per step) and
    `dualfast_ref` ("previous" or "first", which earlier prediction tau is). Given as a concrete 0 (the default) the
    method is the base solver bit for bit; any other value is traced (a sweep is one program)."""

    dualfast: Any = 0.0
    dualfast_ref: str = "previous"
    dualfast_ramp: tuple[float, float] = DEFAULT_RAMP
    traced = switches = ("dualfast",)
    deterministic_switches = ("dualfast",)  # it changes the state, not whether the solver draws noise

    @property
    def uses_dualfast(self) -> bool:
        """Whether DualFast's correction is part of the method (static)."""
        return not self.is_static("dualfast")  # type: ignore[attr-defined]  # the solver's (TracedOptions)

    def check_dualfast(self) -> None:
        """Raise ValueError for a bad DualFast option (known values only)."""
        check(self.name, self.dualfast, self.dualfast_ref, self.dualfast_ramp)  # type: ignore[attr-defined]


def check(name: str, dualfast: Any, ref: str, ramp: Any) -> None:
    """Raise ValueError for a bad DualFast option of solver `name` (known values only)."""
    REFERENCES.check(ref, where=name)
    if not (isinstance(ramp, tuple) and len(ramp) == 2 and all(isinstance(v, (int, float)) and v >= 0
                                                               for v in ramp)):
        raise ValueError(f"{name}: dualfast_ramp must be a pair of numbers >= 0 (the ramp's first- and last-step "
                         f"values), got {ramp!r}")
    values = known(dualfast)
    if values is not None and not (is_real(values) and values.ndim <= 1 and np.all(np.isfinite(values))
                                   and np.all(values >= 0)):
        raise ValueError(f"{name}: dualfast must be a number >= 0 or one per step (an array), got {dualfast!r}")


def schedule(dualfast: Any, ramp: tuple[float, float], num_steps: int, dtype: Any) -> jax.Array:
    """c_i for every step (num_steps,): an array given per step, or the scalar times the ramp."""
    dualfast = jnp.asarray(dualfast, dtype)
    if dualfast.ndim == 1:
        if dualfast.shape[0] != num_steps:
            raise ValueError(f"dualfast holds {dualfast.shape[0]} coefficients for a grid of {num_steps} steps")
        return dualfast
    frac = jnp.linspace(0.0, 1.0, num_steps, dtype=dtype) if num_steps > 1 else jnp.ones(1, dtype)
    return dualfast * (ramp[0] + (ramp[1] - ramp[0]) * frac)


def weights(dualfast: Any, ramp: tuple[float, float], process: Process, ts: jax.Array) -> jax.Array:
    """(num_steps,) alpha_t (gamma_t - gamma_s) c_s: the weight of eps_s - eps_tau in each step (module docstring)."""
    gamma = process.gamma(ts)
    first_order = process.alpha(ts[1:]) * (gamma[1:] - gamma[:-1])
    return first_order * schedule(dualfast, ramp, ts.shape[0] - 1, first_order.dtype)


def correction(native: str, pred: jax.Array, x: jax.Array, s: jax.Array, eps_ref: jax.Array, first: jax.Array,
               weight: jax.Array, ref: str, process: Process) -> tuple[jax.Array, jax.Array]:
    """(the increment to add to the base step's x_t, the reference to carry on).

    Args:
      native: the solver's prediction kind; pred its prediction at (x, s).
      eps_ref: the carried earlier noise prediction; first: whether this is the first step (nothing earlier).
      weight: this step's entry of `weights`.
      ref: "previous" or "first" (which earlier prediction tau is).
    """
    eps = predictions.convert(pred, native, "eps", x, s, process)
    eps_ref = jnp.where(first, eps, eps_ref)
    increment = weight * (eps - eps_ref)
    return increment, (eps if ref == "previous" else eps_ref)
