"""The one registry of solvers: name -> class. `get_solver(name, **options)` builds one."""

from __future__ import annotations

from core import Registry
from samplers.adaptive import Adaptive
from samplers.base import Solver
from samplers.multistep import (DDIM, IPNDM, DEISRhoAB, DEISTab, DPMSolverPP2M, DPMSolverPP2MSDE, DPMSolverPP3M,
                                DPMSolverPP3MSDE, EulerAncestral)
from samplers.runge_kutta import DEISRhoRK, EDMStochastic, Euler, Heun
from samplers.sa_solver import SASolver
from samplers.unipc import UniPC

SOLVERS = Registry("solver", {
    cls.name: cls
    for cls in (DDIM, Euler, Heun, DEISTab, DEISRhoAB, DEISRhoRK, IPNDM, DPMSolverPP2M, DPMSolverPP3M, UniPC, Adaptive,
                EulerAncestral, EDMStochastic, DPMSolverPP2MSDE, DPMSolverPP3MSDE, SASolver)
})


def get_solver(name: str, **options) -> Solver:
    """The solver registered under `name`, with keyword options.

    Options by solver: deis_tab (order 1-4, lower_order_final, num_quad), deis_rhoab / ipndm (order 1-4,
    lower_order_final), deis_rhork (method "2heun" | "3kutta" | "4rk"), dpmpp_2m / dpmpp_3m (lower_order_final,
    variant, corrector), unipc (order 1-3, variant "bh1" | "bh2", corrector, lower_order_final), adaptive (method, rtol, atol,
    max_steps, gamma_floor); the stochastic ones: ddim (eta), euler_ancestral (eta), edm_stochastic (S_churn, S_min,
    S_max, S_noise), dpmpp_2m_sde (eta, solver_type), dpmpp_3m_sde (eta), sa_solver (predictor_order, corrector_order, tau,
    tau_interval, variant, lower_order_final; tau = 0 is deterministic). Every solver takes denoise_to_zero. The
    paper's tAB-r is deis_tab with order = r + 1.

    Args:
      name: a key of `SOLVERS`.
      **options: the solver's dataclass fields.

    Returns:
      The solver, an immutable hashable `samplers.Solver`.

    Raises:
      ValueError: an unknown name (the valid ones are listed) or option, or an invalid option value.

    Example:
        >>> solver = get_solver("deis_tab", order=3)
        >>> solver.order
        3
    """
    return SOLVERS.build(name, **options)
