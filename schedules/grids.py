"""Time grids: which t's a sampler visits, from t_max (noise) down to t_min (data).

Every grid is returned by `get_timesteps` as an array of num_steps + 1 strictly decreasing t's whose first and last
entries are exactly t_max and t_min. Grids are computed on the host in float64 and returned in the default float
type. A grid that could only be approximated (float32 cannot separate two neighbouring t's) is an error, not a
silently repeated step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import HostArrayLike
from fastsamplers.schedules import published
from fastsamplers.schedules.files import load_schedule
from fastsamplers.schedules.processes import Process, as_float, get_process

GRIDS = Registry("time grid", reserved=("process", "num_steps", "t_min", "t_max"))
# What the numbers of a "list" grid are: t's, noise levels gamma = sigma / alpha, or rectified-flow sigmas.
SPACES = Registry.of_names("space", ("t", "gamma", "flow"), unknown="unknown space {name!r}; valid: {valid}")
_grid = GRIDS.register


def _gamma(process, t):
    return np.asarray(process.gamma(np.float64(t)) if np.ndim(t) == 0 else process.gamma(np.asarray(t)), np.float64)


def _t_of_gamma(process, gamma):
    return np.asarray(process.t_of_gamma(np.asarray(gamma, np.float64)), np.float64)


@_grid("uniform")
def uniform(process: Process, num_steps: int, t_min: float, t_max: float) -> np.ndarray:
    """Uniform in t."""
    return np.linspace(t_max, t_min, num_steps + 1)


@_grid("respaced")
def respaced(process: Process, num_steps: int, t_min: float, t_max: float) -> np.ndarray:
    """The evenly respaced integer steps of a discrete-time process (`vp_discrete`, N steps, index n at
    t = (n + 1) / N): guided-diffusion's timestep_respacing "K" with one section (respace.py:41-58: index
    round(i (size - 1) / (K - 1)) from the lowest index up, the stride accumulated in floating point, Python's
    round), the grid of ADM's and DiT's published 250-step samplers; K = num_steps + 1 indices between those of
    t_min and t_max."""
    size = len(getattr(process, "alphas_cumprod", ()))
    if not size:
        raise ValueError(f"the respaced grid takes the integer steps of a discrete-time process (vp_discrete); "
                         f"{process.name!r} has none")
    low, high = (int(round(float(process.discrete_index(t)))) for t in (t_min, t_max))
    if num_steps > high - low:
        raise ValueError(f"the respaced grid has {high - low + 1} integer steps between t_min and t_max, fewer than "
                         f"the {num_steps + 1} times asked for")
    stride, position, index = (high - low) / num_steps, 0.0, []
    for _ in range(num_steps + 1):
        index.append(low + round(position))
        position += stride
    return (np.asarray(index[::-1], np.float64) + 1.0) / size


@_grid("power")
def power(process: Process, num_steps: int, t_min: float, t_max: float, exponent: float = 2.0) -> np.ndarray:
    """t_i = (t_max^(1/k) + i/N (t_min^(1/k) - t_max^(1/k)))^k: DEIS's "t" grid of order k."""
    if exponent <= 0:
        raise ValueError(f"exponent must be positive, got {exponent}")
    u = np.linspace(t_max ** (1.0 / exponent), t_min ** (1.0 / exponent), num_steps + 1)
    return u**exponent


@_grid("quadratic")
def quadratic(process: Process, num_steps: int, t_min: float, t_max: float) -> np.ndarray:
    """The power grid with k = 2 (DDIM's and DEIS's quadratic grid)."""
    return power(process, num_steps, t_min, t_max, exponent=2.0)


@_grid("logsnr")
def logsnr(process: Process, num_steps: int, t_min: float, t_max: float) -> np.ndarray:
    """Uniform in log-SNR (equivalently in log gamma); DPM-Solver's "logSNR" grid."""
    lam = np.linspace(float(process.log_snr(t_max)), float(process.log_snr(t_min)), num_steps + 1)
    if not np.all(np.isfinite(lam)):
        raise ValueError(
            f"the logsnr grid needs a finite log-SNR at both ends; {process.name} has log_snr(t_max={t_max}) = "
            f"{lam[0]} and log_snr(t_min={t_min}) = {lam[-1]}"
        )
    return np.asarray(process.t_of_log_snr(lam), np.float64)


@_grid("edm")
def edm(process: Process, num_steps: int, t_min: float, t_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM's rho grid in gamma = sigma / alpha (Karras et al. 2022, eq. 5), mapped to t."""
    g_max, g_min = float(_gamma(process, t_max)), float(_gamma(process, t_min))
    if not math.isfinite(g_max):
        raise ValueError(f"the edm grid needs a finite gamma at t_max={t_max} for {process.name}")
    g = np.linspace(g_max ** (1.0 / rho), g_min ** (1.0 / rho), num_steps + 1) ** rho
    return _t_of_gamma(process, g)


@_grid("vp_time")
def vp_time(process: Process, num_steps: int, t_min: float, t_max: float, exponent: float = 1.0,
            eps: float = 1e-3) -> np.ndarray:
    """The power grid in the time s of the linear-beta VP SDE whose noise level sigma_vp(s) / alpha_vp(s) =
    sqrt(exp(beta_d s^2 / 2 + beta_min s) - 1) runs from gamma(t_max) at s = 1 to gamma(t_min) at s = eps, mapped
    to t through gamma: DPM-Solver's "time_uniform" grid (exponent 1) and "time_quadratic" (exponent 2) on any
    process, as zju-pi/diff-sampler's `get_schedule(schedule_type="time_uniform", schedule_rho=exponent)` (its DEIS
    rows use exponent 2) computes it for EDM's sigma: beta_d and beta_min solve the two end conditions,
    s_i = (1 + i/N (eps^(1/k) - 1))^k."""
    if exponent <= 0 or not 0.0 < eps < 1.0:
        raise ValueError(f"vp_time needs exponent > 0 and 0 < eps < 1, got exponent={exponent}, eps={eps}")
    g_max, g_min = float(_gamma(process, t_max)), float(_gamma(process, t_min))
    if not math.isfinite(g_max) or g_min <= 0.0:
        raise ValueError(f"the vp_time grid needs a finite gamma at t_max and a positive one at t_min; {process.name}"
                         f" has gamma {g_max} at t_max={t_max} and {g_min} at t_min={t_min}")
    big, small = math.log1p(g_max**2), math.log1p(g_min**2)  # beta_d / 2 + beta_min, and at s = eps / eps
    beta_d = 2.0 * (small / eps - big) / (eps - 1.0)
    beta_min = big - 0.5 * beta_d
    if min(beta_min + eps * beta_d, beta_min + beta_d) <= 0.0:  # d/ds of the exponent, at both ends (it is linear)
        raise ValueError(f"vp_time: no increasing linear-beta VP SDE runs from gamma {g_min:.6g} at s = {eps} to "
                         f"{g_max:.6g} at s = 1 (the ends are too close); use a wider range or a smaller eps")
    s = (1.0 + np.arange(num_steps + 1) / num_steps * (eps ** (1.0 / exponent) - 1.0)) ** exponent
    return _t_of_gamma(process, np.sqrt(np.expm1(0.5 * beta_d * s**2 + beta_min * s)))


@_grid("flow_shift")
def flow_shift(process: Process, num_steps: int, t_min: float, t_max: float, shift: float = 3.0) -> np.ndarray:
    """SD3 / FLUX shifted grid: uniform u in [1, 0] -> s u / (1 + (s - 1) u), placed between the rectified-flow
    times of t_max and t_min. Rectified-flow time is r = gamma / (1 + gamma), so on the `ot` process r = t and this
    is exactly the published shift; on other processes it is the same grid in SNR."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = np.linspace(1.0, 0.0, num_steps + 1)
    u = shift * u / (1.0 + (shift - 1.0) * u)
    r_max, r_min = (_flow_time(process, t) for t in (t_max, t_min))
    r = r_min + u * (r_max - r_min)
    with np.errstate(divide="ignore"):
        return _t_of_gamma(process, r / (1.0 - r))


def _flow_time(process, t):
    gamma = float(_gamma(process, t))
    return 1.0 if math.isinf(gamma) else gamma / (1.0 + gamma)


def interpolate_log_linear(values: HostArrayLike, num_points: int) -> np.ndarray:
    """Resample a decreasing list of noise levels to `num_points` entries, log-linearly against the normalised
    index (the rule of Align Your Steps and OSS). A final exact 0 is kept as the final entry.

    Args:
      values: decreasing noise levels (gamma, EDM sigma or flow sigma), optionally ending at exactly 0.
      num_points: the length wanted.

    Returns:
      A float64 array of num_points levels with the same first (and zero last) entry.
    """
    values = np.asarray(values, np.float64)
    if len(values) == num_points:
        return values
    zero_end = values[-1] == 0.0
    core = values[:-1] if zero_end else values
    n_core = num_points - 1 if zero_end else num_points
    if len(core) < 2 or n_core < 2:
        raise ValueError(f"need at least 2 nonzero levels to interpolate to {num_points} points, got {values}")
    x_old = np.linspace(0.0, 1.0, len(core))
    x_new = np.linspace(0.0, 1.0, n_core)
    out = np.exp(np.interp(x_new, x_old, np.log(core)))
    return np.concatenate([out, [0.0]]) if zero_end else out


@_grid("list")
def from_list(process: Process, num_steps: int, t_min: float, t_max: float, values: HostArrayLike | None = None,
              space: str = "t") -> np.ndarray:
    """A given list of t's (space="t") or of noise levels gamma = sigma/alpha (space="gamma"; EDM/AYS sigmas, or
    rectified-flow sigmas with space="flow"). Resampled log-linearly in gamma when its length is not num_steps + 1."""
    if values is None:
        raise ValueError("the 'list' grid needs values=[...]")
    SPACES.check(space)
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"values must be a 1-D list of at least 2 entries, got shape {values.shape}")
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"values must be strictly decreasing (noise to data), got {values.tolist()}")
    if space == "t":
        gamma = _gamma(process, values)
    elif space == "gamma":
        gamma = values
    else:  # "flow"
        if np.any(values >= 1) or np.any(values < 0):
            raise ValueError("rectified-flow sigmas must lie in [0, 1)")
        gamma = values / (1.0 - values)
    if len(values) == num_steps + 1 and space == "t":
        return values
    return _t_of_gamma(process, interpolate_log_linear(gamma, num_steps + 1))


@_grid("published")
def from_published(process: Process, num_steps: int, t_min: float, t_max: float,
                   schedule: str | None = None) -> np.ndarray:
    """A published list from `schedules.published.LISTS` (option schedule=...), resampled to num_steps."""
    entry = published.LISTS.lookup(schedule)
    return from_list(process, num_steps, t_min, t_max, values=entry["values"], space=entry["space"])


@_grid("file")
def from_file(process: Process, num_steps: int, t_min: float, t_max: float, path: str | None = None) -> np.ndarray:
    """A schedule file (`schedules.files`: JSON with "ts" and provenance), resampled to num_steps."""
    if path is None:
        raise ValueError("the 'file' grid needs path=...")
    ts, record = load_schedule(path)
    if record.get("process", process.name) not in (process.name, "rectified_flow" if process.name == "ot" else None):
        raise ValueError(f"schedule file {path} was made for process {record['process']!r}, not {process.name!r}")
    return from_list(process, num_steps, t_min, t_max, values=ts, space="t")


_OWN_ENDPOINTS = {"list", "published", "file"}


def get_timesteps(name: str, process: Process | str, num_steps: int, *, t_min: float | None = None,
                  t_max: float | None = None, append_zero: bool = False, **options: Any) -> jax.Array:
    """The time grid `name` for `process`: an array of num_steps + 1 strictly decreasing t's, t_max .. t_min.

    Args:
      name: one of `GRIDS` ("uniform", "power", "quadratic", "logsnr", "edm", "vp_time", "flow_shift", "respaced",
        "list", "published", "file").
      process: a `Process` or its registered name.
      num_steps: number of steps (>= 1).
      t_min, t_max: the ends (default: the process's). t_min = 0 is allowed where the process reaches sigma = 0.
      append_zero: EDM's convention: num_steps points from t_max to t_min, then the clean-data time t = 0.
      **options: the grid's own options (exponent, rho, shift, values, space, schedule, path).

    Returns:
      A 1-D array of the default float type.

    Example:
        >>> from fastsamplers import schedules
        >>> ts = schedules.get_timesteps("logsnr", "vp_linear", num_steps=10)
        >>> ts.shape
        (11,)
    """
    process = get_process(process) if isinstance(process, str) else process
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process or a registered name, got {type(process).__name__}")
    GRIDS.check_options(name, options)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    t_min = process.t_min if t_min is None else float(t_min)
    t_max = process.t_max if t_max is None else float(t_max)
    if not 0.0 <= t_min < t_max:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if t_min == 0.0 and process.t_zero is None:
        raise ValueError(f"process {process.name!r} never reaches sigma = 0, so t_min = 0 is not a valid end")
    # Grids are host-side arithmetic: float64, evaluated now even inside an outer jit; returned in the default float.
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        ts = _compute(name, process, num_steps, t_min, t_max, append_zero, options)
    with jax.ensure_compile_time_eval():  # a constant, also under an outer jit
        out = as_float(ts)
    if out.shape != (num_steps + 1,) or not np.all(np.diff(np.asarray(out)) < 0):
        raise ValueError(
            f"grid {name!r} with {num_steps} steps on [{t_min}, {t_max}] is not strictly decreasing in "
            f"{out.dtype} (too many steps for the precision, or a degenerate option): {np.asarray(out)}"
        )
    return out


def _compute(name, process, num_steps, t_min, t_max, append_zero, options):
    if append_zero:
        if process.t_zero is None:
            raise ValueError(f"append_zero: process {process.name!r} never reaches sigma = 0")
        if num_steps < 2:
            raise ValueError("append_zero needs num_steps >= 2 (one grid step plus the final step to 0)")
        ts = np.array(GRIDS[name](process, num_steps - 1, t_min, t_max, **options), np.float64)
        ts = np.concatenate([ts, [process.t_zero]])
    else:
        ts = np.array(GRIDS[name](process, num_steps, t_min, t_max, **options), np.float64)
    if name not in _OWN_ENDPOINTS:
        ts[0] = t_max
        ts[-1 - int(append_zero)] = t_min
    return ts
