"""Learn a sampler for a model at every NFE of a table, save it, and score it on held-out noise.

`run(config, workdir)` is what `scripts/learn_sampler.py` calls (config: `experiments/configs/learn_sampler.py`).
For each NFE, `schedules.learn(config.method, ...)` fits the sampler to the teacher (`config.teacher`) on the
calibration batch (stream CALIBRATION_STREAM of the root key); the pair is saved (`schedules.files.learned_record`,
in a `core.ShardStore` of the workdir) as WORKDIR/`config.outputs.sampler` with its provenance (model, teacher,
calibration size, what the method found and cost) and the config as its identity and fingerprint, and scored on the
held-out batch (another stream) by the RMSE of its samples against the reference (the teacher solver on `reference_steps` steps of the teacher grid, from the same noise), next
to DEIS tAB order 3 on the quadratic and logSNR grids at the same NFE. The oracle's batches are exact draws of the
marginal at t_max; a checkpoint's are the process's prior noise.

A rerun with the same config (the NFEs aside) loads the NFEs already written (a file with another fingerprint is
refused, not overwritten), so a killed run resumes where it stopped, and a run with more NFEs adds them;
WORKDIR/`config.outputs.json` (the rows) is rewritten after every NFE.
"""

from __future__ import annotations

import os
import time

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

CALIBRATION_STREAM, HELDOUT_STREAM = 1, 2
BASELINE = ("deis_tab", {"order": 3}, ("quadratic", "logsnr"))  # the context rows: DEIS tAB2 on two grids


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Learn, save and score the sampler of every NFE of config.nfes; returns the record written to the JSON file."""
    target = sources.load(config).target
    if target.num_classes:
        raise NotImplementedError(f"{target.description} is class-conditional; learned samplers are fitted here on "
                                  f"unconditional calls only (labels and guidance are not passed to the teacher)")
    os.makedirs(workdir, exist_ok=True)
    process = target.process
    teacher_solver = samplers.get_solver(config.teacher.solver, **dict(config.teacher.options))
    teacher_grid = lambda steps: grid_timesteps(config.teacher.grid, process, steps, teacher_solver.nfe(steps))
    t_max = float(teacher_grid(config.teacher.steps)[0])
    root = jax.random.PRNGKey(config.seed)
    x_cal, x_held = (_draw(target, jax.random.fold_in(root, s), n, t_max)
                     for s, n in ((CALIBRATION_STREAM, config.calibration), (HELDOUT_STREAM, config.heldout)))
    sample = lambda solver, ts, x: samplers.sample(target.model_fn, solver, process, x, ts,
                                                   prediction=target.prediction, args=target.args)[0]
    reference_ts = teacher_grid(config.reference_steps)
    reference = np.asarray(sample(teacher_solver, reference_ts, x_held), np.float64)
    rmse = lambda x: float(np.sqrt(np.mean((np.asarray(x, np.float64) - reference) ** 2)))
    # Everything that shapes one NFE's file; not the list of NFEs (a rerun may add NFEs) nor the output names.
    store = core.ShardStore(workdir, {k: v for k, v in config.to_dict().items() if k not in ("outputs", "nfes")},
                            refuse=_refusal)
    rows, start = [], time.perf_counter()
    for nfe in config.nfes:
        solver, ts, info, seconds = _learned(config, target, x_cal, nfe, store, teacher_solver)
        path = store.path(config.outputs.sampler.format(nfe=nfe))
        row = dict(nfe=int(nfe), path=path, rmse=rmse(sample(solver, ts, x_held)), learn_seconds=seconds,
                   model_calls=info.get("model_calls"), ts=np.asarray(ts).tolist())
        name, options, grids = BASELINE
        baseline = samplers.get_solver(name, **options)
        for grid in grids:
            row[f"rmse_{grid}"] = rmse(sample(baseline, schedules.get_timesteps(grid, process, nfe), x_held))
        rows.append(row)
        print(f"{config.method} NFE {nfe:>3}: rmse {row['rmse']:.4f} (DEIS tAB2 quadratic "
              f"{row['rmse_quadratic']:.4f}, logsnr {row['rmse_logsnr']:.4f}); learned in {seconds:.1f} s", flush=True)
        record = _record(config, target, rows, store.fingerprint, start, versions())
        core.write_json(os.path.join(workdir, config.outputs.json), record, indent=1)
    print(format_table(config.method, rows))
    return record


def _draw(target, key, n, t_max):
    if target.oracle is not None:
        return target.oracle.marginal_sample(key, n, t_max, target.process)
    return target.process.prior(key, (n, *target.shape), t=t_max, dtype=jnp.float32)


def _refusal(path, differences, stored, expected):
    return (f"{path} was written by another config (fingerprint {str(stored)[:16]}, this one {expected[:16]}); use "
            "another workdir or remove it")


def _learned(config, target, x_cal, nfe, store, teacher_solver):
    """(solver, ts, info, seconds) of one NFE: loaded from its file when a run with this config wrote it."""
    name = config.outputs.sampler.format(nfe=nfe)
    entry = store.read(name)
    if entry is not None:
        path = store.path(name)
        schedules.files.read_learned(path, config.method)  # a file of this method, valid
        solver, ts = samplers.load_learned(path)
        return solver, jnp.asarray(ts), entry.record["learn"], float(entry.record["learn"]["seconds"])
    start = time.perf_counter()
    solver, ts, info = schedules.learn(config.method, target.model_fn, target.process, x_cal, nfe,
                                       prediction=target.prediction, args=target.args,
                                       teacher_steps=config.teacher.steps,
                                       teacher_grid=grid_spec(config.teacher.grid,
                                                              teacher_solver.nfe(config.teacher.steps),
                                                              config.teacher.steps),
                                       teacher_solver=teacher_solver, return_info=True, **dict(config.options))
    info = {k: v for k, v in info.items() if k not in ("teacher_ts", "fixed")}
    info["seconds"] = time.perf_counter() - start
    store.write(name, record=schedules.files.learned_record(
        solver, ts, process=target.process, method=config.method, model=target.description, learn=info,
        teacher=config.teacher.to_dict(), calibration=int(config.calibration)))
    return solver, ts, info, info["seconds"]


def _record(config, target, rows, fingerprint, start, provenance):
    return dict(config=config.to_dict(), description=target.description, fingerprint=fingerprint, rows=rows,
                runtime_s=time.perf_counter() - start, versions=provenance)


def format_table(method, rows):
    body = [[r["nfe"], f"{r['rmse']:.4f}", f"{r['rmse_quadratic']:.4f}", f"{r['rmse_logsnr']:.4f}",
             f"{r['rmse'] / min(r['rmse_quadratic'], r['rmse_logsnr']):.2f}", f"{r['learn_seconds']:.1f}",
             r["model_calls"]] for r in rows]
    return render_table(["NFE", f"{method} RMSE", "tAB2 quadratic", "tAB2 logsnr", "ratio", "learn s",
                         "calls/sample"], body)
