"""The one registry of solvers: name -> class. `get_solver(name, **options)` builds one."""

from __future__ import annotations

import dataclasses

from samplers.adaptive import Adaptive
from samplers.multistep import DDIM, IPNDM, DEISRhoAB, DEISTab, DPMSolverPP2M, DPMSolverPP3M
from samplers.runge_kutta import DEISRhoRK, Euler, Heun

SOLVERS = {
    cls.name: cls
    for cls in (DDIM, Euler, Heun, DEISTab, DEISRhoAB, DEISRhoRK, IPNDM, DPMSolverPP2M, DPMSolverPP3M, Adaptive)
}


def get_solver(name, **options):
    """The solver registered under `name`, with keyword options.

    Options by solver: deis_tab (order 1-4, lower_order_final, num_quad), deis_rhoab / ipndm (order 1-4,
    lower_order_final), deis_rhork (method "2heun" | "3kutta" | "4rk"), dpmpp_2m / dpmpp_3m (lower_order_final),
    adaptive (method, rtol, atol, max_steps, gamma_floor). The paper's tAB-r is deis_tab with order = r + 1.

    Example:
        >>> solver = get_solver("deis_tab", order=3)
        >>> solver.order
        3
    """
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid names: {sorted(SOLVERS)}")
    cls = SOLVERS[name]
    valid = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; valid options: {valid}")
    return cls(**options)
