"""Record diffusers' UniPC (`UniPCMultistepScheduler`, predict_x0=True) on a fixed toy model, for the parity test.

    TORCH_VENV/bin/python scripts/make_unipc_fixture.py [--out tests/fixtures/unipc_diffusers.npz]

Needs numpy, torch and diffusers (not this project's packages): run it in a separate environment, e.g.
`python3 -m venv TORCH_VENV && TORCH_VENV/bin/pip install torch diffusers numpy`. tests/test_unipc.py reads
the file it writes and, where diffusers imports, calls `run_case` live.

The problem: DDPM's linear-beta 1000-step table (diffusers' own alphas_cumprod, float32, saved as float64), 10
inference steps with diffusers' default "linspace" timestep spacing, a (4, 6) sample and the toy noise prediction
`toy_eps` below (written identically in the test). Every case is run twice: with diffusers' stock float32 sigma table
("stock"), and with that table replaced by float64 sigmas from the same alphas_cumprod ("f64"), which makes the
whole scheduler run in float64 so that the comparison is limited by float64, not by the table's rounding.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

NUM_TRAIN = 1000
NUM_STEPS = 10
SHAPE = (4, 6)
# (name, solver_order, solver_type, final_sigmas_type, lower_order_final, corrector). bh1 with final_sigmas_type
# "zero" is left out: diffusers returns NaN there (B(h) = -inf times a zero residual at the step to sigma = 0).
CASES = (
    ("o1_bh2_zero", 1, "bh2", "zero", True, True),
    ("o2_bh2_zero", 2, "bh2", "zero", True, True),
    ("o3_bh2_zero", 3, "bh2", "zero", True, True),
    ("o2_bh1_min", 2, "bh1", "sigma_min", True, True),
    ("o3_bh1_min", 3, "bh1", "sigma_min", True, True),
    ("o3_bh2_min_nolof", 3, "bh2", "sigma_min", False, True),
    ("o3_bh2_zero_nocorr", 3, "bh2", "zero", True, False),
)


def toy_params(seed: int = 0) -> dict[str, np.ndarray]:
    """The toy model's fixed parameters and the initial sample."""
    rng = np.random.default_rng(seed)
    dim = SHAPE[-1]
    return {"mu": rng.normal(size=dim), "std": rng.uniform(0.3, 1.0, size=dim),
            "w": rng.normal(size=(dim, dim)) / np.sqrt(dim), "x_init": rng.normal(size=SHAPE)}


def toy_eps(x: np.ndarray, alpha: float, sigma: float, params: dict[str, np.ndarray]) -> np.ndarray:
    """The exact noise prediction of Gaussian data N(mu, diag(std^2)) plus a small nonlinear term."""
    mu, std, w = params["mu"], params["std"], params["w"]
    return sigma * (x - alpha * mu) / (alpha**2 * std**2 + sigma**2) + 0.1 * sigma * np.tanh(x @ w)


def run_case(case: tuple, params: dict[str, np.ndarray], float64_sigmas: bool) -> tuple[np.ndarray, ...]:
    """(timesteps (N,), final sigma (the scheduler's, float64), alphas_cumprod (1000,), states (N + 1, *SHAPE))."""
    import torch
    from diffusers import UniPCMultistepScheduler

    _, order, solver_type, final, lower_order_final, corrector = case
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        solver_order=order, solver_type=solver_type, predict_x0=True, prediction_type="epsilon",
        lower_order_final=lower_order_final, final_sigmas_type=final,
        disable_corrector=[] if corrector else list(range(NUM_STEPS)),
    )
    scheduler.set_timesteps(NUM_STEPS)
    alphas_cumprod = scheduler.alphas_cumprod.numpy().astype(np.float64)
    timesteps = scheduler.timesteps.numpy().astype(np.int64)
    if float64_sigmas:
        table = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
        last = 0.0 if final == "zero" else table[0]
        scheduler.sigmas = torch.from_numpy(np.concatenate([table[timesteps], [last]]))
    x = torch.from_numpy(params["x_init"].copy())
    states = [x.numpy().copy()]
    for n in timesteps:
        alpha, sigma = np.sqrt(alphas_cumprod[n]), np.sqrt(1.0 - alphas_cumprod[n])
        eps = torch.from_numpy(toy_eps(x.numpy(), alpha, sigma, params))
        x = scheduler.step(eps, int(n), x).prev_sample
        states.append(x.numpy().copy())
    return timesteps, float(scheduler.sigmas[-1]), alphas_cumprod, np.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "unipc_diffusers.npz"))
    args = parser.parse_args()
    params = toy_params()
    arrays = {f"param_{k}": v for k, v in params.items()}
    for case in CASES:
        name = case[0]
        for tag, f64 in (("f64", True), ("stock", False)):
            timesteps, final_sigma, alphas_cumprod, states = run_case(case, params, f64)
            arrays[f"{name}_{tag}_states"] = states
        arrays[f"{name}_timesteps"] = timesteps
        arrays[f"{name}_final_sigma"] = np.float64(final_sigma)
        arrays["alphas_cumprod"] = alphas_cumprod
        print(name, "final |x| =", float(np.abs(states[-1]).max()))
    save(args.out, arrays)


def save(out: str, arrays: dict) -> None:
    """Write the fixture (compressed npz) with the versions of diffusers and torch that made it."""
    import diffusers
    import torch

    arrays = dict(arrays, versions=np.array(f"diffusers {diffusers.__version__}, torch {torch.__version__}"))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    np.savez_compressed(out, **arrays)
    print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
