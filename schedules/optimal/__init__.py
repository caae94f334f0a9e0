"""Schedule optimisation, the layer above the samplers: dynamic programs over a teacher trajectory (OSS, Bellman/BOSS,
GITS; `distillation.py`), gradient refinement through the sampler (`refinement.py`) and learned samplers
(`learned.py`: the DP that prices the multistep solver itself, OLSS and the solver-schedule search). `schedules.distill`, `schedules.distill_many`,
`schedules.refine` and `schedules.learn` are these functions."""

from fastsamplers.schedules.optimal.distillation import distill, distill_many
from fastsamplers.schedules.optimal.learned import learn
from fastsamplers.schedules.optimal.refinement import refine

__all__ = ["distill", "distill_many", "learn", "refine"]
