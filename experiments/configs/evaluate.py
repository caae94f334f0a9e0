"""Sampler-by-schedule tables (the DEIS paper's layout): solvers x time grids x NFE, one metric per cell.

Launch (from the repository root), after training the model it names:

    python scripts/evaluate.py --config experiments/configs/evaluate.py:model=digits_vp --workdir outputs/eval_vp
    python scripts/make_table.py --rows outputs/eval_vp/rows.json --out outputs/eval_vp

Variants (`evaluate.py:ARG`, comma-separated):
  model=digits_vp   the checkpoint of `digits_vp.py` in outputs/digits_vp (FD-digits; the default);
  model=digits_fm   the checkpoint of `digits_fm.py` in outputs/digits_fm (velocity model on the OT process);
  model=digits_vp_cond, model=digits_fm_cond
                    the class-conditional runs (`digits_vp.py:conditional`, `digits_fm.py:conditional`) in
                    outputs/digits_*_cond, sampled with balanced labels; `--config.guidance_scale=2.0` guides them;
  model=oracle      the Gaussian-mixture oracle on vp_linear, scored by the exact error (no training needed);
  model=boss_fm4, model=boss_fm6
                    digits_fm straightened on its 4 or 6 Bellman steps (`boss_straighten.py`, outputs/boss_fm*);
  smoke             two solvers, two grids, NFE 4 and 6, 64 samples: for tests;
  solvers=restart   Heun against Restart(Heun) (the paper's CIFAR-10 VP interval) at equal NFE on EDM's grid;
  solvers=knobs     instead of the table's rows: DEIS tAB3, iPNDM and DPM-Solver++(3M) with and without
                    lower_order_final and denoise_to_zero, DPM-Solver++(2M) with UniC, and UniPC-3.
Overrides: `--config.checkpoint_dir=...`, `--config.num_samples=2000`, `--config.nfes='(5, 10)'`,
`--config.only='("DDIM", "DEIS tAB3")'`, `--config.grids='("logsnr",)'`, `--config.reference=False`,
`--config.metric=fid --config.fid_weights=inception_fid.npz`. Grids may be "file:PATH" for distilled schedule files
({nfe} and {num_steps} in PATH are filled in), e.g. "file:outputs/oss/vp_nfe{nfe}.json". Learned samplers
(`scripts/learn_sampler.py`, one file per NFE) add rows on their own grids:
`--config.learned='("OLSS=outputs/learned_vp/olss_nfe{nfe}.json",)'`.
"""

from __future__ import annotations

import ml_collections

from fastsamplers.core import Registry
from fastsamplers.experiments.configs import parse_arg

# The table's solvers. The paper's tAB-r is deis_tab with order r + 1; DDIM = deis_tab order 1 on eps models.
SOLVERS = [
    dict(label="DDIM", name="ddim", options={}),
    dict(label="Euler", name="euler", options={}),
    dict(label="Heun", name="heun", options={}),
    dict(label="DEIS tAB1", name="deis_tab", options=dict(order=2)),
    dict(label="DEIS tAB2", name="deis_tab", options=dict(order=3)),
    dict(label="DEIS tAB3", name="deis_tab", options=dict(order=4)),
    dict(label="DEIS rhoRK3", name="deis_rhork", options=dict(method="3kutta")),
    dict(label="iPNDM", name="ipndm", options=dict(order=4)),
    dict(label="DPM-Solver++(2M)", name="dpmpp_2m", options={}),
    dict(label="DPM-Solver++(3M)", name="dpmpp_3m", options={}),
]
# The multistep knobs (issue 15): the solvers that blow up on coarse grids of digits_vp, with lower_order_final (the
# last steps drop to orders 1, 2, ... below 15 steps; "always": at every step count), denoise_to_zero (a final x0 step to sigma = 0; NFE + 1 within
# the same budget) and both; and the UniC corrector on DPM-Solver++.
KNOB_SOLVERS = [
    dict(label=f"{label}{suffix}", name=name, options=dict(options, **knobs))
    for label, name, options in (("DEIS tAB3", "deis_tab", dict(order=4)), ("iPNDM", "ipndm", dict(order=4)),
                                 ("DPM-Solver++(3M)", "dpmpp_3m", {}))
    for suffix, knobs in (("", {}), (" +lof", dict(lower_order_final=True)), (" +d2z", dict(denoise_to_zero=True)),
                          (" +lof+d2z", dict(lower_order_final=True, denoise_to_zero=True)))
    if not (name == "dpmpp_3m" and "lof" in suffix)  # on by default there
] + [
    dict(label=f"{label} +lof always", name=name, options=dict(options, lower_order_final="always"))
    for label, name, options in (("DEIS tAB3", "deis_tab", dict(order=4)), ("iPNDM", "ipndm", dict(order=4)),
                                 ("DPM-Solver++(3M)", "dpmpp_3m", {}))
] + [
    dict(label="DPM-Solver++(3M) -lof", name="dpmpp_3m", options=dict(lower_order_final=False)),
    dict(label="DPM-Solver++(2M) +UniC", name="dpmpp_2m", options=dict(corrector=True)),
    dict(label="UniPC-3 bh2", name="unipc", options={}),
]
# Restart sampling (Xu et al. 2023) against its base solver at equal NFE: Heun on EDM's grid, and Restart(Heun) with
# the paper's CIFAR-10 VP interval (N = 3 steps, K = 2 restarts over sigma/alpha in [0.06, 0.30]).
RESTART_SOLVERS = [
    dict(label="Heun", name="heun", options={}),
    dict(label="Restart(Heun)", name="restart", options=dict(base="heun", intervals="cifar10_vp")),
]
# name -> (training config, its workdir, metric, process).
MODELS = Registry("model", {
    "digits_vp": ("experiments/configs/digits_vp.py", "outputs/digits_vp", "fd_digits", "vp_linear"),
    "digits_fm": ("experiments/configs/digits_fm.py", "outputs/digits_fm", "fd_digits", "ot"),
    "digits_vp_cond": ("experiments/configs/digits_vp.py:conditional", "outputs/digits_vp_cond", "fd_digits",
                       "vp_linear"),
    "digits_fm_cond": ("experiments/configs/digits_fm.py:conditional", "outputs/digits_fm_cond", "fd_digits", "ot"),
    "oracle": ("", "", "exact", "vp_linear"),
    # digits_fm straightened by BOSS on its 4 or 6 Bellman steps (boss_straighten.py); grid
    # "file:outputs/boss_fm6/bellman_s6.json" gives those steps
    "boss_fm4": ("experiments/configs/boss_straighten.py:num_steps=4", "outputs/boss_fm4", "fd_digits", "ot"),
    "boss_fm6": ("experiments/configs/boss_straighten.py:num_steps=6", "outputs/boss_fm6", "fd_digits", "ot"),
}, unknown="unknown {kind} {name!r}; valid: {valid}")
# The rows of a table: the DEIS paper's ("table") or the multistep knobs ("knobs").
SOLVER_SETS = Registry("solvers", {"table": SOLVERS, "knobs": KNOB_SOLVERS, "restart": RESTART_SOLVERS},
                       ordered=True, unknown="unknown {kind}={name!r}; valid: {valid}")


def get_config(arg=None):
    arg = parse_arg(arg, model="digits_vp", smoke=False, solvers="table",
                    choices=dict(model=MODELS, solvers=SOLVER_SETS))
    train_config, checkpoint_dir, metric, process = MODELS[arg.model]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.source = "oracle" if arg.model == "oracle" else "checkpoint"  # experiments.runs.sources.SOURCES
    c.train_config = train_config  # the training config of the checkpoint (file.py[:arg])
    c.checkpoint_dir = checkpoint_dir  # that run's --workdir
    c.use_ema = True
    c.guidance_scale = 1.0  # class-conditional checkpoints: classifier-free guidance scale (1 = none)
    c.resolution = 0  # which of the run's resolutions (multi-resolution DiT runs)
    c.oracle = ml_collections.ConfigDict(dict(process=process, dim=16, num_components=6, prediction="eps"))

    c.metric = metric  # "fd_digits" | "fid" | "exact" | "fd_random_projection" (a test feature, not FID)
    c.fd_reference = "all"  # fd_digits: the real digits it compares with ("all", "train", "test")
    c.fid_weights = ""  # fid: the .npz of scripts/convert_inception_weights.py
    c.fid_reference = ""  # fid: a reference file (experiments.metrics.references); "" = the training data's
    c.feature_dim = 8  # fd_random_projection: its dimension
    c.num_samples = 64 if arg.smoke else 10_000
    c.batch_size = 64 if arg.smoke else 2_000

    rows = SOLVER_SETS[arg.solvers]
    c.solvers = rows[:: 5] if arg.smoke else rows
    c.only = ()  # a subset of the solver labels to run, e.g. --config.only='("DDIM", "DEIS tAB3")'; () = all
    c.grids = ("uniform", "logsnr") if arg.smoke else ("uniform", "quadratic", "logsnr", "edm")
    c.nfes = (4, 6) if arg.smoke else (4, 6, 8, 10, 15, 20)
    if arg.solvers == "restart":  # Restart adds 2 K (N - 1) = 8 calls to Heun's: NFE 43 is the paper's 18 main steps
        c.grids, c.nfes = ("edm",), ((27, 43) if arg.smoke else (19, 27, 43, 63))
    c.learned = ()  # learned samplers, "LABEL=PATH" with {nfe} in PATH (schedules.save_learned files), a row each
    c.t_min = ml_collections.config_dict.placeholder(float)  # the grids' ends; None = the process's
    c.t_max = ml_collections.config_dict.placeholder(float)
    c.reference = not arg.smoke  # add the adaptive diffrax solver's row
    c.reference_options = ml_collections.ConfigDict(dict(method="tsit5", rtol=1e-4, atol=1e-4))
    c.lock()
    return c
