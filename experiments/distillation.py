"""Distil a step schedule for one solver on the Gaussian-mixture oracle, save it, and score it against the exact map.

`run(config, workdir)` is what `scripts/distill_schedule.py` calls (config: `experiments/configs/distill_oracle.py`).
The dynamic program of `config.method` (`schedules.distill`: OSS, Bellman/BOSS or GITS) picks the steps among the
points of a fine teacher trajectory, from exact draws of x_{t_max} (the distillation batch); the schedule may then be
refined by gradients for the solver it is meant for (`schedules.refine`). The schedule and every standard grid of
`config.compare_grids`, all with the same number of steps, are scored on a held-out batch (another key) by the RMSE
between `config.solver`'s samples at t_min and the probability-flow ODE's exact solution from the same start
(`samplers.exact_flow_map`, float64). Outputs: the schedule file (`schedules.save_schedule`, with its provenance), a
printed table, a JSON file (config, rows, grids, distillation info, versions) and a plot of the chosen steps in
log-SNR against the standard grids.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

import samplers
import schedules
from experiments.sampling import versions
from models import GaussianMixture, predictions
from schedules import distillation

# Streams of the root key (fold_in(root, stream)), the convention of experiments/sampling.py: each draw stays put
# when others are added.
ORACLE_STREAM = 0
DISTILL_STREAM = 1  # the batch the dynamic program (and refinement) fits on
HELDOUT_STREAM = 2  # the batch every schedule is scored on


def run(config, workdir):
    """Distil a schedule with `config.method` for `config.solver` at `config.nfe` evaluations, save and score it.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/distill_oracle.py`.
      workdir: a directory (created if missing) for `config.outputs.schedule`, `.json` and `.png`.

    Returns:
      A dict: "config" (plain dict), "rows" (one per schedule: label, kind, solver, num_steps, nfe, rmse,
      ratio_to_best_grid), "ts" (each schedule's times), "distill" (indices, cost, model calls, seconds, teacher),
      "refine" (its info, or None), "versions", "runtime_s" and "files" (paths written).
    """
    start = time.perf_counter()
    plan = _validate(config)
    process, solver, num_steps = plan["process"], plan["solver"], plan["num_steps"]
    root = jax.random.PRNGKey(config.seed)
    oracle = GaussianMixture.random(
        jax.random.fold_in(root, ORACLE_STREAM), dim=config.oracle.dim, num_components=config.oracle.num_components
    )
    # One compiled draw instead of a dispatch (and, on first use, a compile) per operation.
    draw = jax.jit(lambda gm, key, num: gm.marginal_sample(key, num, process.t_max, process), static_argnums=2)
    x_distill = draw(oracle, jax.random.fold_in(root, DISTILL_STREAM), config.batch)
    x_heldout = draw(oracle, jax.random.fold_in(root, HELDOUT_STREAM), config.eval_batch)
    model_fn = oracle.model_fn(process, config.prediction)

    tic = time.perf_counter()
    ts_distilled, info = schedules.distill(
        config.method, model_fn, solver, process, x_distill, num_steps, **plan["distill_options"], return_info=True
    )
    ts_distilled = np.asarray(ts_distilled)  # also waits for the result, so the time below is the whole DP
    distill_seconds = time.perf_counter() - tic
    if not math.isfinite(info["cost"]):
        raise FloatingPointError(f"{config.method}: the distillation cost is {info['cost']}; stopping")

    schedules_ = [(f"{config.method} distilled", "distilled", ts_distilled)]
    refine_info = None
    if config.refine.enabled:
        ts_refined, refine_info = _refine(config, plan, model_fn, x_distill, ts_distilled, info["teacher_ts"])
        schedules_.append((f"{config.method} + refined", "refined", ts_refined))
    schedules_ += [(name, "grid", plan["grids"][name]) for name in config.compare_grids]

    rows = _score(config, plan, oracle, model_fn, x_heldout, schedules_)
    grid_rmses = [row["rmse"] for row in rows if row["kind"] == "grid"]
    best_grid = min(grid_rmses) if grid_rmses else None
    for row in rows:
        row["ratio_to_best_grid"] = row["rmse"] / best_grid if best_grid else None
    final = rows[1] if config.refine.enabled else rows[0]  # the schedule that is saved: refined when refined

    distill_record = {
        "method": config.method,
        "student": info["student"],
        "indices": np.asarray(info["indices"]).tolist(),
        "cost": float(info["cost"]),
        "model_calls": int(info["model_calls"]),
        "num_steps": int(info["num_steps"]),
        "seconds": distill_seconds,
        "teacher": _teacher_record(config),
        "teacher_ts": np.asarray(info["teacher_ts"], np.float64).tolist(),
    }
    print(format_summary(config, plan, distill_record, refine_info))
    print(format_table(rows))

    os.makedirs(workdir, exist_ok=True)
    paths = {key: os.path.join(workdir, config.outputs[key]) for key in ("schedule", "json", "png")}
    provenance = dict(
        model=_model_name(config),
        solver_options=_options(config.solver.options),
        student=config.student,
        prediction=config.prediction,
        teacher=distill_record["teacher"],
        cost=distill_record["cost"],
        indices=distill_record["indices"],
        model_calls=distill_record["model_calls"],
        distill_seconds=distill_seconds,
        rmse_heldout=final["rmse"],
        refined=bool(config.refine.enabled),
        config=config.to_dict(),
    )
    if config.refine.enabled:
        provenance.update(distilled_ts=ts_distilled.astype(np.float64).tolist(), refine=refine_info,
                          rmse_heldout_distilled=rows[0]["rmse"])
    schedules.save_schedule(paths["schedule"], final["ts"], process=process.name, solver=solver.name,
                            nfe=final["nfe"], method=config.method, **provenance)
    plot_schedules(rows, process, paths["png"], teacher_ts=info["teacher_ts"], title=_plot_title(config, plan))
    results = {
        "config": config.to_dict(),
        "rows": [{k: v for k, v in row.items() if k != "ts"} for row in rows],
        "ts": {row["label"]: np.asarray(row["ts"], np.float64).tolist() for row in rows},
        "distill": distill_record,
        "refine": refine_info,
        "versions": versions(),
        "runtime_s": time.perf_counter() - start,
        "files": paths,
    }
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2)
    return results


def _validate(config):
    """Build everything named in the config before any distillation, so a wrong name or size fails at once."""
    if config.method not in distillation.METHODS:
        raise ValueError(f"unknown distillation method {config.method!r}; valid names: {sorted(distillation.METHODS)}")
    for key in ("nfe", "batch", "eval_batch"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    predictions.check_kind(config.prediction)
    process = schedules.get_process(config.process)
    solver = samplers.get_solver(config.solver.name, **_options(config.solver.options))
    num_steps = solver.steps_for_nfe(config.nfe)
    solver.check_grid(num_steps)
    # The DP's student must be a single-step, first-order solver; this raises the library's message otherwise.
    distillation.student_step_fn(samplers.get_solver(config.student), process)
    samplers.get_solver(config.teacher.solver, **_options(config.teacher.options))
    if not num_steps <= config.teacher.steps:
        raise ValueError(f"teacher.steps = {config.teacher.steps} must be at least the schedule's {num_steps} steps: "
                         f"the schedule picks its times among the teacher's")
    schedules.get_timesteps(config.teacher.grid, process, config.teacher.steps)
    if len(set(config.compare_grids)) != len(config.compare_grids):
        raise ValueError(f"compare_grids has repeated names: {list(config.compare_grids)}")
    grids = {name: np.asarray(schedules.get_timesteps(name, process, num_steps)) for name in config.compare_grids}

    options = dict(prediction=config.prediction, teacher_steps=config.teacher.steps, teacher_grid=config.teacher.grid,
                   teacher_solver=(config.teacher.solver, _options(config.teacher.options)), student=config.student)
    if config.method == "oss":
        if config.oss.aggregate not in ("mean", "median"):
            raise ValueError(f"oss.aggregate must be 'mean' or 'median', got {config.oss.aggregate!r}")
        options.update(exact_steps=config.oss.exact_steps, start_at_t_max=config.oss.start_at_t_max,
                       aggregate=config.oss.aggregate)
    else:
        if config.bellman.metric not in ("l2", "l1"):
            raise ValueError(f"bellman.metric must be 'l2' or 'l1', got {config.bellman.metric!r}")
        options.update(metric=config.bellman.metric, coeff=config.bellman.coeff)
    if config.refine.enabled:
        if config.refine.num_iters is not None and config.refine.num_iters < 1:
            raise ValueError(f"refine.num_iters must be >= 1, got {config.refine.num_iters}")
        if config.refine.learning_rate is not None and not config.refine.learning_rate > 0:
            raise ValueError(f"refine.learning_rate must be > 0, got {config.refine.learning_rate}")
    return {"process": process, "solver": solver, "num_steps": num_steps, "grids": grids, "distill_options": options}


def _options(value):
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _start_state(process, x, t_start, ts):
    """x at t_start, as the start at ts[0]: itself, or rescaled to sigma(ts[0]) when the schedule starts lower (OSS
    with start_at_t_max=False: the usual truncated start, the convention of `schedules.distill`)."""
    if float(ts[0]) == float(t_start):
        return x
    scale = process.sigma(ts[0]) / process.sigma(t_start)
    return (scale * x).astype(x.dtype)


def _refine(config, plan, model_fn, x_distill, ts, teacher_ts):
    """Refine `ts` for config.solver on the distillation batch, towards the teacher's endpoints (the target the
    distillation used: no use of the oracle's exactness, which is kept for scoring)."""
    process, solver = plan["process"], plan["solver"]
    teacher = samplers.get_solver(config.teacher.solver, **_options(config.teacher.options))
    target, _ = samplers.sample(model_fn, teacher, process, x_distill, teacher_ts, prediction=config.prediction)
    kwargs = {key: config.refine[key] for key in ("num_iters", "learning_rate") if config.refine[key] is not None}
    tic = time.perf_counter()
    ts_refined, info = schedules.refine(
        ts, model_fn, solver, process, _start_state(process, x_distill, process.t_max, ts),
        prediction=config.prediction, target=target, return_info=True, **kwargs,
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


def _score(config, plan, oracle, model_fn, x, named_schedules):
    """The RMSE against the exact flow map of config.solver on each schedule, from the held-out batch x at t_max."""
    process, solver = plan["process"], plan["solver"]
    exact = {}  # end time -> exact samples: every schedule here shares its ends, so this is computed once
    rows = []
    for label, kind, ts in named_schedules:
        t_end = float(ts[-1])
        if t_end not in exact:
            exact[t_end] = samplers.exact_flow_map(oracle, process, x, process.t_max, t_end)
        y, info = samplers.sample(model_fn, solver, process, _start_state(process, x, process.t_max, ts), ts,
                                  prediction=config.prediction)
        rmse = float(np.sqrt(np.mean((np.asarray(y, np.float64) - exact[t_end]) ** 2)))
        if not math.isfinite(rmse):
            raise FloatingPointError(f"{label}: the RMSE against the exact map is {rmse}; stopping")
        rows.append({"label": label, "kind": kind, "solver": solver.name, "num_steps": int(len(ts) - 1),
                     "nfe": int(info["nfe"]), "rmse": rmse, "ts": np.asarray(ts)})
    return rows


def _teacher_record(config):
    return {"steps": config.teacher.steps, "grid": config.teacher.grid, "solver": config.teacher.solver,
            "options": _options(config.teacher.options)}


def _model_name(config):
    return (f"gaussian_mixture_oracle(dim={config.oracle.dim},K={config.oracle.num_components},"
            f"seed={config.seed})")


def _solver_label(config):
    return config.solver.name + "".join(f" {k}={v}" for k, v in _options(config.solver.options).items())


def format_summary(config, plan, record, refine_info):
    """What was distilled, from what, at what cost, in a few lines."""
    teacher = record["teacher"]
    lines = [
        f"{record['method']} schedule for {_solver_label(config)}: {plan['num_steps']} steps "
        f"({config.nfe} NFE budget) on {config.process}, {_model_name(config)}",
        f"  teacher: {teacher['steps']} steps of {teacher['solver']} on the {teacher['grid']} grid; student step: "
        f"{record['student']}; distillation batch {config.batch}, held-out batch {config.eval_batch}",
        f"  distilled in {record['seconds']:.2f} s, {record['model_calls']} model calls per sample, "
        f"DP cost {record['cost']:.3e}; teacher indices {record['indices']}",
    ]
    if refine_info is not None:
        lines.append("  refined: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in refine_info.items() if not isinstance(v, list)))
    return "\n".join(lines)


def format_table(rows):
    """The rows as an aligned text table."""
    header = ("schedule", "solver", "steps", "NFE", "RMSE vs exact (held-out)", "ratio to best grid")
    lines = [
        (
            row["label"],
            row["solver"],
            str(row["num_steps"]),
            str(row["nfe"]),
            f"{row['rmse']:.3e}",
            "-" if row["ratio_to_best_grid"] is None else f"{row['ratio_to_best_grid']:.3f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(line):
        # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def _plot_title(config, plan):
    return (f"{config.method} schedule for {_solver_label(config)}, {plan['num_steps']} steps ({config.nfe} NFE), "
            f"{config.process}\n{config.oracle.dim}-d Gaussian mixture ({config.oracle.num_components} components); "
            f"RMSE vs the exact flow map on {config.eval_batch} held-out samples")


def plot_schedules(rows, process, path, teacher_ts=None, title=""):
    """One row of markers per schedule at its log-SNR values (noise on the left, data on the right), the legend
    giving each one's held-out RMSE; the teacher's candidate times, when given, as a faint bottom row."""
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
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="held-out RMSE vs exact",
              title_fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)
