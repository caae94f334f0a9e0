"""Noise processes: affine Gaussian paths x_t = alpha(t) * x0 + sigma(t) * eps.

One time convention for the whole project: t = 0 is data, t = t_max is noise, and samplers integrate from
ts[0] = t_max down to ts[-1] = t_min. Flow-matching papers that put noise at t = 0 (Lipman et al. 2022) are mapped
by t_here = 1 - t_paper; the OT path below is already written in our convention.

Every process offers alpha, sigma, log_snr = log(alpha / sigma), its inverse t_of_log_snr, gamma = sigma / alpha
(EDM's sigma, DEIS's rho) and its inverse, and the time derivatives of alpha and sigma. Schedule arithmetic runs in
the default float type (float32, or float64 when x64 is on), whatever the model's dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, DTypeLike, Shape


def as_float(t: ArrayLike) -> jax.Array:
    """`t` as an array of JAX's default float type (float64 under x64, float32 otherwise)."""
    return jnp.asarray(t, dtype=jnp.result_type(float))


@dataclasses.dataclass(frozen=True)
class Process:
    """Base class. Subclasses define alpha, sigma, log_snr and t_of_log_snr; the rest follows."""

    name = "process"
    t_min: float = 1e-3
    t_max: float = 1.0

    def alpha(self, t: ArrayLike) -> jax.Array:
        """The signal scale alpha(t), elementwise (1 at t = 0 for every process here)."""
        raise NotImplementedError(f"{type(self).__name__} does not define alpha")

    def sigma(self, t: ArrayLike) -> jax.Array:
        """The noise scale sigma(t), elementwise (0 at clean data)."""
        raise NotImplementedError(f"{type(self).__name__} does not define sigma")

    def log_snr(self, t: ArrayLike) -> jax.Array:
        """lambda(t) = log(alpha / sigma), strictly decreasing in t."""
        raise NotImplementedError(f"{type(self).__name__} does not define log_snr")

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        """The inverse of `log_snr`."""
        raise NotImplementedError(f"{type(self).__name__} does not define t_of_log_snr")

    @property
    def t_zero(self) -> float | None:
        """The time where sigma = 0 (clean data), or None when the process never reaches it."""
        return 0.0

    def gamma(self, t: ArrayLike) -> jax.Array:
        """gamma = sigma / alpha, the noise level of y = x / alpha (0 at clean data, inf where alpha = 0)."""
        return jnp.exp(-self.log_snr(t))

    def t_of_gamma(self, gamma: ArrayLike) -> jax.Array:
        """The inverse of `gamma`."""
        return self.t_of_log_snr(-jnp.log(as_float(gamma)))

    def d_alpha(self, t: ArrayLike) -> jax.Array:
        """d alpha / dt, elementwise."""
        t = as_float(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t: ArrayLike) -> jax.Array:
        """d sigma / dt, elementwise."""
        t = as_float(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def marginal(self, key: jax.Array, x0: jax.Array, t: ArrayLike) -> jax.Array:
        """A draw of x_t given clean data x0 (same shape); t broadcasts against x0."""
        t = as_float(t)
        eps = jax.random.normal(key, x0.shape, dtype=x0.dtype)
        return self.alpha(t) * x0 + self.sigma(t) * eps

    def prior(self, key: jax.Array, shape: Shape, t: ArrayLike | None = None,
              dtype: DTypeLike | None = None) -> jax.Array:
        """Pure noise at time t (default t_max): sigma(t) * N(0, I), the usual sampler start."""
        t = self.t_max if t is None else t
        dtype = dtype or jnp.result_type(float)
        return (self.sigma(as_float(t)) * jax.random.normal(key, shape)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class _VP(Process):
    """Variance preserving: alpha^2 + sigma^2 = 1. Subclasses give log_alpha and its inverse."""

    def log_alpha(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def t_of_log_alpha(self, log_alpha: jax.Array) -> jax.Array:
        raise NotImplementedError

    def alpha(self, t: ArrayLike) -> jax.Array:
        return jnp.exp(self.log_alpha(as_float(t)))

    def sigma(self, t: ArrayLike) -> jax.Array:
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(as_float(t))))

    def log_snr(self, t: ArrayLike) -> jax.Array:
        log_alpha = self.log_alpha(as_float(t))
        return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        # alpha^2 = sigmoid(2 lam)  =>  log alpha = -softplus(-2 lam) / 2
        return self.t_of_log_alpha(-0.5 * jax.nn.softplus(-2.0 * as_float(lam)))


@dataclasses.dataclass(frozen=True)
class VPLinear(_VP):
    """VP SDE with beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021; DEIS; DPM-Solver)."""

    name = "vp_linear"
    beta_min: float = 0.1
    beta_max: float = 20.0

    def log_alpha(self, t: jax.Array) -> jax.Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_log_alpha(self, log_alpha: jax.Array) -> jax.Array:
        # Solve (b1 - b0)/2 t^2 + b0 t = L with L = -2 log alpha, in the cancellation-free form.
        big_l = -2.0 * log_alpha
        b0, db = self.beta_min, self.beta_max - self.beta_min
        return 2.0 * big_l / (b0 + jnp.sqrt(b0**2 + 2.0 * db * big_l))


@dataclasses.dataclass(frozen=True)
class VPCosine(_VP):
    """Cosine schedule (Nichol & Dhariwal 2021). t_max = 0.9946 as in DPM-Solver keeps alpha away from 0."""

    name = "vp_cosine"
    t_max: float = 0.9946
    s: float = 0.008

    def _angle(self, t):
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def log_alpha(self, t: jax.Array) -> jax.Array:
        return jnp.log(jnp.cos(self._angle(t))) - math.log(math.cos(self._angle(0.0)))

    def t_of_log_alpha(self, log_alpha: jax.Array) -> jax.Array:
        angle = jnp.arccos(jnp.exp(log_alpha + math.log(math.cos(self._angle(0.0)))))
        return 2.0 * (1.0 + self.s) / math.pi * angle - self.s


def ddpm_alphas_cumprod(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The DDPM (Ho et al. 2020) linear-beta table of alphas_cumprod."""
    betas = np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True)
class VPDiscrete(_VP):
    """VP process of a discrete-time checkpoint, from its `alphas_cumprod` table.

    Discrete index n = 0..N-1 sits at t = (n + 1) / N (DPM-Solver's convention); log alpha is interpolated piecewise
    linearly in t, with log alpha(0) = 0 added so that t = 0 is clean data. `discrete_index(t)` gives the model's
    (fractional) timestep input.
    """

    name = "vp_discrete"
    alphas_cumprod: tuple[float, ...] = tuple(ddpm_alphas_cumprod().tolist())
    t_min: float = 1e-3
    t_max: float = 1.0

    def __post_init__(self) -> None:
        table = np.asarray(self.alphas_cumprod, dtype=np.float64)
        if table.ndim != 1 or table.size < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D table of at least 2 values, got shape {table.shape}")
        if not (np.all(table > 0) and np.all(table < 1) and np.all(np.diff(table) < 0)):
            raise ValueError("alphas_cumprod must lie in (0, 1) and strictly decrease")
        object.__setattr__(self, "alphas_cumprod", tuple(float(a) for a in table))
        if self.t_min == 1e-3:  # default: the first discrete time
            object.__setattr__(self, "t_min", 1.0 / table.size)

    def _tables(self) -> tuple[jax.Array, jax.Array]:
        table = np.asarray(self.alphas_cumprod, dtype=np.float64)
        t_nodes = np.concatenate([[0.0], np.arange(1, table.size + 1) / table.size])
        log_alpha_nodes = np.concatenate([[0.0], 0.5 * np.log(table)])
        return as_float(t_nodes), as_float(log_alpha_nodes)

    def log_alpha(self, t: jax.Array) -> jax.Array:
        t_nodes, log_alpha_nodes = self._tables()
        return jnp.interp(t, t_nodes, log_alpha_nodes)

    def t_of_log_alpha(self, log_alpha: jax.Array) -> jax.Array:
        t_nodes, log_alpha_nodes = self._tables()
        return jnp.interp(log_alpha, log_alpha_nodes[::-1], t_nodes[::-1])

    def discrete_index(self, t: ArrayLike) -> jax.Array:
        return as_float(t) * len(self.alphas_cumprod) - 1.0


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance exploding: alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021)."""

    name = "ve"
    t_min: float = 1e-5
    sigma_min: float = 0.01
    sigma_max: float = 50.0

    @property
    def t_zero(self) -> float | None:
        return None

    def alpha(self, t: ArrayLike) -> jax.Array:
        return jnp.ones_like(as_float(t))

    def sigma(self, t: ArrayLike) -> jax.Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** as_float(t)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        return -(math.log(self.sigma_min) + as_float(t) * math.log(self.sigma_max / self.sigma_min))

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        return (-as_float(lam) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, sigma = t, so t is EDM's sigma and gamma = t."""

    name = "edm"
    t_min: float = 0.002
    t_max: float = 80.0

    def alpha(self, t: ArrayLike) -> jax.Array:
        return jnp.ones_like(as_float(t))

    def sigma(self, t: ArrayLike) -> jax.Array:
        return as_float(t)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        return -jnp.log(as_float(t))

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        return jnp.exp(-as_float(lam))


@dataclasses.dataclass(frozen=True)
class OT(Process):
    """OT / rectified-flow path: alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t (Lipman et al. 2022, in our
    convention). At t = 1 alpha = 0 and the log-SNR is -inf, so the default t_max is 0.999; velocity-space solvers
    fed a velocity model may start at t = 1 exactly."""

    name = "ot"
    t_max: float = 0.999
    sigma_min: float = 0.0

    @property
    def t_zero(self) -> float | None:
        return 0.0 if self.sigma_min == 0.0 else None

    def alpha(self, t: ArrayLike) -> jax.Array:
        return 1.0 - as_float(t)

    def sigma(self, t: ArrayLike) -> jax.Array:
        return self.sigma_min + (1.0 - self.sigma_min) * as_float(t)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        t = as_float(t)
        return jnp.log1p(-t) - jnp.log(self.sigma(t))

    def t_of_log_snr(self, lam: ArrayLike) -> jax.Array:
        gamma = jnp.exp(-as_float(lam))
        # gamma (1 - t) = sigma_min + (1 - sigma_min) t
        return (gamma - self.sigma_min) / (gamma + 1.0 - self.sigma_min)


PROCESSES = Registry("process", {cls.name: cls for cls in (VPLinear, VPCosine, VPDiscrete, VE, EDM, OT)})
PROCESSES["rectified_flow"] = OT


def get_process(name: str | Process, **options: Any) -> Process:
    """The process registered under `name`, with keyword options (e.g. `beta_max`, `sigma_min`, `t_min`).

    Args:
      name: a key of `PROCESSES`, or a `Process` (returned as it is).
      **options: the process's dataclass fields.

    Returns:
      The process, an immutable hashable `Process`.

    Example:
        >>> process = get_process("vp_linear")
        >>> float(process.alpha(0.0))
        1.0
    """
    if isinstance(name, Process):
        return name
    process = PROCESSES.build(name, **options)
    if not 0.0 <= process.t_min < process.t_max:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={process.t_min}, t_max={process.t_max}")
    return process
