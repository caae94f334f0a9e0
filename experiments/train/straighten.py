"""BOSS straightening (Nguyen et al. 2023, "Bellman Optimal Step-size Straightening of Flow-Matching Models"):
fine-tune a trained velocity model so that its few Euler steps on its own Bellman-optimal times follow its teacher.

The training loop runs it (`experiments.train.loop.train` calls `build(config, workdir)` when
`config.boss.teacher_workdir` is set; `experiments/configs/boss_straighten.py` is the experiment):

1. The teacher: the latest checkpoint of the run in `boss.teacher_workdir`, read with that run's training config
   `boss.teacher_config` by `checkpoints.checkpoint_target` (the loader every evaluation uses). It must predict
   velocity (an ODE model, not a normalizing flow) and have the student's network, process and data: the student
   starts from its weights (full fine-tuning, the plain case of the paper's low-rank adapters) and the teacher stays
   frozen.
2. The steps: `schedules.distill("bellman", ...)` with Euler as the student step chooses K = `boss.num_steps` times
   among the points of a fine teacher grid (`boss.teacher_steps` steps of `boss.teacher_solver` on
   `boss.teacher_grid`, from sample.t_max to sample.t_min), priced on `boss.calibration_size` noises.
3. The pool: the teacher's states at those K + 1 times for `boss.pool_size` fresh noises, integrated on the same fine
   grid, `boss.pool_batch` trajectories per compiled solve.
4. Training: the loop's own steps, checkpoints and metrics with the loss `losses.make_straightening_loss` on batches
   of `train.batch_size` pool trajectories (each gives its K intervals), the pool in place of the dataset.

Why a pool made once rather than fresh teacher pairs every step: one fresh trajectory costs a fine teacher solve
(100 Heun steps = 199 model calls, with no gradient) against the ~3 K model-call equivalents that its K intervals cost
in the training step (forward and backward), about 10x the step's own work at K = 6. Measured on digits_fm (K = 6,
2 shared CPU cores): 1000 steps of 32 trajectories took 15 min; fresh pairs would add 6.4M teacher calls (~75 min at
the pool's measured rate), the 2048-trajectory pool took 0.41M calls (5 min). The pool is paid once, and it is saved
atomically to `WORKDIR/boss_pool.npz` (an entry of a `core.ShardStore`) with the chosen times and the settings and
teacher checkpoint step it was made for, so a killed run reloads it instead of recomputing it, and a mismatch
(another teacher step, other boss settings) fails clearly instead of mixing two pools. Batches are a pure function of (data key, step) like every
dataset's (`data.ArrayDataset`), so a resumed run draws exactly the batches of an uninterrupted one. The price is a
finite set of trajectories: with few of them the student can fit the pool rather than the flow, which is why the
few-step error is measured on held-out noise (`HELDOUT_STREAM`).

Randomness: the calibration and pool noises are `fold_in(root, CALIBRATION_STREAM / POOL_STREAM)` of the root key
`config.seed` (`experiments.train.experiment` lists the streams); nothing in a training step is random.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.configs import grid_spec, grid_timesteps
from fastsamplers.experiments.train import checkpoints, losses
from fastsamplers.experiments.train.data import ArrayDataset
from fastsamplers.experiments.train.experiment import (CALIBRATION_STREAM, HELDOUT_STREAM, POOL_STREAM, Experiment,
                                          abstract_state, build as build_experiment, make_generate)
from fastsamplers.models.networks import FLOWS
from fastsamplers.samplers.driver import check_ts
from fastsamplers.schedules.optimal.distillation import teacher_trajectory

POOL_FILE = "boss_pool.npz"


def schedule_file(num_steps: int) -> str:
    """The name of the Bellman schedule file a run writes in its workdir (a `schedules.files` record, usable as an
    evaluation grid "file:WORKDIR/bellman_s{K}.json")."""
    return f"bellman_s{int(num_steps)}.json"


class TrajectoryPool(struct.PyTreeNode):
    """The teacher's trajectories as a training set: `batch` gives (batch_size, K + 1, *shape) pool entries, epoch
    by epoch in a shuffled order that is a pure function of (key, step) (`data.ArrayDataset.batch`); `shape`,
    `num_examples` and `sample` are those of the real data (`reference`), which the loop's network initialisation,
    sample grids and W2 evaluation use."""

    trajectories: ArrayDataset  # examples of shape (K + 1, *shape)
    reference: Any  # the data the teacher was trained on

    @property
    def name(self):
        return f"boss pool of {self.reference.name}"

    @property
    def shape(self):
        return self.reference.shape

    @property
    def num_examples(self):
        return self.reference.num_examples

    num_classes = 0

    def batch(self, key, step, batch_size):
        return self.trajectories.batch(key, step, batch_size)

    def sample(self, key, n):
        return self.reference.sample(key, n)


@dataclasses.dataclass(frozen=True)
class Pool:
    """The Bellman steps and the teacher's states at them."""

    ts: np.ndarray  # (K + 1,) the chosen times, t_max ... t_min
    indices: np.ndarray  # (K + 1,) their positions on the teacher grid
    teacher_ts: np.ndarray  # (N + 1,) the teacher grid
    states: np.ndarray  # (P, K + 1, *shape) float32
    record: dict  # the settings it was made for, model calls and seconds


# ------------------------------------------------------------------------------------------------------ checks


def check_boss_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError for boss settings that cannot run (before any I/O or compute)."""
    boss = config.boss
    if not boss.teacher_config:
        raise ValueError("boss.teacher_config is not set: give the teacher run's training config, e.g. "
                         "--config.boss.teacher_config=experiments/configs/digits_fm.py")
    for name in ("num_steps", "teacher_steps", "calibration_size", "pool_size", "pool_batch"):
        if boss[name] < 1:
            raise ValueError(f"boss.{name} must be >= 1, got {boss[name]}")
    if boss.num_steps > boss.teacher_steps:
        raise ValueError(f"boss.num_steps={boss.num_steps} is more than boss.teacher_steps={boss.teacher_steps}: "
                         f"the Bellman steps are chosen among the teacher's")
    if config.train.batch_size > boss.pool_size:
        raise ValueError(f"train.batch_size={config.train.batch_size} trajectories but the pool holds "
                         f"boss.pool_size={boss.pool_size}")
    samplers.get_solver(boss.teacher_solver)  # an unknown name fails here, with the valid ones
    schedules.GRIDS.check(teacher_grid_spec(config)[0], kind="boss.teacher_grid")  # and a missing file


def load_teacher(config: ml_collections.ConfigDict) -> checkpoints.Target:
    """The frozen teacher of a straightening run: the latest checkpoint in `boss.teacher_workdir` as a `Target`.

    Raises:
      FileNotFoundError: no teacher config file, or no checkpoint in the teacher workdir.
      ValueError: the teacher is not a velocity model (a normalizing flow, or eps / x0 / v prediction).
    """
    boss = config.boss
    spec = boss.teacher_config
    teacher_config = checkpoints.load_config(spec)
    if teacher_config.model.name in FLOWS:
        raise ValueError(f"BOSS straightens a velocity (flow-matching) model, but the teacher {spec} is a "
                         f"normalizing flow ({teacher_config.model.name!r}), which has no velocity field")
    if teacher_config.loss.prediction != "velocity":
        raise ValueError(f"BOSS straightens a velocity (flow-matching) model, but the teacher {spec} predicts "
                         f"{teacher_config.loss.prediction!r}; train it with loss.prediction='velocity' (e.g. "
                         f"experiments/configs/digits_fm.py)")
    return checkpoints.checkpoint_target(spec, boss.teacher_workdir, use_ema=boss.teacher_use_ema)


def _check_student(config, student, teacher):
    """The student must be the teacher's network on the teacher's process and data, predicting velocity."""
    spec = config.boss.teacher_config
    if config.loss.prediction != "velocity":
        raise ValueError(f"loss.prediction={config.loss.prediction!r}, but a straightened model predicts velocity "
                         f"like its teacher")
    if student.process != teacher.process:
        raise ValueError(f"the student's process ({student.process}) is not the teacher's ({teacher.process}); set "
                         f"the process section as in {spec}")
    if student.datasets[0].shape != teacher.shape:
        raise ValueError(f"the student's data shape {student.datasets[0].shape} is not the teacher's {teacher.shape}; "
                         f"set the data section as in {spec}")
    want = jax.tree_util.tree_flatten_with_path(abstract_state(student)["params"])
    have = jax.tree_util.tree_flatten_with_path(teacher.args)
    if want[1] != have[1] or any(a.shape != b.shape or a.dtype != b.dtype for (_, a), (_, b) in zip(want[0], have[0])):
        raise ValueError(f"the student's network (config.model) is not the teacher's architecture ({spec}): the "
                         f"student starts from the teacher's weights; set the model section as in {spec}")


# ------------------------------------------------------------------------------------------------- the pool


def _identity(config, teacher):
    """What the pool depends on: compared with the stored pool's before it is reused."""
    boss = config.boss.to_dict()
    boss.pop("teacher_workdir")  # the same run may be read from another path
    return {"seed": config.seed, "boss": boss, "teacher_step": teacher.step, "process": str(teacher.process),
            "shape": list(teacher.shape), "t_min": config.sample.t_min, "t_max": config.sample.t_max}


def noise(config, stream, n, shape, process):
    """n draws of the process's prior noise at sample.t_max from stream `stream` of the root key, float32."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)
    t_max = process.t_max if config.sample.t_max is None else config.sample.t_max
    return process.prior(key, (n, *shape), t=t_max, dtype=jnp.float32)


def _teacher_nfe(boss):
    return samplers.get_solver(boss.teacher_solver).nfe(boss.teacher_steps)


def teacher_grid_spec(config: ml_collections.ConfigDict) -> tuple[str, dict]:
    """boss.teacher_grid as `schedules.distill`'s teacher_grid (`experiments.configs.grid_spec`: a grid name, or a
    "file:PATH" schedule file)."""
    return grid_spec(config.boss.teacher_grid, _teacher_nfe(config.boss), config.boss.teacher_steps)


def teacher_grid(config, process):
    """The teacher's fine grid (the DP's candidate times), float64 numpy: boss.teacher_grid between sample.t_max and
    sample.t_min (a schedule file keeps its own ends)."""
    boss = config.boss
    return grid_timesteps(boss.teacher_grid, process, boss.teacher_steps, _teacher_nfe(boss), config.sample.t_min,
                          config.sample.t_max)


def teacher_states(config, teacher, x_init, indices=None, progress=False):
    """The teacher solve from x_init on the fine grid, in compiled batches of `boss.pool_batch`: the states at the
    grid `indices` (None: the end state only), float32 numpy (n, len(indices), *shape) or (n, *shape). `progress`:
    a tqdm bar over the batches."""
    boss = config.boss
    solver = samplers.get_solver(boss.teacher_solver)
    ts = teacher_grid(config, teacher.process)
    rows = np.asarray([ts.size - 1] if indices is None else indices)
    size = min(boss.pool_batch, x_init.shape[0])  # one compiled batch size
    out = []
    for _, batch, n in tqdm(core.padded_batches(x_init, size), total=-(-x_init.shape[0] // size),
                            desc="teacher solves", unit="batch", disable=not progress):
        trajectory = teacher_trajectory(teacher.model_fn, teacher.process, batch, ts, solver, "velocity",
                                        teacher.args)
        out.append(np.asarray(trajectory[rows], np.float32).swapaxes(0, 1)[:n])
    states = np.concatenate(out)
    return states if indices is not None else states[:, 0]


def make_pool(config, teacher) -> Pool:
    """Run the Bellman DP on the calibration noise, then the teacher from the pool noise (see the module doc)."""
    boss = config.boss
    process, shape = teacher.process, teacher.shape
    solver = samplers.get_solver(boss.teacher_solver)
    tic = time.perf_counter()
    ts, info = schedules.distill(
        "bellman", teacher.model_fn, "euler", process,
        noise(config, CALIBRATION_STREAM, boss.calibration_size, shape, process), num_steps=boss.num_steps,
        prediction="velocity", teacher_steps=boss.teacher_steps, teacher_grid=teacher_grid_spec(config),
        teacher_solver=boss.teacher_solver, t_min=config.sample.t_min, t_max=config.sample.t_max,
        args=teacher.args, return_info=True)
    ts = np.asarray(ts, np.float64)
    dp_seconds = time.perf_counter() - tic
    if not np.array_equal(np.asarray(info["teacher_ts"]), teacher_grid(config, process)):
        raise AssertionError("the DP's teacher grid is not the pool's")  # both come from get_timesteps
    if not np.isfinite(info["cost"]):
        raise FloatingPointError(f"the Bellman DP's cost is {info['cost']}: the teacher {teacher.description} "
                                 f"diverges on its fine grid")
    tic = time.perf_counter()
    states = teacher_states(config, teacher, noise(config, POOL_STREAM, boss.pool_size, shape, process),
                            info["indices"], progress=config.train.progress)
    pool_seconds = time.perf_counter() - tic
    if not np.all(np.isfinite(states)):
        raise FloatingPointError(f"the teacher's pool trajectories are not finite ({teacher.description})")
    pool_batches = -(-boss.pool_size // min(boss.pool_batch, boss.pool_size))
    record = {
        "teacher": teacher.description,
        "bellman_cost": float(info["cost"]),
        "model_calls": {"bellman_dp": int(info["model_calls"]) * boss.calibration_size,
                        "pool": solver.nfe(boss.teacher_steps) * pool_batches * min(boss.pool_batch, boss.pool_size)},
        "seconds": {"bellman_dp": dp_seconds, "pool": pool_seconds},
    }
    return Pool(ts=ts, indices=np.asarray(info["indices"]), teacher_ts=np.asarray(info["teacher_ts"], np.float64),
                states=states, record=record)


def _pool_store(config, workdir, teacher) -> core.ShardStore:
    """The run's pool, an entry of a `core.ShardStore` stamped with what it depends on (`_identity`)."""
    return core.ShardStore(workdir, _identity(config, teacher), refuse=_refusal)


def _refusal(path, differences, stored, expected):
    diff = "; ".join(f"{k}: {there} there, {here} here" for k, (there, here) in (differences or {}).items())
    return (f"{path} was made for other settings ({diff or 'a different fingerprint'}); use another --workdir, or "
            "delete the file to make the pool again")


def read_pool(path: str) -> Pool:
    """A pool written by `load_or_make_pool` (no pickles)."""
    return _pool(core.shards.read_entry(path))


def _pool(entry) -> Pool:
    arrays = entry.arrays
    return Pool(ts=arrays["ts"], indices=arrays["indices"], teacher_ts=arrays["teacher_ts"], states=arrays["states"],
                record=entry.record)


def load_or_make_pool(config, workdir, teacher, write=True) -> Pool:
    """The run's pool: read from WORKDIR/boss_pool.npz when there, after checking it was made for these settings
    and this teacher checkpoint; else made (`make_pool`) and written, with the Bellman schedule file beside it."""
    store = _pool_store(config, workdir, teacher)
    path = store.path(POOL_FILE)
    entry = store.read(POOL_FILE)
    if entry is not None:
        return _pool(entry)
    pool = make_pool(config, teacher)
    if write:  # the schedule file first: the pool file is the last thing written, so both exist once it does
        schedules.save_schedule(
            os.path.join(workdir, schedule_file(config.boss.num_steps)), pool.ts, process=teacher.process,
            solver="euler", nfe=config.boss.num_steps, method="bellman", model=teacher.description,
            teacher=dict(solver=config.boss.teacher_solver, grid=config.boss.teacher_grid,
                         steps=config.boss.teacher_steps), indices=pool.indices, cost=pool.record["bellman_cost"],
            model_calls=pool.record["model_calls"], seconds=pool.record["seconds"])
        store.write(POOL_FILE, dict(ts=pool.ts, indices=pool.indices, teacher_ts=pool.teacher_ts, states=pool.states),
                    pool.record)
    if config.train.progress:
        calls, seconds = pool.record["model_calls"], pool.record["seconds"]
        print(f"BOSS: Bellman steps {np.round(pool.ts, 4).tolist()} ({calls['bellman_dp']} model calls, "
              f"{seconds['bellman_dp']:.1f} s); teacher pool of {config.boss.pool_size} trajectories "
              f"({calls['pool']} model calls, {seconds['pool']:.1f} s) in {path}", file=sys.stderr)
    return pool


# ------------------------------------------------------------------------------------------------ the run


def build(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """The straightening run of `config` in `workdir`: the student's `Experiment` (`experiment.build`) with the
    teacher's weights at step 0, the pool as its dataset, the straightening loss, and samples drawn with
    sample.solver on the Bellman steps.

    Args:
      config: a training config with boss.teacher_workdir set (`experiments/configs/boss_straighten.py`).
      workdir: the run's directory; the pool and the Bellman schedule file are kept there.

    Returns:
      The `Experiment` the training loop runs.

    Raises:
      FileNotFoundError: no teacher run (or config file) where the config says, before any compute.
      ValueError: the teacher is not a velocity model, or not the student's architecture, process or data; bad
        boss settings; a pool in workdir made for other settings.
    """
    check_boss_config(config)
    student = build_experiment(config)
    if student.is_flow:
        raise ValueError(f"BOSS straightening fine-tunes a velocity model; config.model ({config.model.name!r}) is "
                         f"a normalizing flow")
    if student.conditional:
        raise NotImplementedError("BOSS straightening of a class-conditional model is not built: the pool would "
                                  "need a label (and a guidance scale) per trajectory")
    teacher = load_teacher(config)
    _check_student(config, student, teacher)
    pool = load_or_make_pool(config, os.path.abspath(workdir), teacher, write=jax.process_index() == 0)

    constrain = student.constrain
    solver = student.solver
    ts = pool.ts
    check_ts(ts, student.process, solver, "velocity")
    replicated = NamedSharding(student.mesh, PartitionSpec())
    trajectories = ArrayDataset.from_array(pool.states, name="boss pool")
    datasets = jax.device_put((TrajectoryPool(trajectories=trajectories, reference=student.datasets[0]),), replicated)
    info = {"solver": solver.name, "grid": "bellman", "nfe": solver.nfe(ts.size - 1), "num_steps": int(ts.size - 1),
            "ts": ts.tolist()}
    return dataclasses.replace(
        student, datasets=datasets, loss_fn=losses.make_straightening_loss(student.model_fn, ts, constrain),
        ts=ts, generate=make_generate(student.model_fn, solver, student.process, ts, "velocity", constrain),
        sampler_info=info, initial_params=teacher.args)


# ----------------------------------------------------------------------------------------------- measuring


def few_step_rmse(model_fn, params, process, ts, x_init, reference, solver="euler") -> float:
    """The RMSE (over samples and elements) of `solver` on the grid ts from x_init against `reference` (the
    teacher's end states from the same noise); model_fn(x, t, params) predicts velocity."""
    x, _ = samplers.sample(model_fn, solver, process, x_init, ts, prediction="velocity", args=params)
    return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32) - jnp.asarray(reference, jnp.float32)))))


def heldout_noise(config, n, shape, process):
    """n noises disjoint from the calibration batch and the pool (`HELDOUT_STREAM`), for measuring."""
    return noise(config, HELDOUT_STREAM, n, shape, process)
