"""`schedules.learn("amed", ...)`: the AMED predictor distilled from a finer teacher (Zhou et al. 2024,
`training/loss.py`; sheet section D).

The teacher runs the student's grid with `insert` points added inside each interval (equal steps in log-SNR), and its
states at the student's points are the targets: (M + 1) N teacher steps. "published" teachers: Heun with M = 1 for
the AMED-Solver (base "euler"), the base solver itself with M = 2 for the plugins (iPNDM of order 4, DPM-Solver++(3M)).
The students (`samplers.amed.student_states`) are single-step for the AMED-Solver (step n starts from the teacher's
x_n) and chained for the plugins (the student's own x_n and history), as published, or unrolled (gradients through the
whole student trajectory); the loss is the mean over steps and samples of ||x_stu_{n+1} - x_tea_{n+1}||^2 (summed over
elements). Adam (optax), lr 5e-3, full-batch or minibatch
iterations, all of them one compiled `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastsamplers import samplers
from fastsamplers.core import Registry
from fastsamplers.samplers.amed import AMED, STUDENTS, init_params, student_states
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.optimal.teacher import Teacher
from fastsamplers.schedules.processes import Process

TEACHER_KINDS = Registry.of_names("AMED teacher_kind", ("published", "given"), ordered=True,
                                  unknown="unknown {kind} {name!r}; valid: {valid} (given: learn's teacher_solver)")
LOSSES = Registry.of_names("AMED loss", ("steps", "final"), ordered=True,
                            unknown="unknown {kind} {name!r}; valid: {valid} (steps: every step's error, as published)")
# base: (the published teacher's solver, its options, M)
PUBLISHED_TEACHERS = {"euler": ("heun", {}, 1), "ipndm": ("ipndm", {"order": 4}, 2), "dpmpp": ("dpmpp_3m", {}, 2)}


def refined(process: Process, ts: jax.Array, insert: int) -> jax.Array:
    """ts with `insert` points inside each interval, equally spaced in log-SNR; ts[k] is refined[k (insert + 1)]."""
    lam = process.log_snr(ts)
    frac = jnp.arange(insert + 1, dtype=lam.dtype) / (insert + 1)
    inner = process.t_of_log_snr(lam[:-1, None] + frac[None, 1:] * (lam[1:] - lam[:-1])[:, None])
    return jnp.concatenate([jnp.concatenate([ts[:-1, None], inner], axis=1).reshape(-1), ts[-1:]])


def learn_amed(teacher: Teacher, x_init: jax.Array, num_steps: int, *, base: str = "euler", order: int | None = None,
               afs: bool = False, scale_dir: float = 0.0, scale_time: float = 0.0, grid: str = "logsnr",
               grid_options: dict | None = None, teacher_kind: str = "published", insert: int | None = None,
               iterations: int = 300, learning_rate: float = 5e-3, batch_size: int | None = None,
               students: str | None = None, loss: str = "steps",
               seed: int = 0) -> tuple[AMED, jax.Array, dict[str, Any]]:
    """The AMED solver of `num_steps` steps (2 num_steps - afs model calls) with a trained predictor.

    Args:
      teacher: the `teacher.Teacher` (model, process, t_min / t_max; its solver is used with teacher_kind="given").
      base, order, afs, scale_dir, scale_time: the `samplers.amed.AMED` options.
      grid, grid_options: the student's grid (`schedules.get_timesteps`).
      teacher_kind: "published" (module docstring) or "given" (the teacher's own solver).
      insert: M, the teacher's points inside each student interval (default: the published M, or with "given"
        teacher.num_steps // num_steps - 1).
      students: "single", "chained" or "unrolled" (`samplers.amed.student_states`; default: "single" for "euler",
        "chained" for the plugins, as published).
      loss: "steps", the mean of every step's squared error (published), or "final", the last state's only (with
        "unrolled" students, the sampler's own output against the teacher's).
      iterations, learning_rate, batch_size, seed: Adam's iterations, step size, minibatch (default the whole
        calibration batch) and the seed of the parameters and minibatches.

    Returns:
      (AMED with params, ts, info: the loss before and after, the mean (r, c, a) per step, seconds, model calls per
      calibration sample of the teacher and of the training).
    """
    TEACHER_KINDS.check(teacher_kind)
    students = ("single" if base == "euler" else "chained") if students is None else students
    STUDENTS.check(students)
    LOSSES.check(loss)
    for name, value, low in (("iterations", iterations, 0), ("num_steps", num_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if x_init.ndim < 2:
        raise ValueError(f"amed's predictor reads each sample: x_init must be (batch, ...), got shape {x_init.shape}")
    start = time.perf_counter()
    process = teacher.process
    student = AMED(base=base, order=order, afs=afs, scale_dir=scale_dir, scale_time=scale_time)
    ts = get_timesteps(grid, process, num_steps, t_min=teacher.t_min, t_max=teacher.t_max, **(grid_options or {}))
    if teacher_kind == "published":
        name, options, m = PUBLISHED_TEACHERS[base]
        fine_solver = samplers.get_solver(name, **options)
    else:
        fine_solver, m = teacher.solver, max(teacher.num_steps // num_steps - 1, 0)
    m = m if insert is None else int(insert)
    fine = refined(process, ts, m)
    xs = dataclasses.replace(teacher, solver=fine_solver).states(x_init, fine)[:: m + 1]  # (N + 1, B, ...)
    model = teacher.model(student.native)
    params = init_params(jax.random.PRNGKey(seed), int(np.prod(x_init.shape[1:])), scale_dir, scale_time,
                         x_init.dtype)
    optimizer = optax.adam(learning_rate)
    size = x_init.shape[0] if batch_size is None else min(int(batch_size), x_init.shape[0])

    def loss_fn(p, xs_batch):
        out, rca = student_states(dataclasses.replace(student, params=p), model, process, xs_batch, ts, students)
        err = jnp.sum((out - xs_batch[1:]).reshape(out.shape[0], out.shape[1], -1) ** 2, axis=-1)
        return jnp.mean(err[-1] if loss == "final" else err), rca

    @jax.jit
    def train(p, xs_all, key):
        def body(carry, k):
            p, opt_state = carry
            idx = jax.random.choice(k, xs_all.shape[1], (size,), replace=False)
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, xs_all[:, idx])
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        (p, _), losses = jax.lax.scan(body, (p, optimizer.init(p)), jax.random.split(key, iterations))
        return p, losses

    loss0, _ = jax.jit(loss_fn)(params, xs)
    params, losses = train(params, xs, jax.random.PRNGKey(seed + 1))
    loss1, (r, c, a) = jax.jit(loss_fn)(params, xs)
    if not np.isfinite(float(loss1)):
        raise FloatingPointError(f"amed training diverged: calibration loss {float(loss1)} after {iterations} "
                                 f"iterations (lower learning_rate)")
    solver = dataclasses.replace(student, params=params)
    info = {"loss_initial": float(loss0), "loss": float(loss1), "r": np.asarray(jnp.mean(r, axis=-1)).tolist(),
            "c": np.asarray(jnp.mean(c, axis=-1)).tolist(), "a": np.asarray(jnp.mean(a, axis=-1)).tolist(),
            "teacher": {"solver": fine_solver.spec(), "insert": m, "steps": int(fine.shape[0] - 1)},
            # per calibration sample: the teacher's solve, and the student's calls over the training's minibatches
            "model_calls": {"teacher": fine_solver.nfe(int(fine.shape[0] - 1)),
                            "training": iterations * size * student.nfe(num_steps) / x_init.shape[0]},
            "seconds": time.perf_counter() - start, "iterations": iterations, "students": students, "objective": loss}
    return solver, ts, info
