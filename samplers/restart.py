"""Restart sampling (Xu et al., NeurIPS 2023, "Restart Sampling for Improving Generative Processes"; reference sheet
section G1) around any deterministic solver.

The main process is the base solver on the main grid. Each restart interval (N, K, gamma_min, gamma_max), in EDM noise
levels gamma = sigma / alpha (the paper's t, the unit of its published settings), acts where the main process reaches
the main-grid point nearest to gamma_min (t_min below; the reference's `argmin |t_steps - t_min|`, in gamma). There it
repeats K times:

  1. a forward jump to t_max = t(gamma_max) with fresh noise xi ~ N(0, I) (sheet G1; `forward_jump`):
         x_max = (alpha_max / alpha_min) x_min + sqrt(sigma_max^2 - alpha_max^2 sigma_min^2 / alpha_min^2) S_noise xi;
     for any affine process x_t = alpha_t x0 + sigma_t eps this is the exact forward transition (derived): a Gaussian
     step x_t = a x_s + c xi maps the marginal N(alpha_s m, alpha_s^2 C + sigma_s^2 I) of every data point's
     component to N(alpha_t m, alpha_t^2 C + sigma_t^2 I) for every (m, C) iff a alpha_s = alpha_t and
     a^2 sigma_s^2 + c^2 = sigma_t^2, so p_{t_min} goes to p_{t_max} exactly (S_noise = 1). In EDM units
     (x_E = x / alpha) it is the reference's x_E + sqrt(gamma_max^2 - gamma_min^2) xi; it is computed in that form,
     alpha_max sqrt(gamma_max^2 - gamma_min^2), which has no cancellation;
  2. N - 1 steps of the base solver on an N-point grid from t_max back to t_min (EDM's rho = 7 grid in gamma by
     default, the reference's `get_steps`; any `schedules` grid by `grid`): 2K(N - 1) model calls for Heun.

NFE = base.nfe(num_steps) + sum over intervals of K (N - 1) base.stages, exact and static (`Restart.nfe`).

Structure. Every piece of the solve is a fresh run of the base solver, with its own `init` and its own coefficients:
the main grid is cut at the restart points (the piece starting at point b is the base on ts[b:], stopped at the next
restart point), and each restart run is the base on its own grid. A multistep base therefore restarts its history at
every piece: its history holds predictions along the trajectory it came from, and after a jump with fresh noise the
state lies on another trajectory (it reaches a new point at t_min, not the old one), so extrapolating the old
predictions would add an O(h) error to the next step (a first-order method where the base promised more); a fresh
start warms up again from order 1 (local error O(h^2)), as at t_max. Only the last main piece ends the sample: the
others, and every restart run, are cut from a longer solve (`StepInputs.last` false), so Heun takes its full
second-order step at their ends (the reference's Heun restarts likewise, to t_min > 0), and its final Euler step only
at the end of the main grid. The restart positions depend on the grid's values, so they are static structure,
resolved on the concrete grid before compute (`Solver.on_grid`: one compiled program per set of positions); the
segments are unrolled scans, the restart grids and S_noise traced leaves.

The jumps draw their noise from the solve's key (`StepInputs.normal`, stream 1, index = the jump's number), never
from a Brownian path (the K jumps of an interval are independent): per-sample keys give split-invariant samples.
The reference's restart_gamma (EDM churn inside the restart runs) is not applied: the base solver is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver, StepInputs, WrapsBase, step_inputs
from fastsamplers.samplers.pytrees import is_real, known
from fastsamplers.schedules.grids import GRIDS, get_timesteps

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process


class Interval(NamedTuple):
    """One restart interval: `steps` grid points N of each restart run (N - 1 steps), `repeats` K, and its ends
    `gamma_min` < `gamma_max` in EDM noise levels sigma / alpha (the paper's [N, K, t_min, t_max])."""

    steps: int
    repeats: int
    gamma_min: float
    gamma_max: float


class Preset(NamedTuple):
    """A published setting: the intervals and the main grid's steps (EDM Heun on EDM's rho = 7 grid)."""

    intervals: tuple[Interval, ...]
    num_steps: int


# The published settings (sheet G1): CIFAR-10 VP (NFE 35 + 8 = 43) and ImageNet-64 EDM (71 + 132 = 203, FID 1.41).
PRESETS = Registry("restart preset", {
    "cifar10_vp": Preset((Interval(3, 2, 0.06, 0.30),), 18),
    "imagenet64_edm": Preset((Interval(4, 1, 19.35, 40.79), Interval(4, 1, 1.09, 1.92), Interval(4, 5, 0.59, 1.09),
                              Interval(4, 5, 0.30, 0.59), Interval(6, 6, 0.06, 0.30)), 36),
})
# Grids that place their own ends cannot run from t_max to t_min.
_OWN_ENDS = ("list", "published", "file")


def forward_jump(process: Process, x: jax.Array, t_from: jax.Array, t_to: jax.Array, noise: jax.Array) -> jax.Array:
    """The exact forward transition of an affine process from t_from to t_to > t_from, driven by `noise` (module
    docstring): x_to = (alpha_to / alpha_from) x + alpha_to sqrt(gamma_to^2 - gamma_from^2) noise.

    Args:
      process: the `schedules.Process`.
      x: states at t_from.
      t_from, t_to: scalar times, t_to > t_from.
      noise: x's shape; standard normal for the exact transition (scaled by S_noise in Restart).

    Returns:
      The states at t_to, in x's dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from fastsamplers import schedules
        >>> p = schedules.get_process("edm")
        >>> float(forward_jump(p, jnp.zeros(()), 3.0, 5.0, jnp.ones(())))  # sqrt(5^2 - 3^2)
        4.0
    """
    alpha_from, alpha_to = process.alpha(t_from), process.alpha(t_to)
    gamma_from, gamma_to = process.gamma(t_from), process.gamma(t_to)
    std = alpha_to * jnp.sqrt(gamma_to**2 - gamma_from**2)
    return (alpha_to / alpha_from * x + std * noise).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Restart(WrapsBase, Solver):
    """Restart sampling around a deterministic base solver (module docstring). Build it with `samplers.restart` or
    `get_solver("restart", base=..., intervals=...)`.

    Fields: `base` (a traced child: its numeric options stay traced), `intervals` (static), `s_noise` (traced),
    `grid` and `grid_options` (the restart runs' grid); `points` and `segments` are filled by `on_grid` (the
    snapped main-grid index of each active interval, static, and its restart grid, traced).

    Order: `order` (like `native` and the grid rules, `WrapsBase`) is the base's, the order of every deterministic
    piece; with restarts the sampler is stochastic and has no pathwise order (the tests check its distribution). With
    every K = 0 it is its base solver, bit for bit.
    """

    base: Solver = dataclasses.field(kw_only=True)
    intervals: tuple[Interval, ...] = ()
    s_noise: float = 1.003
    grid: str = "edm"
    grid_options: tuple[tuple[str, Any], ...] = ()
    points: tuple[int, ...] = ()
    segments: tuple[Any, ...] = ()
    name = "restart"
    traced = ("base", "s_noise", "segments")
    switches = ("s_noise",)

    def check(self) -> None:
        super().check()
        base = self.base
        if not isinstance(base, Solver):
            raise ValueError(f"restart: base must be a samplers.Solver, got {type(base).__name__}")
        if isinstance(base, Restart) or base.stochastic or not base.static_nfe or base.predictions_per_call != 1:
            raise ValueError(f"restart runs on a deterministic fixed-step solver (e.g. heun, dpmpp_2m, deis_tab), "
                             f"got {base.name!r}")
        if base.denoise_to_zero:
            raise ValueError("give denoise_to_zero to the restart wrapper, not to its base (samplers.restart moves it)")
        if not isinstance(self.intervals, tuple) or not self.intervals:
            raise ValueError(f"restart: intervals must be a non-empty tuple of (N, K, gamma_min, gamma_max), got "
                             f"{self.intervals!r}")
        for k, interval in enumerate(self.intervals):
            _check_interval(k, interval)
        value = known(self.s_noise)
        if value is not None and not (is_real(value) and np.all(np.isfinite(value)) and np.all(value >= 0)):
            raise ValueError(f"restart: s_noise must be a finite number >= 0, got {self.s_noise!r}")
        GRIDS.check(self.grid)
        if self.grid in _OWN_ENDS:
            raise ValueError(f"restart: grid {self.grid!r} places its own ends; use a grid that runs from t_max to "
                             f"t_min ({', '.join(n for n in GRIDS.valid() if n not in _OWN_ENDS)})")
        GRIDS.check_options(self.grid, dict(self.grid_options))

    @property
    def active(self) -> tuple[int, ...]:
        """The indices of the intervals that restart (K > 0); the others are no-ops."""
        return tuple(k for k, interval in enumerate(self.intervals) if interval.repeats > 0)

    @property
    def stochastic(self) -> bool:
        return bool(self.active) and super().stochastic

    @property
    def stages(self) -> int:
        return self.base.stages

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return ({}, dict(base="dpmpp_2m"))

    def spec(self) -> dict[str, Any]:
        """{"name": "restart", "options": ...}: the base as its own spec, the intervals as tuples."""
        return {"name": self.name, "options": {
            "base": self.base.spec(), "intervals": tuple(tuple(i) for i in self.intervals), "s_noise": self.s_noise,
            "grid": self.grid, "grid_options": self.grid_options, "denoise_to_zero": self.denoise_to_zero}}

    def loop_nfe(self, num_steps: int) -> int:
        # Restart runs never end the sample: every step costs `stages` (no final-step rule).
        return self.base.loop_nfe(num_steps) + sum(
            self.intervals[k].repeats * (self.intervals[k].steps - 1) * self.base.stages for k in self.active)

    def check_times(self, process: Process, ts: HostArrayLike) -> None:
        self.base.check_times(process, ts)
        self._plan(process, np.asarray(ts, np.float64))

    def on_grid(self, process: Process, ts: np.ndarray) -> Restart:
        """Snap each active interval's gamma_min to the nearest point of the main grid; build its restart grid."""
        if not self.active:
            return self
        points, segments = self._plan(process, np.asarray(ts, np.float64))
        return dataclasses.replace(self, points=points, segments=segments)

    def _plan(self, process, ts):
        """(points, segments) of the active intervals on the concrete grid ts; a ValueError names the first problem."""
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            gamma = np.asarray(process.gamma(ts), np.float64)
            sigma = np.asarray(process.sigma(ts), np.float64)
        points, segments = [], []
        for k in self.active:
            interval = self.intervals[k]
            point = int(np.argmin(np.abs(gamma - interval.gamma_min)))
            where = (f"restart interval {k} {tuple(interval)}: gamma_min snaps to main-grid point {point} "
                     f"(t = {ts[point]:.6g}, gamma = {gamma[point]:.6g})")
            if point == 0:
                raise ValueError(f"{where}, the start of the grid: nothing has been sampled there to restart from")
            if sigma[point] == 0:
                raise ValueError(f"{where}, where sigma = 0: a restart run cannot end at the data; end ts at t > 0")
            if not gamma[point] < interval.gamma_max:
                raise ValueError(f"{where}, not below gamma_max = {interval.gamma_max}")
            if point in points:
                raise ValueError(f"{where}, as does interval {self.active[points.index(point)]}: give intervals "
                                 f"that snap to distinct points (or a finer main grid)")
            with jax.enable_x64(True), jax.ensure_compile_time_eval():
                t_max = float(process.t_of_gamma(np.float64(interval.gamma_max)))
            if not (math.isfinite(t_max) and t_max <= process.t_max):
                raise ValueError(f"restart interval {k}: gamma_max = {interval.gamma_max} lies beyond the noise level "
                                 f"of process {process.name!r} at its t_max = {process.t_max}")
            segment = np.array(get_timesteps(self.grid, process, interval.steps - 1, t_min=float(ts[point]),
                                             t_max=t_max, **dict(self.grid_options)))
            segments.append(segment)
            points.append(point)
        return tuple(points), tuple(segments)

    def step(self, model: Model, process: Process, x: jax.Array, state: Any, inp: StepInputs) -> tuple[jax.Array, Any]:
        raise NotImplementedError("restart has no single step: its solve is pieces of the base solver and restart "
                                  "runs between them (Restart.integrate)")

    def integrate(self, model: Model, process: Process, x: jax.Array, ts: jax.Array, save_trajectory: bool = False,
                  noise: Any = None) -> tuple[jax.Array, Any, jax.Array | None]:
        if not self.active:  # K = 0 everywhere: the base solver itself
            return self.base.integrate(model, process, x, ts, save_trajectory=save_trajectory, noise=noise)
        if save_trajectory:
            raise NotImplementedError("restart does not save a trajectory: its path revisits times (each restart run "
                                      "goes back up to t_max), which the grid's (num_steps + 1) states cannot show")
        if not self.points:
            raise ValueError("restart snaps its intervals to the main grid's points, so it runs on a concrete grid: "
                             "call samplers.sample with ts a concrete array (a constant under jit), not a traced one")
        num_steps = ts.shape[0] - 1
        jump_index = np.cumsum([0] + [self.intervals[k].repeats for k in self.active])  # the jumps' noise indices
        order = sorted(range(len(self.points)), key=lambda j: self.points[j])
        start = 0
        for j in order + [None]:  # the main pieces, each followed by its restarts
            end = num_steps if j is None else self.points[j]
            if end > start:
                x = self._run(model, process, x, ts[start:], end - start, noise, ends_sample=True)
            start = end
            if j is None:
                break
            grid = self.segments[j]
            for repeat in range(self.intervals[self.active[j]].repeats):
                inp = StepInputs(i=jnp.asarray(jump_index[j] + repeat), s=grid[0], t=grid[-1], last=jnp.bool_(False),
                                 coef=(), noise=noise)
                z = inp.normal(x, stream=1)  # from the key, never a Brownian path: the repeats are independent
                x = forward_jump(process, x, ts[end], grid[0], self.s_noise * z)
                x = self._run(model, process, x, grid, grid.shape[0] - 1, noise, ends_sample=False)
        return x, self.loop_nfe(num_steps), None

    def _run(self, model, process, x, grid, count, noise, ends_sample):
        """The first `count` steps of a fresh base solve on `grid` (its own init and coefficients); `ends_sample`
        false makes every step an inner one (`StepInputs.last` false)."""
        inputs = jax.tree.map(lambda a: a[:count], step_inputs(self.base, process, grid))
        if not ends_sample:
            inputs = inputs._replace(last=jnp.zeros_like(inputs.last))

        def body(carry, inp):
            return self.base.step(model, process, *carry, inp._replace(noise=noise)), None

        (x, _), _ = jax.lax.scan(body, (x, self.base.init(x)), inputs)
        return x


def _check_interval(k, interval):
    ok = isinstance(interval, (tuple, list)) and len(interval) == 4
    if ok:
        steps, repeats, g_min, g_max = interval
        ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (steps, repeats))
        reals = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in (g_min, g_max))
        ok = ints and reals and steps >= 2 and repeats >= 0 and math.isfinite(g_min) and math.isfinite(g_max) and (
            0 < g_min < g_max)
    if not ok:
        raise ValueError(f"restart interval {k} must be (N, K, gamma_min, gamma_max) with integers N >= 2, K >= 0 "
                         f"and noise levels 0 < gamma_min < gamma_max, got {interval!r}")


def as_intervals(intervals: str | Any) -> tuple[Interval, ...]:
    """A preset's intervals (`PRESETS`) or the given (N, K, gamma_min, gamma_max) rows, checked, as `Interval`s."""
    if isinstance(intervals, str):
        return PRESETS.lookup(intervals).intervals
    try:
        rows = tuple(intervals)
    except TypeError:
        rows = None
    if not rows:
        raise ValueError(f"restart: intervals must be a preset ({', '.join(PRESETS.valid())}) or a non-empty sequence "
                         f"of (N, K, gamma_min, gamma_max), got {intervals!r}")
    for k, row in enumerate(rows):
        _check_interval(k, tuple(row) if isinstance(row, (tuple, list)) else row)
    return tuple(Interval(int(n), int(rep), float(lo), float(hi)) for n, rep, lo, hi in rows)


def restart(base: Solver, intervals: str | Any = "cifar10_vp", s_noise: float = 1.003, grid: str = "edm",
            grid_options: dict[str, Any] | tuple | None = None) -> Restart:
    """Restart sampling (Xu et al. 2023) around a deterministic solver.

    Args:
      base: the deterministic fixed-step solver of the main process and the restart runs (EDM's Heun as published).
      intervals: a preset name (`PRESETS`: "cifar10_vp", "imagenet64_edm") or rows (N, K, gamma_min, gamma_max):
        N grid points (N - 1 base steps) per restart run, K runs, the ends as EDM noise levels sigma / alpha.
      s_noise: the jumps' noise factor S_noise (1.003 as published; 1 is the exact forward transition); traced.
      grid: the restart runs' `schedules` grid from t_max to t_min ("edm", rho = 7, as published).
      grid_options: its options (e.g. {"rho": 5.0}).

    Returns:
      The `Restart` solver; the base's denoise_to_zero moves to it. Run it with `samplers.sample(..., key=key)`.

    Example:
        >>> from fastsamplers import samplers
        >>> solver = samplers.restart(samplers.get_solver("heun"), "cifar10_vp")
        >>> solver.nfe(18)  # 35 for the Heun main process, 2 K (N - 1) = 8 for the restarts
        43
    """
    moved = getattr(base, "denoise_to_zero", False)
    if moved:
        base = dataclasses.replace(base, denoise_to_zero=False)
    options = tuple(sorted(dict(grid_options or {}).items()))
    return Restart(base=base, intervals=as_intervals(intervals), s_noise=s_noise, grid=grid, grid_options=options,
                   denoise_to_zero=moved)
