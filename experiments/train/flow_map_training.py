"""Data-free flow-map distillation (FreeFlow, Tong et al. 2025; reference sheet section 9) through the training loop.

`experiments.train.loop.train` calls `build(config)` when `config.flow_map.teacher_workdir` is set
(`experiments/configs/flow_map_distill.py` is the experiment):

1. The teacher: the latest checkpoint of the run in `flow_map.teacher_workdir`, read with its training config
   `flow_map.teacher_config` (`checkpoints.checkpoint_target`). It must predict velocity on a process on [0, 1] and
   have the student config's network, process and data.
2. The networks: the student F(x, t, s) is the teacher's network with a second time (`second_time=True`: its
   interval layers are new and their last one zero-initialised), started from the teacher's weights, so that at
   step 0 f(x, t, s) = x + (s - t) u_T(x, t), the teacher's Euler step. The auxiliary velocity network v_psi of the
   correction loss is the teacher's network started from the teacher's weights (at step 0 the student's noised
   marginals are estimated by the teacher's: the correction starts at zero). The state's params are
   {"student", "aux"}: checkpoints, EMA and the optimiser state (adamw's moments for both) hold both networks, and
   one compiled step updates both (`losses.make_flow_map_loss`: the stop-gradients separate their objectives).
3. The data: none. The run's dataset is `PriorNoise`, prior draws at t_max (a pure function of (key, step), so a
   resumed run draws exactly what an uninterrupted one does); the real data is only the W2 reference of eval.json.
   The teacher's weights are the loss's `frozen` input (`Experiment.frozen`), arguments of the compiled step.
4. Samples and eval.json: `flow_map.sample_steps` steps of the flow_map solver (`samplers.flow_map_solver`) on
   sample.grid.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from fastsamplers import samplers
from fastsamplers.experiments.configs import grid_timesteps
from fastsamplers.experiments.train import checkpoints, losses
from fastsamplers.experiments.train.experiment import Experiment, abstract_state, build as build_experiment
from fastsamplers.models.conditioning import network_fn
from fastsamplers.models.flow_map import FlowMapFn, FlowMapModel
from fastsamplers.models.networks import FLOWS


class PriorNoise(struct.PyTreeNode):
    """The training set of a data-free run: `batch(key, step, n)` is n draws of the process's prior at t_max from
    fold_in(key, step); `shape`, `num_examples` and `sample` are those of the real data (`reference`), which the
    loop's sample grids and W2 evaluation use."""

    reference: Any
    process: Any = struct.field(pytree_node=False)
    t_max: float = struct.field(pytree_node=False)

    @property
    def name(self):
        return f"prior noise of {self.reference.name}"

    @property
    def shape(self):
        return self.reference.shape

    @property
    def num_examples(self):
        return self.reference.num_examples

    num_classes = 0

    def batch(self, key, step, batch_size):
        return self.process.prior(jax.random.fold_in(key, step), (batch_size, *self.shape), t=self.t_max,
                                  dtype=jnp.float32)

    def sample(self, key, n):
        return self.reference.sample(key, n)


def check_flow_map_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError for flow_map settings that cannot run (before any I/O or compute)."""
    fm = config.flow_map
    if not fm.teacher_config:
        raise ValueError("flow_map.teacher_config is not set: give the teacher run's training config, e.g. "
                         "--config.flow_map.teacher_config=experiments/configs/digits_fm.py")
    if fm.sample_steps < 1:
        raise ValueError(f"flow_map.sample_steps must be >= 1, got {fm.sample_steps}")
    if config.loss.prediction != "velocity":
        raise ValueError(f"loss.prediction={config.loss.prediction!r}: the student distils a velocity (flow-matching) "
                         f"teacher; set the loss section as in {fm.teacher_config}")


def load_teacher(config: ml_collections.ConfigDict) -> checkpoints.Target:
    """The frozen teacher: the latest checkpoint in `flow_map.teacher_workdir` as a `Target`.

    Raises:
      FileNotFoundError: no teacher config file, or no checkpoint in the teacher workdir.
      ValueError: the teacher is not a velocity model.
    """
    fm = config.flow_map
    teacher_config = checkpoints.load_config(fm.teacher_config)
    if teacher_config.model.name in FLOWS or teacher_config.loss.prediction != "velocity":
        raise ValueError(f"flow-map distillation needs a velocity (flow-matching) teacher, but {fm.teacher_config} "
                         f"trains {teacher_config.model.name!r} predicting {teacher_config.loss.prediction!r}")
    return checkpoints.checkpoint_target(fm.teacher_config, fm.teacher_workdir, use_ema=fm.teacher_use_ema)


def student_params(net: Any, teacher_params: Any, shape: tuple) -> Any:
    """The two-time `net`'s parameters started from the teacher's: every parameter the one-time network has is the
    teacher's, the interval layers are `net`'s initialisation (their last one zero: the student starts as the
    teacher's Euler step)."""
    fresh = net.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, *shape), jnp.float32), jnp.ones((1,)),
                     s=jnp.zeros((1,)))

    def merge(new, old):
        if isinstance(new, dict):
            return {k: merge(v, old[k]) if k in old else v for k, v in new.items()}
        if new.shape != old.shape:
            raise ValueError(f"the student's parameter of shape {new.shape} is {old.shape} in the teacher")
        return old

    return merge(fresh, teacher_params)


def build(config: ml_collections.ConfigDict) -> Experiment:
    """The flow-map run of `config`: the teacher's `Experiment` (`experiment.build`) with the two-time student and the
    auxiliary network as its parameters, prior noise as its data, the flow-map loss and flow-map samples.

    Args:
      config: a training config with flow_map.teacher_workdir set (`experiments/configs/flow_map_distill.py`).

    Returns:
      The `Experiment` the training loop runs.

    Raises:
      FileNotFoundError: no teacher run (or config file) where the config says, before any compute.
      ValueError: the teacher is not a velocity model, or not the config's architecture, process or data.
      NotImplementedError: a class-conditional teacher (the loss would need labels and guidance per sample).
    """
    check_flow_map_config(config)
    base = build_experiment(config)
    if base.is_flow:
        raise ValueError(f"config.model ({config.model.name!r}) is a normalizing flow; a flow map distils a velocity "
                         f"model")
    if base.conditional:
        raise NotImplementedError("flow-map distillation of a class-conditional teacher is not built: the loss would "
                                  "need a label (and a guidance scale) per prior sample")
    teacher = load_teacher(config)
    spec = config.flow_map.teacher_config
    if base.process != teacher.process or base.datasets[0].shape != teacher.shape:
        raise ValueError(f"the config's process / data ({base.process}, {base.datasets[0].shape}) are not the "
                         f"teacher's ({teacher.process}, {teacher.shape}); set them as in {spec}")
    want = jax.tree_util.tree_structure(abstract_state(base)["params"])
    if want != jax.tree_util.tree_structure(teacher.args):
        raise ValueError(f"config.model is not the teacher's architecture ({spec}); set the model section as in it")

    process, fm, sample = base.process, config.flow_map, config.sample
    t_min = process.t_min if sample.t_min is None else sample.t_min
    t_max = process.t_max if sample.t_max is None else sample.t_max
    net = base.net.clone(second_time=True)
    student = FlowMapFn(network_fn(net, process, config.model.input_scaling, config.model.sigma_data))
    velocity = base.model_fn  # the teacher's and the aux network's function, fn(params, x, t)
    loss_fn = losses.make_flow_map_loss(student, velocity, velocity, process,
                                        correction_weight=fm.correction_weight, start_at_prior=fm.start_at_prior,
                                        r_min=fm.r_min, r_max=fm.r_max, t_min=t_min, t_max=t_max,
                                        constrain=base.constrain)
    solver = samplers.get_solver("flow_map")
    ts = grid_timesteps(sample.grid, process, fm.sample_steps, fm.sample_steps, t_min, t_max)
    model = FlowMapModel(student)
    constrain = base.constrain

    def generate(params, key, n, shape):
        x_init = constrain(process.prior(key, (n, *shape), t=ts[0], dtype=jnp.float32))
        x, _ = samplers.sample(model, solver, process, x_init, ts, prediction="flow_map", check_finite=False,
                               args=params["student"])
        return x

    initial = {"student": student_params(net, teacher.args, teacher.shape), "aux": teacher.args}
    datasets = jax.device_put((PriorNoise(base.datasets[0], process, float(t_max)),), base.replicated)
    info = {"solver": solver.name, "grid": sample.grid, "nfe": fm.sample_steps, "num_steps": fm.sample_steps,
            "ts": [float(t) for t in ts]}
    return dataclasses.replace(base, net=net, model_fn=student, loss_fn=loss_fn, datasets=datasets, solver=solver,
                               ts=ts, generate=generate, sampler_info=info, initial_params=initial,
                               frozen=teacher.args)


# The sections of a run's config.json that `restore_run` takes from the run (the rest must be the spec's).
RUN_SECTIONS = ("flow_map", "train", "eval", "sample")


def restore_run(workdir: str, config_spec: str = "experiments/configs/flow_map_distill.py",
                use_ema: bool | None = None) -> tuple[ml_collections.ConfigDict, Experiment, Any, int]:
    """The latest checkpoint of a flow-map run.

    The config is `config_spec` with the run's own `flow_map`, `train`, `eval` and `sample` sections from
    WORKDIR/config.json (the command-line overrides a run was launched with: its teacher_workdir, checkpoint
    cadence); every other section (model, process, data, loss) must already agree with the run's, else the
    checkpoint would be read into another network.

    Args:
      workdir: the run's --workdir.
      config_spec: the run's training config, "file.py[:arg]".
      use_ema: the EMA weights (else the raw ones); None: as the run samples (sample.use_ema).

    Returns:
      (config, experiment, params, step): `experiment = build(config)` (its teacher loaded), params
      {"student", "aux"}.

    Raises:
      FileNotFoundError: no config.json or no finished checkpoint in workdir.
      ValueError: the run's model, process, data or loss sections are not config_spec's.
    """
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training run's workdir")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = checkpoints.load_config(config_spec)
    for section in RUN_SECTIONS:
        config[section].update(saved[section])
    changes = checkpoints.config_changes(saved, json.loads(config.to_json()))
    if changes:
        raise ValueError(f"the run in {workdir} was not made with {config_spec}: " + "; ".join(changes))
    experiment = build(config)
    reader = checkpoints.manager(workdir, read_only=True)
    try:
        step = reader.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir}/checkpoints holds no finished checkpoint yet")
        state = checkpoints.restore_state(reader, step, abstract_state(experiment))
    finally:
        reader.close()
    use_ema = config.sample.use_ema if use_ema is None else use_ema
    return config, experiment, state["ema_params" if use_ema else "params"], int(step)

