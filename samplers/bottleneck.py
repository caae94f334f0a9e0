"""Bottleneck sampling (Tian et al. 2025): training-free high -> low -> high resolution denoising, as a composition.

A plan is a list of `Stage`s. Stage k runs the probability-flow ODE at its own resolution with its own solver and
time grid, from its start time `t_max * strength` down to its end time (the grid's t_min unless `end` is set). At a
stage change:

  1. the clean estimate: the state itself when the stage ended at the process's t_min, otherwise the model's x0
     prediction at the stage's last state (one more model call, counted in the NFE);
  2. resizing to the next stage's resolution (`jax.image.resize`; Lanczos-3 by default, also bilinear, bicubic and
     nearest);
  3. re-noising to the next stage's start time t_s: `renoise="fresh"` draws x_{t_s} = alpha(t_s) x0 + sigma(t_s) z
     with fresh Gaussian z, the process's marginal at t_s given x0 (the published rule); `renoise="none"` starts
     the next stage from the resized clean estimate itself (the paper's "without re-noising" ablation).

The first stage starts from the given noise at t_max * strength (strength 1: pure noise). Each stage's grid is any
registered one (`schedules.GRIDS`, with options): the published rectified-flow recipe is "flow_shift" with a
per-stage shift (FLUX: sizes [1024, 512, 1024], steps [6, 20, 8], strengths [1, 0.8, 0.6], shifts [9, 6, 9]).
Works with any registered solver, any prediction kind the solvers accept, on the OT / rectified-flow process and on
VP. With one stage at the model's resolution and strength 1, the result is exactly `samplers.sample`'s.

Images are NHWC; `resolution` is the side of a square stage image, or (height, width).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, DTypeLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers.driver import sample
from fastsamplers.samplers.pytrees import merge, split
from fastsamplers.samplers.solvers import get_solver
from fastsamplers.schedules.grids import get_timesteps
from fastsamplers.schedules.processes import get_process

if TYPE_CHECKING:
    from fastsamplers.samplers.base import Solver
    from fastsamplers.schedules.processes import Process

_UNKNOWN = "unknown {kind} {name!r}; valid: {valid}"
# name -> `jax.image.resize`'s method.
RESIZE_METHODS = Registry("resize method", {"lanczos": "lanczos3", "lanczos3": "lanczos3", "lanczos5": "lanczos5",
                                            "bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"},
                          unknown=_UNKNOWN)
RENOISE = Registry.of_names("renoise mode", ("fresh", "none"), ordered=True, unknown=_UNKNOWN)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One resolution of a bottleneck plan.

    resolution: image side (int) or (height, width). num_steps: solver steps in this stage. strength: the start
    time as a fraction of the process's t_max, in (0, 1]. end: the end time as a fraction of t_max (None: the
    process's t_min, i.e. fully denoised). grid / grid_options: the stage's time grid (e.g. "flow_shift",
    {"shift": 6.0}). solver / solver_options: any registered solver.
    """

    resolution: int | tuple[int, int]
    num_steps: int
    strength: float = 1.0
    end: float | None = None
    grid: str = "uniform"
    grid_options: tuple = ()  # ((name, value), ...) or a dict; kept hashable
    solver: str = "ddim"
    solver_options: tuple = ()

    @property
    def size(self) -> tuple[int, ...]:
        return (self.resolution, self.resolution) if isinstance(self.resolution, int) else tuple(self.resolution)


def _options(value):
    return dict(value.items() if isinstance(value, dict) else value)


def plan(stages: Iterable[Stage], process: Process | str,
         total_steps: int | None = None) -> list[tuple[Stage, Solver, np.ndarray]]:
    """Check a list of stages and build each stage's (solver, time grid); raises ValueError with the reason.

    Returns:
      A list of (stage, solver, ts) with ts a numpy array of num_steps + 1 decreasing times.
    """
    process = get_process(process) if isinstance(process, str) else process
    stages = list(stages)
    if not stages:
        raise ValueError("a bottleneck plan needs at least one stage")
    if total_steps is not None and sum(s.num_steps for s in stages) != total_steps:
        raise ValueError(f"the stages' steps {[s.num_steps for s in stages]} add up to "
                         f"{sum(s.num_steps for s in stages)}, not total_steps={total_steps}")
    built = []
    for k, stage in enumerate(stages):
        if not 0.0 < stage.strength <= 1.0:
            raise ValueError(f"stage {k}: strength must be in (0, 1], got {stage.strength}")
        if len(stage.size) != 2 or min(stage.size) < 1:
            raise ValueError(f"stage {k}: resolution must be a positive int or (height, width), got "
                             f"{stage.resolution!r}")
        t_start = process.t_max * stage.strength
        t_end = process.t_min if stage.end is None else process.t_max * stage.end
        if stage.end is not None and not 0.0 <= t_end < t_start:
            raise ValueError(f"stage {k}: end={stage.end} must lie in [0, strength={stage.strength})")
        solver = get_solver(stage.solver, **_options(stage.solver_options))
        solver.check_grid(stage.num_steps)
        ts = np.asarray(get_timesteps(stage.grid, process, stage.num_steps, t_min=max(t_end,
                        process.t_min), t_max=t_start, **_options(stage.grid_options)))
        built.append((stage, solver, ts))
    return built


def check_resolutions(model_fn: ModelFn, stages: Sequence[Stage], channels: int, dtype: DTypeLike = jnp.float32,
                      args: PyTree = None, batch: int = 1) -> None:
    """Trace model_fn at every stage's resolution on a `batch` of images (model_fn(x, t, args) when args is given,
    args with the sampled batch's per-sample leaves); a size the model cannot take fails here, naming the stage."""
    extra = () if args is None else (jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                                                  args),)
    for k, stage in enumerate(stages):
        x = jax.ShapeDtypeStruct((batch, *stage.size, channels), dtype)
        try:
            jax.eval_shape(model_fn, x, jax.ShapeDtypeStruct((), dtype), *extra)
        except Exception as error:  # the model's own error, re-raised with the stage that caused it
            raise ValueError(f"stage {k}: the model cannot take images of {stage.size}: {error}") from error


def resize(images: jax.Array, size: tuple[int, ...], method: str = "lanczos") -> jax.Array:
    """NHWC images resized to size = (height, width) with `method` (see RESIZE_METHODS)."""
    jax_method = RESIZE_METHODS.lookup(method)
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    shape = (images.shape[0], *size, images.shape[3])
    return jax.image.resize(images, shape, jax_method, antialias=True).astype(images.dtype)


def renoise(key: jax.Array, x0: jax.Array, t: ArrayLike, process: Process, mode: str = "fresh") -> jax.Array:
    """The state at time t for the clean estimate x0: alpha(t) x0 + sigma(t) z, z fresh ("fresh"); or x0 ("none")."""
    RENOISE.check(mode)
    if mode == "none":
        return x0
    z = jax.random.normal(key, x0.shape, x0.dtype)
    return (process.alpha(t) * x0 + process.sigma(t) * z).astype(x0.dtype)


def bottleneck_sample(model_fn: ModelFn, stages: Sequence[Stage], process: Process | str, x_init: jax.Array,
                      key: jax.Array | None, prediction: str = "eps", resize_method: str = "lanczos",
                      renoise_mode: str = "fresh", total_steps: int | None = None,
                      args: PyTree = None) -> tuple[jax.Array, dict[str, Any]]:
    """Sample through the stages (see the module docstring).

    Args:
      model_fn: (x, t) -> prediction of kind `prediction`, at any stage resolution (NHWC); (x, t, args) ->
        prediction when `args` is given.
      stages: a sequence of `Stage`.
      process: a `schedules.Process` or its name.
      x_init: (n, H0, W0, C) noise at the first stage's resolution, at time t_max * strength of stage 0 (draw it
        with `process.prior(key, shape, t=...)`).
      key: PRNG key for the re-noising draws.
      prediction: what model_fn predicts ("eps", "x0", "v", "velocity").
      resize_method, renoise_mode: see `resize` and `renoise`.
      total_steps: if given, the stages' steps must add up to it.
      args: any pytree passed to the model as its third argument (network parameters, labels); None: the model is
        called model_fn(x, t).

    The whole plan (every stage, resize, re-noise and clean estimate) is one compiled program per (model function,
    stages, process, prediction, resize and re-noise modes, whether args is given): x_init, key, the stages' time
    grids, `args` and a model wrapper's numbers (`samplers.pytrees.split`) are its traced arguments, so new noise, keys or parameter values of the same shapes reuse it
    and no weight is compiled in as a constant. Under an outer `jax.jit` it is traced into the caller's program.

    Returns:
      (x, info): x (n, H_last, W_last, C); info["nfe"] the model calls made (solver calls plus the x0 estimates at
      stage ends above t_min), info["stage_nfe"] per stage.
    """
    process = get_process(process) if isinstance(process, str) else process
    predictions.check_kind(prediction)
    RESIZE_METHODS.check(resize_method)
    RENOISE.check(renoise_mode)
    built = plan(stages, process, total_steps)
    if x_init.ndim != 4 or tuple(x_init.shape[1:3]) != built[0][0].size:
        raise ValueError(f"x_init must be (n, {built[0][0].size[0]}, {built[0][0].size[1]}, C) for the first "
                         f"stage, got {x_init.shape}")
    model_key, model_leaves = split(model_fn)  # a model wrapper's numbers (a guidance scale) are traced
    static = (model_key, args is not None, tuple(stages), process, prediction, resize_method, renoise_mode)
    try:
        run = _compiled_stages(*static)
    except TypeError:  # unhashable stage options (a dict): a program of its own, still with traced arguments
        run = jax.jit(_stages_fn(*static))
    x, traced_nfe = run(model_leaves, x_init, key, args, tuple(jnp.asarray(ts) for _, _, ts in built))
    stage_nfe = []
    for k, (stage, solver, ts) in enumerate(built):
        nfe = solver.nfe(stage.num_steps) if solver.static_nfe else traced_nfe[k]  # a plain int where static
        if not isinstance(nfe, jax.core.Tracer):
            nfe = int(nfe)
        stage_nfe.append(nfe + (1 if _clean_estimate_call(k, built, process) else 0))
    return x, {"nfe": sum(stage_nfe), "stage_nfe": stage_nfe}


def _clean_estimate_call(k, built, process):
    """Whether stage k ends above t_min before another stage: its clean estimate costs one more model call."""
    return k < len(built) - 1 and float(built[k][2][-1]) > process.t_min


def _stages_fn(model_key, has_args, stages, process, prediction, resize_method, renoise_mode):
    """(model leaves, x_init, key, args, grids) -> (x, per-stage solver NFE): every stage of the plan, traced
    once."""

    def run(model_leaves, x_init, key, args, grids):
        model_fn = merge(model_key, model_leaves)
        args = args if has_args else None
        built = plan(stages, process)
        # The sampled batch: args may hold per-sample leaves (a class-conditional model's labels).
        check_resolutions(model_fn, [s for s, _, _ in built], x_init.shape[-1], x_init.dtype, args, x_init.shape[0])
        model = model_fn if args is None else (lambda x, t: model_fn(x, t, args))
        x, stage_nfe = x_init, []
        for k, ((stage, solver, ts), grid) in enumerate(zip(built, grids)):
            if k > 0:
                x = renoise(jax.random.fold_in(key, k), resize(x, stage.size, resize_method), float(ts[0]), process,
                            renoise_mode)
            x, info = sample(model_fn, solver, process, x, grid, prediction=prediction, check_finite=False,
                             args=args)
            if _clean_estimate_call(k, built, process):
                t = jnp.asarray(ts[-1], x.dtype)
                x = predictions.convert(model(x, t), prediction, "x0", x, t, process).astype(x.dtype)
            stage_nfe.append(jnp.asarray(info["nfe"]))
        return x, tuple(stage_nfe)

    return run


@functools.lru_cache(maxsize=32)
def _compiled_stages(model_key, has_args, stages, process, prediction, resize_method, renoise_mode):
    return jax.jit(_stages_fn(model_key, has_args, stages, process, prediction, resize_method, renoise_mode))
