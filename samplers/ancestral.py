"""DDPM's ancestral sampler (Ho et al. 2020) with the variance of its reverse step fixed or learned (Nichol & Dhariwal
2021): the sampler behind guided-diffusion's and DiT's published FIDs (250 respaced steps).

A step from s to t < s draws x_t from the posterior q(x_t | x_s, x0 = x0_hat) of the forward process, whose
transition from t to s adds the variance var_st = sigma_s^2 - (alpha_s / alpha_t)^2 sigma_t^2 (for VP, DDPM's
respaced beta = 1 - abar_s / abar_t):

  mean = (alpha_s / alpha_t) sigma_t^2 / sigma_s^2 x_s + alpha_t var_st / sigma_s^2 x0_hat,
  x_t  = mean + exp(log_var / 2) z,

with log_var = log(var_st sigma_t^2 / sigma_s^2) ("small": the posterior's own variance, beta_tilde), log(var_st)
("large": beta), or, "learned", frac log(var_st) + (1 - frac) log(beta_tilde), frac = (v + 1) / 2 for the
network's variance output v in [-1, 1] (guided-diffusion gaussian_diffusion.py:263-271, with the posterior and
betas of the respaced grid, respace.py:74-82). "small" is `ddim` with eta = 1 (another form of the same step). A step
to sigma_t = 0 (a grid ending at t = 0) is the posterior's point mass, x0_hat (clipped where asked): no noise.

With variance="learned" the model returns 2C channels, [prediction | v], as guided-diffusion's and DiT's learned-sigma
networks do (`Pretrained.variance_model_fn`): the driver converts the first half to eps and passes v through
(`Solver.learned_variance`). guided-diffusion's loop ends with the step from index 0 to data, whose posterior is the
point mass x0_hat (alphas_cumprod_prev = 1, its noise masked, gaussian_diffusion.py:405-410): here the final step to
t = 0 of a grid with append_zero, so 250 published steps are the `respaced` grid of 250 times plus t = 0, 250 steps
and 250 model calls.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Solver, StepInputs, cast_like

if TYPE_CHECKING:
    from fastsamplers.samplers.base import Model
    from fastsamplers.schedules.processes import Process

VARIANCES = Registry.of_names("DDPM variance", ("small", "large", "learned"), ordered=True)


class AncestralCoefficients(NamedTuple):
    """Per step: the posterior mean's weights on x_s and on x0_hat, the log variances beta_tilde and beta, and whether
    the step ends at sigma = 0 (then it draws no noise)."""

    a: jax.Array
    b: jax.Array
    log_small: jax.Array
    log_large: jax.Array
    to_zero: jax.Array


@dataclasses.dataclass(frozen=True)
class DDPM(Solver):
    """DDPM's ancestral sampler; `variance` "small" (beta_tilde, DDPM's sigma^2 = beta_tilde), "large" (beta) or
    "learned" (from the model's second half of channels, see the module docstring); `clip_x0` > 0 clips x0_hat to
    [-clip_x0, clip_x0] before the posterior mean (guided-diffusion's clip_denoised, on by default in its
    image_sample.py with 1.0; DiT samples latents with clip_denoised=False, clip_x0 = 0)."""

    name = "ddpm"
    variance: str = "small"
    clip_x0: float = 0.0
    native = "eps"

    def check(self) -> None:
        VARIANCES.check(self.variance)
        if not (isinstance(self.clip_x0, (int, float)) and self.clip_x0 >= 0):
            raise ValueError(f"ddpm: clip_x0 must be a number >= 0 (0: no clipping), got {self.clip_x0!r}")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return ({}, dict(variance="large"))  # "learned" needs a model with a variance output: tests/test_ancestral.py

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # always: the method is its noise
        return True

    @property
    def learned_variance(self) -> bool:  # type: ignore[override]
        return self.variance == "learned"

    @property
    def order(self) -> int:
        return 1

    def coefficients(self, process: Process, ts: jax.Array) -> AncestralCoefficients:
        alpha, sigma = process.alpha(ts), process.sigma(ts)
        ratio = alpha[:-1] / alpha[1:]  # alpha_s / alpha_t
        var_st = -jnp.expm1(2 * (jnp.log(ratio) + jnp.log(sigma[1:]) - jnp.log(sigma[:-1]))) * sigma[:-1] ** 2
        a = ratio * sigma[1:] ** 2 / sigma[:-1] ** 2
        b = alpha[1:] * var_st / sigma[:-1] ** 2
        log_large = jnp.log(var_st)
        return AncestralCoefficients(a=a, b=b, log_small=log_large + 2 * (jnp.log(sigma[1:]) - jnp.log(sigma[:-1])),
                                     log_large=log_large, to_zero=sigma[1:] == 0)

    def step(self, model: Model, process: Process, x: jax.Array, state: Any,
             inp: StepInputs) -> tuple[jax.Array, Any]:
        coef: AncestralCoefficients = inp.coef
        out = model(x, inp.s)
        channels = x.shape[-1]
        eps = out[..., :channels] if self.learned_variance else out
        x0 = (x - process.sigma(inp.s) * eps) / process.alpha(inp.s)
        if self.clip_x0:
            x0 = jnp.clip(x0, -self.clip_x0, self.clip_x0)
        if self.variance == "learned":
            frac = (out[..., channels:] + 1.0) / 2.0
            log_var = frac * coef.log_large + (1.0 - frac) * coef.log_small
        else:
            log_var = coef.log_small if self.variance == "small" else coef.log_large
        std = jnp.where(coef.to_zero, 0.0, jnp.exp(0.5 * log_var))  # 0 * -inf in log_var there: not used
        x_t = coef.a * x + coef.b * x0 + std * inp.normal(x)
        return cast_like(x_t, x), state
