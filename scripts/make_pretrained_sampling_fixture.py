r"""Record diffusers' DDIM and DPM-Solver++(2M) scheduler loops on the ddpm fixture UNet, for the sampling parity test.

    TORCH_VENV/bin/python scripts/make_pretrained_sampling_fixture.py \
        [--out tests/fixtures/pretrained/sampling_diffusers.npz]

Needs numpy, torch, diffusers and safetensors (not this project's packages): run it in a separate environment, e.g.
`python3 -m venv TORCH_VENV && TORCH_VENV/bin/pip install torch diffusers safetensors numpy`.
tests/test_pretrained_sampling.py reads the file it writes and, where torch and diffusers import, calls `run_case`
live.

The model is the committed random-weight DDPM fixture (tests/fixtures/pretrained/ddpm, written by
scripts/make_pretrained_fixtures.py): diffusers' own `UNet2DModel` on its safetensors file, always run in float32.
The schedulers are built `from_config` on the fixture's scheduler_config.json (a DDPMScheduler: linear betas
1e-4..0.02 over 1000 steps, epsilon prediction, no steps_offset or set_alpha_to_one key, so diffusers' defaults
steps_offset = 0 and set_alpha_to_one = True apply), with `clip_sample=False` for DDIM (the config's
clip_sample = true clamps x0_hat to [-1, 1], which the framework's solvers do not do; a random network's x0_hat is
far outside that range), then `set_timesteps(10)` and the pipeline loop `x = scheduler.step(unet(x, t), t, x)`:

  "ddim"              DDIMScheduler, eta = 0, "leading" spacing: timesteps 900, 800, ..., 0; the last step goes to
                      final_alpha_cumprod = 1 (set_alpha_to_one), i.e. sigma = 0.
  "ddim_offset1_a0"   the same with steps_offset = 1 and set_alpha_to_one = False: timesteps 901, ..., 1, the last
                      step to final_alpha_cumprod = alphas_cumprod[0].
  "dpmpp_2m"          DPMSolverMultistepScheduler, algorithm_type dpmsolver++, solver_order 2, its defaults
                      ("linspace" spacing: 999, 899, ..., 100; lower_order_final; final_sigmas_type "zero").

Every case runs twice: "f64", the scheduler arithmetic in float64 on the float64 alphas_cumprod table that
`models.pretrained` computes from the same config (DDIM: alphas_cumprod and final_alpha_cumprod replaced; DPM:
sigmas replaced; the sample is float64 between network calls, the network sees it rounded to float32), and "stock",
diffusers as shipped (its float32 tables, a float32 sample). Note that DPMSolverMultistepScheduler.step casts the
sample to float32 before its update ("upcast"), so its f64 states carry float32 rounding (about 1e-7 relative).

Written per case: `{name}_timesteps` (N,) int, `{name}_final_alpha_cumprod` (the alpha_prod of the last step's
target: DDIM's final_alpha_cumprod, DPM's 1 / (1 + sigma_last^2)), `{name}_f64_states` (N + 1, B, H, W, C) float32
(every state of the loop, NHWC; stored in float32 to keep the file small, rounding 6e-8 relative) and
`{name}_stock_final` (B, H, W, C): the stock loop's sample. Plus `x_init` (B, H, W, C) and `alphas_cumprod` (the
f64 table used).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")
OUT = os.path.join(ROOT, "tests", "fixtures", "pretrained", "sampling_diffusers.npz")
NUM_STEPS = 10
BATCH = 4
# (name, scheduler class, scheduler options on top of the fixture's scheduler_config.json)
CASES = (
    ("ddim", "DDIMScheduler", dict(clip_sample=False)),
    ("ddim_offset1_a0", "DDIMScheduler", dict(clip_sample=False, steps_offset=1, set_alpha_to_one=False)),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
)


def float64_table(config: dict) -> np.ndarray:
    """The linear-beta alphas_cumprod table in float64, as models.pretrained.diffusers.alphas_cumprod computes it."""
    assert config.get("beta_schedule", "linear") == "linear" and config.get("trained_betas") is None
    betas = np.linspace(config.get("beta_start", 1e-4), config.get("beta_end", 0.02),
                        int(config.get("num_train_timesteps", 1000)), dtype=np.float64)
    return np.cumprod(1.0 - betas)


def scheduler_config(model_dir: str = MODEL) -> dict:
    with open(os.path.join(model_dir, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        return json.load(f)


def load_unet(model_dir: str = MODEL):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(os.path.join(model_dir, "unet")).eval().float()


def initial_sample(unet, seed: int = 0) -> np.ndarray:
    """x_init (B, H, W, C) float32: standard normal noise (NHWC)."""
    import torch

    cfg = unet.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((BATCH, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
    return x.permute(0, 2, 3, 1).numpy().copy()


def run_case(case: tuple, unet, x_init: np.ndarray, float64: bool, config: dict | None = None):
    """(timesteps (N,) int64, final alpha_prod (float), states (N + 1, B, H, W, C) NHWC numpy) of one scheduler loop.

    The network always runs in float32 (the sample is rounded to float32 for it, its output converted back)."""
    import diffusers
    import torch

    name, cls_name, options = case
    config = scheduler_config() if config is None else config
    scheduler = getattr(diffusers, cls_name).from_config(config, **options)
    scheduler.set_timesteps(NUM_STEPS)
    timesteps = scheduler.timesteps.numpy().astype(np.int64)
    table = float64_table(config)
    ddim = cls_name == "DDIMScheduler"
    if float64:
        if ddim:
            scheduler.alphas_cumprod = torch.from_numpy(table)
            scheduler.final_alpha_cumprod = torch.tensor(1.0 if scheduler.config.set_alpha_to_one else table[0],
                                                         dtype=torch.float64)
        else:
            sigma = np.sqrt((1.0 - table) / table)
            last = 0.0 if scheduler.config.final_sigmas_type == "zero" else sigma[0]
            scheduler.sigmas = torch.from_numpy(np.concatenate([sigma[timesteps], [last]]))
    if ddim:
        # DDIM's previous timestep is t - N // num_steps: check that the chain is the timestep list itself.
        step = scheduler.config.num_train_timesteps // NUM_STEPS
        assert np.array_equal(timesteps[1:], timesteps[:-1] - step) and timesteps[-1] - step < 0, timesteps
        final_alpha_prod = float(scheduler.final_alpha_cumprod)
    else:
        final_alpha_prod = float(1.0 / (1.0 + scheduler.sigmas[-1].double() ** 2))
    dtype = torch.float64 if float64 else torch.float32
    x = torch.from_numpy(x_init).permute(0, 3, 1, 2).to(dtype)
    states = [x.permute(0, 2, 3, 1).numpy().copy()]
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x.float(), t).sample.to(dtype)
            x = scheduler.step(eps, t, x).prev_sample.to(dtype)
            states.append(x.permute(0, 2, 3, 1).numpy().copy())
    return timesteps, final_alpha_prod, np.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    import diffusers
    import torch

    torch.set_num_threads(1)  # deterministic reductions
    unet = load_unet()
    x_init = initial_sample(unet)
    arrays = {"x_init": x_init, "alphas_cumprod": float64_table(scheduler_config()),
              "versions": np.array(f"diffusers {diffusers.__version__}, torch {torch.__version__}")}
    for case in CASES:
        name = case[0]
        timesteps, final, states = run_case(case, unet, x_init, float64=True)
        _, stock_final, stock = run_case(case, unet, x_init, float64=False)
        arrays[f"{name}_timesteps"] = timesteps
        arrays[f"{name}_final_alpha_cumprod"] = np.float64(final)
        arrays[f"{name}_f64_states"] = states.astype(np.float32)
        arrays[f"{name}_stock_final"] = stock[-1].astype(np.float32)
        rel = np.max(np.abs(stock[-1] - states[-1])) / np.max(np.abs(states[-1]))
        print(f"{name}: timesteps {timesteps.tolist()}, final alpha_prod {final!r}, max |x| = "
              f"{np.abs(states).max():.3g}, |stock - f64| / max|f64| = {rel:.2e}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
