"""`schedules.learn`: samplers learned from a teacher on a calibration batch, each returned as (solver, ts).

- "dp" (`multistep_dp.py`): the best M-step schedule for a multistep solver, its own update priced by a DP.
- "olss" (`olss.py`): OLSS, a linear table whose every step is fitted by least squares (Duan et al. 2023).
- "search" (`solver_search.py`): a solver schedule, a per-step choice of method and time point, found by a local
  search that scores whole samples against the teacher (after USF / S3).
- "dpm_solver_v3" (`ems.py`): DPM-Solver-v3 with the model's empirical statistics l, s, b estimated on the
  teacher's samples of x_init (or on data given as x0); the teacher only makes those samples.
- "amed" (`amed_fit.py`): the AMED predictor (an intermediate time and scales per step, `samplers.amed`) distilled
  from the base solver on a refined grid (Zhou et al. 2024).

Each pair runs as `samplers.sample(model_fn, solver, process, x, ts, prediction=...)` and is saved with its
provenance by `schedules.save_learned(path, solver, ts, process=..., method=...)`; `samplers.get_solver("file",
path=path)` loads the solver back and `get_timesteps("file", process, M, path=path)` its grid.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp

from fastsamplers import samplers
from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.schedules.optimal import amed_fit, ems, multistep_dp, olss, solver_search
from fastsamplers.schedules.optimal.distillation import (SolverSpec, TeacherGrid, _check_step_count,
                                                        _check_teacher_steps)
from fastsamplers.schedules.optimal.teacher import Teacher
from fastsamplers.schedules.processes import Process, get_process

METHODS = Registry("learning method", {"dp": multistep_dp.learn_dp, "olss": olss.learn_olss,
                                       "search": solver_search.learn_search, "amed": amed_fit.learn_amed,
                                       "dpm_solver_v3": ems.learn_dpm_solver_v3},
                   reserved=("teacher", "x_init", "num_steps"))


def learn(method: str, model_fn: ModelFn, process: Process | str, x_init: ArrayLike, num_steps: int, *,
          prediction: str = "eps", args: PyTree = None, teacher_steps: int = 200, teacher_grid: TeacherGrid = "logsnr",
          teacher_solver: SolverSpec | samplers.Solver = ("deis_tab", {"order": 3}), t_min: float | None = None,
          t_max: float | None = None, return_info: bool = False,
          **options: Any) -> tuple[samplers.Solver, jax.Array] | tuple[samplers.Solver, jax.Array, dict[str, Any]]:
    """Learn an M-step sampler from a teacher on the calibration batch x_init.

    Args:
      method: "dp", "olss", "search", "dpm_solver_v3" or "amed" (module docstring).
      model_fn, process, x_init, prediction, args: as `samplers.sample` (x_init at t_max is the calibration batch:
        evaluate the result on other noise).
      num_steps: M, the student's steps.
      teacher_steps, teacher_grid, teacher_solver: the teacher's fine solve from x_init (a (name, options) pair, a
        name, or a Solver), as `schedules.distill`.
      t_min, t_max: the ends of the grids (default: the process's).
      return_info: also return a dict of what was found and what it cost (model calls per calibration sample).
      **options: the method's own: dp (solver, window and the solver's options), olss (times, fit, rank), search
        (solvers, grids, budget, moves, strategies), dpm_solver_v3 (num_points, order, predictor_pseudo, corrector,
        corrector_pseudo, quadrature, x0, num_probes, chunk_size, seed), amed (base, order, afs, scale_dir,
        scale_time, grid, teacher_kind, insert, iterations, learning_rate, batch_size, seed, students, loss;
        num_steps is AMED's steps, 2 model calls each).

    Returns:
      (solver, ts) for `samplers.sample`, and info with return_info.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules, samplers
        >>> from fastsamplers.models import GaussianMixture
        >>> p = schedules.get_process("vp_linear")
        >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=2)
        >>> x_cal = p.prior(jax.random.PRNGKey(1), (64, 2))
        >>> solver, ts = schedules.learn("olss", gm.model_fn(p), p, x_cal, 4, teacher_steps=40)
        >>> x, info = samplers.sample(gm.model_fn(p), solver, p, p.prior(jax.random.PRNGKey(2), (8, 2)), ts)
        >>> info["nfe"]
        4
    """
    fn = METHODS.lookup(method)
    if not any(q.kind is inspect.Parameter.VAR_KEYWORD for q in inspect.signature(fn).parameters.values()):
        METHODS.check_options(method, options)
    _check_teacher_steps(teacher_steps)
    _check_step_count(num_steps, teacher_steps)
    predictions.check_kind(prediction)
    process = get_process(process) if isinstance(process, str) else process
    if isinstance(teacher_solver, str):
        teacher_solver = (teacher_solver, {})
    if not isinstance(teacher_solver, samplers.Solver):
        teacher_solver = samplers.get_solver(teacher_solver[0], **dict(teacher_solver[1]))
    x_init = jnp.asarray(x_init)
    if x_init.ndim < 1 or x_init.shape[0] < 1:
        raise ValueError(f"x_init must have a leading batch axis with at least one sample, got shape {x_init.shape}")
    teacher = Teacher(model_fn=model_fn, process=process, prediction=prediction, args=args,
                      num_steps=int(teacher_steps), grid_spec=teacher_grid, solver=teacher_solver, t_min=t_min,
                      t_max=t_max)
    solver, ts, info = fn(teacher, x_init, int(num_steps), **options)
    if return_info:
        return solver, ts, dict(info, method=method)
    return solver, ts


__all__ = ["learn"]
