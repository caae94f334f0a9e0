"""Integrators of the probability-flow ODE: a registry of solvers and the `sample` driver."""

from samplers.base import Solver, sample
from samplers.reference import exact_flow_map
from samplers.registry import SOLVERS, get_solver

__all__ = ["SOLVERS", "Solver", "exact_flow_map", "get_solver", "sample"]
