"""Distil an optimal step schedule on the Gaussian-mixture oracle, save it as a schedule file, and score it.

A dynamic program (OSS, Bellman/BOSS or GITS: `schedules.distill`) picks `nfe`-budget time steps among the points of a
fine teacher trajectory, using a single-step student (DDIM) inside the DP; the schedule is saved for the solver it is
meant FOR (`config.solver`, DEIS tAB by default), optionally refined for that solver by gradients
(`schedules.refine`), and scored on a held-out batch against the exact probability-flow map, next to the standard
grids with the same number of steps.

Launch (from the repository root):

    python scripts/distill_schedule.py --config experiments/configs/distill_oracle.py --workdir outputs/distill

Variants (`distill_oracle.py:ARG`, comma-separated):
  smoke        batch 32, eval_batch 64, a 40-step teacher, nfe 5 and no refinement, for tests (seconds on a CPU);
  method=NAME  oss | bellman | gits, e.g. `distill_oracle.py:method=gits`;
  nfe=N        another budget of model evaluations, e.g. `distill_oracle.py:nfe=6`.
Any key can also be overridden by flag, e.g. `--config.refine.enabled=False --config.refine.num_iters=200`,
`--config.solver.name=ipndm --config.solver.options.order=4`, `--config.teacher.steps=400`.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from fastsamplers.experiments.configs import parse_arg
from fastsamplers.experiments.configs.oracle_base import add_oracle
from fastsamplers.schedules.optimal import distillation


def add_method_options(config):
    """The options of the dynamic programs (`schedules.distill`), shared with `distill_checkpoint.py`."""
    config.oss = ml_collections.ConfigDict()  # used by method "oss" only
    # exactly the budget's steps (False: the best of at most that many; only with a single step count)
    config.oss.exact_steps = True
    config.oss.start_at_t_max = True  # False lets the first step start lower, from rescaled noise
    config.oss.aggregate = "mean"  # "mean": one DP on the batch-mean cost; "median": OSS-ave

    config.bellman = ml_collections.ConfigDict()  # used by methods "bellman" and "gits"
    config.bellman.metric = "l2"  # "l2" | "l1"
    config.bellman.coeff = placeholder(float)  # None: the method's default (bellman 1.0, gits 1.15)


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, method="oss", nfe=10, choices=dict(method=distillation.METHODS))
    config = add_oracle(ml_collections.ConfigDict())  # seed, oracle, process, prediction
    config.method = arg.method  # oss | bellman | gits (schedules.distill)
    # The solver the schedule is FOR: it sets the number of steps (solver.steps_for_nfe(nfe)), it is the solver the
    # schedule is refined for and scored with, and it is named in the schedule file.
    config.solver = ml_collections.ConfigDict()
    config.solver.name = "deis_tab"  # samplers.SOLVERS
    config.solver.options = dict(order=3)
    config.student = "ddim"  # the single-step solver whose steps the DP costs (it must be single-step, first order)
    config.nfe = 5 if arg.smoke else arg.nfe
    config.batch = 32 if arg.smoke else 256  # the distillation batch: the DP's cost is averaged over it
    config.eval_batch = 64 if arg.smoke else 1024  # a held-out batch (another key) for the RMSE vs the exact map

    # The fine trajectory whose grid points are the candidate times.
    config.teacher = ml_collections.ConfigDict()
    config.teacher.steps = 40 if arg.smoke else 200
    config.teacher.grid = "logsnr"  # schedules.GRIDS
    config.teacher.solver = "deis_tab"
    config.teacher.options = dict(order=3)

    add_method_options(config)

    # Gradient refinement of the distilled schedule for config.solver (schedules.refine), on the distillation batch
    # with the teacher's endpoints as the target. None leaves refine's own default.
    # On by default: a DP schedule priced with DDIM steps is worse than the quadratic grid for multistep solvers until
    # it is refined for them (scripts/benchmark_schedules.py). Off in `smoke`, for speed.
    config.refine = ml_collections.ConfigDict()
    config.refine.enabled = not arg.smoke
    config.refine.num_iters = placeholder(int)
    config.refine.learning_rate = placeholder(float)

    # Standard grids scored with the same solver and number of steps, for comparison.
    config.compare_grids = ["uniform", "quadratic", "logsnr", "edm"]

    config.outputs = ml_collections.ConfigDict()
    config.outputs.schedule = "schedule.json"  # the schedule file (schedules.save_schedule)
    config.outputs.json = "distill.json"  # results: config, table rows, every grid, distillation info, versions
    config.outputs.png = "distill.png"  # the chosen steps in log-SNR against the standard grids

    config.lock()
    return config
