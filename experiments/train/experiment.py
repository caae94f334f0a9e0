"""The experiment a training config names, built and checked before any compute, and the compiled programs on it.

`build(config)` turns a config (every key documented in `experiments/configs/train_base.py`) into an `Experiment`:
the process, the datasets (one per training resolution), the network, its loss, the optimizer, the device mesh and
the sampler of its samples. On it: the state at step 0 (`init_state`, `abstract_state`), a compiled chunk of training
steps (`make_train_chunk`) and a compiled sampler (`make_sampler`); the loop that runs them is `experiments.train.loop`.
A BOSS straightening run (`experiments.train.straighten.build`) is the `Experiment` of its config with the teacher's
weights as `initial_params`, the teacher's trajectories as its dataset and the straightening loss.

Randomness: the root key is `config.seed`; step s uses `fold_in(train_key, s)` and the data batch
`dataset.batch(data_key, s, batch_size)`, so a resumed run draws exactly what an uninterrupted one does.

Data parallelism: a device mesh with one `data` axis over `config.train.num_devices` devices (0 = all, across all
hosts after `jax.distributed.initialize`); the state is replicated and every batch-shaped array is sharded along
its first axis, so the per-step arithmetic is the one-device arithmetic up to the order of the batch-mean reduction.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.core import Registry, read_json, write_json
from fastsamplers.experiments.configs import grid_timesteps
from fastsamplers.experiments.train import couplings, data, losses
from fastsamplers.models import conditioning
from fastsamplers.models.networks import FLOWS, get_network
from fastsamplers.samplers import causal
from fastsamplers.samplers.driver import check_ts


# Streams of the root key (fold_in(root, stream)): each random draw stays put when another is added. The last three
# are BOSS straightening's noises (experiments.train.straighten): the Bellman DP's calibration batch, the teacher
# pool, and held-out noise for measuring the few-step error.
INIT_STREAM, TRAIN_STREAM, DATA_STREAM, SAMPLE_STREAM, EVAL_STREAM = range(5)
CALIBRATION_STREAM, POOL_STREAM, HELDOUT_STREAM = range(5, 8)
SEPARATION_STREAM = 8  # the data separation of a kinetic-optimal process


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: compiled functions are cached per experiment
class Experiment:
    """Everything a config names, built and checked before any compute."""

    config: ml_collections.ConfigDict
    process: Any
    datasets: tuple  # one per training resolution
    net: Any
    model_fn: Any  # fn(params, x, t); for a normalizing flow fn(params, x, labels) -> (z, logdet)
    loss_fn: Any  # losses.Loss: fn(params, key, x0[, labels]), with .draw and .regress
    optimizer: Any
    lr_schedule: Any
    mesh: Mesh
    solver: Any  # diffusion: the sampler's solver and time grid; None for a flow
    ts: np.ndarray | None
    generate: Any  # fn(params, key, n, shape) -> n samples
    sampler_info: dict  # how `generate` samples, for titles and eval.json
    initial_params: Any = None  # the parameters at step 0 (a fine-tuning run's); None = the network's random init
    # Inputs of the loss that are not trained (a distillation teacher's weights), passed to `loss_fn.regress` as
    # frozen=...: arguments of the compiled step, never constants folded into it. None: the loss takes none.
    frozen: Any = None

    @property
    def is_flow(self):
        """A normalizing flow (sampled by inverting it), not an ODE model."""
        return self.solver is None

    @property
    def conditional(self):
        """The loss and the model take class labels (a class-conditional flow, UNet or DiT)."""
        return getattr(self.net, "num_classes", 0) > 0

    @property
    def batch_sharding(self):
        return NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def replicated(self):
        return NamedSharding(self.mesh, PartitionSpec())

    def constrain(self, x):
        return batch_constraint(self.mesh)(x)


def batch_constraint(mesh):
    """Shard an array's first (batch) axis over the mesh's `data` axis, inside jit."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def _set(section, *names):
    """The keys of a config section whose value is set (not None), as keyword options."""
    return {name: section[name] for name in names if section[name] is not None}


def build(config: ml_collections.ConfigDict, workdir: str | None = None) -> Experiment:
    """Build and check every component the config names; raises before any training compute.

    Args:
      config: a training config (the keys of `experiments/configs/train_base.py`).
      workdir: the run's directory, where a process estimated from the data (process.name "kinetic_optimal") is
        recorded at the first build and read back at every later one (resume, `checkpoint_target`); None:
        estimated afresh (deterministic in config.seed).

    Returns:
      The `Experiment`: process, datasets, network, loss, optimizer, mesh and sampler, the network traced once at
      every training resolution.

    Raises:
      ValueError: a name, option, size or device count the config gets wrong.
    """
    data_options = _set(config.data, "path", "channels", "noise", "scale", "shift")
    if config.data.npz_key is not None:
        data_options["key"] = config.data.npz_key
    sizes = tuple(config.data.image_sizes) or (None,)
    datasets = tuple(
        data.get_dataset(config.data.name, **data_options, **({} if size is None else {"image_size": size}))
        for size in sizes
    )
    process = _process(config, datasets[0], workdir)
    name = config.model.name
    options = config.model[name] if name in config.model else None
    options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else {}
    is_flow = name in FLOWS
    if is_flow:
        if len(datasets) != 1 or len(datasets[0].shape) != 3:
            raise ValueError(f"model {name!r} is a normalizing flow of images at one size: set one "
                             f"data.image_sizes entry (got data shapes {[d.shape for d in datasets]})")
        options.update(image_size=datasets[0].shape[0], channels=datasets[0].shape[-1])
    net = get_network(name, **options)

    devices = np.array(jax.devices())
    num_devices = config.train.num_devices or devices.size
    if not 1 <= num_devices <= devices.size:
        raise ValueError(f"train.num_devices={num_devices} but {devices.size} devices are visible")
    mesh = Mesh(devices[:num_devices], ("data",))
    for name in ("batch_size", "num_steps", "steps_per_call", "log_every", "checkpoint_every", "keep_checkpoints"):
        if config.train[name] < 1:
            raise ValueError(f"train.{name} must be >= 1, got {config.train[name]}")
    if config.train.batch_size % num_devices:
        raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the {num_devices} devices")
    LR_SCHEDULES.check(config.train.lr_schedule)

    _check_labels(config, net, datasets)
    parts = (_flow_parts if is_flow else _diffusion_parts)(config, net, process, datasets, num_devices, mesh)
    lr_schedule = _lr_schedule(config.train)
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.train.grad_clip) if config.train.grad_clip > 0 else optax.identity(),
        optax.adamw(lr_schedule, b1=config.train.b1, b2=config.train.b2, weight_decay=config.train.weight_decay),
    )
    datasets = jax.device_put(datasets, NamedSharding(mesh, PartitionSpec()))  # replicated, jit arguments
    experiment = Experiment(config=config, process=process, datasets=datasets, net=net, mesh=mesh,
                            optimizer=optimizer, lr_schedule=lr_schedule, **parts)
    second = jnp.int32 if is_flow else jnp.float32  # labels or times
    for dataset in datasets:  # traces the network at every resolution: a size it cannot take fails here
        jax.eval_shape(experiment.model_fn, abstract_state(experiment)["params"],
                       jax.ShapeDtypeStruct((num_devices, *dataset.shape), jnp.float32),
                       jax.ShapeDtypeStruct((num_devices,), second))
    return experiment


SEPARATION_FILE = "kinetic_separation.json"  # a "kinetic_optimal" run's data separation, in its workdir


def _process(config, dataset, workdir):
    """The config's process. "kinetic_optimal" is the path of the training set (Shaul et al. 2023): its separation
    function from the set's exact posterior (`schedules.separation_from_data`, on at most 4096 examples from stream
    SEPARATION_STREAM), written to workdir/SEPARATION_FILE once and read from there afterwards, so a resumed run and
    its evaluators sample the process it was trained on without estimating it again."""
    if config.process.name != "kinetic_optimal":
        return schedules.get_process(config.process.name, **_set(config.process, "sigma_min"))
    path = None if workdir is None else os.path.join(os.path.abspath(workdir), SEPARATION_FILE)
    if path is not None and os.path.exists(path):
        separation = schedules.Separation(**read_json(path, what="kinetic separation"))
    else:
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SEPARATION_STREAM)
        num = 4096 if dataset.num_examples is None else min(4096, dataset.num_examples)
        separation = schedules.separation_from_data(key, np.asarray(dataset.sample(key, num)))
        if path is not None and jax.process_index() == 0:
            write_json(path, dataclasses.asdict(separation))
    return schedules.kinetic_optimal_process(separation)


def _check_labels(config, net, datasets):
    """A class-conditional network (num_classes > 0) needs labelled data with at most num_classes classes."""
    num_classes = getattr(net, "num_classes", 0)
    if not num_classes:
        return
    for dataset in datasets:
        if not getattr(dataset, "num_classes", 0):
            raise ValueError(f"model.{config.model.name}.num_classes={num_classes} but dataset "
                             f"{config.data.name!r} has no labels")
        if dataset.num_classes > num_classes:
            raise ValueError(f"dataset {config.data.name!r} has {dataset.num_classes} classes but "
                             f"model.{config.model.name}.num_classes={num_classes}")


def _diffusion_parts(config, net, process, datasets, num_devices, mesh):
    """A diffusion or flow-matching model: its prediction function, regression loss and ODE sampler."""
    model_fn = conditioning.network_fn(net, process, config.model.input_scaling, config.model.sigma_data)
    loss = config.loss
    coupling_options = _coupling_options(loss)
    if loss.coupling == "ot" and num_devices > 1 and "solver" not in coupling_options:
        # scipy's assignment is a host callback; inside a program over several CPU devices it can stall their
        # collectives (seen with 4 simulated devices). The pure-JAX Hungarian has no callback.
        coupling_options["solver"] = "optax"
    coupling = couplings.get_coupling(loss.coupling, **coupling_options)
    num_classes = getattr(net, "num_classes", 0)
    if num_classes and loss.coupling != "independent":
        raise ValueError(f"loss.coupling={loss.coupling!r} re-pairs the data, which would separate images from "
                         f"their labels; a class-conditional model (model.{config.model.name}.num_classes="
                         f"{num_classes}) needs loss.coupling='independent'")
    constrain = batch_constraint(mesh)
    loss_fn = losses.make_loss(
        model_fn, process, loss.prediction, coupling=coupling, time_sampling=loss.time_sampling,
        t_min=loss.t_min, t_max=loss.t_max, time_mean=loss.time_mean, time_std=loss.time_std, constrain=constrain,
        num_classes=num_classes, label_dropout=loss.label_dropout if num_classes else 0.0,
    )
    solver = samplers.get_solver(config.sample.solver, **_set(config.sample, "order"))
    num_steps = solver.steps_for_nfe(config.sample.nfe)
    solver.check_grid(num_steps)
    ts = grid_timesteps(config.sample.grid, process, num_steps, config.sample.nfe, config.sample.t_min,
                        config.sample.t_max)
    check_ts(ts, process, solver, loss.prediction)

    if config.sample.guidance:
        raise ValueError("sample.guidance is the guidance weight of flows; a diffusion or flow-matching model is "
                         "guided by sample.guidance_scale")
    scale = config.sample.guidance_scale
    if scale != 1.0 and not num_classes:
        raise ValueError(f"sample.guidance_scale={scale} needs a class-conditional model "
                         f"(model.{config.model.name}.num_classes > 0)")
    generate = make_generate(model_fn, solver, process, ts, loss.prediction, constrain, num_classes, scale)
    info = {"solver": solver.name, "grid": config.sample.grid, "nfe": config.sample.nfe, "num_steps": int(ts.size - 1)}
    if num_classes:
        info["guidance_scale"] = scale
    return dict(model_fn=model_fn, loss_fn=loss_fn, solver=solver, ts=ts, generate=generate, sampler_info=info)


def make_generate(model_fn, solver, process, ts, prediction, constrain, num_classes=0, scale=1.0):
    """The sampler of an ODE model: fn(params, key, n, shape) -> n samples, `solver` on the grid `ts` from the
    process's prior noise (class-conditional: the rows cycle through the classes, guided with `scale` != 1)."""

    def generate(params, key, n, shape):
        x_init = constrain(process.prior(key, (n, *shape), t=ts[0], dtype=jnp.float32))
        if not num_classes:  # the parameters are the model's traced args, never closed over
            model, args = (lambda x, t, p: model_fn(p, x, t)), params
        else:  # args = (params, labels); the grid's rows cycle through the classes, as a flow's do
            model = lambda x, t, a: model_fn(a[0], x, t, a[1])
            args = (params, constrain(jnp.arange(n, dtype=jnp.int32) % num_classes))
            if scale != 1.0:
                # The unconditional branch: the same params with the null label. With batch_axes its params slot
                # (None here) is never read, args' params are shared, and the labels are concatenated: one model
                # call on the doubled batch.
                null = constrain(jnp.full((n,), num_classes, jnp.int32))
                model = samplers.guided(model, scale, uncond_args=(None, null), batch_axes=(None, 0))
        x, _ = samplers.sample(model, solver, process, x_init, ts, prediction=prediction, check_finite=False,
                               args=args)
        return x

    return generate


def _flow_parts(config, net, process, datasets, num_devices, mesh):
    """A normalizing flow (TarFlow): its NLL loss with noise augmentation and its block-inversion sampler."""
    conditional = net.num_classes > 0
    constrain = batch_constraint(mesh)
    loss_fn = losses.make_flow_loss(net, config.loss.noise_std, config.loss.label_dropout if conditional else 0.0,
                                    constrain=constrain)
    plan = causal.make_plan(causal.parse_plan(config.sample.plan), net.num_blocks)
    for block_plan in plan:
        block_plan.layout(net.num_tokens)
    guidance = config.sample.guidance
    if guidance and not conditional:
        raise ValueError("sample.guidance needs a class-conditional flow (model.tarflow.num_classes > 0)")
    denoise_sigma = config.loss.noise_std if config.sample.denoise else None

    def generate(params, key, n, shape):
        labels = jnp.arange(n, dtype=jnp.int32) % net.num_classes if conditional else None
        x, _ = causal.sample(net, params, key, n, labels, plan, guidance, config.sample.annealed_guidance,
                             denoise_sigma=denoise_sigma)
        return constrain(x)

    info = {"sampler": "causal", "plan": config.sample.plan, "guidance": guidance,
            "denoise_sigma": denoise_sigma}
    return dict(model_fn=lambda params, x, labels: net.apply(params, x, labels), loss_fn=loss_fn, solver=None,
                ts=None, generate=generate, sampler_info=info)


def _coupling_options(loss):
    options = {"ot": {"solver": loss.ot_solver, "warm_start": loss.ot_warm_start},
               "sinkhorn": {"epsilon": loss.sinkhorn_epsilon, "sampling": loss.sinkhorn_sampling,
                            "threshold": loss.sinkhorn_threshold, "max_iterations": loss.sinkhorn_max_iterations,
                            "lse_mode": loss.sinkhorn_lse_mode}}
    return {k: v for k, v in options.get(loss.coupling, {}).items() if v is not None}


def _lr_schedule(train):
    """Linear warm-up from 0 to lr over warmup_steps, then `train.lr_schedule` (`LR_SCHEDULES`)."""
    return LR_SCHEDULES.lookup(train.lr_schedule)(train.lr, max(int(train.warmup_steps), 0), train.num_steps)


def _constant(lr, warmup, num_steps):
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def _cosine(lr, warmup, num_steps):
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1), end_value=0.0)


# After the warm-up: constant, or cosine decay to 0 at num_steps. name -> fn(lr, warmup, num_steps) -> optax schedule.
LR_SCHEDULES = Registry("train.lr_schedule", {"constant": _constant, "cosine": _cosine}, ordered=True,
                        unknown="unknown {kind} {name!r}; valid: {valid}")


# ---------------------------------------------------------------------------------------------------------- state


def _init_fn(experiment):
    """A function (params) -> the state at step 0: EMA = params and a fresh optimizer state. `params` is
    `experiment.initial_params` (an argument, never a compiled-in constant); None draws the network's
    initialisation at the first resolution's shape."""
    config = experiment.config
    shape = experiment.datasets[0].shape

    second = jnp.zeros((1,), jnp.int32 if experiment.is_flow else jnp.float32)  # labels or times

    def init(params):
        if params is None:
            params = experiment.net.init(_init_key(config.seed), jnp.zeros((1, *shape), jnp.float32), second)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
                "opt_state": experiment.optimizer.init(params)}

    return init


def _init_key(seed):
    """The parameter-initialisation key. It uses the "rbg" generator: with the default threefry, XLA's CPU compiler
    spends about a second on every random draw, 10-20 s for a UNet's init; rbg compiles in a few seconds."""
    return jax.random.fold_in(jax.random.key(seed, impl="rbg"), INIT_STREAM)


def init_state(experiment: Experiment) -> dict:
    """The initial state (step 0), created replicated on the mesh.

    Args:
      experiment: from `build`.

    Returns:
      {"step", "params" (`experiment.initial_params`, or the network's initialisation), "ema_params" (= params),
      "opt_state"}.
    """
    return jax.jit(_init_fn(experiment), out_shardings=experiment.replicated)(experiment.initial_params)


def abstract_state(experiment):
    """Shapes, dtypes and shardings of the state, without computing it (for restoring and checking)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=experiment.replicated),
                        jax.eval_shape(_init_fn(experiment), experiment.initial_params))


def make_train_chunk(experiment: Experiment, num_steps: int) -> Callable:
    """The compiled training steps of one chunk.

    Args:
      experiment: from `build`.
      num_steps: the steps one call runs (the loop calls chunks up to its next log / checkpoint / sample step).

    Returns:
      A jitted fn(state, datasets, frozen=None) -> (state, losses (num_steps,), params_finite); frozen is
      `experiment.frozen`.
    """
    config = experiment.config
    root = jax.random.PRNGKey(config.seed)
    train_key, data_key = jax.random.fold_in(root, TRAIN_STREAM), jax.random.fold_in(root, DATA_STREAM)
    batch_size, decay = config.train.batch_size, config.train.ema_decay

    def draw(step, datasets):
        """The step's training pairs (eps, x0, t), one triple per resolution. They do not depend on the parameters."""
        key = jax.random.fold_in(train_key, step)
        return tuple(
            experiment.loss_fn.draw(jax.random.fold_in(key, r),
                                    *data_batch(experiment, dataset, jax.random.fold_in(data_key, r), step, batch_size))
            for r, dataset in enumerate(datasets)
        )

    def objective(params, pairs, frozen):  # multi-resolution: the mean of the per-size losses
        extra = {} if frozen is None else {"frozen": frozen}
        return sum(experiment.loss_fn.regress(params, *triple, **extra) for triple in pairs) / len(pairs)

    def one_step(state, pairs, frozen):
        loss, grads = jax.value_and_grad(objective)(state["params"], pairs, frozen)
        updates, opt_state = experiment.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], params)
        return {"step": state["step"] + 1, "params": params, "ema_params": ema, "opt_state": opt_state}, loss

    def chunk(state, datasets, frozen=None):  # datasets and frozen are arguments, not constants in the program
        if num_steps == 1:  # no loop: XLA's CPU backend runs convolutions inside a while loop ~10x slower
            state, loss = one_step(state, draw(state["step"], datasets), frozen)
            chunk_losses = loss[None]
        else:
            # All the chunk's pairs first, as one batched computation: a host-side coupling (scipy's assignment)
            # then gets every step's problem in one call and solves them on parallel threads.
            steps = state["step"] + jnp.arange(num_steps, dtype=state["step"].dtype)
            pairs = jax.vmap(draw, in_axes=(0, None))(steps, datasets)
            state, chunk_losses = jax.lax.scan(lambda state, pairs: one_step(state, pairs, frozen), state, pairs)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state["params"])]))
        return state, chunk_losses, finite

    return jax.jit(chunk, out_shardings=experiment.replicated)


def data_batch(experiment, dataset, key, step, batch_size):
    """The arguments of the loss's `draw` for batch `step`: (x0,), or (x0, labels) for a conditional model."""
    x0 = experiment.constrain(dataset.batch(key, step, batch_size))
    if experiment.conditional:
        return x0, experiment.constrain(dataset.batch_labels(key, step, batch_size))
    return (x0,)


@functools.lru_cache(maxsize=32)
def make_sampler(experiment, num_samples, shape):
    """A compiled fn(params, key) -> (samples, num_nonfinite): the configured sampler (`experiment.generate`)."""
    num_devices = experiment.mesh.devices.size
    padded = -(-num_samples // num_devices) * num_devices  # the batch axis is split over the devices

    def draw(params, key):
        x = experiment.generate(params, key, padded, shape)[:num_samples]
        return x, jnp.sum(~jnp.isfinite(x))

    return jax.jit(draw, out_shardings=experiment.replicated)
