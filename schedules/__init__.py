"""Noise processes and time grids (which t's a sampler visits). t = 0 is data, t = t_max is noise."""

from schedules.grids import GRIDS, get_timesteps, interpolate_log_linear
from schedules.processes import PROCESSES, Process, get_process


def distill(method, model_fn, solver, process, x_init, num_steps, **options):
    """Distil an optimal step schedule ("oss", "bellman", "gits"). Not built yet: tracked as issue 3."""
    raise NotImplementedError(
        "schedules.distill (OSS / Bellman / GITS dynamic programming) is not implemented yet; use a standard grid "
        "from schedules.get_timesteps or a published list (get_timesteps('published', ..., name=...))"
    )


def refine(ts, model_fn, solver, process, x_init, **options):
    """Refine a schedule by gradients through the sampler. Not built yet: tracked as issue 3."""
    raise NotImplementedError(
        "schedules.refine (gradient refinement of a schedule through samplers.sample) is not implemented yet"
    )


__all__ = ["GRIDS", "PROCESSES", "Process", "distill", "get_process", "get_timesteps", "interpolate_log_linear",
           "refine"]
