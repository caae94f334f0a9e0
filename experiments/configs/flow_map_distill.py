"""Data-free flow-map distillation (FreeFlow, Tong et al. 2025) of a flow-matching run: a student
f(x, t, s) = x + (s - t) F(x, t, s), the teacher's network with a second time, trained from prior noise only with the
prediction and marginal-correction losses (`experiments/train/flow_map_training.py`, `experiments.train.losses.
make_flow_map_loss`). By default the teacher is digits_fm's UNet.

Launch (from the repository root), after training the teacher:

    python scripts/train.py --config experiments/configs/flow_map_distill.py --workdir outputs/flow_map_digits

The run writes the usual checkpoints (student, auxiliary network, both in the EMA and the optimiser state),
metrics.jsonl, samples and eval.json (W2 of flow_map.sample_steps-step samples). Measure it with
`python scripts/benchmark_flow_map.py --workdir outputs/flow_map_digits --json flow_map_digits.json` (FD-digits at
1, 2, 4 steps against the teacher and euler / heun / dpmpp_2m at the same NFE).

Variants (`flow_map_distill.py:ARG`, comma-separated):
  teacher=NAME         digits_fm (default: its training config and outputs/digits_fm) | toy2d_fm (the 2-D moons MLP,
                       outputs/toy2d_fm);
  teacher_workdir=DIR  another run of that teacher's config;
  correction=W         the correction loss's weight (default 1; 0 turns it off);
  smoke                the teacher's smoke config (in outputs/TEACHER_smoke unless teacher_workdir says) and a few
                       steps: for tests (`smoke,teacher=toy2d_fm` is what tests/test_flow_map.py runs).
Overrides: `--config.train.num_steps=20000 --config.flow_map.sample_steps=2`.
"""

from __future__ import annotations

from fastsamplers.experiments.configs import parse_arg
from fastsamplers.experiments.configs.boss_straighten import TEACHERS


def get_config(arg=None):
    arg = parse_arg(arg, teacher="digits_fm", smoke=False, teacher_workdir="", correction=1.0,
                    choices=dict(teacher=TEACHERS))
    smoke, digits = arg.smoke, arg.teacher == "digits_fm"
    # The student is the teacher's network (plus a second time), process and data: start from the teacher's config.
    c = TEACHERS[arg.teacher].get_config("smoke" if smoke else None)
    c.flow_map.teacher_config = f"experiments/configs/{arg.teacher}.py" + (":smoke" if smoke else "")
    c.flow_map.teacher_workdir = arg.teacher_workdir or f"outputs/{arg.teacher}" + ("_smoke" if smoke else "")
    c.flow_map.teacher_use_ema = c.sample.use_ema
    c.flow_map.correction_weight = float(arg.correction)
    c.flow_map.sample_steps = 1
    c.sample.solver, c.sample.grid, c.sample.nfe = "euler", "uniform", 1  # the base experiment's; samples use flow_map
    c.train.lr_schedule = "cosine"
    c.train.sample_every = 0
    if digits:
        c.train.num_steps = 20 if smoke else 8000  # 2.8 steps/s on 2 CPU cores; measured in README.md
        c.train.batch_size = 16 if smoke else 64
        c.train.lr = 1e-4 if smoke else 2e-4
        c.train.warmup_steps = 2 if smoke else 200
        c.train.ema_decay = 0.9 if smoke else 0.999
        c.train.log_every = 5 if smoke else 100
        c.train.checkpoint_every = 10 if smoke else 500
        c.train.sample_every = 0 if smoke else 2000
        c.eval.loss_batches = 1 if smoke else 8
    else:  # the moons MLP: several steps per compiled call
        c.train.num_steps = 60 if smoke else 5000
        c.train.batch_size = 64 if smoke else 256
        c.train.lr = 3e-4 if smoke else 1e-3
        c.train.warmup_steps = 5 if smoke else 100
        c.train.steps_per_call = 10 if smoke else 100
        c.train.log_every = 10 if smoke else 100
        c.train.checkpoint_every = 30 if smoke else 1000
        c.eval.num_samples = 200 if smoke else 2000
        c.eval.loss_batches = 1 if smoke else 8
        c.sample.num_samples = 200 if smoke else 1000
    c.lock()
    return c
