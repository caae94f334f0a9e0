"""Integrators of the probability-flow ODE: a registry of solvers and the `sample` driver."""

from fastsamplers.samplers import fk, scaling
from fastsamplers.samplers.base import Solver
from fastsamplers.samplers.cfg_pp import cfg_pp, cfg_pp_solver
from fastsamplers.samplers.classifier_guidance import classifier_guided
from fastsamplers.samplers.dpm_ot import dpm_ot_sample
from fastsamplers.samplers.driver import sample
from fastsamplers.samplers.guidance import guided
from fastsamplers.samplers.reference import exact_flow_map
from fastsamplers.samplers.restart import restart
from fastsamplers.samplers.semi_discrete_ot import SemiDiscreteOT
from fastsamplers.samplers.solvers import FILE_SOLVERS, SOLVERS, get_solver, load_learned
from fastsamplers.samplers.unipc import unic

__all__ = ["FILE_SOLVERS", "SOLVERS", "SemiDiscreteOT", "Solver", "cfg_pp", "cfg_pp_solver", "classifier_guided",
           "dpm_ot_sample", "exact_flow_map", "fk", "get_solver", "guided", "load_learned", "restart", "sample",
           "scaling", "unic"]
