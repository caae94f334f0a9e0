"""Bottleneck sampling on a trained multi-resolution model: the sampling entry and the cost / quality benchmark.

`run(config, workdir)` is what `scripts/sample_bottleneck.py` calls, `benchmark(config)` what
`scripts/benchmark_bottleneck.py` calls (config: `experiments/configs/digits_bottleneck.py`). Both load the model of
a training run (`experiments.train.checkpoint_target`, EMA weights by default), build every row's stages and
check them against the model (solver and grid names, sizes the model cannot take) before any sampling, and draw
every row from the same initial noise.

A row is a list of `samplers.bottleneck.Stage`s: the full-resolution baseline is one stage (exactly
`samplers.sample`), a plan is its 32 -> 16 -> 32 stages, an equal-cost baseline is the baseline with the number of
steps whose model FLOPs come closest to a plan's. For each row:

  - model FLOPs per sample: sum over stages of (model calls in the stage) x (FLOPs of one call at the stage's
    resolution), the latter counted from the model's jaxpr (`model_flops`: its matrix products and convolutions),
    per sample of a batch; resizing and re-noising are not model FLOPs (they are in the wall time);
  - wall time: one warm-up batch (it compiles every stage; its time is reported apart), then `timing_repeats`
    timed passes over all samples (`block_until_ready`), the median;
  - FD-digits (`experiments.metrics.fd_digits.score_samples`) of the samples at the baseline's resolution,
    non-finite samples counted and left out; `metric = "none"` skips it.

At 64 px (`res64.enabled`, the benchmark only) the rows are the same with every resolution doubled; they are timed
and counted on `res64.num_samples` samples, and carry no FD: the digits data, the FD-digits classifier and the
model's training stop at 32 px, so any quality number there would be invented. Each 64 px row says so in `fd_note`.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers.experiments.metrics import digits_classifier, fd_digits
from fastsamplers.experiments.metrics.flops import count_flops
from fastsamplers.experiments.report import figures
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train.checkpoints import checkpoint_target, load_config
from fastsamplers.samplers import bottleneck
from fastsamplers.samplers.bottleneck import Stage

_UNKNOWN = "unknown {kind} {name!r}; valid: {valid}"
METRICS = core.Registry.of_names("metric", ("fd_digits", "none"), ordered=True, unknown=_UNKNOWN)
NOISE_STREAM, RENOISE_STREAM = 7, 8  # fold_in(root, stream): the shared initial noise, the re-noising draws
NO_FD_64 = ("not evaluated: the model was trained at 16 and 32 px only, the digits data and the FD-digits "
            "classifier stop at 32 px; 64 px rows give wall time and FLOPs only")


# ------------------------------------------------------------------------------------------------------ FLOPs


def model_flops(model_fn, shape, dtype=jnp.float32, args=None):
    """FLOPs of one call model_fn(x, t) (model_fn(x, t, args) when args is given) with x of `shape` and a scalar t: `experiments.metrics.flops.count_flops`,
    2 x the multiply-adds of its matrix products and convolutions, read off the jaxpr (the same number on every
    backend).

    Args:
      model_fn: a pure (x, t) -> prediction.
      shape: the input's shape, batch axis included (e.g. (batch, H, W, C)).
      dtype: the input's dtype.
      args: the model's args (e.g. a checkpoint's parameters), or None.

    Returns:
      A positive float.

    Example:
        >>> import jax.numpy as jnp
        >>> model_flops(lambda x, t: x @ jnp.ones((4, 3), x.dtype) * t, (2, 4))
        48.0
    """
    fn = model_fn if args is None else (lambda x, t: model_fn(x, t, args))
    flops = count_flops(fn, jax.ShapeDtypeStruct(tuple(shape), dtype), jax.ShapeDtypeStruct((), dtype))
    if flops <= 0:
        raise RuntimeError(f"the model at {tuple(shape)} has no matrix product or convolution to count")
    return float(flops)


# ------------------------------------------------------------------------------------------------------ plans


def _grid_options(grid, shift):
    return (("shift", float(shift)),) if grid == "flow_shift" else ()


def baseline_stages(config, num_steps=None, scale=1):
    """The full-resolution baseline as one stage (at `scale` x the baseline's resolution)."""
    b = config.baseline
    return [Stage(int(b.resolution) * scale, int(num_steps or b.num_steps), 1.0, None, b.grid,
                  _grid_options(b.grid, b.shift), b.solver)]


def plans(config) -> core.Registry:
    """The config's plans by name (`config.plans`), the registry its plan names are checked by."""
    return core.Registry("plan", {name: config.plans[name] for name in config.plans},
                         unknown="plan {name!r} is not one of the config's plans {valid}")


def plan_stages(config, name, scale=1):
    """The stages of the plan `config.plans[name]` (resolutions x `scale`); ValueError with the reason if malformed."""
    p = plans(config).lookup(name)
    n = len(p.resolutions)
    lengths = {"steps": len(p.steps), "strengths": len(p.strengths)}
    if p.ends:
        lengths["ends"] = len(p.ends)
    if p.grid == "flow_shift":
        lengths["shifts"] = len(p.shifts)
    elif p.shifts:
        raise ValueError(f"plan {name}: shifts are options of the 'flow_shift' grid, not of {p.grid!r}; set shifts=()")
    bad = {key: value for key, value in lengths.items() if value != n}
    if n == 0 or bad:
        raise ValueError(f"plan {name}: {n} resolutions but {bad or 'no stages'}; give one value per stage")
    if float(p.strengths[0]) != 1.0:
        raise ValueError(f"plan {name}: the first stage must start from pure noise (strength 1.0) so that every row "
                         f"shares the same initial noise; got {p.strengths[0]}")
    resolution = int(config.baseline.resolution)
    if int(p.resolutions[0]) != resolution or int(p.resolutions[-1]) != resolution:
        raise ValueError(f"plan {name}: must start and end at the baseline's resolution {resolution} (the same noise, "
                         f"comparable samples); got resolutions {tuple(p.resolutions)}")
    solver = p.solver or config.baseline.solver
    return [Stage(int(p.resolutions[k]) * scale, int(p.steps[k]), float(p.strengths[k]),
                  (float(p.ends[k]) or None) if p.ends else None, p.grid,
                  _grid_options(p.grid, p.shifts[k] if p.grid == "flow_shift" else None), solver)
            for k in range(n)]


def equal_cost_steps(config, flops, call_flops, scale=1):
    """The number of baseline steps whose model FLOPs per sample come closest to `flops` (at least 1)."""
    solver = samplers.get_solver(config.baseline.solver)
    per_call = call_flops[int(config.baseline.resolution) * scale]
    costs = [solver.nfe(n) * per_call for n in range(1, int(config.baseline.num_steps) + 1)]
    return int(np.argmin([abs(c - flops) for c in costs])) + 1


def check_config(config):
    """Everything that can be checked without the model; raises ValueError naming the key."""
    METRICS.check(config.metric)
    if config.metric == "fd_digits":
        if int(config.baseline.resolution) not in digits_classifier.SIZES:
            raise ValueError(f"FD-digits scores {digits_classifier.SIZES} px images; baseline.resolution is "
                             f"{config.baseline.resolution} (set metric='none' to time and count only)")
    for key in ("num_samples", "batch_size", "grid_samples", "timing_repeats"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if config.metric != "none" and config.num_samples < 2:
        raise ValueError(f"a Fréchet distance needs num_samples >= 2, got {config.num_samples}")
    plans(config).check(config.plan)
    # samplers.bottleneck's registries, named by the config's keys, before any sampling
    bottleneck.RESIZE_METHODS.check(config.resize_method, kind="resize_method")
    bottleneck.RENOISE.check(config.renoise_mode, kind="renoise_mode")
    if not 0.0 <= config.process.t_min < config.process.t_max:
        raise ValueError(f"need 0 <= process.t_min < process.t_max, got {config.process.t_min}, "
                         f"{config.process.t_max}")
    if config.baseline.num_steps < 1:
        raise ValueError(f"baseline.num_steps must be >= 1, got {config.baseline.num_steps}")
    for name in config.plans:
        plan_stages(config, name)


# ------------------------------------------------------------------------------------------------------ model


def load_model(config):
    """The trained model (a `Target`), the process with the config's ends, and the run's training sizes."""
    check_config(config)
    target = checkpoint_target(config.train_config, config.checkpoint_dir, config.use_ema)
    if len(target.shape) != 3:
        raise ValueError(f"bottleneck sampling needs an image model (H, W, C); {config.train_config} makes "
                         f"{target.shape}")
    process = dataclasses.replace(target.process, t_min=float(config.process.t_min),
                                  t_max=float(config.process.t_max))
    trained = tuple(int(s) for s in load_config(config.train_config).data.image_sizes)
    return target, process, trained


def build_row(target, process, label, stages, trained_sizes=None):
    """Check a row's stages (names, grids, sizes the model takes) and return (label, stages)."""
    try:
        bottleneck.plan(stages, process)
        bottleneck.check_resolutions(target.model_fn, stages, target.shape[-1], args=target.args)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from error
    if trained_sizes:
        untrained = sorted({s.size[0] for s in stages if s.size[0] not in trained_sizes})
        if untrained:
            warnings.warn(f"{label}: the model was trained at {trained_sizes} px, not at {untrained} px")
    return label, stages


# ------------------------------------------------------------------------------------------------------ sampling


def sample_row(target, process, stages, x_init, key, config, batch_size):
    """Samples of one row from x_init (numpy (n, H, W, C)), timed: (samples, timing and NFE dict).

    The whole row (every stage, resize and re-noise) is one compiled program per batch shape; the first batch is
    the warm-up that compiles it (its time, compilation included, is `warmup_seconds`).
    """
    n = x_init.shape[0]
    batch_size = min(batch_size, n)  # the last batch is padded: one program per stage and row
    batches = [jnp.asarray(batch) for _, batch, _ in core.padded_batches(x_init, batch_size)]
    keys = [jax.random.fold_in(key, i) for i in range(len(batches))]

    def draw(x, k):  # bottleneck_sample compiles the whole row once (x and k traced): no outer jit needed
        return bottleneck.bottleneck_sample(target.model_fn, stages, process, x, k, target.prediction,
                                            config.resize_method, config.renoise_mode, args=target.args)

    start = time.perf_counter()
    _, info = jax.block_until_ready(draw(batches[0], keys[0]))  # warm-up: compiles every stage
    warmup_seconds = time.perf_counter() - start
    seconds = []
    for _ in range(int(config.timing_repeats)):
        start = time.perf_counter()
        outputs = [draw(x, k)[0] for x, k in zip(batches, keys)]
        jax.block_until_ready(outputs)
        seconds.append(time.perf_counter() - start)
    samples = np.concatenate([np.asarray(x, np.float32) for x in outputs])[:n]
    return samples, {"nfe": int(info["nfe"]), "stage_nfe": [int(k) for k in info["stage_nfe"]],
                     "seconds": float(np.median(seconds)), "seconds_all": seconds, "warmup_seconds": warmup_seconds,
                     "num_samples": n, "batch_size": batch_size}


def call_flops_per_sample(target, sizes, batch_size):
    """{side: model FLOPs of one call per sample, counted on a batch of batch_size}, for square sides."""
    channels = target.shape[-1]
    return {s: model_flops(target.model_fn, (batch_size, s, s, channels), args=target.args) / batch_size
            for s in sorted(set(sizes))}


def row_cost(stages, stage_nfe, call_flops):
    """Model FLOPs per sample of a row: sum over stages of the stage's model calls x one call's FLOPs there."""
    return float(sum(nfe * call_flops[stage.size[0]] for stage, nfe in zip(stages, stage_nfe)))


def _describe(stages):
    return [{"resolution": s.size[0], "num_steps": s.num_steps, "strength": s.strength, "end": s.end, "grid": s.grid,
             "grid_options": dict(s.grid_options), "solver": s.solver} for s in stages]


def _initial_noise(config, process, num, side, channels):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), NOISE_STREAM)
    x = process.prior(key, (num, side, side, channels), t=process.t_max, dtype=jnp.float32)
    return np.asarray(x, np.float32)


class Scorer:
    """fn(samples) -> {"fd_digits": FD-digits of the finite samples, "fd_digits_inf": its extrapolation to
    infinitely many samples, "fd_digits_by_n": FD on nested subsets, "num_nonfinite"} (None values for metric
    "none"): `fd_digits.score_samples` with the extrapolation.

    FD_inf (`frechet.frechet_distance_extrapolated`) is reported beside FD because FD's finite-sample bias differs
    between sample sets: on this benchmark, at 1000 samples the 2x plan scored 1.18x the baseline's FD and at 10,000
    0.89x, so a comparison at one n can invert.
    """

    def __init__(self, config):
        self.name = config.metric
        self.reference = config.fd_reference

    def __call__(self, samples):
        if self.name == "none":
            finite = np.all(np.isfinite(samples.reshape(samples.shape[0], -1)), axis=1)
            return {"fd_digits": None, "fd_digits_inf": None, "fd_digits_by_n": None,
                    "num_nonfinite": int((~finite).sum())}
        return fd_digits.score_samples(samples, self.reference, extrapolate=True)


def _measure(target, process, label, kind, stages, x_init, key, config, batch_size, call_flops, scorer):
    samples, timing = sample_row(target, process, stages, x_init, key, config, batch_size)
    flops = row_cost(stages, timing["stage_nfe"], call_flops)
    nfe_by_resolution = {}
    for stage, nfe in zip(stages, timing["stage_nfe"]):
        nfe_by_resolution[stage.size[0]] = nfe_by_resolution.get(stage.size[0], 0) + nfe
    score = scorer(samples) if scorer is not None else {"fd_digits": None, "num_nonfinite": 0}
    value = score["fd_digits"]
    row = {"label": label, "kind": kind, "resolution": stages[-1].size[0], "stages": _describe(stages),
           "num_steps": sum(s.num_steps for s in stages), **timing, "nfe_by_resolution": nfe_by_resolution,
           "call_flops": {s: call_flops[s] for s in sorted(nfe_by_resolution)}, "flops_per_sample": flops,
           "metric": None if scorer is None or scorer.name == "none" else scorer.name, **score}
    print(f"{label:>24}: NFE {timing['nfe']:>3} {flops / 1e9:8.3f} GFLOPs/sample {timing['seconds']:8.2f} s"
          + ("" if value is None else f"  FD-digits {value:.3f}")
          + ("" if score.get("fd_digits_inf") is None else f"  FD_inf {score['fd_digits_inf']:.3f}"), flush=True)
    return samples, row


def _ratios(rows):
    base = rows[0]
    for row in rows:
        row["flops_ratio"] = row["flops_per_sample"] / base["flops_per_sample"]
        row["flops_speedup"] = base["flops_per_sample"] / row["flops_per_sample"]
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["speedup"] = base["seconds"] / row["seconds"]
        row["fd_ratio"] = (row["fd_digits"] / base["fd_digits"] if row["fd_digits"] is not None
                           and base["fd_digits"] else None)
        row["fd_inf_ratio"] = (row["fd_digits_inf"] / base["fd_digits_inf"] if row.get("fd_digits_inf") is not None
                               and base.get("fd_digits_inf") else None)
    return rows


# ------------------------------------------------------------------------------------------------------ entries


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The sampling entry: the baseline and the plan `config.plan` from the same noise; writes in workdir
    baseline.png, bottleneck.png, comparison.png (the two grids side by side) and bottleneck.json (per row: stages,
    NFE per stage, model FLOPs per sample, wall time). Returns the JSON's content."""
    start = time.perf_counter()
    target, process, trained = load_model(config)
    rows = [build_row(target, process, "baseline", baseline_stages(config), trained),
            build_row(target, process, config.plan, plan_stages(config, config.plan), trained)]
    os.makedirs(workdir, exist_ok=True)
    side, channels = int(config.baseline.resolution), target.shape[-1]
    x_init = _initial_noise(config, process, config.grid_samples, side, channels)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), RENOISE_STREAM)
    batch = min(config.batch_size, config.grid_samples)
    call_flops = call_flops_per_sample(target, [s.size[0] for _, stages in rows for s in stages], batch)
    results, images = [], []
    for (label, stages), kind in zip(rows, ("baseline", "bottleneck")):
        samples, row = _measure(target, process, label, kind, stages, x_init, key, config, batch, call_flops, None)
        results.append(row)
        images.append(samples)
    files = {"baseline": os.path.join(workdir, "baseline.png"), "bottleneck": os.path.join(workdir, "bottleneck.png"),
             "comparison": os.path.join(workdir, "comparison.png"), "json": os.path.join(workdir, "bottleneck.json")}
    figures.save_samples(images[0], files["baseline"])
    figures.save_samples(images[1], files["bottleneck"])
    save_side_by_side(images, ["baseline", config.plan], files["comparison"])
    out = {"description": target.description, "config": config.to_dict(), "rows": _ratios(results), "files": files,
           "runtime_s": time.perf_counter() - start}
    core.write_json(files["json"], out, indent=2)
    return out


def benchmark(config: ml_collections.ConfigDict, json_path: str | None = None) -> dict:
    """The benchmark: baseline, every plan, an equal-cost baseline per plan (and the 64 px cost rows); returns
    {"description", "config", "rows", "rows_64", "note_64", "table", "runtime_s"} and writes it to json_path."""
    start = time.perf_counter()
    target, process, trained = load_model(config)
    side, channels = int(config.baseline.resolution), target.shape[-1]
    rows = {1: [build_row(target, process, "baseline", baseline_stages(config), trained)]
            + [build_row(target, process, name, plan_stages(config, name), trained) for name in config.plans]}
    if config.res64.enabled:
        rows[2] = [build_row(target, process, "baseline@64", baseline_stages(config, scale=2))] + [
            build_row(target, process, f"{name}@64", plan_stages(config, name, scale=2)) for name in config.plans]
    scorer = Scorer(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), RENOISE_STREAM)
    results = {}
    for scale, planned in rows.items():
        num = config.num_samples if scale == 1 else config.res64.num_samples
        batch = min(config.batch_size if scale == 1 else config.res64.batch_size, num)
        x_init = _initial_noise(config, process, num, side * scale, channels)
        call_flops = call_flops_per_sample(target, [s.size[0] for _, stages in planned for s in stages], batch)
        out = []
        for k, (label, stages) in enumerate(planned):
            kind = "baseline" if k == 0 else "bottleneck"
            _, row = _measure(target, process, label, kind, stages, x_init, key, config, batch, call_flops,
                              scorer if scale == 1 else None)
            out.append(row)
            if kind == "bottleneck":  # its equal-cost baseline: fewer full-resolution steps of the same FLOPs
                steps = equal_cost_steps(config, row["flops_per_sample"], call_flops, scale)
                eq_label = f"equal_cost_{label}"
                eq_stages = build_row(target, process, eq_label, baseline_stages(config, steps, scale))[1]
                _, eq = _measure(target, process, eq_label, "equal_cost", eq_stages, x_init, key, config, batch,
                                 call_flops, scorer if scale == 1 else None)
                eq["matched_to"] = label
                out.append(eq)
        if scale == 2:
            for row in out:
                row["fd_note"] = NO_FD_64
        results[scale] = _ratios(out)
    report = {"description": target.description, "config": config.to_dict(), "trained_sizes": list(trained),
              "rows": results[1], "rows_64": results.get(2, []),
              "note_64": NO_FD_64 if config.res64.enabled else "64 px rows not run (res64.enabled=False)"}
    report["table"] = markdown(report)
    report["runtime_s"] = time.perf_counter() - start
    print(report["table"], flush=True)
    if json_path:
        core.write_json(json_path, report, indent=2)
    return report


def markdown(report):
    """The benchmark's rows as markdown tables (32 px with FD-digits; 64 px cost only)."""

    def table(rows, title, with_fd):
        headers = ["row", "stages (px x steps)", "NFE", "GFLOPs/sample", "FLOPs vs baseline", "time s", "speedup"]
        if with_fd:
            headers += ["FD-digits", "FD / baseline", "FD_inf", "FD_inf / baseline"]
        cells = []
        for r in rows:
            stages = " -> ".join(f"{s['resolution']}x{s['num_steps']}" for s in r["stages"])
            line = [r["label"], stages, r["nfe"], f"{r['flops_per_sample'] / 1e9:.3f}",
                    f"{r['flops_ratio']:.3f} (1/{r['flops_speedup']:.2f})", f"{r['seconds']:.2f}",
                    f"{r['speedup']:.2f}x"]
            if with_fd:
                line += [_or_na(r["fd_digits"]), _or_na(r["fd_ratio"]), _or_na(r.get("fd_digits_inf")),
                         _or_na(r.get("fd_inf_ratio"))]
                if r["num_nonfinite"]:
                    line[-1] += f" ({r['num_nonfinite']} non-finite left out)"
            cells.append(line)
        return f"### {title}\n\n" + render_table(headers, cells)

    rows = report["rows"]
    parts = [table(rows, f"{rows[0]['resolution']} px, {rows[0]['num_samples']} samples ({report['description']})",
                   True)]
    if report["rows_64"]:
        rows_64 = report["rows_64"]
        parts.append(table(rows_64, f"64 px, {rows_64[0]['num_samples']} samples, cost only", False))
    parts.append(f"64 px: {report['note_64']}")
    return "\n\n".join(parts) + "\n"


def _or_na(value):
    return "n/a" if value is None else f"{value:.3f}"


def save_side_by_side(images, titles, path, scale=4, gap=4, header=12):
    """Image grids side by side in one PNG, each under its title."""
    from PIL import Image, ImageDraw

    grids = [figures.image_grid(x) for x in images]
    height = max(g.shape[0] for g in grids)
    width = sum(g.shape[1] for g in grids) + gap * (len(grids) - 1)
    channels = grids[0].shape[2]
    canvas = np.full((height, width, channels), 255, np.uint8)
    left, offsets = 0, []
    for g in grids:
        canvas[:g.shape[0], left:left + g.shape[1]] = g
        offsets.append(left)
        left += g.shape[1] + gap
    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    image = image.resize((width * scale, height * scale), Image.NEAREST)
    full = Image.new(image.mode, (image.width, image.height + header), 255 if channels == 1 else (255, 255, 255))
    full.paste(image, (0, header))
    draw = ImageDraw.Draw(full)
    for title, offset in zip(titles, offsets):
        draw.text((offset * scale + 2, 0), title, fill=0 if channels == 1 else (0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    full.save(path)
    return path
