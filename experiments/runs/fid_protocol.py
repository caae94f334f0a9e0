"""FID of a model with one solver x time grid x NFE, by the standard protocol, sharded and resumable.

`run(config, workdir)` is what `scripts/fid_pretrained.py` calls (config: `experiments/configs/fid_pretrained.py`,
whose docstring has the commands of the DEIS paper's CIFAR-10 table). This module is the plan; the scoring is the
evaluation layer's (`experiments.metrics`: `features`, `references`, `frechet`), the same call that scores a cell of
`sampler_tables`, so the same samples give the same number in both. The protocol:

- The model comes from `config.source` (`experiments.runs.sources`; "pretrained": `models.pretrained.load` of
  `config.checkpoint`). `num_samples` samples (50,000 by default) are drawn with `config.solver` on `config.grid` at
  `config.nfe` model evaluations (`solver.steps_for_nfe`). Sample k starts from the noise of
  `fold_in(fold_in(PRNGKey(seed), NOISE_STREAM), k)` and a stochastic solver draws its noise from
  `fold_in(fold_in(PRNGKey(seed), SOLVER_STREAM), k)` (one key per sample), so a sample does not depend on the batch,
  device, host or run that draws it. A class-conditional model gets balanced labels (sample k: class k mod the number
  of classes, the null label left out) and classifier-free guidance of `guidance_scale` (`samplers.guided`, one
  network call on the doubled batch). With `config.classifier` (a converted noisy classifier) the model is guided
  by it at `classifier_scale` (`samplers.classifier_guided`: the gradient of log p(y | x_t) by `jax.grad` in the
  compiled loop), the labels balanced over the classifier's classes.
- The feature (`config.feature`, `features.FEATURES`): "inception" is FID (pool3 of the FID Inception-v3, weights
  from `config.fid_weights`), seeing the samples quantised to uint8 as PNGs would hold them; "random_projection" is
  a test feature whose Fréchet distance is not FID (results.json says which was used: "metric" and "feature").
- Samples holding NaN or Inf stop the run (FloatingPointError), or with `allow_nonfinite` are counted and left out
  (`FeatureStats`' policy) and reported in "num_nonfinite".
- Features are streamed into float64 statistics (`FeatureStats`), one set per shard of `shard_size` consecutive
  samples, kept as each shard finishes in WORKDIR/shards/, a `core.ShardStore` stamped with the fingerprint of
  everything that decides the samples (source, solver, options, time grid, seed, guidance, feature, shard size, x64);
  a rerun samples only the missing shards, so a killed run ends with the FID of an uninterrupted one, and a workdir
  of another run is refused, not mixed in. A finished run keeps the merged statistics in WORKDIR/sample_stats.npz
  and removes its shards (32 MiB each with Inception; `keep_shards` keeps them, so that a later run with another
  num_samples reuses them); rerunning it recomputes only the distance.
- Devices: every batch is sharded over a mesh of the local devices (`num_devices`, 0 = all) along its `data` axis.
  Hosts: after `jax.distributed.initialize`, shard s is drawn by process s % process_count; each process merges its
  shards and the statistics are gathered (`multihost_utils.process_allgather`, float64 bits carried exactly);
  process 0 computes the distance and writes the results.
- The reference (`config.reference`): any file of `references.KINDS`; images are featurised with the run's feature
  and their statistics cached in WORKDIR/reference_stats/.

Outputs in the workdir: shards/shard_NNNNNN.npz while it runs, run.json (the fingerprinted identity), samples.npz
(the first `num_save` uint8 samples, from shard 0) and samples.png, sample_stats.npz (mu, sigma and count of the
finite samples' features in pytorch-fid's layout, and the exact statistics) and results.json (the value and its
provenance; "rows" is one row for `scripts/make_table.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.schedules.files import read_learned
from fastsamplers.experiments.configs import grid_file, grid_timesteps
from fastsamplers.experiments.metrics import features, references
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_score
from fastsamplers.experiments.report.figures import save_samples
from fastsamplers.experiments.report import tables
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.experiments.runs import sources
from fastsamplers.models.tarflow import denoise
from fastsamplers.samplers import causal
from fastsamplers.samplers.pytrees import merge, split

NOISE_STREAM = 0  # fold_in(root, NOISE_STREAM): the starting noise; sample k from fold_in(that, k)
SOLVER_STREAM = 1  # the noise of stochastic solvers, likewise per sample
SHARD_FORMAT = 2  # 2: FeatureStats (count, mean, m2) in core.ShardStore entries
FINAL = "sample_stats.npz"
FLOW_GRID = tables.FLOW_GRID  # a flow's row: its "grid"; its "nfe" the mean dependent passes


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start

    @property
    def name(self):
        return f"shard_{self.index:06d}.npz"


def shards(num_samples, shard_size):
    """The shards of a run: consecutive sample ranges of `shard_size` (the last one shorter)."""
    return [Shard(s, start, min(start + shard_size, num_samples))
            for s, start in enumerate(range(0, num_samples, shard_size))]


@dataclasses.dataclass(frozen=True)
class FlowSampler:
    """How a normalizing flow (`sources.Source.flow`, a TarFlow) is sampled, as ml-tarflow's evaluate_fid.py does
    (lines 70-98): z ~ N(0, I) per sample, `samplers.causal.invert` with `plan` and guidance weight `guidance` (its
    cfg: a += w (a - a_u), b likewise; `annealed`: w (t + 1) / (T - 1) at token t) and attention temperature
    `attn_temp` on the unconditional branch, then the self-denoising step x - lr grad loss with lr = self_denoising_lr
    B H W C noise_std^2 on the batch-mean loss 0.5 mean z^2 - mean logdet. The loss is -log p / (B H W C) up to a
    constant (logdet is per dimension, REFERENCES_CHECKPOINTS section 3), so that step is x + self_denoising_lr
    noise_std^2 grad log p(x), Tweedie's for self_denoising_lr = 1: `models.tarflow.denoise` with
    `denoise_sigma` = noise_std sqrt(self_denoising_lr) (0: no step). Then clip to [-1, 1]."""

    plan: tuple  # one causal.BlockPlan per block
    spec: Any = dataclasses.field(compare=False)  # the plan as configured (config.flow_plan parsed), for records
    guidance: float
    annealed: bool
    attn_temp: float
    denoise_sigma: float
    name = "flow"
    stochastic = False  # its only noise is the starting z


@dataclasses.dataclass(frozen=True)
class Plan:
    source: sources.Source
    solver: Any  # a samplers.Solver, or a FlowSampler for a flow (grid "", ts None, num_steps and nfe 0)
    label: str
    grid: str
    ts: Any  # the grid, replicated on the mesh
    num_steps: int
    nfe: int  # model evaluations per sample
    guidance_scale: float
    classifier_scale: float  # classifier guidance (`samplers.classifier_guided`), with source.classifier
    feature: features.Feature  # its params replicated on the mesh
    reference: references.Reference
    mesh: Mesh
    batch: int  # samples per device call, a multiple of the devices
    params: Any  # the model's weights, replicated on the mesh
    classifier_params: Any  # the classifier's weights, replicated (None without one)
    decode_params: Any  # a latent model's VAE weights, replicated (None for a pixel model)
    noise_key: Any
    solver_key: Any
    identity: dict  # what decides a shard's content
    shards: core.ShardStore  # WORKDIR/shards
    final: core.ShardStore  # WORKDIR (sample_stats.npz)


def _refusal(remedy):
    def refuse(path, differences, stored, expected):
        differs = "it differs in " + ", ".join(differences) if differences else "a different fingerprint"
        return f"{path} holds statistics of another run ({differs}); use another workdir, or {remedy}"

    return refuse


def _check_config(config):
    if isinstance(config.num_samples, bool) or not isinstance(config.num_samples, int) or config.num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (a covariance needs two samples), got "
                         f"{config.num_samples!r}")
    for name in ("batch_size", "shard_size"):
        if config[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {config[name]}")
    if config.num_devices < 0:
        raise ValueError(f"num_devices must be >= 0 (0 = all local devices), got {config.num_devices}")
    for name in ("guidance_scale", "classifier_scale"):
        if not math.isfinite(config[name]):
            raise ValueError(f"{name} must be finite, got {config[name]}")
    if not config.flow_plan and not config.solver:
        raise ValueError("set solver (a diffusion model's sampler) or flow_plan (a normalizing flow's plan)")
    if config.flow_plan:  # a flow: the diffusion keys (grid, nfe) are not read
        if config.solver:
            raise ValueError(f"solver={config.solver!r} and flow_plan={config.flow_plan!r}: a diffusion model is "
                             "sampled by a solver, a normalizing flow by a flow plan; set the other to ''")
        causal.parse_plan(config.flow_plan)  # a bad plan string, before the model is loaded
        for name in ("flow_guidance", "flow_attn_temp", "denoise"):
            if not (math.isfinite(config[name]) and config[name] >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {config[name]}")
    elif not config.grid.startswith("file:"):
        options = {k: v for k, v in config.grid_options.to_dict().items() if k != "append_zero"}  # get_timesteps'
        schedules.GRIDS.check_options(config.grid, options)  # unknown grid or option


def make_plan(config, workdir) -> Plan:
    """Check every input and build the run: names, NFE, files and the reference before the model is loaded where
    that is possible, and everything before the first sample."""
    _check_config(config)
    options = config.solver_options.to_dict() if isinstance(config.solver_options, ml_collections.ConfigDict) \
        else dict(config.solver_options)
    learned = solver = None
    if not config.flow_plan:
        solver = samplers.get_solver(config.solver, **options)
        if not solver.static_nfe:
            raise ValueError(f"solver {config.solver!r} is adaptive: it has no NFE budget; pick a fixed-step solver")
        if config.solver in samplers.FILE_SOLVERS:  # a learned sampler runs on the grid saved with it
            learned_ts, learned = read_learned(options["path"])
            num_steps = learned_ts.shape[0] - 1
            if solver.nfe(num_steps) != config.nfe:
                raise ValueError(f"{options['path']}: a learned sampler of {solver.nfe(num_steps)} model calls, but "
                                 f"nfe={config.nfe}; set nfe={solver.nfe(num_steps)}")
        else:
            num_steps = solver.steps_for_nfe(config.nfe)
        solver.check_grid(num_steps)
        grid_file(config.grid, config.nfe, num_steps)
    feature_spec = features.from_config(config)
    if not config.reference:
        raise ValueError(f"config.reference is empty: give {references.KINDS}")
    if not os.path.exists(config.reference):
        raise FileNotFoundError(f"reference {config.reference!r} not found")

    source = sources.load(config)
    target = source.target
    if source.flow is not None or config.flow_plan:
        solver, ts, num_steps = _flow_sampler(config, source), None, 0
        sampling = {"flow_plan": solver.spec, "flow_guidance": solver.guidance, "annealed": solver.annealed,
                    "attn_temp": solver.attn_temp, "denoise_sigma": solver.denoise_sigma}
        return _finish_plan(config, workdir, source, solver, ts, num_steps, 0, feature_spec, options, sampling)
    if solver.learned_variance:
        source = _with_learned_variance(source, config.solver)
        target = source.target
    if config.guidance_scale != 1.0:
        if source.classes is None:
            raise ValueError(f"guidance_scale={config.guidance_scale} needs a class-conditional checkpoint; "
                             f"{target.description} is unconditional (use guidance_scale=1)")
        if source.null_label is None:
            raise ValueError(f"guidance_scale={config.guidance_scale}: {target.description} is class-conditional "
                             f"({target.num_classes} labels) but has no null label for the unconditional call; set "
                             "null_label=... (the label its training used for 'no class')")
    if learned is not None and learned["process"] != target.process.name:
        raise ValueError(f"{options['path']} was learned on process {learned['process']!r}; {target.description} "
                         f"is sampled on {target.process.name!r}")
    ts = np.asarray(learned_ts) if learned is not None else grid_timesteps(
        config.grid, target.process, num_steps, config.nfe, config.t_min, config.t_max, config.grid_options.to_dict())
    if source.decode is None and source.images != tuple(target.shape):
        raise ValueError(f"{config.checkpoint} samples latents {tuple(target.shape)} and has no VAE to decode them "
                         "into images: give its folder a vae/ (scripts/convert_checkpoint.py --vae FOLDER)")
    sampling = {"process": target.process.name, "prediction": target.prediction, "solver": config.solver,
                "solver_options": options, "grid": config.grid, "ts": ts.tolist(), "nfe": solver.nfe(num_steps)}
    return _finish_plan(config, workdir, source, solver, ts, num_steps, solver.nfe(num_steps), feature_spec, options,
                        sampling)


def _finish_plan(config, workdir, source, solver, ts, num_steps, nfe, feature_spec, options, sampling):
    """The Plan of either branch: features, reference, mesh, keys and the fingerprinted identity (`sampling`: what
    the branch's sampler adds to it)."""
    target = source.target
    feature = feature_spec.build(source.images)
    reference = references.check(config.reference, feature, source.images)

    devices = jax.local_devices()
    num_devices = config.num_devices or len(devices)
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but this process sees {len(devices)} local devices")
    mesh = Mesh(np.array(devices[:num_devices]), ("data",))
    replicated = features.sharding(mesh, False)
    root = jax.random.PRNGKey(config.seed)
    identity = {**source.identity, **sampling, "seed": config.seed, "guidance_scale": float(config.guidance_scale),
                "classes": source.classes, "null_label": source.null_label, "feature": feature.identity(),
                "classifier_scale": float(config.classifier_scale) if source.classifier else None,
                "shard_size": config.shard_size, "x64": bool(jax.config.jax_enable_x64), "shard_format": SHARD_FORMAT}
    flow = source.flow is not None
    return Plan(source=source, solver=solver, label=config.label or (
                    f"flow plan {config.flow_plan}" if flow else _solver_label(config.solver, options)),
                grid="" if flow else config.grid, ts=None if flow else jax.device_put(jnp.asarray(ts), replicated),
                num_steps=num_steps, nfe=nfe, guidance_scale=float(config.guidance_scale),
                classifier_scale=float(config.classifier_scale),
                feature=dataclasses.replace(feature, params=jax.device_put(feature.params, replicated)),
                reference=reference, mesh=mesh, batch=-(-config.batch_size // num_devices) * num_devices,
                params=jax.device_put(target.args, replicated),
                classifier_params=None if source.classifier is None else jax.device_put(source.classifier.params,
                                                                                        replicated),
                decode_params=None if source.decode is None else jax.device_put(source.decode_params, replicated),
                noise_key=jax.device_put(jax.random.fold_in(root, NOISE_STREAM), replicated),
                solver_key=jax.device_put(jax.random.fold_in(root, SOLVER_STREAM), replicated), identity=identity,
                shards=core.ShardStore(os.path.join(workdir, "shards"), identity,
                                       refuse=_refusal("remove its shards/ folder to start over")),
                final=core.ShardStore(workdir, identity, refuse=_refusal("remove it and shards/ to start over")))


def _with_learned_variance(source, solver_name):
    """The source sampled through its [eps | v] output, for a solver with a learned variance; its guidance guides the
    eps channels as published (all, or the layout's mask) and takes v from the conditional call, as DiT's
    forward_with_cfg does (DiT/models.py:257-262)."""
    if source.variance_model_fn is None:
        raise ValueError(f"solver {solver_name!r} with variance='learned' needs a checkpoint with a learned variance "
                         f"(guided-diffusion's or DiT's learn_sigma); {source.target.description} has none: use "
                         "variance='small' or 'large'")
    if source.classifier is not None:
        raise NotImplementedError(
            "classifier guidance of the ancestral sampler with the learned variance: guided-diffusion shifts its "
            "posterior mean by the variance times the gradient (condition_mean), which is not built here; "
            "classifier_guided's score form runs with variance='small' or 'large' and with the ODE solvers")
    target = copy.copy(source.target)
    target.model_fn = source.variance_model_fn
    channels = target.shape[-1]
    mask = (source.guidance_mask or (True,) * channels) + (False,) * channels
    return dataclasses.replace(source, target=target, guidance_mask=mask)


def _flow_sampler(config, source):
    """The `FlowSampler` of a flow source, every option checked against the model (one sentence each)."""
    name = source.target.description
    if source.flow is None:
        raise ValueError(f"flow_plan={config.flow_plan!r} is for a normalizing flow; {name} is a diffusion model: "
                         "set flow_plan='' and sample it with a solver")
    flow = source.flow
    if not config.flow_plan or config.solver:
        raise ValueError(f"{name} is a normalizing flow (TarFlow): it is sampled by inverting it, not by the "
                         f"diffusion solver {config.solver!r}; set solver='' and flow_plan= a plan of "
                         f"samplers.causal ({causal.PLAN_FORMS})")
    if config.guidance_scale != 1.0 or config.classifier:
        raise ValueError(f"guidance_scale and classifier are a diffusion model's; {name} is a flow: its guidance "
                         "weight is flow_guidance (ml-tarflow's cfg, 0 = none)")
    if config.flow_guidance and not flow.num_classes:
        raise ValueError(f"flow_guidance={config.flow_guidance} needs a class-conditional flow; {name} is "
                         "unconditional (use flow_guidance=0)")
    if config.flow_attn_temp != 1.0 and not config.flow_guidance:
        raise ValueError(f"flow_attn_temp={config.flow_attn_temp} tempers guidance's unconditional branch: it needs "
                         "flow_guidance > 0")
    if config.denoise and flow.noise_std is None:
        raise ValueError(f"denoise={config.denoise} needs the training noise level, which {name}'s config.json does "
                         "not record: add \"noise_std\" to it (scripts/convert_checkpoint.py --init-kwargs), or set "
                         "denoise=0")
    spec = causal.parse_plan(config.flow_plan)
    plan = causal.make_plan(spec, flow.flow.num_blocks)
    for block in plan:
        block.layout(flow.flow.num_tokens)  # segments that do not divide the tokens: now, not in the program
    return FlowSampler(plan, spec, float(config.flow_guidance), bool(config.flow_annealed_guidance),
                       float(config.flow_attn_temp),
                       float(flow.noise_std * math.sqrt(config.denoise)) if config.denoise else 0.0)


def _solver_label(name, options):
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


# ---------------------------------------------------------------------------------------------------------------
# Sampling and scoring one shard.


@functools.lru_cache(maxsize=8)
def _sample_program(model_structure, solver_structure, process, prediction, image_shape, classes, null_label, guided,
                    conditional, classifier_fn, decode, guidance_mask, mesh):
    """jit(params, indices (n,) int32 sharded, ts, noise_key, solver_key, model leaves, solver leaves, guidance
    scale, classifier params, classifier scale, decoder params) -> float32 samples (n, *image_shape).

    Cached on its static inputs, the structures of the model function and the solver (`samplers.pytrees.split`) and
    whether the model is guided: one compiled program per model, solver structure, step count and batch, whatever
    the guidance scale or the solver's numeric options (eta, tau, ...), which are traced arguments, as in
    `samplers.sample`. The guided model function is built inside the traced function, so it is traced and compiled
    once with it. `conditional`: the model takes labels (an unconditional one guided by a classifier does not);
    `classifier_fn`: a noisy classifier's function for classifier guidance, or None; `decode`: a latent model's VAE
    decoder decode(params, z) (the samples are decoded in the program, its weights a traced argument: `image_shape`
    is then the latents'), or None; `guidance_mask`:
    the channels classifier-free guidance guides (None: all)."""
    batch_sharding = features.sharding(mesh, True)

    def draw(params, indices, ts, noise_key, solver_key, model_leaves, solver_leaves, scale, classifier_params,
             classifier_scale, decode_params):
        model_fn, solver = merge(model_structure, model_leaves), merge(solver_structure, solver_leaves)
        keys = jax.vmap(lambda k: jax.random.fold_in(noise_key, k))(indices)
        x = jax.vmap(lambda key: process.prior(key, image_shape, t=ts[0], dtype=jnp.float32))(keys)
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        model, args = model_fn, params
        if classes is not None:
            labels = jnp.asarray(classes, jnp.int32)[indices % len(classes)]
            args = (params, labels) if conditional else params
            if guided:
                model = samplers.guided(model_fn, scale, (params, jnp.full_like(labels, null_label)),
                                        batch_axes=(None, 0), channel_mask=guidance_mask)
            if classifier_fn is not None:
                model = samplers.classifier_guided(model, classifier_fn, classifier_scale, process=process,
                                                   prediction=prediction)
                args = (args, (classifier_params, labels))
        key = jax.vmap(lambda k: jax.random.fold_in(solver_key, k))(indices) if solver.stochastic else None
        x, _ = samplers.sample(model, solver, process, x, ts, prediction=prediction, key=key, args=args,
                               check_finite=False)
        if decode is not None:
            x = decode(decode_params, x)
        return x.astype(jnp.float32)

    replicated = features.sharding(mesh, False)
    return jax.jit(draw, in_shardings=(replicated, batch_sharding) + (replicated,) * 9, out_shardings=batch_sharding)


@functools.lru_cache(maxsize=8)
def _flow_program(flow, sampler, image_shape, classes, mesh):
    """jit(params, indices (n,) int32 sharded, noise_key) -> (float32 samples (n, *image_shape) in [-1, 1], the
    dependent network passes per block of this batch): `FlowSampler`'s recipe, z of sample k from fold_in(noise_key,
    k) as the diffusion branch's x_init. Cached on the flow module, the sampler (its plan and guidance are static in
    `samplers.causal.invert`), the shape, the classes and the mesh."""
    batch_sharding, replicated = features.sharding(mesh, True), features.sharding(mesh, False)

    def draw(params, indices, noise_key):
        keys = jax.vmap(lambda k: jax.random.fold_in(noise_key, k))(indices)
        z = jax.vmap(lambda key: jax.random.normal(key, image_shape, jnp.float32))(keys)
        z = jax.lax.with_sharding_constraint(z, batch_sharding)
        labels = None if classes is None else jnp.asarray(classes, jnp.int32)[indices % len(classes)]
        x, info = causal.invert(flow, params, z, labels, sampler.plan, sampler.guidance, sampler.annealed,
                                attn_temperature=sampler.attn_temp)
        if sampler.denoise_sigma:  # conditioned on the labels, as evaluate_fid.py:89-90
            x = denoise(flow, params, x, sampler.denoise_sigma, labels)
        return jnp.clip(x, -1.0, 1.0).astype(jnp.float32), info["passes"]

    return jax.jit(draw, in_shardings=(replicated, batch_sharding, replicated),
                   out_shardings=(batch_sharding, replicated))


def draw_batch(plan: Plan, indices: np.ndarray) -> tuple[jax.Array, jax.Array | None]:
    """(`sample_batch`'s samples, the dependent network passes per block of this batch for a flow, else None)."""
    source = plan.source
    if source.flow is None:
        return sample_batch(plan, indices), None
    program = _flow_program(source.flow.flow, plan.solver, tuple(source.images), source.classes, plan.mesh)
    return program(plan.params, jax.device_put(indices, features.sharding(plan.mesh, True)), plan.noise_key)


def sample_batch(plan: Plan, indices: np.ndarray) -> jax.Array:
    """The samples of the given indices (a device batch: `plan.batch` of them), float32 (n, *shape), sharded along
    the mesh's data axis: sample k from its own noise key (module docstring), whatever the batch it is drawn in."""
    if plan.source.flow is not None:
        return draw_batch(plan, indices)[0]
    target = plan.source.target
    (model_structure, model_leaves), (solver_structure, solver_leaves) = split(target.model_fn), split(plan.solver)
    classifier = plan.source.classifier
    program = _sample_program(model_structure, solver_structure, target.process, target.prediction,
                              tuple(target.shape), plan.source.classes, plan.source.null_label,
                              plan.guidance_scale != 1.0, bool(target.num_classes),
                              None if classifier is None else classifier.classifier_fn, plan.source.decode,
                              plan.source.guidance_mask, plan.mesh)
    return program(plan.params, jax.device_put(indices, features.sharding(plan.mesh, True)), plan.ts, plan.noise_key,
                   plan.solver_key, model_leaves, solver_leaves, plan.guidance_scale, plan.classifier_params,
                   plan.classifier_scale, plan.decode_params)


def _sample_batches(shard, plan, bar, kept, num_save, passes):
    """The shard's samples, one padded device batch at a time, as (samples, number of real rows); the first
    `num_save` of them are appended to `kept` as uint8 images, a flow's passes per block of each batch to `passes`."""
    for start in range(shard.start, shard.stop, plan.batch):
        indices = np.arange(start, start + plan.batch, dtype=np.int32)  # rows past shard.stop: computed, dropped
        samples, batch_passes = draw_batch(plan, indices)
        if batch_passes is not None:
            passes.append(np.asarray(batch_passes).tolist())
        n = min(plan.batch, shard.stop - start)
        if start - shard.start < num_save:
            kept.append(np.asarray(features.quantise(samples))[:min(n, num_save - (start - shard.start))])
        yield samples, n
        bar.update(n)


def _score_shard(shard, plan, config, bar, workdir):
    """The `FeatureStats` of one shard's samples; the first `num_save` uint8 samples of shard 0 go to
    WORKDIR/samples.npz and samples.png."""
    kept, passes = [], []
    num_save = config.num_save if shard.index == 0 else 0
    stats = features.stream_stats(plan.feature, _sample_batches(shard, plan, bar, kept, num_save, passes), plan.batch,
                                  plan.mesh)
    if stats.num_nonfinite and not config.allow_nonfinite:
        raise FloatingPointError(
            f"shard {shard.index}: {stats.num_nonfinite} of samples {shard.start}..{shard.stop} are not finite "
            f"({_cell_text(plan)} diverged); set allow_nonfinite=True to count them and leave them out instead")
    if kept:
        images = np.concatenate(kept)
        core.write_npz(os.path.join(workdir, "samples.npz"), {"images": images})
        save_samples(images.astype(np.float32) / 127.5 - 1.0, os.path.join(workdir, "samples.png"))
    return stats, passes


def write_shard(plan, shard, stats, passes=None):
    """The shard's statistics, atomically, in the run's shard store (with a flow's passes per block of each batch)."""
    plan.shards.write(shard.name, stats.arrays(), {"start": shard.start, "stop": shard.stop,
                                                   **({"passes": passes} if passes else {})})


def read_shard(plan, shard):
    """The saved `FeatureStats` of a shard, or None when it is still to be sampled (absent, or the last shard of a
    run with fewer samples); ValueError for a shard of another run."""
    entry = plan.shards.read(shard.name)
    if entry is None or (entry.record.get("start"), entry.record.get("stop")) != (shard.start, shard.stop):
        return None  # the same run with another num_samples: this shard is sampled again, whole
    return FeatureStats.from_arrays(entry.arrays)


def write_final(plan, total, passes=None):
    """WORKDIR/sample_stats.npz: mu, sigma and count (pytorch-fid's layout, for other tools) and the exact
    statistics, so that a finished run needs no shard files to be scored again (and a flow's passes per batch)."""
    plan.final.write(FINAL, {"mu": total.mean, "sigma": total.covariance, **total.arrays()},
                     {"passes": passes} if passes else None)


def _recorded_passes(store, name):
    """The flow passes per block of each batch recorded in an entry of `store` ([] if none)."""
    entry = store.read(name)
    return [] if entry is None else entry.record.get("passes", [])


def read_final(plan, num_samples):
    """The `FeatureStats` of a finished run of this plan with num_samples samples, or None; ValueError for another
    run's."""
    entry = plan.final.read(FINAL)
    if entry is None:
        return None
    total = FeatureStats.from_arrays(entry.arrays)
    return total if total.num_samples == num_samples else None  # another num_samples: sampled again


# ---------------------------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample, featurise and score one solver x grid x NFE cell; resumes from WORKDIR.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/fid_pretrained.py`.
      workdir: a directory (created if missing) for the shards and results (see the module docstring).

    Returns:
      The content of results.json on process 0 (the other processes of a multi-host run return None): "metric"
      ("fid", or "fd_random_projection" for the test feature) and "value"; "num_samples" (drawn), "num_nonfinite"
      (left out); "source", "checkpoint" (the source's record: for a published checkpoint its path, layout, load
      options, SHA-256 of each file and of all), "model", "solver", "grid", "ts", "nfe" (budget, steps, per sample,
      and network calls per sample), "guidance", "seeds", "feature", "reference" (path, kind, SHA-256, count),
      "quantisation", "sharding", "resumed_shards", "reused_final_statistics" (a finished run scored again),
      "sampled_this_run", "wall_s", "sampling_s" and "samples_per_s" (this run's samples over its sampling time,
      compiling included), "fingerprint", "versions", "config", and "rows" (one row for scripts/make_table.py)
      with "description".

    Raises:
      ValueError, FileNotFoundError: a bad name, NFE, file, reference or option, before any sampling.
      FloatingPointError: a non-finite sample (unless allow_nonfinite).
    """
    from tqdm import tqdm

    start_time = time.perf_counter()
    plan = make_plan(config, workdir)
    process, process_count = jax.process_index(), jax.process_count()
    all_shards = shards(config.num_samples, config.shard_size)
    owned = [s for s in all_shards if s.index % process_count == process]
    final = read_final(plan, config.num_samples) if process == 0 else None
    complete = _broadcast_flag(final is not None)  # a finished run: nothing to sample, on any process
    done = {} if complete else {s.index: read_shard(plan, s) for s in owned}
    done = {k: v for k, v in done.items() if v is not None}
    if process == 0:
        core.write_json(os.path.join(workdir, "run.json"),
                        {"identity": plan.shards.identity, "fingerprint": plan.shards.fingerprint}, indent=2)
        # The reference before the samples: a bad image folder fails now, not after hours of sampling.
        reference, reference_record = references.load(plan.reference, plan.feature, batch_size=plan.batch,
                                                       cache_dir=os.path.join(workdir, "reference_stats"),
                                                       mesh=plan.mesh)

    resumed = len(all_shards) if complete else len(done)
    todo = [] if complete else [s for s in owned if s.index not in done]
    bar = tqdm(total=sum(s.size for s in owned), initial=sum(s.size for s in owned if s not in todo),
               unit="sample", desc=_cell_text(plan), disable=process != 0,
               mininterval=1.0, dynamic_ncols=True)
    sampling_start = time.perf_counter()
    sampled = 0
    flow = plan.source.flow is not None
    passes = {} if complete or not flow else {index: _recorded_passes(plan.shards, all_shards[index].name)
                                              for index in done}
    for shard in todo:
        stats, passes[shard.index] = _score_shard(shard, plan, config, bar, workdir)
        write_shard(plan, shard, stats, passes[shard.index] or None)
        done[shard.index] = stats
        sampled += shard.size
    bar.close()
    sampling_s = time.perf_counter() - sampling_start

    # A flow's dependent passes per block of every batch, in shard order (this process's shards on several hosts).
    passes = (_recorded_passes(plan.final, FINAL) if complete else [p for i in sorted(passes) for p in passes[i]]) \
        if flow and process == 0 else []
    if complete:
        total = final
    else:
        total = FeatureStats.empty(plan.feature.dim)
        for index in sorted(done):  # a fixed order: the statistics do not depend on which run computed which shard
            total = total.merge(done[index])
        total, sampled, resumed = _merge_over_processes(total, sampled, resumed)
    results = None
    if process == 0:
        if total.num_samples != config.num_samples:
            raise RuntimeError(f"the shards hold {total.num_samples} samples, expected {config.num_samples}")
        if not complete and total.count >= 2:
            write_final(plan, total, passes)
        value = frechet_score(total, reference)
        if not math.isfinite(value):
            raise FloatingPointError(f"the Fréchet distance is {value} ({total.count} finite samples of "
                                     f"{total.num_samples}); stopping")
        results = _results(config, plan, value, total, reference_record, resumed, sampled, sampling_s,
                           time.perf_counter() - start_time, process_count, passes)
        results["reused_final_statistics"] = complete
        core.write_json(os.path.join(workdir, "results.json"), results, indent=2)
        results = json.loads(json.dumps(results, default=core.atomic.jsonable))  # what the file holds
        name = "FID" if plan.feature.name == "inception" else f"FD ({plan.feature.name} features, not FID)"
        left_out = f", {total.num_nonfinite} non-finite left out" if total.num_nonfinite else ""
        print(f"{name} {value:.4f}: {total.num_samples} samples, {_cell_text(plan)}{_guidance_text(plan)}{left_out}"
              f" -> {os.path.join(workdir, 'results.json')}", flush=True)
    if not complete and not config.keep_shards:
        if process_count > 1:  # the shards go only once process 0 holds the final statistics
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fid_protocol: final statistics written")
        for shard in owned:
            plan.shards.remove(shard.name)
    return results


def _broadcast_flag(flag):
    """Process 0's boolean on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def _merge_over_processes(stats, sampled, resumed):
    """(statistics, samples drawn now, shards resumed) over every process: process_allgather of their float64 bits
    as uint32 (exact with or without x64), merged in process order."""
    if jax.process_count() == 1:
        return stats, sampled, resumed
    from jax.experimental import multihost_utils

    dim = stats.dim
    head = [stats.count, stats.num_nonfinite, sampled, resumed]
    packed = np.concatenate([np.asarray(head, np.float64), stats.mean, stats.m2.ravel()])
    gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
    rows = np.ascontiguousarray(gathered).view(np.float64).reshape(jax.process_count(), packed.size)
    out = FeatureStats.empty(dim)
    k = len(head)
    for row in rows:
        out = out.merge(FeatureStats(int(row[0]), row[k:k + dim].copy(), row[k + dim:].reshape(dim, dim).copy(),
                                     int(row[1])))
    return out, int(rows[:, 2].sum()), int(rows[:, 3].sum())


def _results(config, plan, value, total, reference, resumed, sampled, sampling_s, wall_s, process_count,
             passes=()):
    metric = plan.feature.metric
    if plan.source.flow is not None:
        flow_parts, row = _flow_results(config, plan, passes)
    else:
        flow_parts, row = {}, {"solver": config.solver, "options": plan.identity["solver_options"],
                               "grid": plan.grid, "nfe_budget": int(config.nfe), "num_steps": plan.num_steps,
                               "nfe": plan.nfe}
    row = {"label": plan.label, **row, "metric": metric, "value": value, "num_samples": total.num_samples,
           "num_nonfinite": total.num_nonfinite, "seconds": wall_s}
    return {**_diffusion_results(config, plan, value, total, reference, resumed, sampled, sampling_s, wall_s,
                                 process_count, row), **flow_parts}


def _flow_results(config, plan, passes):
    """The parts of results.json that differ for a flow, and its row. Its cost is `samplers.causal`'s dependent
    network passes (a pass: one block's network on one segment of tokens, for the whole batch; guidance runs it on
    the doubled batch), summed over blocks, as measured per batch (a Jacobi segment stops at its tolerance), not a
    diffusion NFE; the table's row takes their mean as its "nfe" on the grid "flow plan"."""
    sampler, flow = plan.solver, plan.source.flow.flow
    per_batch = np.asarray(passes, np.float64).reshape(len(passes), flow.num_blocks)
    mean = float(per_batch.sum(1).mean()) if len(passes) else None
    cost = {"dependent_passes_per_batch": mean, "dependent_passes_per_block": per_batch.mean(0).tolist(),
            "max_dependent_passes": float(per_batch.sum(1).max()) if len(passes) else None,
            "batches_measured": len(passes), "sequential_passes": flow.num_blocks * flow.num_tokens,
            "batch_doubled_by_guidance": bool(sampler.guidance),
            "denoising_step": "one forward and one backward pass of the whole flow" if sampler.denoise_sigma else None}
    record = {"name": "flow", "label": plan.label, "plan": sampler.spec, "guidance": sampler.guidance,
              "annealed_guidance": sampler.annealed, "attn_temp": sampler.attn_temp,
              "denoise": {"self_denoising_lr": config.denoise, "noise_std": plan.source.flow.noise_std,
                          "sigma": sampler.denoise_sigma, "step": "x + sigma^2 grad log p(x), then clip to [-1, 1]"},
              "stochastic": False}
    row = {"solver": "flow", "plan": sampler.spec, "grid": FLOW_GRID, "nfe_budget": None,
           "nfe": None if mean is None else round(mean), "dependent_passes": mean}
    parts = {"model": {"kind": "normalizing flow", "layout": plan.source.record["layout"],
                       "image_shape": list(plan.source.images), "num_classes": plan.source.target.num_classes or None,
                       "noise_std": plan.source.flow.noise_std},
             "solver": record, "grid": None, "ts": None, "nfe": cost,
             "guidance": {"flow_guidance": sampler.guidance, "annealed": sampler.annealed,
                          "labels": None if plan.source.classes is None else "sample k: classes[k % len(classes)]",
                          "classes": plan.source.classes}}
    return parts, row


def _diffusion_results(config, plan, value, total, reference, resumed, sampled, sampling_s, wall_s, process_count,
                       row):
    metric = plan.feature.metric
    classifier = plan.source.classifier
    options = plan.identity.get("solver_options")
    network_calls = plan.nfe * (2 if plan.guidance_scale != 1.0 else 1)
    source, target = plan.source, plan.source.target
    flow = source.flow is not None  # its parts are replaced by _flow_results'
    return {
        "metric": metric,
        "value": value,
        "num_samples": total.num_samples,
        "num_nonfinite": total.num_nonfinite,
        "source": config.source,
        "checkpoint": source.record,
        "model": None if flow else {
            "process": target.process.name, "prediction": target.prediction,
            "image_shape": list(plan.source.images), "num_classes": target.num_classes or None,
            "latent_shape": list(target.shape) if plan.source.decode is not None else None,
            "null_label": source.null_label},
        "solver": {"name": config.solver, "options": options, "label": plan.label,
                   "order": getattr(plan.solver, "order", None), "stochastic": plan.solver.stochastic},
        "grid": {"name": plan.grid, "options": config.grid_options.to_dict(), "t_min": config.t_min,
                 "t_max": config.t_max},
        "ts": plan.identity.get("ts"),
        "nfe": {"budget": int(config.nfe), "num_steps": plan.num_steps, "per_sample": plan.nfe,
                "network_calls_per_sample": network_calls},
        "guidance": {"scale": plan.guidance_scale, "null_label": source.null_label,
                     "labels": None if source.classes is None else "sample k: classes[k % len(classes)]",
                     "classes": source.classes,
                     "classifier": None if classifier is None else {
                         "path": source.record["classifier"]["path"], "scale": plan.classifier_scale,
                         "gradients_per_sample": plan.nfe}},
        "seeds": {"seed": config.seed,
                  "noise": f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {NOISE_STREAM}), k)",
                  "solver": (f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {SOLVER_STREAM}), k)"
                             if plan.solver.stochastic else None)},
        "feature": plan.feature.record,
        "reference": reference,
        "quantisation": {"uint8": "round(clip((x + 1) * 127.5, 0, 255)); features of uint8 / 127.5 - 1",
                         "clip": "clip(x, -1, 1)", "float": "none"}[plan.feature.input],
        "sharding": {"processes": process_count, "devices_per_process": int(plan.mesh.devices.size),
                     "device_batch": plan.batch, "shard_size": config.shard_size,
                     "num_shards": len(shards(config.num_samples, config.shard_size))},
        "resumed_shards": resumed,
        "sampled_this_run": sampled,
        "wall_s": wall_s,
        "sampling_s": sampling_s,
        "samples_per_s": sampled / sampling_s if sampled and sampling_s > 0 else None,
        "fingerprint": plan.shards.fingerprint,
        "versions": versions(),
        "config": config.to_dict(),
        "description": f"{target.description}: {'FID' if metric == 'fid' else metric}, {total.num_samples} samples"
                       + _guidance_text(plan),
        "rows": [row],
    }


def _cell_text(plan):
    if plan.source.flow is not None:
        return plan.label
    return f"{plan.label} ({plan.solver.name}), {plan.grid} grid, NFE {plan.nfe}"


def _guidance_text(plan):
    if plan.source.flow is not None:
        return (f", flow plan {plan.solver.spec}" + (f", guidance {plan.solver.guidance:g}"
                                                      + (" annealed" if plan.solver.annealed else "")
                                                      if plan.solver.guidance else ""))
    return ((f", guidance {plan.guidance_scale:g}" if plan.guidance_scale != 1.0 else "")
            + (f", classifier guidance {plan.classifier_scale:g}" if plan.source.classifier is not None else ""))
