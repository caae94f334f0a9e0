"""Checkpoints of a training run: orbax in `WORKDIR/checkpoints`, checked against the config before they are read,
and the run's config beside them in `WORKDIR/config.json`.

The loop (`experiments.train.loop`) saves the state (step, params, EMA params, optimizer state) there; a step
directory appears only when complete, so a killed run leaves only whole checkpoints. A run resumed with another
config keeps the earlier one (`save_config`). Everything that samples a trained model reads it back through here:
`restore_run` gives a run's config, experiment and latest weights, `checkpoint_target` the model function of one of
its resolutions, ready for the samplers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fastsamplers import core, samplers
from fastsamplers.models.conditioning import split_conditional_args

from fastsamplers.experiments.train.experiment import Experiment, abstract_state, build


def manager(workdir: str, *, read_only: bool = False, max_to_keep: int | None = None,
            async_checkpointing: bool = False) -> ocp.CheckpointManager:
    """The orbax manager of `WORKDIR/checkpoints` (created when writing; `read_only` for a run that is only read: the
    folder must exist, and the manager neither creates, cleans nor saves anything. orbax's own `read_only` option is
    not used for that: it logs a warning, "Given directory is read only", at every restore)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if read_only:  # never asked to save, with nothing to clean up or delete: it writes nothing
        options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_checkpointing,
                                               cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())


def check_checkpoint(manager: ocp.CheckpointManager, step: int, abstract: Any) -> None:
    """Raise ValueError when the checkpoint at `step` does not have the shapes and dtypes of this config's state."""
    stored = manager.item_metadata(step)
    stored = getattr(stored, "tree", stored)
    expected = jax.tree_util.tree_flatten_with_path(abstract)[0]
    found = [leaf for leaf in jax.tree.leaves(stored) if hasattr(leaf, "shape")]
    where = os.path.join(str(manager.directory), str(step))
    if len(found) != len(expected):
        raise ValueError(f"the checkpoint {where} holds {len(found)} arrays but this config's model and optimizer "
                         f"have {len(expected)}: it is a run of another config (use another --workdir)")
    for (path, want), got in zip(expected, found):
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            raise ValueError(
                f"the checkpoint {where} does not fit this config: {jax.tree_util.keystr(path)} is "
                f"{tuple(got.shape)} {np.dtype(got.dtype)} there, {tuple(want.shape)} {np.dtype(want.dtype)} here "
                f"(another model size or data shape; use another --workdir)")


def restore_state(manager: ocp.CheckpointManager, step: int, abstract: Any) -> dict:
    """The state saved at `step`, after `check_checkpoint`; laid out (sharded) as `abstract` says."""
    check_checkpoint(manager, step, abstract)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def config_changes(before: dict, after: dict) -> list[str]:
    """The keys whose values differ between two configs given as nested dicts (`json.loads(config.to_json())`), as
    "key: before -> after" lines, dotted keys in sorted order; a key that only one of them has is "(absent)" in the
    other.

    Example:
        >>> config_changes({"train": {"lr": 0.1, "num_steps": 10}}, {"train": {"lr": 0.1, "num_steps": 20}})
        ['train.num_steps: 10 -> 20']
    """
    flat_before, flat_after = _flatten(before), _flatten(after)
    absent = object()
    show = lambda value: "(absent)" if value is absent else json.dumps(value)
    return [f"{key}: {show(flat_before.get(key, absent))} -> {show(flat_after.get(key, absent))}"
            for key in sorted(set(flat_before) | set(flat_after))
            if flat_before.get(key, absent) != flat_after.get(key, absent)]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(workdir: str, config: ml_collections.ConfigDict, step: int) -> tuple[list[str], str | None]:
    """Write the run's config to WORKDIR/config.json. Where that file holds another config (the run is resumed
    with changed keys), it is first kept as WORKDIR/config_step_NNNNNNN.json (the config of the steps before `step`,
    the step the run resumes from; a second change at the same step adds _1, _2, ...), never overwritten.

    Args:
      workdir: the run's directory.
      config: the config the run goes on with.
      step: the step it resumes from (0 for a new run).

    Returns:
      (changes, kept): the `config_changes` lines (empty when the config is the same or new) and the path of the
      kept earlier config, or None.
    """
    path = os.path.join(workdir, "config.json")
    text = config.to_json(indent=2)
    changes, kept = [], None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            earlier = f.read()
        try:
            changes = config_changes(json.loads(earlier), json.loads(text))
        except json.JSONDecodeError:  # a damaged file: keep it too, whatever it holds
            changes = [f"{path} is not valid JSON"]
        if changes:
            kept = os.path.join(workdir, f"config_step_{step:07d}.json")
            n = 0
            while os.path.exists(kept):
                n += 1
                kept = os.path.join(workdir, f"config_step_{step:07d}_{n}.json")
            core.write_atomic(kept, earlier)
    if kept is not None or not os.path.isfile(path):
        core.write_atomic(path, text)
    return changes, kept


def load_config(spec: str) -> ml_collections.ConfigDict:
    """An experiment config from "path/to/file.py" or "path/to/file.py:arg" (the training config of a run).

    Args:
      spec: the config file, optionally followed by ":arg" (the text its `get_config(arg)` receives).

    Returns:
      The config `get_config` returns.

    Raises:
      FileNotFoundError: no such file.
    """
    path, _, arg = str(spec).partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


class Target:
    """What is sampled: process, prediction kind, example shape, the model function and its `args` (model_fn(x, t,
    args) with a checkpoint's parameters as args, so they are traced, never compiled in; model_fn(x, t) with
    args None); for the oracle also the oracle.

    A class-conditional model (num_classes > 0) is model_fn(x, t, (args, labels)), labels (batch,) int32 in
    0..num_classes - 1 and num_classes the null label (the unconditional model); `conditioned` builds the model and
    args of one batch, guided or not."""

    def __init__(self, process, prediction, shape, model_fn, oracle=None, dataset=None, description="", args=None,
                 num_classes=0, step=None):
        self.process, self.prediction, self.shape = process, prediction, tuple(shape)
        self.model_fn, self.oracle, self.dataset, self.description = model_fn, oracle, dataset, description
        self.args, self.num_classes = args, num_classes
        self.step = step  # a checkpoint's training step (None for the oracle)
        self._guided = {}

    def conditioned(self, labels, guidance_scale=1.0):
        """(model_fn(x, t, args), args) for a batch with these class labels, with classifier-free guidance of the
        given scale (one model call on the doubled batch; the wrapper is cached per batch size, so the samplers'
        compiled programs are reused). An unconditional target takes labels None and scale 1."""
        if not self.num_classes:
            if labels is not None or guidance_scale != 1.0:
                raise ValueError(f"{self.description}: labels and guidance need a class-conditional model")
            return self.model_fn, self.args
        labels = jnp.asarray(labels, jnp.int32)
        if guidance_scale == 1.0:
            return self.model_fn, (self.args, labels)
        key = (int(labels.shape[0]), float(guidance_scale))
        if key not in self._guided:
            null = jnp.full(labels.shape, self.num_classes, jnp.int32)
            self._guided[key] = samplers.guided(self.model_fn, guidance_scale, uncond_args=(None, null),
                                                batch_axes=(None, 0))
        return self._guided[key], (self.args, labels)


@dataclasses.dataclass(frozen=True)
class SamplerModel:
    """A network function fn(params, x, t[, labels]) as the samplers call it: model(x, t, params), or
    model(x, t, (params, labels)) for a class-conditional network. Equal and hashable by value, so that two
    checkpoints of one architecture share the samplers' compiled programs (their parameters are `args`)."""

    fn: Callable
    conditional: bool = False

    def __call__(self, x, t, args):
        if not self.conditional:
            return self.fn(args, x, t)
        params, labels = split_conditional_args(args)
        return self.fn(params, x, t, labels)


def restore_run(train_spec: str, checkpoint_dir: str,
                use_ema: bool = True) -> tuple[ml_collections.ConfigDict, Experiment, Any, int]:
    """The latest weights of a training run.

    Args:
      train_spec: the run's training config, "file.py" or "file.py:arg".
      checkpoint_dir: the run's --workdir (with checkpoints/ in it).
      use_ema: the EMA weights (else the raw ones).

    Returns:
      (config, experiment, params, step), with `experiment = build(config, checkpoint_dir)`.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
      ValueError: the checkpoint does not fit the config (another model size or data shape), before any sampling.
    """
    config = load_config(train_spec)
    directory = os.path.join(os.path.abspath(checkpoint_dir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir!r} (expected {directory}); train first: "
                                f"python scripts/train.py --config {train_spec} --workdir {checkpoint_dir}")
    experiment = build(config, checkpoint_dir)  # a process recorded in the workdir is read from it
    reader = manager(checkpoint_dir, read_only=True)
    try:
        step = reader.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        state = restore_state(reader, step, abstract_state(experiment))
    finally:
        reader.close()
    return config, experiment, state["ema_params" if use_ema else "params"], step


def checkpoint_target(train_spec: str, checkpoint_dir: str, use_ema: bool = True, resolution: int = 0) -> Target:
    """The model of a training run, from its latest checkpoint, as a `Target` for the ODE samplers.

    Args:
      train_spec: the run's training config, "file.py" or "file.py:arg".
      checkpoint_dir: the run's --workdir.
      use_ema: the EMA weights (else the raw ones).
      resolution: which of the run's training resolutions (an index into `data.image_sizes`).

    Returns:
      A `Target` with the run's process, prediction kind, example shape, `model_fn(x, t, params)` with the
      parameters as `args`, dataset and checkpoint step.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
      ValueError: the checkpoint does not fit the config, or the run trains a normalizing flow.
    """
    config, experiment, params, step = restore_run(train_spec, checkpoint_dir, use_ema)
    if experiment.is_flow:
        raise ValueError(f"{train_spec} trains a normalizing flow; its samplers are samplers.causal "
                         f"(scripts/benchmark_causal.py), not ODE solvers")
    if not 0 <= resolution < len(experiment.datasets):
        raise ValueError(f"resolution index {resolution} but the run has {len(experiment.datasets)} resolutions")
    dataset = experiment.datasets[resolution]
    model_fn = SamplerModel(experiment.model_fn, experiment.conditional)
    return Target(experiment.process, config.loss.prediction, dataset.shape, model_fn, dataset=dataset,
                  description=f"{train_spec} @ step {step} ({'EMA' if use_ema else 'raw'} weights)", args=params,
                  num_classes=experiment.net.num_classes if experiment.conditional else 0, step=step)
