"""TorchCFM reference run on the standard 2D task (noise -> two moons), for a side-by-side comparison with ours.

Run ONLY with the PyTorch virtualenv (this script imports nothing from this repository, nor jax):

    TORCH_VENV/bin/python scripts/torchcfm_baseline.py --out out/torchcfm.npz --json out/torchcfm.json

Library: TorchCFM (A. Tong et al., "Improving and generalizing flow-based generative models with minibatch optimal
transport", TMLR 2024, arXiv:2302.00482; https://github.com/atong01/conditional-flow-matching), used only through
its public API.

Task (CPU only; torchcfm's time convention: t=0 noise, t=1 data):
- source x0 ~ N(0, I_2); target x1 = sklearn.datasets.make_moons(n, noise=0.2)[0] * 3 - 1 (float32); fresh samples
  of both every step (make_moons draws from numpy's global RNG), batch 256.
- model torchcfm.models.models.MLP(dim=2, w=64, time_varying=True) (3 hidden layers of 64, SELU), input
  concat([xt, t[:, None]]); torch.optim.Adam(lr=1e-3), no scheduler; loss mean((v(t, xt) - ut)^2) with t, xt, ut from
  matcher.sample_location_and_conditional_flow(x0, x1).
- couplings: "independent" = ConditionalFlowMatcher(sigma=0); "ot" = ExactOptimalTransportConditionalFlowMatcher(
  sigma=0) (POT exact emd, squared-Euclidean cost); "sinkhorn" = OTPlanSampler(method="sinkhorn", reg=--reg) re-pairs
  the batch, then ConditionalFlowMatcher(sigma=0). torchcfm draws the pairs from the plan with replacement; its cost
  is not normalised unless --normalize-cost, so reg is in the units of |x0 - x1|^2.
- per coupling: torch and numpy seeded with --seed (same initial weights for every coupling); 20 warm-up steps (not
  timed), then --steps timed steps (wall clock, including data generation and the coupling) -> steps_per_s;
  final_loss = mean loss over the last 100 timed steps.
- evaluation: plain Euler in torch.no_grad from t=0 to t=1 with N uniform steps for each N in --eval-steps, from
  --num-eval points x0 ~ N(0, I) drawn by a torch.Generator seeded with seed+1 (the same x0 for every coupling).

Outputs: --out (.npz) holds f"{coupling}_euler{N}_trajectory" (N+1, num_eval, 2) float32, f"{coupling}_euler{N}_ts"
(N+1,) and "target" = make_moons(num_eval, noise=0.2, random_state=seed+2)[0] * 3 - 1; --json holds versions, the
task, per-coupling timings and losses, and torch's thread count. A table is printed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import make_moons
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
)
from torchcfm.models.models import MLP
from torchcfm.optimal_transport import OTPlanSampler

BATCH, WIDTH, LR, WARMUP, LOSS_WINDOW = 256, 64, 1e-3, 20, 100


def sample_moons(n, random_state=None):
    return (make_moons(n, noise=0.2, random_state=random_state)[0] * 3 - 1).astype(
        np.float32
    )


def make_step(coupling, model, opt, reg, normalize_cost):
    """One training step as a user would write it (returns the loss as a float)."""
    if coupling == "ot":
        matcher, plan = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), None
    else:
        matcher = ConditionalFlowMatcher(sigma=0.0)
        plan = (
            OTPlanSampler(method="sinkhorn", reg=reg, normalize_cost=normalize_cost)
            if coupling == "sinkhorn"
            else None
        )

    def step():
        x0 = torch.randn(BATCH, 2)
        x1 = torch.from_numpy(sample_moons(BATCH))
        if plan is not None:
            x0, x1 = plan.sample_plan(x0, x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


@torch.no_grad()
def euler(model, x0, n):
    ts = torch.linspace(0.0, 1.0, n + 1)
    xs = [x0]
    for i in range(n):
        t = torch.full((x0.shape[0], 1), float(ts[i]))
        xs.append(xs[-1] + (ts[i + 1] - ts[i]) * model(torch.cat([xs[-1], t], dim=-1)))
    return torch.stack(xs).numpy().astype(np.float32), ts.numpy()


def plan_check(reg, normalize_cost, batches=20):
    """Total mass of the Sinkhorn plan on fresh batches (1 if POT converged) and POT's warnings (not timed)."""
    sampler = OTPlanSampler(method="sinkhorn", reg=reg, normalize_cost=normalize_cost)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masses = [
            float(
                sampler.get_map(
                    torch.randn(BATCH, 2), torch.from_numpy(sample_moons(BATCH))
                ).sum()
            )
            for _ in range(batches)
        ]
    return {
        "plan_mass_min": min(masses),
        "plan_mass_max": max(masses),
        "pot_warnings": sorted({str(w.message) for w in caught}),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--couplings", default="independent,ot,sinkhorn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-eval", type=int, default=2000)
    p.add_argument("--eval-steps", default="100,4,2")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own)",
    )
    p.add_argument(
        "--reg",
        type=float,
        default=0.05,
        help="Sinkhorn entropic regularisation (POT's reg)",
    )
    p.add_argument(
        "--normalize-cost",
        action="store_true",
        help="OTPlanSampler(normalize_cost=True) for sinkhorn",
    )
    p.add_argument("--out", required=True, help="FILE.npz")
    p.add_argument("--json", required=True, help="FILE.json")
    args = p.parse_args()
    couplings = args.couplings.split(",")
    eval_steps = [int(n) for n in args.eval_steps.split(",")]
    if bad := set(couplings) - {"independent", "ot", "sinkhorn"}:
        p.error(f"unknown couplings {sorted(bad)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    arrays = {"target": sample_moons(args.num_eval, random_state=args.seed + 2)}
    x0_eval = torch.randn(
        args.num_eval, 2, generator=torch.Generator().manual_seed(args.seed + 1)
    )
    results = {}
    for coupling in couplings:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        model = MLP(dim=2, w=WIDTH, time_varying=True)
        step = make_step(
            coupling,
            model,
            torch.optim.Adam(model.parameters(), lr=LR),
            args.reg,
            args.normalize_cost,
        )
        for _ in range(WARMUP):
            step()
        start = time.perf_counter()
        losses = [step() for _ in range(args.steps)]
        seconds = time.perf_counter() - start
        results[coupling] = {
            "steps_per_s": args.steps / seconds,
            "train_seconds": seconds,
            "final_loss": float(np.mean(losses[-LOSS_WINDOW:])),
        }
        if coupling == "sinkhorn":
            results[coupling].update(plan_check(args.reg, args.normalize_cost))
        model.eval()
        for n in eval_steps:
            (
                arrays[f"{coupling}_euler{n}_trajectory"],
                arrays[f"{coupling}_euler{n}_ts"],
            ) = euler(model, x0_eval, n)

    np.savez(args.out, **arrays)
    info = {
        "framework": "torchcfm",
        "versions": {
            k: importlib.metadata.version(k)
            for k in ("torch", "torchcfm", "pot", "numpy", "scikit-learn")
        },
        "task": {
            "source": "N(0, I_2)",
            "target": "make_moons(n, noise=0.2)[0] * 3 - 1",
            "batch": BATCH,
            "model": f"torchcfm MLP(dim=2, w={WIDTH}, time_varying=True)",
            "optimizer": f"Adam(lr={LR})",
            "sigma": 0.0,
            "steps": args.steps,
            "warmup_steps": WARMUP,
            "loss_window": LOSS_WINDOW,
            "couplings": couplings,
            "sinkhorn_reg": args.reg,
            "sinkhorn_normalize_cost": args.normalize_cost,
            "seed": args.seed,
            "num_eval": args.num_eval,
            "eval_steps": eval_steps,
            "time_convention": "t=0 noise, t=1 data",
            "integrator": "Euler, uniform steps",
        },
        "results": results,
        "threads": torch.get_num_threads(),
    }
    with open(args.json, "w") as f:
        json.dump(info, f, indent=2)

    print(
        f"torchcfm {info['versions']['torchcfm']}, torch {info['versions']['torch']}, threads {info['threads']}, "
        f"{args.steps} steps, batch {BATCH}"
    )
    print(f"{'coupling':<12} {'steps/s':>9} {'train s':>9} {'final loss':>11}")
    for c, r in results.items():
        print(
            f"{c:<12} {r['steps_per_s']:>9.1f} {r['train_seconds']:>9.2f} {r['final_loss']:>11.4f}"
        )
    if "sinkhorn" in results:
        r = results["sinkhorn"]
        print(
            f"sinkhorn reg={args.reg} normalize_cost={args.normalize_cost}: plan mass in "
            f"[{r['plan_mass_min']:.3g}, {r['plan_mass_max']:.3g}] (1 = converged); POT warnings: {r['pot_warnings']}"
        )


if __name__ == "__main__":
    main()
