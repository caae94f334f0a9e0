"""Noise processes and time grids (which t's a sampler visits). t = 0 is data, t = t_max is noise."""

from schedules.files import load_schedule, save_schedule
from schedules.grids import GRIDS, get_timesteps, interpolate_log_linear
from schedules.processes import PROCESSES, Process, get_process


def distill(method, model_fn, solver, process, x_init, num_steps, **options):
    """Distil an optimal step schedule: "oss", "bellman" or "gits" (`schedules.distillation.distill`)."""
    from schedules import distillation  # late: the DPs call samplers, which import schedules

    return distillation.distill(method, model_fn, solver, process, x_init, num_steps, **options)


def distill_many(method, model_fn, solver, process, x_init, step_counts, **options):
    """Distil schedules for several step counts from one teacher and one dynamic program: {k: ts}
    (`schedules.distillation.distill_many`)."""
    from schedules import distillation  # late, like distill

    return distillation.distill_many(method, model_fn, solver, process, x_init, step_counts, **options)


def refine(ts, model_fn, solver, process, x_init, **options):
    """Refine a schedule for the actual solver by gradients through the sampler (`schedules.refinement.refine`)."""
    from schedules import refinement  # late, like distill

    return refinement.refine(ts, model_fn, solver, process, x_init, **options)


__all__ = ["GRIDS", "PROCESSES", "Process", "distill", "distill_many", "get_process", "get_timesteps",
           "interpolate_log_linear", "load_schedule", "refine", "save_schedule"]
