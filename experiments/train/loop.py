"""The training loop: `train(config, workdir)`, what `scripts/train.py` runs (configs: `experiments/configs/*_fm.py`,
`digits_vp.py`, `digits_dit.py`, `digits_tarflow.py`; every key is documented in `experiments/configs/train_base.py`).

BOSS straightening (`config.boss.teacher_workdir` set, `experiments/configs/boss_straighten.py`) is a run like any
other: `experiments.train.straighten.build` gives its experiment (the teacher's weights at step 0, the teacher's pool
as the data, the straightening loss), kept resumable by the pool file in WORKDIR.

One run is a pure function of the config (`experiments.train.experiment`: the root key is `config.seed`, step s
uses `fold_in(train_key, s)`). The state is a plain pytree, checkpointed with orbax into `WORKDIR/checkpoints`
(`experiments.train.checkpoints`). Rerunning the same command restores the newest checkpoint and continues, and the
steps run in the same compiled chunks as an uninterrupted run, so the final parameters are bitwise those of a run
that was never killed.

Outputs in WORKDIR: `metrics.jsonl` (one line per `log_every` steps: step, loss, learning rate, steps/s; also
TensorBoard event files when `tensorboardX` is installed), `samples/step_NNNNNNN[_RES].png` every `sample_every`
steps, `config.json` (resumed with changed keys, the earlier config stays as `config_step_NNNNNNN.json`), and at the
end `eval.json` (EMA eval loss, and the exact W2 distance of `eval.num_samples` samples to as many data points).
Process 0 prints what the run will do before it starts and, at the end, the evaluation and where the files are.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fastsamplers import core
from fastsamplers.experiments.metrics.transport import w2_exact
from fastsamplers.experiments.report import figures
from fastsamplers.experiments.train import checkpoints, flow_map_training, straighten
from fastsamplers.experiments.train.experiment import (EVAL_STREAM, SAMPLE_STREAM, Experiment, abstract_state, build,
                                          data_batch, init_state, make_sampler, make_train_chunk)
from fastsamplers.experiments.train.writers import MetricsWriter, end_line, progress_bar, start_lines


# ----------------------------------------------------------------------------------------------------- the loop


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the run of `config` in `workdir`.

    Args:
      config: a training config (the keys of `experiments/configs/train_base.py`).
      workdir: the run's directory: checkpoints, metrics.jsonl, samples/, config.json, eval.json.

    Returns:
      The final evaluation (also written to eval.json): step, eval_loss, params ("ema" or "raw"), sampler, and
      per resolution the sample statistics and the exact W2 distance to the data.

    Raises:
      ValueError / FileNotFoundError: a config key, dataset, size or checkpoint that does not fit (for
        straightening: a missing or unfit teacher), before training.
      FloatingPointError: a non-finite loss or parameters; the message names the step, and the checkpoints
        written before it are left intact.
    """
    # A straightening run (boss.teacher_workdir set) starts from its teacher and trains on the teacher's pool.
    # A flow-map distillation (flow_map.teacher_workdir set) trains a two-time student from its teacher's velocity.
    if config.flow_map.teacher_workdir:
        experiment = flow_map_training.build(config)
    else:
        experiment = straighten.build(config, workdir) if config.boss.teacher_workdir else build(config, workdir)
    train_cfg = config.train
    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    manager = checkpoints.manager(workdir, max_to_keep=train_cfg.keep_checkpoints,
                                  async_checkpointing=train_cfg.async_checkpointing)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpoints.restore_state(manager, latest, abstract_state(experiment))
    else:
        state = init_state(experiment)
    step = int(state["step"])
    if step > train_cfg.num_steps:
        raise ValueError(f"{workdir} holds a checkpoint at step {step}, past train.num_steps={train_cfg.num_steps}")
    if is_main:
        changes, kept = checkpoints.save_config(workdir, config, step)
        print("\n".join(start_lines(config, workdir, step, list(experiment.mesh.devices.flat), changes, kept)), flush=True)
    writer = MetricsWriter(workdir, resume_step=step, enabled=is_main)
    progress = progress_bar(train_cfg, step, is_main)

    chunks = {}
    pending = []  # (first step, device array of losses) not yet checked
    last_log_step, last_log_time = step, time.perf_counter()
    try:
        while step < train_cfg.num_steps:
            n = min(train_cfg.steps_per_call, _next_boundary(train_cfg, step) - step)
            if n not in chunks:
                chunks[n] = make_train_chunk(experiment, n)
            state, chunk_losses, finite = chunks[n](state, experiment.datasets, experiment.frozen)
            pending.append((step, chunk_losses))
            step += n
            progress.update(n)
            if not _at_boundary(train_cfg, step):
                continue
            values = _check_losses(pending, manager, config.loss)
            pending = []
            if step % train_cfg.log_every == 0 or step == train_cfg.num_steps:
                now = time.perf_counter()
                record = {"step": step, "loss": float(np.mean(values[-(step - last_log_step):])),
                          "lr": float(experiment.lr_schedule(step)),
                          "steps_per_s": (step - last_log_step) / max(now - last_log_time, 1e-9)}
                writer.write(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.1f}")
                last_log_step, last_log_time = step, now
            if step % train_cfg.checkpoint_every == 0 or step == train_cfg.num_steps:
                if not bool(finite):
                    manager.wait_until_finished()
                    raise FloatingPointError(
                        f"the parameters became non-finite by step {step} (the losses were finite); stopping. The "
                        f"last good checkpoint is step {manager.latest_step()} in {manager.directory}")
                manager.save(step, args=ocp.args.StandardSave(state))
            if train_cfg.sample_every and step % train_cfg.sample_every == 0:
                save_samples(experiment, state, os.path.join(workdir, "samples"), step, write=is_main)
        manager.wait_until_finished()
    finally:
        progress.close()
        writer.close()
        manager.close()
    result = evaluate(experiment, state)
    paths = save_samples(experiment, state, os.path.join(workdir, "samples"), step, write=is_main)
    if is_main:
        core.write_json(os.path.join(workdir, "eval.json"), result, indent=2)
        print(end_line(result, workdir, paths), flush=True)
    return result


def _next_boundary(train_cfg, step):
    """The next step > `step` at which the loop logs, checkpoints, samples or ends."""
    periods = [p for p in (train_cfg.log_every, train_cfg.checkpoint_every, train_cfg.sample_every) if p > 0]
    return min([train_cfg.num_steps] + [(step // p + 1) * p for p in periods])


def _at_boundary(train_cfg, step):
    periods = (train_cfg.log_every, train_cfg.checkpoint_every, train_cfg.sample_every)
    return step == train_cfg.num_steps or any(p > 0 and step % p == 0 for p in periods)


def _check_losses(pending, manager, loss_cfg):
    values = np.concatenate([np.asarray(chunk_losses) for _, chunk_losses in pending])
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        first_step = pending[0][0] + int(bad[0]) + 1  # the step that the loss was computed for, counted from 1
        manager.wait_until_finished()
        hint = "lower train.lr or set train.grad_clip"
        if loss_cfg.coupling == "sinkhorn" and not loss_cfg.sinkhorn_lse_mode:
            hint += (", or, if the Sinkhorn plan failed (its kernel updates underflow for small epsilon or far "
                     "outliers), set loss.sinkhorn_lse_mode=True or raise loss.sinkhorn_epsilon")
        raise FloatingPointError(
            f"non-finite loss ({values[bad[0]]}) at step {first_step}; stopping. The last good checkpoint is step "
            f"{manager.latest_step()} in {manager.directory}; {hint}")
    return values


# ------------------------------------------------------------------------------------------------ sample and eval


def _sampler_title(experiment):
    info = experiment.sampler_info
    if experiment.is_flow:
        return f"{info['plan']} inversion" + (f", guidance {info['guidance']}" if info["guidance"] else "")
    return f"{info['solver']} NFE {info['nfe']}"


def _params_for_sampling(experiment, state):
    return state["ema_params"] if experiment.config.sample.use_ema else state["params"]


def save_samples(experiment: Experiment, state: dict, directory: str, step: int, write: bool = True) -> list:
    """Write a PNG per resolution: an image grid, or a scatter plot for 2-D data. Every process computes the
    samples (the program spans all hosts' devices); only those with `write` save the files."""
    config = experiment.config
    params = _params_for_sampling(experiment, state)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_STREAM)  # the same noise at every step
    paths = []
    for dataset in experiment.datasets:
        x, num_nonfinite = make_sampler(experiment, config.sample.num_samples, dataset.shape)(params, key)
        suffix = f"_{dataset.shape[0]}px" if len(experiment.datasets) > 1 else ""
        path = os.path.join(directory, f"step_{step:07d}{suffix}.png")
        if not write:
            continue
        if int(num_nonfinite):
            print(f"warning: {int(num_nonfinite)} non-finite values in the samples at step {step}", file=sys.stderr)
        title = f"step {step}, " + _sampler_title(experiment)
        figures.save_samples(np.asarray(x), path, title=title)
        paths.append(path)
    return paths


def evaluate(experiment: Experiment, state: dict) -> dict:
    """The final evaluation: EMA (or raw) eval loss on fixed batches, and per resolution the exact W2 distance
    between `eval.num_samples` samples and as many data points, with the sampler's NFE."""
    config = experiment.config
    params = _params_for_sampling(experiment, state)
    root = jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM)
    extra = {} if experiment.frozen is None else {"frozen": experiment.frozen}
    loss_fn = jax.jit(lambda p, key, dataset, data_key, i, extra: experiment.loss_fn.regress(
        p, *experiment.loss_fn.draw(key, *data_batch(experiment, dataset, data_key, i, config.train.batch_size)),
        **extra))
    eval_losses = []
    for r, dataset in enumerate(experiment.datasets):
        for i in range(config.eval.loss_batches):
            eval_losses.append(float(loss_fn(params, jax.random.fold_in(root, i), dataset,
                                             jax.random.fold_in(root, 1000 + r), i, extra)))
    result = {
        "step": int(state["step"]),
        "eval_loss": float(np.mean(eval_losses)),
        "params": "ema" if config.sample.use_ema else "raw",
        "sampler": experiment.sampler_info,
        "resolutions": {},
    }
    for r, dataset in enumerate(experiment.datasets):
        n = config.eval.num_samples
        if dataset.num_examples is not None:
            n = min(n, dataset.num_examples)
        x, num_nonfinite = make_sampler(experiment, n, dataset.shape)(params, jax.random.fold_in(root, 2000 + r))
        if int(num_nonfinite):
            raise FloatingPointError(f"the final samples have {int(num_nonfinite)} non-finite values (resolution "
                                     f"{dataset.shape}); the model or the sampler diverged")
        entry = {"shape": list(dataset.shape), "num_samples": n, "sample_mean": float(jnp.mean(x)),
                 "sample_std": float(jnp.std(x))}
        if config.eval.w2:
            reference = dataset.sample(jax.random.fold_in(root, 3000 + r), n)
            entry["w2"] = w2_exact(np.reshape(np.asarray(x), (n, -1)),
                                           np.reshape(np.asarray(reference), (n, -1)))
        # images are keyed by their size ("16"), other data by their shape ("2")
        name = str(dataset.shape[0]) if len(dataset.shape) == 3 else "x".join(map(str, dataset.shape))
        result["resolutions"][name] = entry
    return result
