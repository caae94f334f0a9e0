"""Record diffusers' SA-Solver (`SASolverScheduler`, data prediction) on the toy model of make_unipc_fixture.py, for
the parity test.

    TORCH_VENV/bin/python scripts/make_sasolver_fixture.py [--out tests/fixtures/sasolver_diffusers.npz]

Needs numpy, torch and diffusers (run it in a separate environment, as make_unipc_fixture.py). The problem is that
script's: DDPM's linear-beta table, 10 "linspace" inference steps, a (4, 6) sample, `toy_eps`. The scheduler's noise
is replaced by recorded standard normal draws (numpy, seeded), saved in the file, so that the test can feed the same
draws to our solver. Every case runs on diffusers' stock float32 sigma table ("stock") and on float64 sigmas from the
same alphas_cumprod ("f64").
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from make_unipc_fixture import NUM_STEPS, NUM_TRAIN, SHAPE, save, toy_eps, toy_params

# (name, predictor_order, corrector_order, tau ("zero" | "one" | "default": 1 on timesteps 200..800), lower_order_final)
CASES = (
    ("p2c2_default", 2, 2, "default", True),
    ("p3c4_default", 3, 4, "default", True),
    ("p3c3_zero", 3, 3, "zero", True),
    ("p2c2_zero_nolof", 2, 2, "zero", False),
    ("p1c1_one", 1, 1, "one", True),
    ("p4c3_one", 4, 3, "one", True),
)
TAU_FUNCS = {"zero": lambda t: 0, "one": lambda t: 1, "default": None}


def run_case(case, params, noises, float64_sigmas):
    """(timesteps (N,), alphas_cumprod (1000,), states (N + 1, *SHAPE)) with the scheduler drawing `noises` in order."""
    import torch
    from diffusers import SASolverScheduler
    from diffusers.schedulers import scheduling_sasolver

    _, p, q, tau, lower_order_final = case
    scheduler = SASolverScheduler(
        num_train_timesteps=NUM_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        predictor_order=p, corrector_order=q, tau_func=TAU_FUNCS[tau], prediction_type="epsilon",
        algorithm_type="data_prediction", lower_order_final=lower_order_final,
    )
    scheduler.set_timesteps(NUM_STEPS)
    alphas_cumprod = scheduler.alphas_cumprod.numpy().astype(np.float64)
    timesteps = scheduler.timesteps.numpy().astype(np.int64)
    if float64_sigmas:
        table = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
        scheduler.sigmas = torch.from_numpy(np.concatenate([table[timesteps], [table[0]]]))
    draws = iter(noises)
    original = scheduling_sasolver.randn_tensor
    scheduling_sasolver.randn_tensor = lambda shape, **kw: torch.from_numpy(next(draws).copy()).to(kw.get("dtype"))
    try:
        x = torch.from_numpy(params["x_init"].copy())
        states = [x.numpy().copy()]
        for n in timesteps:
            alpha, sigma = np.sqrt(alphas_cumprod[n]), np.sqrt(1.0 - alphas_cumprod[n])
            eps = torch.from_numpy(toy_eps(x.numpy(), alpha, sigma, params))
            x = scheduler.step(eps, int(n), x).prev_sample
            states.append(x.numpy().copy())
    finally:
        scheduling_sasolver.randn_tensor = original
    return timesteps, alphas_cumprod, np.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "sasolver_diffusers.npz"))
    args = parser.parse_args()
    params = toy_params()
    noises = np.random.default_rng(1).normal(size=(NUM_STEPS,) + SHAPE)
    arrays = {f"param_{k}": v for k, v in params.items()}
    arrays["noises"] = noises
    for case in CASES:
        for tag, f64 in (("f64", True), ("stock", False)):
            timesteps, alphas_cumprod, states = run_case(case, params, noises, f64)
            arrays[f"{case[0]}_{tag}_states"] = states
        arrays["timesteps"], arrays["alphas_cumprod"] = timesteps, alphas_cumprod
        print(case[0], "final |x| =", float(np.abs(states[-1]).max()))
    save(args.out, arrays)


if __name__ == "__main__":
    main()
