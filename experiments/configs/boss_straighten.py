"""BOSS straightening (Nguyen et al. 2023) of a flow-matching run: fine-tune its velocity network so that K Euler steps
on its own Bellman-optimal times follow its fine teacher solve (`experiments/train/straighten.py`; the loss is
`experiments.train.losses.make_straightening_loss`). By default the teacher is digits_fm's UNet.

Launch (from the repository root), after training the teacher:

    python scripts/train.py --config experiments/configs/digits_fm.py --workdir outputs/digits_fm
    python scripts/train.py --config experiments/configs/boss_straighten.py --workdir outputs/boss_fm6
    python scripts/train.py --config experiments/configs/boss_straighten.py:num_steps=4 --workdir outputs/boss_fm4

The run writes, besides the usual checkpoints, metrics.jsonl, samples and eval.json (the straightening loss on pool
batches; W2 of K-step Euler samples on the Bellman steps), `boss_pool.npz` (the teacher's states at the chosen times,
made once and reused on resume) and `bellman_s{K}.json` (the chosen times, usable as an evaluation grid
"file:outputs/boss_fm6/bellman_s6.json"). Measure the runs (Euler's RMSE against the teacher and FD-digits, before
and after, at NFE 4-10; the cost) with

    python scripts/benchmark_boss.py --runs 4=outputs/boss_fm4 6=outputs/boss_fm6 --fd-samples 10000 \\
        --json experiments/results/boss_digits_fm_fd10k.json

or score one like any checkpoint: `python scripts/evaluate.py --config experiments/configs/evaluate.py:model=boss_fm6
--workdir outputs/eval_boss6 --config.t_min=0.0 --config.t_max=1.0 --config.nfes='(6,)'
--config.grids='("uniform", "file:outputs/boss_fm6/bellman_s{num_steps}.json")'`.

Variants (`boss_straighten.py:ARG`, comma-separated):
  num_steps=K          the student's Euler steps (default 6; 2 with smoke);
  teacher=NAME         digits_fm (default: its training config and outputs/digits_fm) | toy2d_fm (the 2-D moons MLP of
                       toy2d_fm.py, in outputs/toy2d_fm);
  teacher_workdir=DIR  another run of that teacher's config;
  smoke                the teacher's smoke config (trained in outputs/TEACHER_smoke unless teacher_workdir says),
                       a 16-step teacher, a small pool and a few fine-tuning steps: for tests. `smoke,teacher=toy2d_fm`
                       is the one tests/test_boss.py runs (seconds: an MLP compiles far faster than the UNet).
Overrides: `--config.boss.pool_size=4096 --config.train.num_steps=2000 --config.boss.teacher_steps=200`.
"""

from __future__ import annotations

from fastsamplers.core import Registry
from fastsamplers.experiments.configs import digits_fm, parse_arg, toy2d_fm

TEACHERS = Registry("teacher", {"digits_fm": digits_fm, "toy2d_fm": toy2d_fm},
                    unknown="unknown {kind} {name!r}; valid: {valid}")


def get_config(arg=None):
    arg = parse_arg(arg, teacher="digits_fm", num_steps=0, smoke=False, teacher_workdir="",
                    choices=dict(teacher=TEACHERS))
    smoke, digits = arg.smoke, arg.teacher == "digits_fm"
    # The student is the teacher's network, process and data: start from the teacher's own config.
    c = TEACHERS[arg.teacher].get_config("smoke" if smoke else None)
    k = arg.num_steps or (2 if smoke else 6)
    c.boss.teacher_config = f"experiments/configs/{arg.teacher}.py" + (":smoke" if smoke else "")
    c.boss.teacher_workdir = arg.teacher_workdir or f"outputs/{arg.teacher}" + ("_smoke" if smoke else "")
    c.boss.teacher_use_ema = c.sample.use_ema  # the weights the teacher run samples with
    c.boss.num_steps = k
    c.boss.teacher_steps = 16 if smoke else 100
    c.boss.teacher_solver = "heun"
    c.boss.teacher_grid = "uniform"  # rectified-flow time, as the paper's fine grid
    c.boss.pool_size = (64 if digits else 256) if smoke else (2048 if digits else 4096)
    c.boss.pool_batch = (64 if digits else 256) if smoke else (256 if digits else 4096)
    c.boss.calibration_size = c.boss.pool_batch  # one compiled teacher solve serves the DP and the pool

    # Fine-tuning from the teacher: a lower learning rate than its training, a short warm-up, cosine to 0.
    c.train.lr_schedule = "cosine"
    c.train.sample_every = 0
    if digits:
        c.train.num_steps = 20 if smoke else 1000
        c.train.batch_size = 16 if smoke else 32  # trajectories; each gives K intervals to the loss
        c.train.lr = 1e-4 if smoke else 2e-4
        c.train.warmup_steps = 2 if smoke else 50
        c.train.ema_decay = 0.9 if smoke else 0.995
        c.train.log_every = 5 if smoke else 50
        c.train.checkpoint_every = 10 if smoke else 200
        c.eval.loss_batches = 1 if smoke else 8
    else:  # the moons MLP: raw weights as its teacher's, several steps per compiled call
        c.train.num_steps = 60 if smoke else 2000
        c.train.batch_size = 64 if smoke else 256
        c.train.lr = 3e-4
        c.train.warmup_steps = 5 if smoke else 100
        c.train.steps_per_call = 10 if smoke else 100
        c.train.log_every = 10 if smoke else 100
        c.train.checkpoint_every = 30 if smoke else 500
        c.eval.num_samples = 200 if smoke else 2000
        c.eval.loss_batches = 1 if smoke else 8
        c.sample.num_samples = 200 if smoke else 1000
    # Samples (grids, eval.json's W2) use Euler on the Bellman steps; nfe records K.
    c.sample.solver = "euler"
    c.sample.nfe = k
    c.lock()
    return c
