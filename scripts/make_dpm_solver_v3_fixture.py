"""Record the reference DPM-Solver-v3 sampler (the authors' `dpm_solver_v3.py`) with given statistics, for the parity
test (tests/test_dpm_solver_v3.py).

    TORCH_VENV/bin/python scripts/make_dpm_solver_v3_fixture.py /work/refs/DPM-Solver-v3 \
        [--out tests/fixtures/dpm_solver_v3_reference.npz]

Needs numpy and torch (CPU) and the checkout (not this project's packages). The reference is run in float64: torch's
default dtype float64, `.cuda()` the identity, and its `torch.FloatTensor` of the cached times (float32 in the
original) made float64, so that the comparison is limited by float64 and not by the times' rounding.

The problem: the continuous VP-linear schedule (beta 0.1 to 20, t from 1 to 1e-3), statistics on a 61-point log-SNR
grid (`synthetic_statistics`: smooth l, s, b that vary per dimension), 6 logSNR steps snapped to that grid as the
reference snaps them, a (3, 2, 2, 2) sample and the closed-form noise prediction of Gaussian data N(mu, diag(var))
(`gaussian_eps`, written identically in the test). Each case of CASES is one call of the reference's `sample`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile

import numpy as np

NUM_POINTS = 61
NUM_STEPS = 6
SHAPE = (3, 2, 2, 2)
T_START, T_END = 1.0, 1e-3
# (name, order, p_pseudo, use_corrector, c_pseudo, lower_order_final): the reference's `sample` arguments.
CASES = (
    ("o1", 1, False, False, False, True),
    ("o2", 2, False, False, False, True),
    ("o3", 3, False, False, False, True),
    ("o3_pseudo", 3, True, False, False, True),
    ("o2_corrector", 2, False, True, False, True),
    ("o3_corrector", 3, False, True, False, False),
    ("o3_pseudo_corrector_pseudo", 3, True, True, True, True),
)


def problem(seed: int = 0) -> dict[str, np.ndarray]:
    """The Gaussian data's mean and variance, the initial sample, and the statistics' per-dimension factors."""
    rng = np.random.default_rng(seed)
    event = SHAPE[1:]
    return {"mu": rng.normal(size=event), "var": rng.uniform(0.1, 1.0, size=event),
            "x_init": rng.normal(size=SHAPE), "phase": rng.uniform(0.0, 3.0, size=event)}


def synthetic_statistics(lambdas: np.ndarray, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Smooth l, s, b on the grid (N+1, *event): l near 1, s and b small, each dimension its own phase."""
    lam = lambdas.reshape((-1,) + (1,) * len(SHAPE[1:]))
    phase = params["phase"][None]
    return {"l": 1.0 + 0.2 * np.sin(0.5 * lam + phase), "s": 0.1 * np.cos(0.3 * lam - phase),
            "b": 0.05 * np.sin(0.4 * lam + 2.0 * phase) * np.exp(-0.1 * lam)}


def gaussian_eps(x, alpha, sigma, params):
    """The exact noise prediction of data N(mu, diag(var)): sigma (x - alpha mu) / (alpha^2 var + sigma^2)."""
    return sigma * (x - alpha * params["mu"]) / (alpha**2 * params["var"] + sigma**2)


def reference_module(repo: str):
    """The checkout's dpm_solver_v3.py, run in float64 on the CPU (module docstring)."""
    import torch

    torch.set_default_dtype(torch.float64)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.FloatTensor = lambda values: torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])
    spec = importlib.util.spec_from_file_location("dpm_solver_v3_reference", os.path.join(repo, "dpm_solver_v3.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(repo: str, params: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every case of CASES: the statistics grid, the statistics, the snapped times and each case's final sample."""
    import torch

    params = problem() if params is None else params
    ref = reference_module(repo)
    ns = ref.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
    grid_t = torch.linspace(ns.marginal_lambda(torch.tensor(T_START)).item(),
                            ns.marginal_lambda(torch.tensor(T_END)).item(), NUM_POINTS)
    stats = synthetic_statistics(grid_t.numpy(), params)
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "l.npz"), l=stats["l"])
        np.savez(os.path.join(folder, "sb.npz"), s=stats["s"], b=stats["b"])
        for name, order, p_pseudo, corrector, c_pseudo, lower_order_final in CASES:
            solver = ref.DPM_Solver_v3(folder, ns, steps=NUM_STEPS, t_start=T_START, t_end=T_END,
                                       skip_type="logSNR", device="cpu")

            def model_fn(x, t):
                shape = (-1,) + (1,) * (x.dim() - 1)
                alpha, sigma = ns.marginal_alpha(t).reshape(shape), ns.marginal_std(t).reshape(shape)
                return torch.from_numpy(gaussian_eps(x.numpy(), alpha.numpy(), sigma.numpy(), params))

            x = solver.sample(torch.from_numpy(params["x_init"].copy()), model_fn, order, p_pseudo, corrector,
                              c_pseudo, lower_order_final)
            out[name] = x.numpy()
        out["lambdas"] = solver.ts.numpy().reshape(-1)
        out["timesteps"] = solver.timesteps.numpy().astype(np.float64)
    return {**out, **stats, **params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", help="the DPM-Solver-v3 checkout (holding dpm_solver_v3.py)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                      "dpm_solver_v3_reference.npz"))
    args = parser.parse_args()
    record = run(args.repo)
    np.savez(args.out, **record)
    print(f"wrote {args.out}: {sorted(record)}")


if __name__ == "__main__":
    main()
