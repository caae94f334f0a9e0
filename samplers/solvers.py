"""The one registry of solvers: name -> class, and beside it the learned samplers read from files (`schedules.learn`,
`schedules.save_learned`). `get_solver(name, **options)` builds either.

`SOLVERS` holds the methods that run on any grid (every test sweep goes through it); `FILE_SOLVERS` the names that
load a learned sampler, valid on the grid saved with it: "file" (any learned file), "olss" and "solver_schedule"
(which also check what the file holds).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.adaptive import Adaptive
from fastsamplers.samplers.amed import AMED
from fastsamplers.samplers.ancestral import DDPM
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.dpm_solver_v3 import DPMSolverV3
from fastsamplers.samplers.flow_map_solver import FlowMap
from fastsamplers.samplers.linear_table import LinearTable
from fastsamplers.samplers.multistep import (DDIM, IPNDM, DEISRhoAB, DEISTab, DPMSolverPP2M, DPMSolverPP2MSDE,
                                             DPMSolverPP3M, DPMSolverPP3MSDE, EulerAncestral, Multistep)
from fastsamplers.samplers.restart import Restart, restart
from fastsamplers.samplers.runge_kutta import DEISRhoRK, EDMStochastic, Euler, Heun
from fastsamplers.samplers.sa_solver import SASolver
from fastsamplers.samplers.unipc import UniP, unic
from fastsamplers.schedules.files import read_learned


class WithCorrector:
    """The registry entry of a data-prediction multistep predictor that takes `corrector`: its options are the
    predictor's and `corrector`, and corrector=True returns the predictor wrapped in UniC (`samplers.unic`: a
    composition, not a flag inside the predictor).

    Args:
      predictor: the predictor's class.
      corrector: the default of `corrector`.
      variants: the option sets the tests sweep (`Solver.variants`), corrector included; default the predictor's.
    """

    def __init__(self, predictor: type[Multistep], corrector: bool = False,
                 variants: tuple[dict, ...] | None = None) -> None:
        self.predictor, self.corrector = predictor, corrector
        self.name = predictor.name
        self._variants = predictor.variants() if variants is None else variants
        keyword = inspect.Parameter.KEYWORD_ONLY
        self.__signature__ = inspect.Signature(  # what the registry reads as this entry's options
            [inspect.Parameter(f.name, keyword, default=f.default) for f in dataclasses.fields(predictor) if f.init]
            + [inspect.Parameter("corrector", keyword, default=corrector)])

    def variants(self) -> tuple[dict, ...]:
        return self._variants

    def __call__(self, **options: Any) -> Solver:
        corrector = options.pop("corrector", self.corrector)
        if not isinstance(corrector, (bool, np.bool_)):
            raise ValueError(f"{self.name} option corrector must be True or False, got {corrector!r}")
        predictor = self.predictor(**options)
        return unic(predictor) if corrector else predictor


class Restarted:
    """The registry entry "restart": `samplers.restart` with its base given by name (any registered deterministic
    solver), by spec ({"name": ..., "options": ...}, as `Solver.spec` writes it), or as a solver; default EDM's
    Heun and the CIFAR-10 preset."""

    name = Restart.name

    def variants(self) -> tuple[dict, ...]:
        return Restart.variants()

    def __call__(self, *, base: str | dict | Solver = "heun", intervals: Any = "cifar10_vp", s_noise: float = 1.003,
                 grid: str = "edm", grid_options: Any = None, denoise_to_zero: bool = False) -> Restart:
        if isinstance(base, str):
            base = get_solver(base)
        elif isinstance(base, dict):
            base = get_solver(base.get("name"), **base.get("options", {}))
        solver = restart(base, intervals, s_noise=s_noise, grid=grid, grid_options=grid_options)
        return dataclasses.replace(solver, denoise_to_zero=bool(denoise_to_zero or solver.denoise_to_zero))


def _file_solver(method):
    def build(path):
        return load_learned(path, method)[0]

    return build


FILE_SOLVERS = Registry("solver", {"file": _file_solver(None), "olss": _file_solver("olss"),
                                   "solver_schedule": _file_solver("search")})


SOLVERS = Registry("solver", {entry.name: entry for entry in (
    DDIM, Euler, Heun, DEISTab, DEISRhoAB, DEISRhoRK, IPNDM,
    WithCorrector(DPMSolverPP2M, variants=DPMSolverPP2M.variants() + (dict(order=2, corrector=True),)),
    WithCorrector(DPMSolverPP3M, variants=DPMSolverPP3M.variants() + (dict(order=3, corrector=True),)),
    # UniPC is UniP wrapped in UniC; lower_order_final=False where it would hide the formula's order (it caps every
    # variant at 2).
    WithCorrector(UniP, corrector=True, variants=(
        dict(order=1), dict(order=1, variant="bh1"),
        dict(order=2, variant="bh1", lower_order_final=False), dict(order=2, variant="bh2", lower_order_final=False),
        dict(order=3, variant="bh1", lower_order_final=False), dict(order=3, variant="bh2", lower_order_final=False),
        dict(order=3, corrector=False, lower_order_final=False), {})),
    Adaptive, EulerAncestral, EDMStochastic,
    WithCorrector(DPMSolverPP2MSDE), WithCorrector(DPMSolverPP3MSDE),  # UniC refuses them unless eta = 0
    SASolver, DDPM, Restarted(), DPMSolverV3, FlowMap, AMED)},
    unknown=("unknown {kind} {name!r}; valid names: {valid}, or a learned sampler from a file: "
             f"{FILE_SOLVERS.valid()} with path=..."))


def load_learned(path: str, method: str | None = None) -> tuple[Solver, np.ndarray]:
    """(solver, ts) of a learned-sampler file (`schedules.save_learned`); with `method`, the file must hold it."""
    ts, record = read_learned(path, method)
    spec = record["solver"]
    options = {k: _tupled(v) for k, v in spec["options"].items()}
    if spec["name"] == LinearTable.name:
        return LinearTable(**options), ts
    return SOLVERS.build(spec["name"], **options), ts


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def get_solver(name: str, **options: Any) -> Solver:
    """The solver registered under `name`, with keyword options.

    Options by solver: deis_tab (order 1-4, lower_order_final, num_quad), deis_rhoab / ipndm (order 1-4,
    lower_order_final), deis_rhork (method "2heun" | "3kutta" | "4rk"), dpmpp_2m / dpmpp_3m (lower_order_final,
    variant, corrector), unipc (order 1-3, variant "bh1" | "bh2", corrector, lower_order_final), adaptive (method,
    rtol, atol, max_steps, gamma_floor); the stochastic ones: ddim (eta), euler_ancestral (eta), edm_stochastic
    (S_churn, S_min, S_max, S_noise), dpmpp_2m_sde (eta, solver_type), dpmpp_3m_sde (eta), sa_solver
    (predictor_order, corrector_order, tau, tau_interval, variant, lower_order_final; tau = 0 is deterministic),
    ddpm (variance "small" | "large" | "learned", clip_x0; always stochastic);
    restart (base: a deterministic solver's name, spec or object, default "heun"; intervals: a preset of
    `samplers.restart.PRESETS` or (N, K, gamma_min, gamma_max) rows; s_noise; grid, grid_options);
    flow_map (no options: x <- f(x, t_i, t_{i+1}) with a model of prediction "flow_map", `samplers.flow_map_solver`);
    amed (base "euler" | "ipndm" | "dpmpp", order, lower_order_final, afs, scale_dir, scale_time, r, params: a
    predictor from `schedules.learn("amed", ...)`; `samplers.amed`).
    Every solver takes denoise_to_zero; `lower_order_final` means the same in every multistep solver
    (`samplers.multistep`); `corrector=True` returns the predictor wrapped in UniC (`samplers.unic`). The paper's
    tAB-r is deis_tab with order = r + 1. A learned sampler loads from its file: "file", "olss" or
    "solver_schedule" with path=... (it runs on the grid saved with it).

    Numeric options (eta, tau, S_churn, S_min, S_max, S_noise, rtol, atol, ...) may be arrays or tracers: they are
    the solver's pytree leaves, so `jax.vmap` over them is one program (`samplers.pytrees`).

    Args:
      name: a key of `SOLVERS`.
      **options: the solver's dataclass fields.

    Returns:
      The solver, an immutable pytree (`samplers.Solver`).

    Raises:
      ValueError: an unknown name (the valid ones are listed) or option, or an invalid option value.

    Example:
        >>> solver = get_solver("deis_tab", order=3)
        >>> solver.order
        3
    """
    if isinstance(name, str) and name in FILE_SOLVERS:
        return FILE_SOLVERS.build(name, **options)
    SOLVERS.check(name)
    return SOLVERS.build(name, **options)
