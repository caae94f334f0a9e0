"""Sampler-by-schedule evaluation: every solver x time grid x NFE cell sampled and scored, as in the DEIS tables.

`run(config, workdir)` is what `scripts/evaluate.py` calls (configs: `experiments/configs/evaluate.py`). The model
comes from `config.source` (`experiments.runs.sources`: a trained checkpoint, the EMA weights by default, or the
Gaussian-mixture oracle), and the metric is "exact" or the metric of a registered feature
(`experiments.metrics.features`):

  "fd_digits"  Fréchet distance in the features of a digits classifier (`experiments.metrics.fd_digits`), against
               the real digits of the split `fd_reference` at the model's resolution; the offline metric for the
               digits models.
  "fid"        Fréchet distance in the FID Inception's pool3 features (weights from `fid_weights`), of the samples
               quantised to uint8 as `fid_protocol` does, against `fid_reference` (any reference file of
               `experiments.metrics.references`) or, when that is empty, the training data's statistics (computed
               once and cached in the workdir). "fd_random_projection" is the same with the random-projection test
               feature (`feature_dim` columns).
  "exact"      oracle only: the RMSE between the sampler's x(t_min) and the exact probability-flow map of the same
               x(t_max) (`samplers.exact_flow_map`), over the batch and the dimensions.

The Fréchet metrics score a cell as the FID protocol scores a shard (`features.stream_stats`), so the same samples
give the same number in both runners. Every cell starts from the same noise (one key for the whole table). A
class-conditional checkpoint is sampled with balanced labels (sample k gets class k mod num_classes) and
classifier-free guidance of `guidance_scale` (1: the conditional model, no guidance). Samples with a non-finite entry
are counted (`num_nonfinite`) and left out of the metric, never averaged in; a cell with fewer than two finite
samples has metric NaN. The rows go to `rows.json`; `scripts/make_table.py` (`experiments.report.tables`) turns them
into markdown tables and a metric-versus-NFE plot. The adaptive diffrax solver, when `reference` is set, adds a row
at its own NFE (the "adaptive reference").
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
from fastsamplers.experiments.configs import grid_timesteps
from fastsamplers.experiments.metrics import fd_digits, features, references
from fastsamplers.experiments.metrics.frechet import frechet_score
from fastsamplers.experiments.runs import sources

NOISE_STREAM = 7  # fold_in(root, NOISE_STREAM): the starting noise shared by every cell
SOLVER_STREAM = 9  # a stochastic solver's noise: sample k from fold_in(fold_in(root, SOLVER_STREAM), k)


def plan_cells(config, process):
    """Every (solver entry, grid, nfe) cell, built and checked before any sampling: [(row, solver, ts)]."""
    labels = core.Registry.of_names("solver label", [entry["label"] for entry in config.solvers], ordered=True,
                                    unknown="`only` names an unknown {kind} {name!r}; the config's labels: {valid}")
    for label in config.only:
        labels.check(label)
    cells = []
    for entry in config.solvers:
        if config.only and entry["label"] not in config.only:
            continue
        solver = samplers.get_solver(entry["name"], **dict(entry.get("options", {})))
        if not solver.static_nfe:
            raise ValueError(f"{entry['label']}: the adaptive solver takes no NFE; set `reference` instead")
        for grid in config.grids:
            for nfe in config.nfes:
                num_steps = solver.steps_for_nfe(nfe)
                solver.check_grid(num_steps)
                ts = grid_timesteps(grid, process, num_steps, nfe, config.t_min, config.t_max)
                row = {"label": entry["label"], "solver": entry["name"], "options": dict(entry.get("options", {})),
                       "grid": grid, "nfe_budget": int(nfe), "num_steps": num_steps}
                cells.append((row, solver, ts))
    for entry in config.learned:
        cells.extend(_learned_cells(entry, config.nfes))
    if config.reference:
        solver = samplers.get_solver("adaptive", **dict(config.reference_options))
        ts = grid_timesteps("uniform", process, 1, 1, config.t_min, config.t_max)
        cells.append(({"label": "adaptive reference", "solver": "adaptive",
                       "options": dict(config.reference_options), "grid": "adaptive", "nfe_budget": None,
                       "num_steps": None}, solver, ts))
    return cells


def _learned_cells(entry, nfes):
    """The cells of a learned sampler (`schedules.learn`, saved by `schedules.save_learned`), one file per NFE:
    entry "LABEL=PATH" or "PATH", with {nfe} in PATH; the grid is the file's own ("learned")."""
    label, has_label, template = entry.partition("=")
    if not has_label:
        label, template = os.path.basename(entry).split("{nfe}")[0].rstrip("_") or entry, entry
    if "{nfe}" not in template:
        raise ValueError(f"learned entry {entry!r}: the path needs {{nfe}} (one learned file per NFE of the table)")
    cells = []
    for nfe in nfes:
        path = template.format(nfe=nfe)
        solver, ts = samplers.load_learned(path)
        num_steps = ts.shape[0] - 1
        if solver.nfe(num_steps) != nfe:
            raise ValueError(f"{path}: a sampler of {solver.nfe(num_steps)} model calls in the column of NFE {nfe}")
        row = {"label": label, "solver": solver.name, "options": {"path": path}, "grid": "learned",
               "nfe_budget": int(nfe), "num_steps": num_steps}
        cells.append((row, solver, ts))
    return cells


def cell_sampler(target, solver, guidance_scale=1.0, key=None):
    """The compiled sampler of one solver, the time grid an argument: (x, ts, labels, indices) -> (samples, nfe).

    `samplers.sample` keeps one compiled program per (model function, solver) with x and ts traced arguments, so
    every cell of that solver with the same number of steps (other grids, distilled files) reuses it without an
    outer `jax.jit`: a table compiles solvers x step counts programs instead of one per cell. A stochastic solver
    draws sample k's noise from fold_in(key, k) (`indices`), so the batch size does not change the samples.
    """

    def draw(x, ts, labels=None, indices=None):
        model, args = target.conditioned(labels, guidance_scale)
        keys = None
        if solver.stochastic:
            if key is None:
                raise ValueError(f"solver {solver.name!r} is stochastic: the table's cells need a key")
            keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.asarray(indices))
        x, info = samplers.sample(model, solver, target.process, x, ts, prediction=target.prediction, args=args,
                                  check_finite=False, key=keys)
        return x, info["nfe"]

    return draw


def sample_cell(draw, ts, x_init, batch_size, num_classes=0):
    """Samples of one cell from the given starting noise, in batches of `draw` (`cell_sampler`): (numpy samples,
    nfe per sample). A class-conditional model gets the labels 0, 1, ..., num_classes - 1, 0, ... in sample order,
    so every cell has the same balanced classes."""
    ts = jnp.asarray(ts)
    outputs, nfe = [], 0
    for start in range(0, x_init.shape[0], batch_size):
        x = x_init[start:start + batch_size]
        indices = np.arange(start, start + x.shape[0])
        labels = indices % num_classes if num_classes else None
        x, nfe = draw(x, ts, labels, indices)
        outputs.append(np.asarray(x, np.float64))
    return np.concatenate(outputs), int(nfe)


def metrics() -> core.Registry:
    """The table's metrics: "exact" (the RMSE against the oracle's exact flow map; entry None) and the Fréchet
    distance of every registered feature (`features.FEATURES`; entry: the feature's name)."""
    return core.Registry("metric", {"exact": None, **features.metrics()},
                         unknown="unknown {kind} {name!r}; valid: {valid}")


class Metric:
    """fn(samples (n, *shape)) -> (value, number of non-finite samples left out), with the data it compares against
    prepared once."""

    def __init__(self, config, target, workdir):
        self.name = config.metric
        feature_name = metrics().lookup(self.name)
        if self.name == "exact" and target.oracle is None:
            raise ValueError("metric 'exact' needs source='oracle' (a trained model has no exact flow map)")
        if self.name != "exact" and len(target.shape) != 3:
            raise ValueError(f"metric {self.name!r} scores images (H, W, C); the samples have shape {target.shape}")
        self.batch_size = config.batch_size
        if self.name == "exact":
            return
        # The reference first: it may train a classifier or read a large file, before any sampling.
        self.feature = features.from_config(config, feature_name).build(target.shape)
        if self.name == "fd_digits":
            self.reference = fd_digits.reference_stats(target.shape[0], split=config.fd_reference)
        elif config.fid_reference:
            reference = references.check(config.fid_reference, self.feature, target.shape)
            self.reference, _ = references.load(reference, self.feature, batch_size=self.batch_size,
                                                cache_dir=os.path.join(workdir, "reference_stats"))
        else:
            dataset = target.dataset
            if dataset is None or dataset.num_examples is None:
                raise ValueError(f"metric {self.name!r} without fid_reference needs a checkpoint source with a "
                                 "finite dataset")
            tag = core.fingerprint(self.feature.identity())[:12]
            self.reference = references.of_images(
                np.asarray(dataset.data), self.feature, batch_size=self.batch_size,
                cache=os.path.join(workdir, "reference_stats", f"training_data_{self.feature.name}_{tag}.npz"))

    def __call__(self, samples, exact=None):
        finite = features.finite_rows(samples)
        if self.name == "exact":
            return float(np.sqrt(np.mean((samples[finite] - exact[finite]) ** 2))), int((~finite).sum())
        stats = features.stream_stats(self.feature, samples, self.batch_size)
        return frechet_score(stats, self.reference), stats.num_nonfinite


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample and score every cell of the table.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/evaluate.py`.
      workdir: a directory (created if missing) for rows.json (rewritten after every cell).

    Returns:
      The content of rows.json: "description" (the model), "metric", "config", "rows" (one per cell: label,
      solver, options, grid, nfe_budget, num_steps, nfe, metric, value, num_samples, num_nonfinite, seconds),
      "runtime_s" and "complete".
    """
    start = time.perf_counter()
    if config.num_samples < 2 or config.batch_size < 1:
        raise ValueError(f"num_samples must be >= 2 and batch_size >= 1, got {config.num_samples}, "
                         f"{config.batch_size}")
    metrics().check(config.metric)  # before the model is loaded
    target = sources.load(config).target
    if config.guidance_scale != 1.0 and not target.num_classes:
        raise ValueError(f"guidance_scale={config.guidance_scale} needs a class-conditional model; "
                         f"{target.description} is unconditional")
    cells = plan_cells(config, target.process)  # every name, NFE and schedule file checked before sampling
    os.makedirs(workdir, exist_ok=True)
    metric = Metric(config, target, workdir)
    t_start = float(cells[0][2][0])
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), NOISE_STREAM)
    if target.oracle is not None:
        x_init = target.oracle.marginal_sample(key, config.num_samples, t_start, target.process)
    else:
        x_init = target.process.prior(key, (config.num_samples, *target.shape), t=t_start, dtype=jnp.float32)
    exact = {}
    rows = []
    draws = {}  # id(solver) -> its compiled sampler (plan_cells makes one solver object per table row)
    for row, solver, ts in cells:
        if float(ts[0]) != t_start:
            raise ValueError(f"{row['label']} / {row['grid']}: the grid starts at t={float(ts[0])}, the others at "
                             f"{t_start}; every cell must start from the same noise")
        cell_start = time.perf_counter()
        if id(solver) not in draws:
            draws[id(solver)] = cell_sampler(target, solver, config.guidance_scale,
                                             jax.random.fold_in(jax.random.PRNGKey(config.seed), SOLVER_STREAM))
        draw = draws[id(solver)]
        samples, nfe = sample_cell(draw, ts, x_init, config.batch_size, target.num_classes)
        ends = (float(ts[0]), float(ts[-1]))
        if metric.name == "exact" and ends not in exact:
            exact[ends] = np.asarray(samplers.exact_flow_map(target.oracle, target.process, x_init, *ends))
        value, num_nonfinite = metric(samples, exact=exact.get(ends))
        row.update({"nfe": nfe, "metric": metric.name, "value": value, "num_samples": int(samples.shape[0]),
                    "num_nonfinite": num_nonfinite, "seconds": time.perf_counter() - cell_start})
        rows.append(row)
        print(f"{row['label']:>24} {row['grid']:>12} NFE {nfe:>4}: {metric.name} {value:.4f}"
              + (f"  ({row['num_nonfinite']} non-finite samples left out)" if row["num_nonfinite"] else ""),
              flush=True)
        _write_rows(workdir, target, metric, config, rows, start, complete=False)  # a stopped run keeps its cells
    return _write_rows(workdir, target, metric, config, rows, start, complete=True)


def _write_rows(workdir, target, metric, config, rows, start, complete):
    """WORKDIR/rows.json, replaced atomically; `complete` is False while cells are still to come."""
    results = {"description": target.description, "metric": metric.name, "config": config.to_dict(),
               "rows": rows, "runtime_s": time.perf_counter() - start, "complete": complete}
    core.write_json(os.path.join(workdir, "rows.json"), results, indent=2)
    return results
