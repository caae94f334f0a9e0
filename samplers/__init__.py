"""Integrators of the probability-flow ODE: a registry of solvers and the `sample` driver."""

from samplers.base import Solver
from samplers.driver import sample
from samplers.guidance import guided
from samplers.reference import exact_flow_map
from samplers.solvers import SOLVERS, get_solver

__all__ = ["SOLVERS", "Solver", "exact_flow_map", "get_solver", "guided", "sample"]
