"""CFG++ (Chung et al., ICLR 2025, "CFG++: Manifold-constrained classifier free guidance"; reference sheet section G2):
denoise with the guided data prediction, renoise with the *unconditional* noise prediction.

With x0_lam = x0_u + lam (x0_c - x0_u), lam in [0, 1] (not a CFG scale w), and eps_u the unconditional noise
prediction, every update below is the unconditional solver's step plus A_i (x0_lam - x0_u), A_i the weight of the
current data prediction when the step is written in the pair (x0_i, eps_i) with x_i = alpha_i x0_i + sigma_i eps_i
(derived from the sheet's EDM forms with x_E = x / alpha, sigma_E = gamma = sigma / alpha, e^{-h} = gamma' / gamma):

  DDIM        x' = alpha' x0_lam + sigma' eps_u                                      A = alpha'
              (the sheet's DDIM; its Euler in EDM units, D_lam + sigma_E' (x_E - D_u) / sigma_E, is Euler in gamma,
              the same update: multiply by alpha').
  Euler       in the process's own time (`euler`: x' = x + (t' - t) v, v = alpha-dot x0 + sigma-dot eps):
              x' = (alpha + (t' - t) alpha-dot) x0_lam + (sigma + (t' - t) sigma-dot) eps_u
                                                                                      A = alpha + (t' - t) alpha-dot
              It agrees with DDIM to first order (alpha + (t' - t) alpha-dot = alpha' + O(h^2)), and equals the
              sheet's EDM Euler where alpha = 1 and sigma = t (the edm process).
  DPM-Solver++(2M)
              x' = alpha' x0_lam + sigma' eps_u + alpha' (1 - e^{-h}) (x0_lam,i - x0_u,i-1) / (2 r),
              r = h_{i-1} / h, h = lambda' - lambda; its first (and a lower-order final) step is DDIM's.
                                                                 A = alpha' (1 + (1 - e^{-h}) / (2 r)) = a alpha + b_0
              The sheet's x' = e^{-h} x + D_lam - e^{-h} D_u + (1 - e^{-h}) (D_lam - D_u,prev) / (2 r) times alpha'
              (x_E - D_u = gamma eps_u); the history carries the unconditional x0_u, as the reference's
              `old_uncond_denoised`. Where ts ends at 0 the last step returns x0_lam (A = alpha' = 1, sigma' = 0).

lam = 0 gives x0_lam - x0_u = 0 exactly (x0_u + 0 (x0_c - x0_u)), so the sample is the unconditional sampler's
bit for bit where the compiled arithmetic is the same (tests/test_cfg_pp.py checks it to rounding).

Design: the solver contract passes one prediction per model call and CFG++ needs two. `cfg_pp` wraps the model to
return the pair (guided, unconditional) (one `samplers.guided` combination, with its traced scale lam and
uncond_args); a solver with `predictions_per_call = 2` receives the pair, each member converted to its native kind
by the driver (`samplers.sample` stays the entry point). `cfg_pp_solver(base)` wraps DDIM, Euler or DPM-Solver++(2M):
its step runs the base's own step on the unconditional prediction and adds the guidance term. info["nfe"] counts
calls of the pair model (each is two network evaluations, or one on a doubled batch with `batch_axes`), as it counts
calls of a `samplers.guided` model.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers.base import Model, Solver, StepInputs, WrapsBase, cast_like
from fastsamplers.samplers.guidance import Guided, guided
from fastsamplers.samplers.multistep import DDIM, DPMSolverPP2M
from fastsamplers.samplers.pytrees import is_real, known
from fastsamplers.samplers.runge_kutta import Euler

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

# The bases CFG++ is published for (sheet G2); names as in `samplers.SOLVERS`.
BASES = Registry("CFG++ base solver", {"ddim": DDIM, "euler": Euler, "dpmpp_2m": DPMSolverPP2M})


@dataclasses.dataclass(frozen=True, eq=False)
class GuidedPair(Guided):
    """The model `cfg_pp` returns: (x, t, args) -> (guided, unconditional) predictions, of model_fn's kind; the
    guided one is `Guided`'s combination with scale = lam."""

    def __call__(self, x: jax.Array, t: ArrayLike, args: PyTree) -> tuple[jax.Array, jax.Array]:
        cond, uncond = self._both(x, t, args)
        return self._combine(cond, uncond), uncond


def cfg_pp(model_fn: ModelFn, lam: ArrayLike, uncond_args: Any, *, batch_axes: Any = None) -> GuidedPair:
    """The CFG++ model: returns (guided with scale lam, unconditional) predictions, for a `cfg_pp_solver`.

    Args:
      model_fn: model_fn(x, t, args) -> prediction (any kind).
      lam: the CFG++ guidance lambda in [0, 1] (0: unconditional; not a CFG scale); a number, an array or a tracer
        (traced: a `jax.vmap` over it is one program).
      uncond_args: the args of the unconditional call (e.g. the null label).
      batch_axes: as `samplers.guided`'s: one call on the doubled batch instead of two.

    Returns:
      A `GuidedPair` model (a pytree: lam and uncond_args are traced leaves).

    Raises:
      ValueError: a known lam outside [0, 1].

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fastsamplers import samplers, schedules
        >>> from fastsamplers.models import GaussianMixture
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> p = schedules.get_process("vp_linear")
        >>> model = samplers.cfg_pp(gm.conditional_model_fn(p), 0.6, jnp.full(8, gm.null_label))
        >>> ts = schedules.get_timesteps("logsnr", p, 10)
        >>> x, info = samplers.sample(model, samplers.cfg_pp_solver("ddim"), p, p.prior(jax.random.PRNGKey(1), (8, 2)),
        ...                           ts, args=jnp.zeros(8, int))
        >>> info["nfe"]
        10
    """
    values = known(lam)
    if values is not None and not (is_real(values) and np.all(values >= 0) and np.all(values <= 1)):
        raise ValueError(f"CFG++ lambda must be a number in [0, 1] (0 is unconditional; it is not a CFG scale w), "
                         f"got {lam!r}")
    plain = guided(model_fn, lam, uncond_args, batch_axes=batch_axes)
    return GuidedPair(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)})


@dataclasses.dataclass(frozen=True)
class CFGPP(WrapsBase, Solver):
    """CFG++ around DDIM, Euler or DPM-Solver++(2M) (module docstring): consumes the (guided, unconditional) pair of a
    `cfg_pp` model. Build it with `cfg_pp_solver`. Order, NFE and grid rules are the base's."""

    base: Solver = dataclasses.field(kw_only=True)
    traced = ("base",)
    predictions_per_call = 2

    def check(self) -> None:
        super().check()
        base = self.base
        if type(base) not in tuple(BASES.values()) or base.stochastic:
            raise ValueError(f"CFG++ is defined for the deterministic {', '.join(BASES.valid())}; got "
                             f"{getattr(base, 'name', type(base).__name__)}")
        if base.denoise_to_zero:
            raise ValueError("give denoise_to_zero to the CFG++ wrapper, not to its base (cfg_pp_solver moves it)")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"cfg_pp({self.base.name})"

    def spec(self) -> dict[str, Any]:
        raise ValueError("CFG++ has no registry entry: build it with samplers.cfg_pp_solver(base), for a "
                         "samplers.cfg_pp model")

    def loop_nfe(self, num_steps: int) -> int:
        return self.base.loop_nfe(num_steps)

    def check_times(self, process: Process, ts: Any) -> None:
        self.base.check_times(process, ts)

    def coefficients(self, process: Process, ts: jax.Array) -> tuple[Any, jax.Array]:
        """(the base's coefficients, A (N,): the weight of x0_lam - x0_u in each step; module docstring)."""
        coef = self.base.coefficients(process, ts)
        alpha = process.alpha(ts[:-1])
        if isinstance(self.base, Euler):
            weight = alpha + (ts[1:] - ts[:-1]) * process.d_alpha(ts[:-1])
        elif self.base.native == "x0":  # x' = a x + b . x0's, x = alpha x0 + sigma eps: A = a alpha + b_0
            weight = coef.a * alpha + coef.b[:, 0]
        else:  # eps: x' = a x + b . eps's: A = a alpha
            weight = coef.a * alpha
        return coef, weight

    def init(self, x: jax.Array) -> Any:
        return self.base.init(x)

    def step(self, model: Model, process: Process, x: jax.Array, state: Any, inp: StepInputs) -> tuple[jax.Array, Any]:
        coef, weight = inp.coef
        guided_pred, uncond = model(x, inp.s)
        # The base's own step, driven by the unconditional prediction (each base calls the model once, at (x, s)).
        x_next, state = self.base.step(lambda *_: uncond, process, x, state, inp._replace(coef=coef))
        to_x0 = lambda p: predictions.convert(p, self.native, "x0", x, inp.s, process)
        return cast_like(x_next + weight * (to_x0(guided_pred) - to_x0(uncond)), x), state


def cfg_pp_solver(base: str | Solver) -> CFGPP:
    """CFG++ around a deterministic "ddim", "euler" or "dpmpp_2m" (a name, or the solver with its options).

    Args:
      base: the base solver or its name.

    Returns:
      The `CFGPP` solver, for `samplers.sample` with a `samplers.cfg_pp` model; the base's denoise_to_zero moves to
      it.

    Example:
        >>> cfg_pp_solver("dpmpp_2m").name
        'cfg_pp(dpmpp_2m)'
    """
    if isinstance(base, str):
        base = BASES.build(base)
    moved = getattr(base, "denoise_to_zero", False)
    if moved:
        base = dataclasses.replace(base, denoise_to_zero=False)
    return CFGPP(base=base, denoise_to_zero=moved)
