"""Distil a step schedule (or one per step count) for a solver, save it, and score it against a reference.

`run(config, workdir)` is what `scripts/distill_schedule.py` calls (configs: `experiments/configs/distill_oracle.py`
for the Gaussian-mixture oracle, `experiments/configs/distill_checkpoint.py` for a trained checkpoint). The dynamic
program of `config.method` (`schedules.distill_many`: OSS, Bellman/BOSS or GITS) picks the steps among the points of
a fine teacher trajectory, from draws of x_{t_max} (the distillation batch); a single schedule may then be refined
by gradients for the solver it is meant for (`schedules.refine`). Each schedule and every standard grid of
`config.compare_grids`, all with the same number of steps, are scored on a held-out batch (another key) by the RMSE
between `config.solver`'s samples at t_min and a reference solution from the same start.

`config.source` (absent = "oracle") names the model in the one registry of sources (`experiments.runs.sources`):
  "oracle"      the Gaussian-mixture oracle of `config.oracle`, `config.process` and `config.prediction`; exact draws
                of x_{t_max}; the reference is the probability-flow ODE's exact solution (`samplers.exact_flow_map`,
                float64).
  "checkpoint"  the latest weights of a training run (`config.train_config`, `config.checkpoint_dir`, `use_ema`,
                `resolution`: `experiments.train.checkpoint_target`), which also gives the process and the
                prediction kind; x_{t_max} is the process's prior noise; the reference is the teacher solver on the
                teacher grid with `config.reference_steps` steps (None: twice the teacher's), from the same noise.
  Any other source of the registry whose keys the config has is a model like a checkpoint's (prior noise, the
  teacher as the reference).

`config.step_counts` (absent or () = one schedule for `config.nfe` evaluations of `config.solver`): a tuple of step
counts, distilled together (one teacher, one dynamic program) and saved one file per count (`config.outputs.schedule`
with {num_steps} in it), each scored against the standard grids with as many steps; these files are what
`scripts/evaluate.py` reads as the grid "file:DIR/oss_s{num_steps}.json". One schedule is the case of one count;
refinement tunes one schedule for one solver, so it is not offered with step_counts.

Outputs: the schedule file(s) (`schedules.save_schedule`, with their provenance), a printed table, a JSON file
(config, rows, schedules, distillation info, versions) and a plot of the chosen steps in log-SNR.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.configs import grid_spec, grid_timesteps
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.runs import sources
from fastsamplers.experiments.train.checkpoints import Target
from fastsamplers.schedules.optimal import distillation

# Streams of the root key (fold_in(root, stream)), the convention of `experiments.runs.oracle_quickstart`: each draw
# stays put when others are added. Stream 0 draws the oracle (`sources.oracle_target`).
DISTILL_STREAM = 1  # the batch the dynamic program (and refinement) fits on
HELDOUT_STREAM = 2  # the batch every schedule is scored on


@dataclasses.dataclass(frozen=True)
class DistillSetup:
    """Everything a distillation config names, built and checked before any model call (`_validate`)."""

    source_name: str  # the name of config.source ("oracle" when absent)
    process: Any
    prediction: str
    solver: Any  # the solver the schedules are for (named in their files)
    step_counts: tuple  # the counts distilled, increasing; one count for a single schedule
    single: bool  # config.step_counts is empty: one schedule for config.nfe, which may be refined
    score_solvers: dict  # {count: the solver that scores it (`_solver_for_steps`)}
    grids: dict  # {count: {standard grid name: ts}}
    distill_options: dict  # keywords of `schedules.distill_many`
    target: Target  # the model (`sources.load`)
    source: sources.Source  # with the labels, null label and guided channels of a class-conditional model
    model_name: str
    reference_kind: str  # "exact" or "teacher": what the RMSE is measured against
    reference_record: dict

    @property
    def exact(self) -> bool:
        """The model is the oracle: exact draws of x_{t_max}, and its exact flow map as the reference."""
        return self.target.oracle is not None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Distil a schedule with `config.method` for `config.solver` at `config.nfe` evaluations (or one per entry of
    `config.step_counts`), save and score it.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/distill_oracle.py` or `distill_checkpoint.py`.
      workdir: a directory (created if missing) for the schedule file(s), `config.outputs.json` and `.png`.

    Returns:
      A dict: "config" (plain dict), "rows" (one per schedule: label, kind, solver, num_steps, nfe, rmse,
      ratio_to_best_grid: the best grid of the same count; with step_counts also solver_label), "distill" (method,
      student, teacher, teacher_ts, model calls and seconds of the run, and the indices and DP cost of each count),
      "refine" (its info, or None), "versions", "runtime_s" and "files" (paths written); with a source other than the
      oracle or step_counts also "source", "model" and "reference" (what the RMSE is measured against).
      One schedule: "ts" is {label: times}, "files" holds "schedule", and "distill" its "indices", "cost",
      "num_steps". With step_counts: "step_counts", "ts" is {str(k): {label: times}}, "files" holds "schedules"
      ({str(k): path}), and "distill" has per count "schedules": {str(k): indices, cost, num_steps}.
    """
    start = time.perf_counter()
    setup = _validate(config)
    process, solver, counts = setup.process, setup.solver, setup.step_counts
    inputs = _inputs(config, setup)
    (model_fn, args), (heldout_fn, heldout_args) = inputs["distill"], inputs["heldout"]
    x_distill, x_heldout = inputs["x_distill"], inputs["x_heldout"]

    tic = time.perf_counter()
    distilled = schedules.distill_many(config.method, model_fn, solver, process, x_distill, counts,
                                       **setup.distill_options, args=args, return_info=True)
    distilled = {k: (np.asarray(ts), info) for k, (ts, info) in distilled.items()}  # waits for the results
    distill_seconds = time.perf_counter() - tic
    for k, (_, info) in distilled.items():
        if not math.isfinite(info["cost"]):
            raise FloatingPointError(f"{config.method}: the {k}-step distillation cost is {info['cost']}; stopping")

    rows, refine_info = [], None
    for k in counts:
        named = [(f"{config.method} distilled", "distilled", distilled[k][0])]
        if config.refine.enabled:  # a single schedule (`_validate`)
            ts_refined, refine_info = _refine(config, setup, model_fn, x_distill, *distilled[k], args=args)
            named.append((f"{config.method} + refined", "refined", ts_refined))
        named += [(name, "grid", setup.grids[k][name]) for name in config.compare_grids]
        count_rows = _score(setup, inputs["reference"], setup.score_solvers[k], heldout_fn, x_heldout, named,
                            args=heldout_args)
        _add_ratios(count_rows)
        rows += count_rows

    info0 = distilled[counts[0]][1]
    per_count = {str(k): {"indices": np.asarray(info["indices"]).tolist(), "cost": float(info["cost"]),
                          "num_steps": int(info["num_steps"])} for k, (_, info) in distilled.items()}
    record = {
        "method": config.method,
        "student": info0["student"],
        "model_calls": int(info0["model_calls"]),
        "seconds": distill_seconds,
        "teacher": _teacher_record(config),
        "teacher_ts": np.asarray(info0["teacher_ts"], np.float64).tolist(),
    }
    if setup.single:
        record.update(per_count[str(counts[0])])
    else:
        record.update(step_counts=list(counts), schedules=per_count)
    print(format_summary(config, setup, record, refine_info))
    print(format_table(rows, reference=setup.reference_kind))

    os.makedirs(workdir, exist_ok=True)
    paths = {"json": os.path.join(workdir, config.outputs.json), "png": os.path.join(workdir, config.outputs.png)}
    schedule_paths = {str(k): os.path.join(workdir, config.outputs.schedule if setup.single
                                           else config.outputs.schedule.format(num_steps=k)) for k in counts}
    if setup.single:
        paths = {"schedule": schedule_paths[str(counts[0])], **paths}
    else:
        paths = {"schedules": schedule_paths, **paths}
    for k in counts:
        count_rows = [row for row in rows if row["num_steps"] == k]
        final = count_rows[1] if config.refine.enabled else count_rows[0]  # saved: refined when refined
        fields = dict(teacher=record["teacher"], cost=per_count[str(k)]["cost"], indices=per_count[str(k)]["indices"],
                      model_calls=record["model_calls"], distill_seconds=distill_seconds)
        if setup.single:
            fields.update(rmse_heldout=final["rmse"])
        else:
            fields.update(step_counts=record["step_counts"], rmse_heldout=final["rmse"],
                          scored_with=final["solver_label"], reference=setup.reference_record)
        provenance = _provenance(config, setup, **fields, refined=bool(config.refine.enabled))
        if config.refine.enabled:
            provenance.update(distilled_ts=distilled[k][0].astype(np.float64).tolist(), refine=refine_info,
                              rmse_heldout_distilled=count_rows[0]["rmse"])
        schedules.save_schedule(schedule_paths[str(k)], final["ts"], process=process.name, solver=solver.name,
                                nfe=final["nfe"], method=config.method, **provenance)
    plot_rows = rows if setup.single else [dict(row, label=f"{config.method}, {row['num_steps']} steps")
                                           for row in rows if row["kind"] == "distilled"]
    plot_schedules(plot_rows, process, paths["png"], teacher_ts=info0["teacher_ts"], title=_plot_title(config, setup),
                   reference=setup.reference_kind)
    results = {"config": config.to_dict()}
    if not setup.single or not setup.exact:
        results.update(source=setup.source_name, model=setup.model_name, reference=setup.reference_record)
    if not setup.single:
        results["step_counts"] = list(counts)
    results["rows"] = [{k: v for k, v in row.items() if k != "ts"} for row in rows]
    times = {str(k): {row["label"]: np.asarray(row["ts"], np.float64).tolist() for row in rows if row["num_steps"] == k}
             for k in counts}
    results.update(ts=times[str(counts[0])] if setup.single else times, distill=record, refine=refine_info,
                   versions=versions(), runtime_s=time.perf_counter() - start, files=paths)
    core.write_json(paths["json"], results, indent=2)
    return results


def _add_ratios(rows):
    """Each row's RMSE over the best standard grid's among `rows` (None without grids)."""
    grid_rmses = [row["rmse"] for row in rows if row["kind"] == "grid"]
    best_grid = min(grid_rmses) if grid_rmses else None
    for row in rows:
        row["ratio_to_best_grid"] = row["rmse"] / best_grid if best_grid else None


def _source_config(config):
    """`config` as the sources registry reads it (a new ConfigDict; `config` is left as it is).

    The oracle's distillation config keeps the oracle layout of `oracle_base.add_oracle` (shared with the quickstart):
    `process` and `prediction` at the top level (`--config.process=...`) and no `source` key, where
    `sources.oracle` reads `oracle.process` and `oracle.prediction`. They are copied there, so that the one registry
    of sources serves this runner without changing the keys its users set.
    """
    view = ml_collections.ConfigDict(config.to_dict())
    view.source = config.get("source", "oracle")
    if "oracle" in view and "process" in config:
        view.oracle.process, view.oracle.prediction = config.process, config.prediction
    return view


def _validate(config):
    """Build everything named in the config before any distillation, so a wrong name or size fails at once. The
    source is loaded here (a checkpoint gives the process the grids are checked on), after every name that does not
    need it. Returns a `DistillSetup`."""
    source_config = _source_config(config)
    source = sources.SOURCES.check(source_config.source)
    distillation.METHODS.check(config.method)
    for key in ("nfe", "batch", "eval_batch"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    step_counts = _step_counts(config)
    single = not step_counts
    if not single:
        if config.refine.enabled:
            raise ValueError(f"refine.enabled=True is not supported with step_counts {list(step_counts)}: refinement "
                             f"tunes one schedule for one solver and step count. Distil the step counts with "
                             f"--config.refine.enabled=False, or set --config.step_counts='()' to distil and refine "
                             f"the schedule of config.nfe")
        _check_schedule_template(config.outputs.schedule)
    solver = samplers.get_solver(config.solver.name, **_options(config.solver.options))
    if single:
        num_steps = solver.steps_for_nfe(config.nfe)
        solver.check_grid(num_steps)
        step_counts = (num_steps,)
    # The DP's student must be a single-step, first-order solver; this raises the library's message otherwise.
    student = samplers.get_solver(config.student)
    teacher_nfe = samplers.get_solver(config.teacher.solver, **_options(config.teacher.options)).nfe(
        config.teacher.steps)
    if not max(step_counts) <= config.teacher.steps:
        raise ValueError(f"teacher.steps = {config.teacher.steps} must be at least the schedule's {max(step_counts)} "
                         f"steps: the schedule picks its times among the teacher's")
    if len(set(config.compare_grids)) != len(config.compare_grids):
        raise ValueError(f"compare_grids has repeated names: {list(config.compare_grids)}")
    options = dict(teacher_steps=config.teacher.steps,
                   teacher_grid=grid_spec(config.teacher.grid, teacher_nfe, config.teacher.steps),
                   teacher_solver=(config.teacher.solver, _options(config.teacher.options)), student=config.student)
    if config.method == "oss":
        distillation.AGGREGATES.check(config.oss.aggregate, kind="oss.aggregate")
        if not config.oss.exact_steps and len(step_counts) > 1:
            raise ValueError(f"oss.exact_steps=False (the best of at most k steps) is for a single step count; with "
                             f"step_counts {list(step_counts)} every schedule has exactly its count of steps")
        options.update(exact_steps=config.oss.exact_steps, start_at_t_max=config.oss.start_at_t_max,
                       aggregate=config.oss.aggregate)
    else:
        distillation.METRICS.check(config.bellman.metric, kind="bellman.metric")
        options.update(metric=config.bellman.metric, coeff=config.bellman.coeff)
    if config.refine.enabled:
        if config.refine.num_iters is not None and config.refine.num_iters < 1:
            raise ValueError(f"refine.num_iters must be >= 1, got {config.refine.num_iters}")
        if config.refine.learning_rate is not None and not config.refine.learning_rate > 0:
            raise ValueError(f"refine.learning_rate must be > 0, got {config.refine.learning_rate}")
    score_solvers = {k: _solver_for_steps(solver, k) for k in step_counts}

    reference_steps = config.get("reference_steps")
    if reference_steps is not None and reference_steps < 1:
        raise ValueError(f"reference_steps must be >= 1 (or None: twice teacher.steps), got {reference_steps}")

    loaded = sources.load(source_config)
    target = loaded.target
    process, prediction = target.process, target.prediction
    if target.oracle is not None:
        reference = {"kind": "exact", "map": "samplers.exact_flow_map"}
        model_name = _model_name(config)
    else:
        reference = {"kind": "teacher", "steps": reference_steps or 2 * config.teacher.steps,
                     "grid": config.teacher.grid, "solver": config.teacher.solver,
                     "options": _options(config.teacher.options)}
        model_name = target.description
    distillation.student_step_fn(student, process)
    grid_timesteps(config.teacher.grid, process, config.teacher.steps, teacher_nfe)  # a bad grid fails here
    grids = {k: {name: grid_timesteps(name, process, k, score_solvers[k].nfe(k)) for name in config.compare_grids}
             for k in step_counts}
    options["prediction"] = prediction
    return DistillSetup(source_name=source, process=process, prediction=prediction, solver=solver,
                        step_counts=step_counts, single=single, score_solvers=score_solvers, grids=grids,
                        distill_options=options, target=target, source=loaded, model_name=model_name,
                        reference_kind=reference["kind"], reference_record=reference)


def _step_counts(config):
    """config.step_counts as a sorted tuple of distinct counts (() when absent or empty), each checked."""
    value = config.get("step_counts", ())
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"step_counts must be a tuple of step counts such as (4, 8), got {value!r}")
    counts = tuple(value)
    for k in counts:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"step_counts must hold integers >= 1, got {list(counts)}")
    return tuple(sorted({int(k) for k in counts}))


def _check_schedule_template(template):
    """With step_counts each count gets its own file: the name must hold {num_steps} (and no other field)."""
    try:
        names = {template.format(num_steps=k) for k in (1, 2)}
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"outputs.schedule {template!r} may only use the field {{num_steps}}: {err!r}") from err
    if len(names) != 2:
        raise ValueError(f"with step_counts, outputs.schedule must name one file per count with {{num_steps}}, e.g. "
                         f"'oss_s{{num_steps}}.json'; got {template!r}")


def _solver_for_steps(solver, num_steps):
    """The solver that scores a num_steps schedule: `solver` itself, or, for a multistep solver whose order is more
    than num_steps (`check_grid` refuses it), the same method at order num_steps (`Solver.at_order`; a UniC wrapper
    lowers its predictor), which takes exactly the steps of its warm-up (step i has order min(i + 1, order)) on so
    short a grid."""
    try:
        solver.check_grid(num_steps)
        return solver
    except ValueError:
        if solver.order <= num_steps:
            raise
    lowered = solver.at_order(num_steps)
    lowered.check_grid(num_steps)
    return lowered


def _inputs(config, setup):
    """The model, the distillation and held-out batches at t_max and the scoring reference of the config's source:
    {"distill", "heldout": (model_fn, args) of each batch (`_conditioned`), "x_distill", "x_heldout",
    "reference": fn(x_heldout, t_end) -> float64 array}."""
    process, target = setup.process, setup.target
    root = jax.random.PRNGKey(config.seed)
    scale = float(config.get("guidance_scale", 1.0))
    inputs = {"distill": _conditioned(setup.source, config.batch, scale),
              "heldout": _conditioned(setup.source, config.eval_batch, scale)}
    if setup.exact:
        oracle = target.oracle
        # One compiled draw instead of a dispatch (and, on first use, a compile) per operation.
        draw = jax.jit(lambda gm, key, num: gm.marginal_sample(key, num, process.t_max, process), static_argnums=2)
        x_distill = draw(oracle, jax.random.fold_in(root, DISTILL_STREAM), config.batch)
        x_heldout = draw(oracle, jax.random.fold_in(root, HELDOUT_STREAM), config.eval_batch)

        def reference(x, t_end):
            return samplers.exact_flow_map(oracle, process, x, process.t_max, t_end)

        return {**inputs, "x_distill": x_distill, "x_heldout": x_heldout, "reference": reference}

    @jax.jit
    def draw_noise(root):  # both batches in one compiled program: each random draw costs a compile on the CPU
        def prior(stream, num):
            key = jax.random.fold_in(root, stream)
            return process.prior(key, (num, *target.shape), t=process.t_max, dtype=jnp.float32)

        return prior(DISTILL_STREAM, config.batch), prior(HELDOUT_STREAM, config.eval_batch)

    x_distill, x_heldout = draw_noise(root)
    record = setup.reference_record
    teacher = samplers.get_solver(record["solver"], **record["options"])

    heldout_fn, heldout_args = inputs["heldout"]

    def reference(x, t_end):
        ts = grid_timesteps(record["grid"], process, record["steps"], teacher.nfe(record["steps"]), t_end,
                            process.t_max)
        y, _ = samplers.sample(heldout_fn, teacher, process, x, ts, prediction=target.prediction, args=heldout_args)
        return np.asarray(y, np.float64)

    return {**inputs, "x_distill": x_distill, "x_heldout": x_heldout, "reference": reference}


def _conditioned(source, num, guidance_scale):
    """(model_fn, args) for a batch of `num` samples: the model's own for an unconditional one; for a
    class-conditional one balanced labels (sample k: classes[k % len(classes)]) and, at a guidance scale other than
    1, classifier-free guidance against the null label on the channels its layout guides."""
    target = source.target
    if source.classes is None or not target.num_classes:
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model; "
                             f"{target.description} is unconditional")
        return target.model_fn, target.args
    labels = jnp.asarray(source.classes, jnp.int32)[jnp.arange(num) % len(source.classes)]
    if guidance_scale == 1.0:
        return target.model_fn, (target.args, labels)
    if source.null_label is None:
        raise ValueError(f"guidance_scale={guidance_scale}: {target.description} has no null label for the "
                         "unconditional call")
    model = samplers.guided(target.model_fn, guidance_scale, (target.args, jnp.full_like(labels, source.null_label)),
                            batch_axes=(None, 0), channel_mask=source.guidance_mask)
    return model, (target.args, labels)


def _provenance(config, setup, **fields):
    """What a saved schedule file records about how it was made: the model, the solver and student, the config,
    where a model other than the oracle came from (`sources.Source.record`) and what it is scored against, and `fields`
    (teacher, cost, indices, timings, held-out RMSE, ...)."""
    record = dict(model=setup.model_name, solver_options=_options(config.solver.options), student=config.student,
                  prediction=setup.prediction, **fields, config=config.to_dict())
    if not setup.exact:
        record.update(source=setup.source_name, checkpoint=setup.source.record, reference=setup.reference_record)
    return record


def _options(value):
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _start_state(process, x, t_start, ts):
    """x at t_start, as the start at ts[0]: itself, or rescaled to sigma(ts[0]) when the schedule starts lower (OSS
    with start_at_t_max=False: the usual truncated start, the convention of `schedules.distill`)."""
    if float(ts[0]) == float(t_start):
        return x
    scale = process.sigma(ts[0]) / process.sigma(t_start)
    return (scale * x).astype(x.dtype)


def _refine(config, setup, model_fn, x_distill, ts, info, args=None):
    """Refine the distilled `ts` for config.solver on the distillation batch, towards the endpoints of the teacher
    (`info["teacher_ts"]`: the target the distillation used; no use of the oracle's exactness, kept for scoring)."""
    process, solver = setup.process, setup.solver
    teacher = samplers.get_solver(config.teacher.solver, **_options(config.teacher.options))
    target, _ = samplers.sample(model_fn, teacher, process, x_distill, info["teacher_ts"],
                                prediction=setup.prediction, args=args)
    kwargs = {key: config.refine[key] for key in ("num_iters", "learning_rate") if config.refine[key] is not None}
    tic = time.perf_counter()
    ts_refined, info = schedules.refine(
        ts, model_fn, solver, process, _start_state(process, x_distill, process.t_max, ts),
        prediction=setup.prediction, target=target, return_info=True, args=args, **kwargs,
    )
    ts_refined = np.asarray(ts_refined)
    record = {key: _plain(value) for key, value in dict(info).items() if _plain(value) is not None}
    record["seconds"] = time.perf_counter() - tic
    return ts_refined, record


def _plain(value):
    """A JSON-ready scalar or short list from an info entry, or None for anything bulky or opaque."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.size(value) <= 1000:
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return None


def _score(setup, reference, solver, model_fn, x, named_schedules, args=None):
    """The RMSE of `solver` on each schedule against reference(x, t_end) (the exact flow map, or the fine teacher),
    from the held-out batch x at t_max."""
    process = setup.process
    targets = {}  # end time -> reference samples: every schedule here shares its ends, so this is computed once
    rows = []
    for label, kind, ts in named_schedules:
        t_end = float(ts[-1])
        if t_end not in targets:
            targets[t_end] = reference(x, t_end)
        y, info = samplers.sample(model_fn, solver, process, _start_state(process, x, process.t_max, ts), ts,
                                  prediction=setup.prediction, args=args)
        rmse = float(np.sqrt(np.mean((np.asarray(y, np.float64) - targets[t_end]) ** 2)))
        if not math.isfinite(rmse):
            raise FloatingPointError(f"{label}: the RMSE against the {setup.reference_kind} reference is {rmse}; "
                                     f"stopping")
        row = {"label": label, "kind": kind, "solver": solver.name, "num_steps": int(len(ts) - 1),
               "nfe": int(info["nfe"]), "rmse": rmse, "ts": np.asarray(ts)}
        if not setup.single:
            row["solver_label"] = _solver_text(solver)
        rows.append(row)
    return rows


def _solver_text(solver):
    """A solver's name and its order option, where its registry spec has one: "deis_tab order=3", "unipc order=2"."""
    return solver.name + (f" order={solver.order}" if "order" in solver.spec()["options"] else "")


def _teacher_record(config):
    return {"steps": config.teacher.steps, "grid": config.teacher.grid, "solver": config.teacher.solver,
            "options": _options(config.teacher.options)}


def _model_name(config):
    return (f"gaussian_mixture_oracle(dim={config.oracle.dim},K={config.oracle.num_components},"
            f"seed={config.seed})")


def _solver_label(config):
    return config.solver.name + "".join(f" {k}={v}" for k, v in _options(config.solver.options).items())


def _reference_text(setup):
    record = setup.reference_record
    if record["kind"] == "exact":
        return "the exact probability-flow map (samplers.exact_flow_map)"
    return (f"the teacher: {record['steps']} steps of {record['solver']} on the {record['grid']} grid, from the same "
            f"held-out noise")


def format_summary(config, setup, record, refine_info):
    """What was distilled (one schedule, or one per step count), from what, at what cost, in a few lines."""
    teacher = record["teacher"]
    counts = record.get("step_counts")
    if counts is None:
        head = (f"{record['method']} schedule for {_solver_label(config)}: {setup.step_counts[0]} steps "
                f"({config.nfe} NFE budget) on {setup.process.name}, {setup.model_name}")
        cost = (f"  distilled in {record['seconds']:.2f} s, {record['model_calls']} model calls per sample, "
                f"DP cost {record['cost']:.3e}; teacher indices {record['indices']}")
    else:
        head = (f"{record['method']} schedules at {len(counts)} step counts {counts} for {_solver_label(config)} on "
                f"{setup.process.name}, {setup.model_name}")
        cost = (f"  distilled in {record['seconds']:.2f} s (one teacher, one DP of {max(counts)} stages), "
                f"{record['model_calls']} model calls per sample")
    lines = [
        head,
        f"  teacher: {teacher['steps']} steps of {teacher['solver']} on the {teacher['grid']} grid; student step: "
        f"{record['student']}; distillation batch {config.batch}, held-out batch {config.eval_batch}",
        cost,
    ]
    if refine_info is not None:
        lines.append("  refined: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in refine_info.items() if not isinstance(v, list)))
    if counts is not None:
        lines.append(f"  RMSE against {_reference_text(setup)}; a count below the solver's order is scored at that "
                     f"order (its warm-up)")
        lines += [f"  {k:>3} steps: DP cost {entry['cost']:.3e}, teacher indices {entry['indices']}"
                  for k, entry in record["schedules"].items()]
    elif not setup.exact:
        lines.append(f"  RMSE against {_reference_text(setup)}")
    return "\n".join(lines)


def format_table(rows, reference="exact"):
    """The rows as an aligned text table (text columns left-aligned, numbers right-aligned); `reference` names what
    the RMSE is measured against."""
    header = ("schedule", "solver", "steps", "NFE", f"RMSE vs {reference} (held-out)", "ratio to best grid")
    lines = [
        (
            row["label"],
            row.get("solver_label", row["solver"]),
            str(row["num_steps"]),
            str(row["nfe"]),
            f"{row['rmse']:.3e}",
            "-" if row["ratio_to_best_grid"] is None else f"{row['ratio_to_best_grid']:.3f}",
        )
        for row in rows
    ]
    return render_table(header, lines, style="text", align="llrrrr")


def _plot_title(config, setup):
    if setup.single:
        what = (f"{config.method} schedule for {_solver_label(config)}, {setup.step_counts[0]} steps "
                f"({config.nfe} NFE)")
    else:
        what = f"{config.method} schedules for {_solver_label(config)} at {list(setup.step_counts)} steps"
    if setup.exact:
        model = f"{config.oracle.dim}-d Gaussian mixture ({config.oracle.num_components} components)"
    else:
        model = setup.model_name
    reference = ("the exact flow map" if setup.reference_kind == "exact"
                 else f"the teacher ({setup.reference_record['steps']} steps)")
    return f"{what}, {setup.process.name}\n{model}; RMSE vs {reference} on {config.eval_batch} held-out samples"


def plot_schedules(rows, process, path, teacher_ts=None, title="", reference="exact"):
    """One row of markers per schedule at its log-SNR values (noise on the left, data on the right), the legend
    giving each one's held-out RMSE (against `reference`); the teacher's candidate times, when given, as a faint
    bottom row."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and touches no global pyplot state

    def log_snr(ts):
        with jax.enable_x64(True):
            return np.asarray(process.log_snr(np.asarray(ts, np.float64)), np.float64)

    labels = [row["label"] for row in rows] + ([f"teacher grid ({len(teacher_ts) - 1} steps)"]
                                               if teacher_ts is not None else [])
    fig = Figure(figsize=(11, 1.6 + 0.5 * len(labels)), layout="constrained")
    ax = fig.subplots()
    colors = {"distilled": "tab:red", "refined": "tab:purple"}
    grid_colors = iter(["tab:blue", "tab:green", "tab:orange", "tab:brown", "tab:cyan", "tab:olive", "tab:pink"])
    for k, row in enumerate(rows):
        lam, y = log_snr(row["ts"]), -k * np.ones(len(row["ts"]))
        color = colors.get(row["kind"]) or next(grid_colors, "tab:gray")
        ax.plot(lam, y, color=color, lw=0.8, alpha=0.35)
        ax.scatter(lam, y, marker="|", s=320, linewidths=2.2 if row["kind"] != "grid" else 1.6, color=color,
                   label=f"{row['label']}: RMSE {row['rmse']:.2e}")
    if teacher_ts is not None:
        lam = log_snr(teacher_ts)
        ax.scatter(lam, -len(rows) * np.ones(len(lam)), marker="|", s=90, linewidths=0.6, color="0.55",
                   label="teacher grid: the candidate times")
    ax.set_yticks(-np.arange(len(labels)), labels)
    ax.set_ylim(-len(labels) + 0.4, 0.6)
    ax.set_xlabel("log-SNR  log(alpha / sigma)    (noise at the left, data at the right)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title=f"held-out RMSE vs {reference}",
              title_fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)
