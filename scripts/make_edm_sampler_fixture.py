"""Write tests/fixtures/edm_sampler.npz: EDM's own `edm_sampler` (NVlabs/edm generate.py) on the exact denoiser of
the tests' Gaussian mixture, for tests/test_edm_sampler.py.

    python scripts/make_edm_sampler_fixture.py --write-mixture /tmp/mixture.npz          # this project's env
    TORCH_VENV/bin/python scripts/make_edm_sampler_fixture.py --edm-repo /path/to/edm --mixture /tmp/mixture.npz

The first command writes the mixture the tests' `oracle` fixture makes (tests/conftest.py: GaussianMixture.random
(PRNGKey(0), dim=8, num_components=6), float64) as weights (K,), means (K, d), stds (K, d). The second needs torch,
numpy, click, tqdm, pillow and a checkout of EDM (its generate.py imports dnnlib and torch_utils from it); it
imports `edm_sampler` from generate.py and runs it, in float64, with `MixtureDenoiser`: E[x0 | x0 + sigma eps = x]
of that mixture in closed form (this script's own torch code), exposing sigma_min, sigma_max and round_sigma as
EDMPrecond does (0, inf, identity: training/networks.py:638-639, 670). `randn_like` replays noise drawn here
beforehand, so the tests can feed the same draws to our solver.

Written: the mixture, latents (B, d) float64 (EDM scales them by sigma_max itself), and for each case of `CASES`
noise_<case> (N, B, d), the draw of EDM's step i (its randn_like is called once per step, also where the churn is 0),
and out_<case> (B, d), edm_sampler's result. Cases: the deterministic sampler (Heun, last step Euler to t_N = 0)
at N = 6 and 18, and the stochastic one with EDM's ImageNet-64 settings (S_churn 40, S_min 0.05, S_max 50,
S_noise 1.003) at N = 6 and 18.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "edm_sampler.npz")
BATCH = 16
STOCHASTIC = dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
# case -> edm_sampler's keyword arguments
CASES = {"heun_6": dict(num_steps=6), "heun_18": dict(num_steps=18),
         "churn_6": dict(num_steps=6, **STOCHASTIC), "churn_18": dict(num_steps=18, **STOCHASTIC)}


def write_mixture(path: str) -> None:
    """The tests' oracle mixture, float64 (run in this project's environment)."""
    sys.path.insert(0, ROOT)
    import jax

    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py: the mixture is drawn in float64
    from fastsamplers.models import GaussianMixture

    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=8, num_components=6)
    np.savez(path, weights=np.asarray(gm.weights), means=np.asarray(gm.means), stds=np.asarray(gm.stds))
    print(f"wrote {path}")


def mixture_denoiser(weights: np.ndarray, means: np.ndarray, stds: np.ndarray):
    """A torch module with EDM's network interface whose output is the exact E[x0 | x] of the mixture at noise level
    sigma: each component k is N(mu_k, diag(s_k^2)) blurred to N(mu_k, s_k^2 + sigma^2), its posterior weight r_k
    the softmax over k of log w_k + log N(x; mu_k, s_k^2 + sigma^2), and E[x0 | x, k] = mu_k + s_k^2 / (s_k^2 +
    sigma^2) (x - mu_k)."""
    import torch

    class MixtureDenoiser(torch.nn.Module):
        sigma_min, sigma_max = 0.0, float("inf")

        def __init__(self):
            super().__init__()
            self.log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))
            self.mu = torch.as_tensor(means, dtype=torch.float64)
            self.var0 = torch.as_tensor(stds, dtype=torch.float64) ** 2

        def round_sigma(self, sigma):
            return torch.as_tensor(sigma)

        def forward(self, x, sigma, class_labels=None):
            var = self.var0 + torch.as_tensor(sigma, dtype=torch.float64) ** 2  # (K, d)
            diff = x.to(torch.float64)[:, None, :] - self.mu  # (B, K, d)
            log_p = -0.5 * torch.sum(diff**2 / var + torch.log(2 * np.pi * var), dim=-1)
            resp = torch.softmax(self.log_w + log_p, dim=-1)  # (B, K)
            return torch.einsum("bk,bkd->bd", resp, self.mu + self.var0 / var * diff)

    return MixtureDenoiser()


def make(edm_repo: str, mixture: str, out: str, seed: int = 0) -> None:
    import torch

    sys.path.insert(0, edm_repo)
    from generate import edm_sampler

    m = np.load(mixture)
    net = mixture_denoiser(m["weights"], m["means"], m["stds"])
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn((BATCH, m["means"].shape[1]), generator=gen, dtype=torch.float64)
    arrays = dict(weights=m["weights"], means=m["means"], stds=m["stds"], latents=latents.numpy())
    for case, options in CASES.items():
        noise = torch.randn((options["num_steps"],) + tuple(latents.shape), generator=gen, dtype=torch.float64)
        drawn = []

        def randn_like(x):  # step i's draw: noise[i]
            drawn.append(noise[len(drawn)])
            return drawn[-1].to(x.dtype)

        with torch.no_grad():
            x = edm_sampler(net, latents, randn_like=randn_like, **options)
        assert len(drawn) == options["num_steps"] and x.dtype == torch.float64
        arrays[f"noise_{case}"], arrays[f"out_{case}"] = noise.numpy(), x.numpy()
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {sorted(CASES)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-mixture", default=None, help="write the tests' mixture to this .npz and stop")
    parser.add_argument("--edm-repo", default=None, help="a checkout of github.com/NVlabs/edm")
    parser.add_argument("--mixture", default=None, help="the .npz --write-mixture wrote")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    if args.write_mixture:
        write_mixture(args.write_mixture)
    elif args.edm_repo and args.mixture:
        make(args.edm_repo, args.mixture, args.out)
    else:
        parser.error("give --write-mixture FILE (this project's env), or --edm-repo and --mixture (torch env)")


if __name__ == "__main__":
    main()
