"""Bottleneck sampling (Tian et al. 2025) on the digits DiT: 32 -> 16 -> 32 px against full-resolution sampling.

The model is the multi-resolution DiT of `digits_dit.py` (flow matching on the OT path, velocity prediction, trained
at 16 and 32 px at once). Launch (from the repository root), after training it
(`python scripts/train.py --config experiments/configs/digits_dit.py --workdir outputs/digits_dit`):

    python scripts/sample_bottleneck.py --config experiments/configs/digits_bottleneck.py \
        --workdir outputs/digits_bottleneck
    python scripts/benchmark_bottleneck.py --json outputs/bench/bottleneck.json

The first draws `grid_samples` images with the baseline and with the plan `plan` from the same noise and writes the
two grids side by side (comparison.png) and bottleneck.json (NFE per stage, model FLOPs, wall time). The second is
the benchmark of issue 7: the baseline, every plan of `plans`, and for each plan an equal-cost baseline (fewer
full-resolution steps of the same FLOPs), with wall time, model FLOPs and FD-digits on `num_samples` samples; with
`res64.enabled` also the same rows at 64 px (the plans' resolutions doubled), cost only (see below).

Variants (`digits_bottleneck.py:ARG`, comma-separated):
  smoke                       tiny counts for tests: the `digits_dit.py:smoke` model, 16 samples, 64 px cost rows on
                              8 samples;
  checkpoint_dir=DIR          the training run's workdir (it holds DIR/checkpoints; default outputs/digits_dit).
Overrides: `--config.baseline.num_steps=40`, `--config.plans.bottleneck_2x.steps='(4, 15, 8)'`,
`--config.plan=bottleneck_3x`, `--config.metric=none`, `--config.res64.enabled=False`.

The defaults, and why:
  - Baseline: Euler on the velocity from t = 1 to t = 0 (FLUX's and the paper's sampler; one model call per step, so
    equal-cost baselines match a plan's FLOPs to within half a step), N = 30 steps, on SD3 / FLUX's shifted grid
    ("flow_shift"). The shifts follow SD3's resolution-dependent rule, shift = sqrt(pixels / base pixels) (Esser et
    al. 2024): 1 (the uniform grid) at 16 px, the model's other training size, and 2 at 32 px. The published recipe
    uses 9 and 6 at 1024 and 512 px with FLUX, whose base shift is far larger.
  - Plans: the published recipe's shape, sizes [H, H/2, H], strengths [1.0, 0.8, 0.6] (re-noise the upsampled
    clean estimate to t = 0.6 for the last stage), shifts [high, low, high], and its step split (FLUX 6 / 20 / 8:
    few high-resolution steps for the layout, most steps at low resolution, a short high-resolution refinement),
    scaled to our N = 30 and to the DiT's cost ratio: with patch 2, a 16 px call is 64 tokens against 256 and costs
    about a fifth of a 32 px call (`experiments.metrics.flops`). 4 / 15 / 8 steps cost 4 + 8 + 15 / 5 ~ 15
    full-resolution calls, about 2x fewer FLOPs than 30; 2 / 15 / 5 cost about 10, about 3x fewer. The benchmark
    prints the exact ratios.
  - Every stage runs down to t = 0 (`ends` empty): for Euler on a velocity model the last step to t = 0 is
    x - t v, exactly the clean estimate x0(x_t) that the paper resizes, so the stage change costs no extra model
    call. `ends` (fractions of t_max, one per stage; 0 = down to t = 0) stops stages earlier at the price of one
    x0 call each.
  - Lanczos-3 resizing with antialiasing and fresh re-noising (the published rule; `samplers.bottleneck`).

64 px: the DiT takes any size divisible by its patch (positions are computed at call time), so the 64 px rows run
and their wall time and FLOPs are real; but the model was trained at 16 and 32 px only, our digits data stop at 32
px and the FD-digits classifier exists at 8, 16 and 32 px, so no quality number is given at 64 px (FD is null, with
the reason in the row). They show how the cost gain grows when attention dominates.

Cost on a 2-core CPU shared with another job (measured with the full DiT): a 32 px call is ~33 ms per sample, a
16 px call ~4 ms (fewer FLOPs and better use of the cores), so the baseline (30 steps) takes ~13 min per 1000
samples and the five 32 px rows at `num_samples` = 10,000 about 6-8 hours; FD-digits adds seconds per row.
"""

from __future__ import annotations

import ml_collections

from fastsamplers.experiments.configs import parse_arg

TRAIN_CONFIG = "experiments/configs/digits_dit.py"
CHECKPOINT_DIR = "outputs/digits_dit"


def plan_config(steps, strengths=(1.0, 0.8, 0.6), resolutions=(32, 16, 32), shifts=(2.0, 1.0, 2.0)):
    """One bottleneck plan: per-stage tuples (`experiments.runs.bottleneck_benchmark.plan_stages` makes Stages)."""
    return ml_collections.ConfigDict(dict(
        resolutions=tuple(resolutions),  # image side of each stage
        steps=tuple(steps),  # solver steps of each stage
        strengths=tuple(strengths),  # start time of each stage as a fraction of t_max; the first must be 1.0
        ends=(),  # () = every stage down to t_min; else one fraction of t_max per stage (0.0 = down to t_min)
        shifts=tuple(shifts),  # "flow_shift" grid: each stage's shift; () for other grids
        grid="flow_shift",
        solver="",  # "" = the baseline's solver
    ))


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, checkpoint_dir=CHECKPOINT_DIR)
    c = ml_collections.ConfigDict()
    c.train_config = TRAIN_CONFIG + (":smoke" if arg.smoke else "")  # the model's training config (file.py[:arg])
    c.checkpoint_dir = arg.checkpoint_dir  # that run's --workdir (holding checkpoints/)
    c.use_ema = True
    c.seed = 0
    c.num_samples = 16 if arg.smoke else 10_000  # benchmark: samples per row (FD-digits and wall time)
    c.batch_size = 8 if arg.smoke else 1_000  # samples per compiled call
    c.grid_samples = 16 if arg.smoke else 64  # sampling entry: samples per grid
    c.timing_repeats = 1  # timed passes per row after a warm-up batch; the median is reported
    c.process = ml_collections.ConfigDict(dict(t_min=0.0, t_max=1.0))  # as digits_dit's sampler: t = 1 to t = 0

    c.baseline = ml_collections.ConfigDict(dict(
        resolution=32, num_steps=4 if arg.smoke else 30, solver="euler", grid="flow_shift", shift=2.0))
    c.plans = ml_collections.ConfigDict()
    c.plans.bottleneck_2x = plan_config((1, 2, 1) if arg.smoke else (4, 15, 8))
    c.plans.bottleneck_3x = plan_config((1, 2, 1) if arg.smoke else (2, 15, 5))
    if arg.smoke:  # the two smoke plans differ in their low-resolution steps only
        c.plans.bottleneck_3x.steps = (1, 1, 1)
    c.plan = "bottleneck_2x"  # the plan of the sampling entry (a key of `plans`)
    c.resize_method = "lanczos"  # samplers.bottleneck.RESIZE_METHODS
    c.renoise_mode = "fresh"  # samplers.bottleneck.RENOISE

    c.metric = "fd_digits"  # "fd_digits" | "none" (wall time and FLOPs only)
    c.fd_reference = "all"  # the real digits FD-digits compares with ("all", "train", "test")
    c.res64 = ml_collections.ConfigDict(dict(
        enabled=True,  # also time and count the rows at 64 px (no FD there; see the docstring)
        # samples timed per 64 px row: a 64 px call costs ~7x a 32 px one (3.9 against 0.55 GFLOPs per sample), about
        # 0.28 s per sample on two busy CPU cores, so the 64 px rows take 15-20 min on 32 samples there
        num_samples=8 if arg.smoke else 32,
        batch_size=8 if arg.smoke else 16,
    ))
    c.lock()
    return c
