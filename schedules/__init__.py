"""Noise processes and time grids (which t's a sampler visits; t = 0 is data, t = t_max is noise), and the optimal
schedules distilled from a model.

Layers: `processes`, `grids`, `files` and `published` are the bottom of the project and import nothing above them.
`schedules.optimal` (distill, distill_many, refine, learn) sits above the samplers, which it runs. So that `import
schedules` stays cheap and acyclic while `schedules.distill` still works, the four are lazy attributes: this
module's `__getattr__` is the one place in the project that imports upwards, on first use.
"""

from __future__ import annotations

from typing import Any

from fastsamplers.schedules.files import load_schedule, save_learned, save_schedule
from fastsamplers.schedules.kinetic import (KineticOptimal, Separation, kinetic_energy, kinetic_optimal_process,
                                            separation_from_data, separation_from_denoiser)
from fastsamplers.schedules.grids import GRIDS, get_timesteps, interpolate_log_linear
from fastsamplers.schedules.process_transform import transform
from fastsamplers.schedules.processes import PROCESSES, Process, get_process

_OPTIMAL = ("distill", "distill_many", "refine", "learn")


def __getattr__(name: str) -> Any:
    if name in _OPTIMAL:
        from fastsamplers.schedules import optimal  # the documented upward import (see the module docstring)

        return getattr(optimal, name)
    raise AttributeError(f"module 'fastsamplers.schedules' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_OPTIMAL))


__all__ = ["GRIDS", "KineticOptimal", "PROCESSES", "Process", "Separation", "distill", "distill_many", "get_process",
           "get_timesteps", "interpolate_log_linear", "kinetic_energy", "kinetic_optimal_process", "learn",
           "load_schedule", "refine", "save_learned", "save_schedule", "separation_from_data",
           "separation_from_denoiser", "transform"]
