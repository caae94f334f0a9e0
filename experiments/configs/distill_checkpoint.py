"""Distil step schedules for a trained checkpoint at every step count of the evaluation table, for its grids.

One dynamic program (OSS, Bellman/BOSS or GITS: `schedules.distill_many`) over a fine teacher trajectory of the
checkpoint's model picks the steps for every count in `step_counts`: by default each number of steps that a solver of
the evaluation table (`experiments/configs/evaluate.py`: its SOLVERS and NFE budgets) takes, so the table can use the
distilled schedules as a grid. One file per count, `oss_s{num_steps}.json` (the method's name for other methods), each
scored on a held-out batch against the teacher (the teacher solver on a grid of `reference_steps`, twice the
teacher's by default) next to the standard grids with the same number of steps. The DP prices steps of the
single-step student (DDIM for eps models, Euler for velocity models), so the schedules suit every solver of the table;
they are scored with `solver` (DEIS tAB order 3; counts below its order at that lower order, its warm-up), and not
refined for it.

Launch (from the repository root), after training the model (see `evaluate.py`):

    python scripts/distill_schedule.py --config experiments/configs/distill_checkpoint.py:model=digits_vp \\
        --workdir outputs/oss_vp
    python scripts/evaluate.py --config experiments/configs/evaluate.py:model=digits_vp --workdir outputs/eval_vp_oss \\
        --config.grids='("uniform", "logsnr", "file:outputs/oss_vp/oss_s{num_steps}.json")'

Variants (`distill_checkpoint.py:ARG`, comma-separated):
  model=NAME          digits_vp (default) | digits_fm: the training config and run directory of evaluate's MODELS;
  method=NAME         oss | bellman | gits, e.g. `distill_checkpoint.py:model=digits_fm,method=gits`
                      (files `gits_s{num_steps}.json`);
  checkpoint_dir=DIR  another run directory of the same training config;
  smoke               the model's `smoke` training config, batch 8, eval_batch 16, a 20-step teacher, step counts
                      (2, 3): for tests (seconds on a CPU).
Any key can also be overridden by flag, e.g. `--config.step_counts='(4, 8)'`, `--config.teacher.steps=400`,
`--config.batch=512`, `--config.use_ema=False`; `--config.step_counts='()'` distils the one schedule of
`--config.nfe` for `solver` (which may then be refined: `--config.refine.enabled=True`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from fastsamplers import samplers
from fastsamplers.core import Registry
from fastsamplers.experiments.configs import evaluate, parse_arg
from fastsamplers.experiments.configs.distill_oracle import add_method_options
from fastsamplers.schedules.optimal import distillation

# The trained models of evaluate.MODELS (not its oracle).
CHECKPOINT_MODELS = Registry("model", {name: evaluate.MODELS[name] for name in ("digits_vp", "digits_fm")},
                             ordered=True, unknown="unknown {kind} {name!r}; valid: {valid} (the oracle has its own "
                                                   "config, distill_oracle.py)")


def table_step_counts(model):
    """Every number of steps a solver of the evaluation table takes at one of its NFE budgets, sorted."""
    table = evaluate.get_config(f"model={model}")
    counts = set()
    for entry in table.solvers:
        solver = samplers.get_solver(entry["name"], **dict(entry.get("options", {})))
        counts.update(solver.steps_for_nfe(nfe) for nfe in table.nfes)
    return tuple(sorted(counts))


def get_config(arg=None):
    arg = parse_arg(arg, model="digits_vp", method="oss", checkpoint_dir="", smoke=False,
                    choices=dict(model=CHECKPOINT_MODELS, method=distillation.METHODS))
    train_config, checkpoint_dir = CHECKPOINT_MODELS[arg.model][:2]
    table = evaluate.get_config(f"model={arg.model}")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.source = "checkpoint"  # experiments.runs.sources.SOURCES
    config.train_config = train_config + (":smoke" if arg.smoke else "")  # the checkpoint's training config
    config.checkpoint_dir = arg.checkpoint_dir or checkpoint_dir  # that run's --workdir
    config.use_ema = True
    config.resolution = 0  # which of the run's resolutions (multi-resolution runs)

    config.method = arg.method  # oss | bellman | gits (schedules.distill_many)
    # Every count is distilled by one dynamic program and saved as its own file; () = the one schedule of `nfe`.
    config.step_counts = (2, 3) if arg.smoke else table_step_counts(arg.model)
    # The solver the schedules are scored with (and, with step_counts = (), the one whose NFE budget sets the steps).
    config.solver = ml_collections.ConfigDict()
    config.solver.name = "deis_tab"  # samplers.SOLVERS
    config.solver.options = dict(order=3)
    # The single-step solver whose steps the DP costs: DDIM for eps-type models, Euler for velocity models (each is
    # the first-order step of that model's solvers in the table).
    config.student = "euler" if arg.model == "digits_fm" else "ddim"
    config.nfe = 10  # used when step_counts = ()
    config.batch = 8 if arg.smoke else 256  # the distillation batch: the DP's cost is averaged over it
    config.eval_batch = 16 if arg.smoke else 1024  # a held-out batch (another key) scored against the reference

    # The fine trajectory whose grid points are the candidate times.
    config.teacher = ml_collections.ConfigDict()
    config.teacher.steps = 20 if arg.smoke else 200
    config.teacher.grid = "logsnr"  # schedules.GRIDS
    config.teacher.solver = "deis_tab"
    config.teacher.options = dict(order=3)
    # The scoring reference: the teacher solver on its grid with this many steps; None = twice teacher.steps.
    config.reference_steps = placeholder(int)

    add_method_options(config)  # config.oss, config.bellman

    # Gradient refinement for `solver` (schedules.refine): only with step_counts = (), a single schedule.
    config.refine = ml_collections.ConfigDict()
    config.refine.enabled = False
    config.refine.num_iters = placeholder(int)
    config.refine.learning_rate = placeholder(float)

    # Standard grids scored with the same solver and number of steps: the evaluation table's.
    config.compare_grids = list(table.grids)

    config.outputs = ml_collections.ConfigDict()
    config.outputs.schedule = f"{arg.method}_s{{num_steps}}.json"  # one schedule file per count
    config.outputs.json = "distill.json"  # results: config, table rows, every schedule, distillation info, versions
    config.outputs.png = "distill.png"  # the chosen steps in log-SNR, one row per count

    config.lock()
    return config
