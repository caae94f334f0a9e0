"""Learn a sampler (`schedules.learn`: OLSS, the solver-schedule search or the multistep DP) for a trained checkpoint
or the oracle, one file per NFE, each scored on held-out noise against the teacher.

Launch (from the repository root), after training the model (see `evaluate.py`), then put the files in a table:

    python scripts/learn_sampler.py --config experiments/configs/learn_sampler.py:model=digits_vp,method=olss \\
        --workdir outputs/learned_vp
    python scripts/evaluate.py --config experiments/configs/evaluate.py:model=digits_vp --workdir outputs/eval_vp_learned \\
        --config.nfes='(4, 5, 6, 8, 10)' --config.learned='("OLSS=outputs/learned_vp/olss_nfe{nfe}.json",)'

Variants (`learn_sampler.py:ARG`, comma-separated):
  model=NAME          digits_vp (default) | digits_fm | oracle (evaluate.py's MODELS);
  method=NAME         olss (default) | search | dp;
  checkpoint_dir=DIR  another run directory of the same training config;
  smoke               the model's smoke training config, NFE 3 and 4, a 20-step teacher, small batches: for tests.
Overrides, e.g. `--config.nfes='(5, 10)'`, `--config.calibration=1024`, `--config.options='{"budget": 300}'`
(the method's options: olss times / fit / rank, search budget / grids / moves, dp solver / window).
A rerun with the same config skips the NFEs whose files are written (each file is written atomically when done).
"""

from __future__ import annotations

import ml_collections

from fastsamplers.experiments.configs import evaluate, parse_arg
from fastsamplers.schedules.optimal import learned


def get_config(arg=None):
    arg = parse_arg(arg, model="digits_vp", method="olss", checkpoint_dir="", smoke=False,
                    choices=dict(model=evaluate.MODELS, method=learned.METHODS))
    train_config, checkpoint_dir, _, process = evaluate.MODELS[arg.model]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.source = "oracle" if arg.model == "oracle" else "checkpoint"
    c.train_config = train_config + (":smoke" if arg.smoke and train_config else "")
    c.checkpoint_dir = arg.checkpoint_dir or checkpoint_dir
    c.use_ema = True
    c.resolution = 0
    c.oracle = ml_collections.ConfigDict(dict(process=process, dim=16, num_components=6, prediction="eps"))
    c.method = arg.method  # schedules.learn's method
    c.options = {}  # the method's options (schedules.learn **options)
    c.nfes = (3, 4) if arg.smoke else (4, 5, 6, 8, 10)
    c.calibration = 16 if arg.smoke else 512  # the calibration batch the sampler is fitted on
    c.heldout = 16 if arg.smoke else 1024  # another batch, scored against the reference
    c.teacher = ml_collections.ConfigDict(dict(steps=20 if arg.smoke else 200, grid="logsnr", solver="deis_tab",
                                               options=dict(order=3)))
    c.reference_steps = 40 if arg.smoke else 400  # the scoring reference: the teacher solver with this many steps
    c.outputs = ml_collections.ConfigDict(dict(sampler=f"{arg.method}_nfe{{nfe}}.json", json=f"learned_{arg.method}.json"))
    c.lock()
    return c
