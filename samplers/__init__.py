"""Integrators of the probability-flow ODE: a registry of solvers and the `sample` driver."""

from samplers.base import Solver
from samplers.driver import sample
from samplers.guidance import guided
from samplers.reference import exact_flow_map
from samplers.solvers import FILE_SOLVERS, SOLVERS, get_solver, load_learned

__all__ = ["FILE_SOLVERS", "SOLVERS", "Solver", "exact_flow_map", "get_solver", "guided", "load_learned", "sample"]
