"""Schedule optimisation, the layer above the samplers: dynamic programs over a teacher trajectory (OSS, Bellman/BOSS,
GITS; `distillation.py`) and gradient refinement through the sampler (`refinement.py`). `schedules.distill`,
`schedules.distill_many` and `schedules.refine` are these functions."""

from schedules.optimal.distillation import distill, distill_many
from schedules.optimal.refinement import refine

__all__ = ["distill", "distill_many", "refine"]
