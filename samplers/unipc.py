"""UniPC: the unified predictor-corrector of Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models", NeurIPS 2023), in its data-prediction form with B(h) (the paper's UniPC-p,
diffusers' `UniPCMultistepScheduler(predict_x0=True)`).

Notation: m_j = x0_hat(x_j, t_j) the model's data prediction at grid point j; lambda = log(alpha / sigma);
h_i = lambda_{i+1} - lambda_i > 0 for the step from t_i to t_{i+1}; r_m = (lambda_{i-m} - lambda_i) / h_i < 0 for the
past points; D_m = (m_{i-m} - m_i) / r_m; z = -h_i; phi_k the exponential-integrator functions,
phi_{k+1}(z) = (e^z - sum_{j<=k} z^j / j!) / z^{k+1}, and g_k = k! z phi_{k+1}(z) (k = 1, 2, 3).
B(h) = -h ("bh1") or e^{-h} - 1 ("bh2"), in the sign convention of z.

  UniP-K (predictor, K model outputs m_i, ..., m_{i-K+1}):
      x_{i+1} = (sigma_{i+1} / sigma_i) x_i^c - alpha_{i+1} (e^{-h} - 1) m_i - alpha_{i+1} B(h) sum_{m<K} rho^p_m D_m
  UniC-K (corrector of x_{i+1}, K + 1 outputs: the same ones and m_{i+1} = x0_hat at the *uncorrected* x_{i+1}):
      x_{i+1}^c = (sigma_{i+1} / sigma_i) x_i^c - alpha_{i+1} (e^{-h} - 1) m_i
                  - alpha_{i+1} B(h) (sum_{m<K} rho^c_m D_m + rho^c_K (m_{i+1} - m_i))
  The rho solve the order conditions, small Vandermonde systems in the nodes:
      UniP-K:  sum_{m=1}^{K-1} rho^p_m r_m^{k-1} = g_k / B(h),  k = 1..K-1   (K >= 3; rho^p_1 = 1/2 for K = 2)
      UniC-K:  sum_{m=1}^{K}   rho^c_m r_m^{k-1} = g_k / B(h),  k = 1..K     (r_K = 1; K >= 2; rho^c_1 = 1/2 for K = 1)
  The fixed 1/2 for UniP-2 and UniC-1 are the simplified choices of the paper's code and of diffusers', correct to
  the order needed (g_1 / B(h) = 1/2 + O(h)); everywhere else B(h) rho is B(h) times the solution of the
  system, which does not depend on B. So bh1 and bh2 differ only in the order-2 predictor and the order-1 corrector: at every step of
  UniPC-1 and UniPC-2, and only on the warm-up and lower-order final steps of UniPC-3.

UniC raises the order from K to K + 1 (the corrected point is a (K + 1)-point method), and it costs no model
call: m_{i+1} is also the next predictor's m_i. Step i of the scan therefore evaluates m_i once at its start (at the
uncorrected x_i), corrects x_i with UniC from the corrected x_{i-1}^c and the past predictions it carries in its
state, and predicts x_{i+1} from the corrected point; the final step has no corrector after it, so NFE = num_steps.
UniC needs only the order of the step that made the point, not its formula, so it is a solver of its own that wraps
a predictor (`UniC`, `samplers.unic`; diffrax's wrapped-solver habit): any deterministic data-prediction multistep
update x_{i+1} = (sigma_{i+1} / sigma_i) x_i^c + b_i . m, UniP (`get_solver("unipc")` is UniC around UniP,
`corrector=False` gives UniP alone) or DPM-Solver++ (`get_solver("dpmpp_2m", corrector=True)`).
Everything that depends on the grid (h, r, B, the phi's, the rho solves) is computed once per grid by
`coefficients`, outside the loop, and is differentiable in ts; a step is a fixed linear combination of x_i,
x_{i-1}^c and the predictions.

Warm-up: step i uses UniP of order K_i = min(i + 1, order), and the corrector of x_{i+1} has the order of the
predictor that made it (as published). `lower_order_final` follows the one rule of `samplers.multistep`; UniPC's
default is "always", K_i = min(order, num_steps - i) on the last steps whatever the number of steps: the rule of the
paper's code and of diffusers' code (diffusers' docstring, copied from DPM-Solver, says "only valid for < 15
inference steps", but its UniPC code applies it at every step count). Its final first-order step has an O(h^2)
local error, so then the method converges with order 2 whatever its nominal order (measured in
tests/test_order.py); without it, UniP-K alone converges with order K, and UniPC-K with UniC with order K + 1 for
K = 1, 2. UniPC-3 is of order 4 only asymptotically: with exact starting values on tests/test_order.py's problem its
error falls by 5.3, 10.4 and 13.6 from N = 32 to 64, 128 and 256 (a fitted order of 3.2 there), and by 14.9 and 15.4
(slopes 3.9, 3.94) from 256 to 512 and 1024, so it states `convergence_order` 3 and tests/test_unipc.py checks the
fourth order on the fine grids. Through `sample` the warm-up caps it at 3 anyway: the first step, UniP-1 + UniC-1,
has an O(h^3) local error.

A step to sigma = 0 (ts[-1] = 0, h = inf) is first order whatever the options: it returns x0_hat exactly (the limit
of UniP-1; higher orders have no limit there). diffusers' scheduler with solver_type="bh1" and its default
final_sigmas_type="zero" returns NaN at that step (B(h) = -inf times a zero residual).

Only the data-prediction form is offered: the paper recommends it, and the noise-prediction form would need its own
limit at sigma = 0.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers import dualfast as _dualfast
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.exponential import PCCoefficients, PCSteps, g_functions, phi1, solve_moments
from fastsamplers.samplers.multistep import Multistep

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process

# B(h), of UniP and of UniC; the sentence names the solver (`where`).
VARIANTS = Registry.of_names("variant", ("bh1", "bh2"), ordered=True,
                            unknown="{where} {kind} must be 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {name!r}")
ALLOWED_ORDERS = (1, 2, 3)


class UniPCTerms(NamedTuple):
    """The per-step quantities of UniPC on a grid (leading axis num_steps; row i is the step from t_i to t_{i+1}).

    order: (N,) the order K_i of step i (UniP-K_i, and UniC-K_i for the point it makes); h: (N,) lambda_{i+1} -
    lambda_i (inf for a step to sigma = 0); r: (N, order - 1) r_m = (lambda_{i-m} - lambda_i) / h_i, m = 1..K_i - 1
    (a placeholder -m elsewhere); B: (N,) B(h_i); rho_p: (N, max(order - 1, 0)) rho^p_m, m = 1..K_i - 1 (0 elsewhere);
    rho_c: (N, order) rho^c_m, m = 1..K_i, the last one (column K_i - 1) weighting the new point (0 elsewhere).
    """

    order: jax.Array
    h: jax.Array
    r: jax.Array
    B: jax.Array
    rho_p: jax.Array
    rho_c: jax.Array


def unipc_terms(process: Process, ts: jax.Array, orders: np.ndarray, width: int, variant: str) -> UniPCTerms:
    """h, r, B(h) and the rho of every step (see `UniPCTerms`), computed once per grid, for steps of the given
    orders (numpy, one per step, at most `width`) and B(h) of `variant`."""
    lam = process.log_snr(ts)
    h = lam[1:] - lam[:-1]
    finite = jnp.isfinite(h)
    # A step to sigma = 0 is first order (it returns x0_hat); every other quantity of that row is computed with
    # h = 1, finite and unused, so that gradients stay finite.
    order = jnp.where(finite, jnp.asarray(orders), 1)
    h_safe = jnp.where(finite, h, 1.0)
    z = -h_safe
    big_b = z if variant == "bh1" else jnp.expm1(z)
    moments = jnp.stack(g_functions(z, width), axis=1) / big_b[:, None]  # (N, width): g_k / B
    m = np.arange(1, width)  # past points m = 1..width - 1
    past = np.clip(np.arange(h.shape[0])[:, None] - m[None, :], 0, None)
    past_lam = lam[past]  # lambda_{i-m} (clamped at i - m = 0, unused there)
    active = m[None, :] < order[:, None]
    r = jnp.where(active, (past_lam - lam[:-1, None]) / h_safe[:, None], -jnp.asarray(m, h.dtype)[None, :])
    # UniP: nodes r_1..r_{K-1}; rho^p_1 = 1/2 for K = 2.
    rho_p = solve_moments(r, moments[:, : width - 1], order - 1)
    rho_p = jnp.where((order == 2)[:, None] & (m == 1)[None, :], 0.5, rho_p)
    # UniC: nodes r_1..r_{K-1}, then 1 (the new point) in column K - 1; rho^c_1 = 1/2 for K = 1.
    col = np.arange(width)
    nodes_c = jnp.concatenate([r, jnp.ones_like(h)[:, None]], axis=1)
    nodes_c = jnp.where(col[None, :] == order[:, None] - 1, 1.0, nodes_c)
    rho_c = solve_moments(nodes_c, moments, order)
    rho_c = jnp.where((order == 1)[:, None], jnp.where(col == 0, 0.5, 0.0)[None, :], rho_c)
    return UniPCTerms(order=order, h=h, r=r, B=big_b, rho_p=rho_p, rho_c=rho_c)


def corrector_rows(process: Process, ts: jax.Array, terms: UniPCTerms) -> jax.Array:
    """UniC's weights (N, width + 1): row i corrects the point x_{i+1} that step i made (of order terms.order[i]) on
    the predictions (m_{i+1}, m_i, ..., m_{i+1-width}), m_{i+1} at the uncorrected x_{i+1}:
    x_{i+1}^c = (sigma_{i+1} / sigma_i) x_i^c + row_i . m."""
    alpha = process.alpha(ts)
    width = terms.rho_c.shape[1]
    eye = jnp.eye(width + 1, dtype=terms.h.dtype)
    # x_{i+1}^c = a_i x_i^c - alpha phi1 m_i - alpha B (sum_m rho^c_m D_m + rho^c_K (m_{i+1} - m_i)).
    m = np.arange(1, width)
    old = m[None, :] < terms.order[:, None]
    rho_c_old = jnp.where(old, terms.rho_c[:, : width - 1], 0.0)
    rho_c_new = jnp.take_along_axis(terms.rho_c, (terms.order - 1)[:, None], axis=1)[:, 0]
    d_corr = (eye[None, 2:] - eye[None, 1:2]) / terms.r[:, :, None]
    return (-(alpha[1:] * phi1(terms.h))[:, None] * eye[None, 1]
            - (alpha[1:] * terms.B)[:, None] * (jnp.einsum("nm,nmj->nj", rho_c_old, d_corr)
                                                + rho_c_new[:, None] * (eye[None, 0] - eye[None, 1])))


def with_dualfast(coef: PCCoefficients, owner: Any, process: Process, ts: jax.Array) -> PCCoefficients:
    """`coef` with DualFast's weights where `owner` (UniP, or UniC's predictor) has it on: one weight per step, the
    same for the predictor's and the corrector's first-order term (`samplers.exponential.PCSteps`)."""
    if not getattr(owner, "uses_dualfast", False):
        return coef
    return coef._replace(dualfast=_dualfast.weights(owner.dualfast, owner.dualfast_ramp, process, ts))


def pc_coefficients(process: Process, ts: jax.Array, b: jax.Array, terms: UniPCTerms | None = None) -> PCCoefficients:
    """The scan's table for a data-prediction predictor x_{i+1} = (sigma_{i+1} / sigma_i) x_i^c + b_i . m, with UniC
    (of the orders in `terms`) correcting each point it makes, or without a corrector (terms None).

    b: (N, width), the predictor's weights on (m_i, ..., m_{i-width+1}). UniC does not depend on the predictor that
    made the point, only on the predictor's order (UniC-K for a K-th order step).
    """
    sigma = process.sigma(ts)
    dtype = b.dtype
    a = sigma[1:] / sigma[:-1]
    n = b.shape[0]
    b = jnp.concatenate([b, jnp.zeros_like(b[:, :1])], axis=1)  # on the state's (m_i, ..., m_{i-width})
    if terms is None:
        return PCCoefficients(a=a, b=b, keep=jnp.ones(n, dtype), prev=jnp.zeros(n, dtype), c=jnp.zeros_like(b))
    corrected = corrector_rows(process, ts, terms)
    # Step i corrects with the terms of step i - 1; step 0 has nothing to correct.
    keep = (jnp.arange(n) == 0).astype(dtype)
    prev = jnp.concatenate([jnp.zeros(1, dtype), a[:-1]])
    c = jnp.concatenate([jnp.zeros((1, b.shape[1]), dtype), corrected[:-1]], axis=0)
    return PCCoefficients(a=a, b=b, keep=keep, prev=prev, c=c)


@dataclasses.dataclass(frozen=True)
class UniP(PCSteps, _dualfast.DualFastOptions, Multistep):
    """UniP-p (Zhao et al. 2023), the predictor of UniPC, with data prediction; registered as "unipc", where
    `corrector=True` (the default) wraps it in `UniC`.

    Args:
      order: p, the predictor's order (1, 2 or 3; default 3, the paper's and diffusers' recommendation for
        unconditional sampling; diffusers' default `solver_order` is 2, its recommendation for guided sampling).
      variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1, diffusers' default; the paper's code defaults to bh1).
        diffusers recommends bh1 for unconditional sampling below 10 steps, bh2 otherwise. UniC takes the same.
      lower_order_final: `samplers.multistep`'s rule; default "always" (the published codes').
      dualfast, dualfast_ref, dualfast_ramp: DualFast's correction of the first-order terms of UniP and of UniC
        (`samplers.dualfast.DualFastOptions`, `PCSteps`); a concrete 0, the default, is UniPC bit for bit.

    Returns (from `samplers.sample`): the sample at ts[-1], with num_steps model calls. `ts` may end at 0: that step
    returns x0_hat.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules, samplers
        >>> from fastsamplers.models.oracle import GaussianMixture
        >>> process = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=3)
        >>> x_init = process.prior(jax.random.PRNGKey(1), (16, 2))
        >>> ts = schedules.get_timesteps("logsnr", process, 10, append_zero=True)
        >>> x, info = samplers.sample(gm.model_fn(process, "x0"), "unipc", process, x_init, ts, prediction="x0")
        >>> info["nfe"]
        10
    """

    name = "unipc"
    native = "x0"
    order: int = 3
    variant: str = "bh2"
    lower_order_final: bool | str = "always"
    allowed_orders = ALLOWED_ORDERS

    def check(self) -> None:
        super().check()
        VARIANTS.check(self.variant, where=self.name)
        self.check_dualfast()

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec["options"]["corrector"] = False  # its registry entry ("unipc") wraps it in UniC by default
        return spec

    def terms(self, process: Process, ts: jax.Array, orders: np.ndarray | None = None) -> UniPCTerms:
        """`unipc_terms` on this grid, for the solver's step orders or the given ones."""
        orders = self.step_orders(ts.shape[0] - 1) if orders is None else orders
        return unipc_terms(process, ts, orders, self.order, self.variant)

    def table(self, process: Process, ts: jax.Array, orders: np.ndarray) -> tuple[jax.Array, jax.Array]:
        terms = self.terms(process, ts, orders)
        alpha, sigma = process.alpha(ts), process.sigma(ts)
        width = self.order
        eye = jnp.eye(width, dtype=terms.h.dtype)  # eye[j]: the weight vector picking m_{i-j}
        # UniP, on (m_i, ..., m_{i-width+1}): D_m = (e_m - e_0) / r_m.
        d_pred = (eye[None, 1:width] - eye[None, :1]) / terms.r[:, :, None]  # (N, width - 1, width)
        b = (-(alpha[1:] * phi1(terms.h))[:, None] * eye[None, 0]
             - (alpha[1:] * terms.B)[:, None] * jnp.einsum("nm,nmj->nj", terms.rho_p, d_pred))
        return sigma[1:] / sigma[:-1], b

    def coefficients(self, process: Process, ts: jax.Array) -> PCCoefficients:
        coef = pc_coefficients(process, ts, self.table(process, ts, self.step_orders(ts.shape[0] - 1))[1])
        return with_dualfast(coef, self, process, ts)


@dataclasses.dataclass(frozen=True)
class UniC(PCSteps, Solver):
    """UniC (Zhao et al. 2023) around a predictor: after every step but the last, the point the predictor made is
    corrected with the model output there, which the next step evaluates anyway (same NFE). Build it with
    `samplers.unic(predictor)` or `get_solver(name, corrector=True)`.

    Args:
      predictor: a deterministic data-prediction multistep solver whose update is x_{i+1} = (sigma_{i+1} /
        sigma_i) x_i + b_i . m (`UniP`, dpmpp_2m, dpmpp_3m; a traced child: its numeric options stay traced).
      variant: UniC's B(h), "bh1" or "bh2".

    Its `name`, order, grid checks and step orders are the predictor's. Measured orders (tests/test_order.py): UniC
    raises an order-K step's point to K + 1 where the predictor is accurate enough: 2M + UniC 3, published 3M +
    UniC 3, UniPC-2 3; third-order 3M + UniC and UniPC-3 reach 4 only asymptotically (module docstring), so they
    state 3. ODE only: UniC is derived for the probability-flow ODE.
    """

    predictor: Multistep = dataclasses.field(kw_only=True)
    variant: str = "bh2"
    native = "x0"
    traced = ("predictor",)

    def check(self) -> None:
        super().check()
        predictor = self.predictor
        if not isinstance(predictor, Multistep) or predictor.native != "x0":
            raise ValueError(f"UniC corrects a data-prediction multistep predictor (unipc, dpmpp_2m, dpmpp_3m), got "
                             f"{getattr(predictor, 'name', type(predictor).__name__)}")
        if predictor.stochastic:
            raise ValueError(f"{predictor.name}: the UniC corrector is derived for the probability-flow ODE; use "
                             f"eta=0 or corrector=False")
        if predictor.denoise_to_zero:
            raise ValueError("give denoise_to_zero to the UniC wrapper, not to its predictor (samplers.unic moves it)")
        VARIANTS.check(self.variant, where="UniC")

    @property
    def name(self) -> str:  # type: ignore[override]  # the predictor's, not a class constant
        return self.predictor.name  # get_solver(name, corrector=True) builds this composition

    @property
    def order(self) -> int:
        return self.predictor.order

    @property
    def convergence_order(self) -> int:
        nominal = min(self.predictor.order + 1, 3)  # see the class docstring
        return min(nominal, 2) if self.predictor.lower_order_final == "always" else nominal

    def spec(self) -> dict[str, Any]:
        """The predictor's name and options with corrector=True (and the wrapper's denoise_to_zero): the composition
        `get_solver(name, corrector=True)` builds, which takes UniC's variant from the predictor (`unic`)."""
        default = unic(self.predictor).variant
        if self.variant != default:
            raise ValueError(f"UniC of variant {self.variant!r} around {self.predictor.name} has no registry spec: "
                             f"get_solver({self.predictor.name!r}, corrector=True) builds the variant {default!r}")
        spec = self.predictor.spec()
        spec["options"].update(corrector=True, denoise_to_zero=self.denoise_to_zero)
        return spec

    def at_order(self, order: int) -> UniC:
        return dataclasses.replace(self, predictor=self.predictor.at_order(order))

    def check_grid(self, num_steps: int) -> None:
        self.predictor.check_grid(num_steps)

    def check_times(self, process: Process, ts: HostArrayLike) -> None:
        self.predictor.check_times(process, ts)

    def step_orders(self, num_steps: int) -> np.ndarray:
        return self.predictor.step_orders(num_steps)

    def terms(self, process: Process, ts: jax.Array) -> UniPCTerms:
        """`unipc_terms` of the predictor's steps: the order of the point each step makes and its rho^c."""
        return unipc_terms(process, ts, self.step_orders(ts.shape[0] - 1), self.order, self.variant)

    def coefficients(self, process: Process, ts: jax.Array) -> PCCoefficients:
        _, b = self.predictor.table(process, ts, self.step_orders(ts.shape[0] - 1))
        return with_dualfast(pc_coefficients(process, ts, b, self.terms(process, ts)), self.predictor, process, ts)

    def dualfast_owner(self) -> Multistep:
        return self.predictor  # its DualFast options correct both first-order terms (`PCSteps`)


def unic(predictor: Multistep, variant: str | None = None) -> UniC:
    """UniC around `predictor`, the composition `get_solver(name, corrector=True)` builds.

    Args:
      predictor: a deterministic data-prediction multistep solver (`UniC`), e.g. `get_solver("dpmpp_2m")`.
      variant: UniC's B(h); None: the predictor's own where it has one (UniP's `variant`), else "bh2" (the
        published DPM-Solver++ + UniC). The predictor's `denoise_to_zero` moves to the wrapper.

    Returns:
      The `UniC` solver: the predictor's order, NFE and name, its points corrected.

    Example:
        >>> from fastsamplers import samplers
        >>> solver = samplers.unic(samplers.get_solver("dpmpp_2m"))
        >>> solver.name, solver.order, solver.convergence_order
        ('dpmpp_2m', 2, 3)
    """
    if variant is None:
        variant = predictor.variant if isinstance(predictor, UniP) else "bh2"
    moved = getattr(predictor, "denoise_to_zero", False)
    if moved:
        predictor = dataclasses.replace(predictor, denoise_to_zero=False)
    return UniC(predictor=predictor, variant=variant, denoise_to_zero=moved)
