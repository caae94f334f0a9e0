"""Inference-time scaling for flows (Kim et al. 2025, arXiv 2503.19385): a flow's SDE twin, and reward-guided search
on a total budget of model calls (best-of-N, sequential Monte Carlo, rollover budget forcing).

**The SDE twin** (reference sheet B, Prop. 1). A velocity model u(x, t) = dx/dt of any affine process (alpha, sigma
from `schedules`) has the score S = grad log p_t = (alpha u - alpha' x) / (sigma (alpha' sigma - alpha sigma'))
(`models.predictions`: the velocity and the score are both exact functions of (x0, eps)); for the linear
interpolant S = -(x + (1 - t) u) / t. For any diffusion coefficient g(t) >= 0 the reverse-time SDE

    x_{t - D} = x_t + [-u + (g^2 / 2) S] D + g sqrt(D) xi,        D > 0, xi ~ N(0, I)

has the ODE's marginals (its Fokker-Planck equation is the continuity equation of u plus g^2/2 times
div(p S - grad p) = 0). `FlowSDE` is that step (Euler-Maruyama, g at the step's start) as a `samplers.Solver`, so
`samplers.sample` runs it like any stochastic solver; g is chosen by name in `DIFFUSIONS` ("square": norm t^2,
RBF's default with norm 3; "constant": norm; "sde": norm times the process's own reverse-SDE g, g^2 =
-2 sigma^2 d log_snr / dt) or is a callable t -> g.

**Linear to VP** (sheet B, `VPScheduler`). The time map from matching SNR, t(r) = sigma_r / (alpha_r + sigma_r), the
scale c_r = alpha_r + sigma_r and the converted velocity are exactly `schedules.transform(model_fn, "velocity", "ot",
"vp_linear")` (the sheet's beta_min 0.1, beta_max 20 are vp_linear's): the search takes any (model, process) pair, so
the VP-SDE search is the transformed model on `schedules.get_process("vp_linear")`.

**Search** on a budget of `budget` model calls per returned sample, with `reward(x0_hat) -> (n,)` evaluated on the
Tweedie estimate x0_hat = E[x0 | x_t] (computed from the same velocity: every evaluated state costs exactly one
call). A trajectory on the grid ts (K = len(ts) - 1 steps) evaluates the model at each of its K + 1 levels.

- `best_of_n`: N = budget // (K + 1) SDE trajectories, the one of highest final reward.
- `smc`: N = budget // (K + 1) particles with potentials exp((r_new - r_old) / lam) (so the weights telescope to
  exp(r(x0_hat) / lam)), resampled (`samplers.resampling`) when ESS < ess_threshold * N, before each move; the
  final particle of highest reward (the reference: lam = 0.5, threshold 1.0, multinomial).
- `rbf`: rollover budget forcing (sheet B, `rbf/rbf.py`): `chains` chains start from the best of `init` noises
  each, then propose one SDE step at a time (one call each) from their current state; a proposal is accepted as soon
  as its reward beats the best the chain has seen, and the quota left over rolls over to the next step (Q_next =
  leftover + Q, Q = (budget - init chains) // (K chains)); when a step's quota runs out the chain advances with that
  step's best proposal and the quota resets to Q. On the last step the chain keeps proposing until the budget is
  spent, and the output is the x0_hat of the highest-reward proposal seen (the sheet's pitfall: not an integrated
  sample). Where this deviates from the reference: the reference stops advancing after max_steps - 2 = 8 of its 10
  steps (its grid's end point r = 0 is never reached); here chains advance to the last step of ts (which ends at
  t_min > 0, where the Tweedie estimate is defined) and propose it until the budget runs out.

All three run as one compiled program per structure (`lax.scan` for the particle methods, a `lax.while_loop` on the
calls spent for RBF, fixed shapes); the budget, the batch and the sample shape are static; ts, the key, `args`,
`reward_args` and the numeric options (lam, ess_threshold, the SDE's norm) are traced. `info["nfe"]` counts the model
calls per returned sample as they are made, and never exceeds the budget.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fastsamplers import schedules
    >>> from fastsamplers.models import GaussianMixture
    >>> ot = schedules.get_process("ot")
    >>> gm = GaussianMixture.create([0.5, 0.5], [[-2.0], [2.0]], 0.5)
    >>> ts = jnp.linspace(1.0, 1e-3, 5)
    >>> x, info = search("rbf", gm.model_fn(ot, "velocity"), ot, ts, lambda x: x[:, 0], budget=40, batch=3,
    ...                  shape=(1,), key=jax.random.PRNGKey(0), init=4)
    >>> x.shape, info["nfe"]
    ((3, 1), 40)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.samplers import resampling
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like
from fastsamplers.samplers.driver import check_ts, checked_model
from fastsamplers.samplers.pytrees import TracedOptions, is_real, is_traced, known, merge, split
from fastsamplers.schedules.processes import Process, as_float, get_process

if TYPE_CHECKING:
    from fastsamplers.core.typing import DTypeLike, Shape

Reward = Callable[..., jax.Array]  # reward(x0_hat) or reward(x0_hat, reward_args) -> (n,)


# ------------------------------------------------------------------------------------------------------------------
# The SDE twin of a velocity model
# ------------------------------------------------------------------------------------------------------------------


def score_from_velocity(u: jax.Array, x: jax.Array, t: ArrayLike, process: Process) -> jax.Array:
    """grad log p_t(x) = (alpha u - alpha' x) / (sigma (alpha' sigma - alpha sigma')) from the velocity u at (x, t)
    (sheet B, Prop. 1; -(x + (1 - t) u) / t on the linear interpolant), by `models.predictions`."""
    return predictions.convert(u, "velocity", "score", x, t, process)


def tweedie(u: jax.Array, x: jax.Array, t: ArrayLike, process: Process) -> jax.Array:
    """The Tweedie estimate x0_hat = E[x0 | x_t = x] from the velocity u at (x, t) (sheet B: in the coordinates of
    `process`, e.g. VP after `schedules.transform`), by `models.predictions`."""
    return predictions.convert(u, "velocity", "x0", x, t, process)


def _square(process: Process, t: jax.Array) -> jax.Array:
    return t**2  # RBF's `diffusion_coefficient: square` (rbf/prior/flux.py), times its diffusion_norm 3


def _constant(process: Process, t: jax.Array) -> jax.Array:
    return jnp.ones_like(t)


def _sde(process: Process, t: jax.Array) -> jax.Array:
    # The forward SDE's g^2 = d sigma^2/dt - 2 (d log alpha/dt) sigma^2 = -2 sigma^2 d lambda/dt (sheet conventions):
    # with it the twin is the process's own reverse SDE (VP: g^2 = beta(t); linear: 2 t / (1 - t)).
    d_log_snr = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))[1]
    return jnp.sqrt(-2.0 * process.sigma(t) ** 2 * d_log_snr)


# name -> (g(process, t) / norm, the default norm)
DIFFUSIONS = Registry("diffusion coefficient", {"square": (_square, 3.0), "constant": (_constant, 1.0),
                                                "sde": (_sde, 1.0)}, ordered=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowSDE(Solver):
    """The SDE twin of a velocity model (module docstring): one Euler-Maruyama step of the reverse-time SDE whose
    marginals are the probability-flow ODE's, for any process and diffusion coefficient.

    Args (fields):
      diffusion: (keyword, as every field) a name in `DIFFUSIONS` ("square", "constant", "sde") or a callable
        t -> g(t) (static).
      norm: the factor of g (traced; None: the name's default, 3 for "square", else 1). norm = 0 given as a number is
        the deterministic Euler step of the ODE.

    Not in `samplers.SOLVERS`: "square" and "constant" are coefficients for flows on t in [0, 1] (g = 3 t^2 on EDM's
    t up to 80 would be meaningless), so the registry-wide sweeps do not apply. Run it with `samplers.sample(model_fn,
    FlowSDE(), process, x_init, ts, prediction="velocity", key=key)`, or give it to `search` as `sde`.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules, samplers
        >>> from fastsamplers.models import GaussianMixture
        >>> ot = schedules.get_process("ot")
        >>> gm = GaussianMixture.create([0.5, 0.5], [[-2.0], [2.0]], 0.5)
        >>> x, info = samplers.sample(gm.model_fn(ot, "velocity"), FlowSDE(diffusion="square"), ot,
        ...                           ot.prior(jax.random.PRNGKey(0), (8, 1), t=1.0), jax.numpy.linspace(1, 1e-3, 50),
        ...                           prediction="velocity", key=jax.random.PRNGKey(1))
        >>> info["nfe"]
        49
    """

    diffusion: str | Callable[[jax.Array], jax.Array] = "square"
    norm: Any = None
    name = "flow_sde"
    native = "velocity"
    traced = ("norm",)
    switches = ("norm",)

    def __post_init__(self) -> None:
        if self.norm is None and not callable(self.diffusion):
            DIFFUSIONS.lookup(self.diffusion)
            object.__setattr__(self, "norm", DIFFUSIONS[self.diffusion][1])
        elif self.norm is None:
            object.__setattr__(self, "norm", 1.0)
        super().__post_init__()

    def check(self) -> None:
        if not callable(self.diffusion):
            DIFFUSIONS.lookup(self.diffusion)
        values = known(self.norm)
        if values is not None and not (is_real(values) and values.ndim == 0 and np.isfinite(values)
                                       and values >= 0):
            raise ValueError(f"{self.name}: norm must be a finite number >= 0, got {self.norm!r}")

    @property
    def order(self) -> int:
        return 1  # Euler-Maruyama: weak order 1 (the marginals), strong order 1/2

    def spec(self) -> dict[str, Any]:
        raise ValueError(f"{self.name} is not a registered solver (samplers.scaling.FlowSDE): build it directly")

    def g(self, process: Process, t: ArrayLike) -> jax.Array:
        """The diffusion coefficient g(t)."""
        t = as_float(t)
        base = self.diffusion(t) if callable(self.diffusion) else DIFFUSIONS[self.diffusion][0](process, t)
        return self.norm * base

    def update(self, process: Process, x: jax.Array, u: jax.Array, s: ArrayLike, t: ArrayLike,
               xi: jax.Array | None) -> jax.Array:
        """x at t < s from x at s with velocity u there (Prop. 1, module docstring); xi standard normal like x, None
        where the step is deterministic (norm a static zero)."""
        delta = as_float(s) - as_float(t)
        if self.is_static("norm"):  # norm = 0: the ODE's Euler step, no score needed
            return x - cast_like(delta, x) * u
        g = self.g(process, s)
        drift = -u + cast_like(0.5 * g**2, x) * score_from_velocity(u, x, s, process)
        return x + cast_like(delta, x) * drift + cast_like(g * jnp.sqrt(delta), x) * xi

    def step(self, model: Model, process: Process, x: jax.Array, state: Any, inp: StepInputs) -> tuple[jax.Array, Any]:
        u = model(x, inp.s)
        xi = None if self.is_static("norm") else inp.normal(x)
        return self.update(process, x, u, inp.s, inp.t, xi), state


def as_sde(sde: FlowSDE | str | Callable) -> FlowSDE:
    """A `FlowSDE` from itself, a name of `DIFFUSIONS` or a callable t -> g(t)."""
    if isinstance(sde, FlowSDE):
        return sde
    if isinstance(sde, str) or callable(sde):
        return FlowSDE(diffusion=sde)
    raise TypeError(f"sde must be a samplers.scaling.FlowSDE, a diffusion name ({DIFFUSIONS.valid()}) or a callable "
                    f"t -> g(t), got {type(sde).__name__}")


# ------------------------------------------------------------------------------------------------------------------
# Search on a budget
# ------------------------------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """What a strategy searches, inside the compiled program: the velocity model (x, t) -> u for a batch at one t,
    the process, the grid, the SDE, the reward on x0_hat (n, *shape) -> (n,), the number of searches, the sample
    shape and dtype, the budget per search and the key."""

    velocity: Callable[[jax.Array, jax.Array], jax.Array]
    process: Process
    ts: jax.Array
    sde: FlowSDE
    reward: Callable[[jax.Array], jax.Array]
    batch: int
    shape: tuple
    dtype: Any
    budget: int
    key: jax.Array

    def evaluate(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(u, x0_hat, reward) of states x (batch, n, *shape) at one time t: one model call per state."""
        flat = x.reshape((-1,) + self.shape)
        u = self.velocity(flat, t)
        x0 = tweedie(u, flat, t, self.process)
        return u.reshape(x.shape), x0.reshape(x.shape), self.reward(x0).reshape(x.shape[:2])

    def evaluate_each(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`evaluate` with a time per state, t (batch, n): each state is its own model call on a batch of one."""
        def one(xi, ti):
            u = self.velocity(xi[None], ti)[0]
            return u, tweedie(u, xi, ti, self.process)

        u, x0 = jax.vmap(one)(x.reshape((-1,) + self.shape), t.reshape(-1))
        return u.reshape(x.shape), x0.reshape(x.shape), self.reward(x0).reshape(x.shape[:2])

    def noise(self, key: jax.Array, like: jax.Array) -> jax.Array | None:
        return None if self.sde.is_static("norm") else jax.random.normal(key, like.shape, like.dtype)


@dataclasses.dataclass(frozen=True)
class Strategy(TracedOptions):
    """A search strategy: its options are its fields (numeric ones traced, `traced`), `run` the compiled search."""

    name: ClassVar[str] = "strategy"

    def check(self) -> None:
        """Raise ValueError for an invalid option (known values only)."""

    def __post_init__(self) -> None:
        self.check()

    def min_budget(self, num_steps: int) -> tuple[int, str]:
        """(the smallest budget per search, what it pays for)."""
        return num_steps + 1, (f"one trajectory of {num_steps} steps (a model call at each of its {num_steps + 1} "
                               "levels)")

    def reward_sizes(self, batch: int, budget: int, num_steps: int) -> tuple[int, ...]:
        """The batch sizes the reward is called with."""
        return (batch * (budget // (num_steps + 1)),)

    def run(self, problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        """(x (batch, *shape), its reward (batch,), the model calls spent per search, extra info)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run")


def _best(x0: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per search, the candidate of highest reward: (x0 (batch, *shape), r (batch,)) of (batch, n, ...)."""
    index = jnp.argmax(r, axis=1)
    return jnp.take_along_axis(x0, index.reshape((-1, 1) + (1,) * (x0.ndim - 2)), axis=1)[:, 0], jnp.max(r, axis=1)


def _particles(problem: Problem, num: int, smc: SMC | None) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """`num` SDE trajectories per search in lockstep over the grid, reweighted and resampled by `smc` (None: plain
    trajectories, best-of-N); the final particle of highest reward."""
    ts, k_init, k_loop = problem.ts, *jax.random.split(problem.key)
    x = problem.process.prior(k_init, (problem.batch, num) + problem.shape, t=ts[0], dtype=problem.dtype)
    u, x0, r = problem.evaluate(x, ts[0])
    log_w = r / smc.lam if smc is not None else jnp.zeros_like(r)  # the potentials telescope to r(x0_hat) / lam

    def body(carry, k):
        x, u, x0, r, log_w = carry
        k_res, k_noise = jax.random.split(jax.random.fold_in(k_loop, k))
        ess = resampling.ess(log_w)
        if smc is not None:  # before each move, where the effective sample size fell below the threshold
            redo = ess < smc.ess_threshold * num

            def resampled(tree):  # (batch, N, ...) leaves; the ancestors are drawn within each search
                index = resampling.resample(k_res, log_w, smc.resample)
                flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), tree)
                moved = jax.tree.map(lambda a, like: a.reshape(like.shape), resampling.gather(flat, index), tree)
                return jax.tree.map(lambda new, old: jnp.where(
                    redo.reshape((-1,) + (1,) * (old.ndim - 1)), new, old), moved, tree)

            x, u, x0, r = jax.lax.cond(jnp.any(redo), resampled, lambda tree: tree, (x, u, x0, r))
            log_w = jnp.where(redo[:, None], 0.0, log_w)
        x = problem.sde.update(problem.process, x, u, ts[k], ts[k + 1], problem.noise(k_noise, x))
        u, x0, r_new = problem.evaluate(x, ts[k + 1])
        if smc is not None:
            log_w = log_w + (r_new - r) / smc.lam  # the potential exp((r_t - r_{t+1}) / lam) of sheet B
        return (x, u, x0, r_new, log_w), ess

    num_steps = ts.shape[0] - 1
    (x, u, x0, r, log_w), ess = jax.lax.scan(body, (x, u, x0, r, log_w), jnp.arange(num_steps))
    best_x0, best_r = _best(x0, r)
    info = {"rewards": r}
    if smc is not None:
        info.update(ess=jnp.moveaxis(ess, 0, 1), log_weights=log_w)
    return best_x0, best_r, jnp.asarray(num * (num_steps + 1)), info


@dataclasses.dataclass(frozen=True)
class BestOfN(Strategy):
    """Best-of-N: budget // (K + 1) independent SDE trajectories, the one of highest final reward."""

    name: ClassVar[str] = "best_of_n"

    def run(self, problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        return _particles(problem, problem.budget // (problem.ts.shape[0]), None)


RESAMPLING = resampling.METHODS


@dataclasses.dataclass(frozen=True)
class SMC(Strategy):
    """Sequential Monte Carlo with reward potentials (module docstring; sheet B's SMC/DAS baseline).

    Args (fields):
      lam: the temperature of the potentials exp((r_new - r_old) / lam) (traced; the reference's reward_weight 0.5).
      ess_threshold: resample where ESS < ess_threshold * N (traced; the reference's 1.0: nearly every step).
      resample: "multinomial" (the reference's) or "systematic" (`samplers.resampling.METHODS`).
    """

    lam: Any = 0.5
    ess_threshold: Any = 1.0
    resample: str = "multinomial"
    name: ClassVar[str] = "smc"
    traced: ClassVar[tuple[str, ...]] = ("lam", "ess_threshold")

    def check(self) -> None:
        RESAMPLING.check(self.resample)
        for field, low in (("lam", 0.0), ("ess_threshold", 0.0)):
            values = known(getattr(self, field))
            if values is not None and not (is_real(values) and values.ndim == 0 and np.isfinite(values)
                                           and (values > low if field == "lam" else values >= low)):
                raise ValueError(f"smc: {field} must be a finite number {'>' if field == 'lam' else '>='} {low}, "
                                 f"got {getattr(self, field)!r}")

    def run(self, problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        return _particles(problem, problem.budget // (problem.ts.shape[0]), self)


@dataclasses.dataclass(frozen=True)
class RBF(Strategy):
    """Rollover budget forcing (module docstring; sheet B, `rbf/rbf.py`).

    Args (fields):
      init: initial noises per chain (the reference's 25).
      chains: chains per search, run side by side (the reference's B = 2).
    """

    init: int = 25
    chains: int = 2
    name: ClassVar[str] = "rbf"

    def check(self) -> None:
        for field in ("init", "chains"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"rbf: {field} must be an int >= 1, got {value!r}")

    def min_budget(self, num_steps: int) -> tuple[int, str]:
        return (self.init * self.chains + num_steps * self.chains,
                f"init * chains = {self.init * self.chains} initial draws and a quota of at least one proposal per "
                f"chain and step ({num_steps} * {self.chains})")

    def reward_sizes(self, batch: int, budget: int, num_steps: int) -> tuple[int, ...]:
        return batch * self.chains * self.init, batch * self.chains

    def run(self, problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        ts, batch, chains = problem.ts, problem.batch, self.chains
        last = ts.shape[0] - 2  # the level the last step starts from
        quota = (problem.budget - self.init * chains) // ((last + 1) * chains)  # Q of sheet B
        k_init, k_loop = jax.random.split(problem.key)
        # The initial draws: `init` noises per chain, each chain starting from its best (one call each).
        x = problem.process.prior(k_init, (batch, chains * self.init) + problem.shape, t=ts[0], dtype=problem.dtype)
        u, x0, r = problem.evaluate(x, ts[0])
        best_x0, best_r = _best(x0, r)
        pick = jnp.argmax(r.reshape(batch, chains, self.init), axis=2)
        start = lambda a: jnp.take_along_axis(  # noqa: E731
            a.reshape((batch, chains, self.init) + a.shape[2:]),
            pick.reshape((batch, chains, 1) + (1,) * (a.ndim - 2)), axis=2)[:, :, 0]
        x, u, seen = start(x), start(u), start(r)
        zeros = jnp.zeros((batch, chains), jnp.int32)
        minus_inf = jnp.full((batch, chains), -jnp.inf, r.dtype)
        state = dict(x=x, u=u, level=zeros, quota=zeros + quota, used=zeros, seen=seen, step_r=minus_inf,
                     step_x=x, step_u=u, best_x0=best_x0, best_r=best_r, spent=jnp.asarray(self.init * chains),
                     accepted=zeros, proposals=jnp.asarray(0))

        def body(s):
            k_noise = jax.random.fold_in(k_loop, s["proposals"])
            level = s["level"]
            t_from, t_to = ts[level], ts[level + 1]
            xi = problem.noise(k_noise, s["x"])
            lanes = lambda a: a.reshape((batch * chains,) + a.shape[2:])  # noqa: E731
            x_new = jax.vmap(lambda x, u, a, b, n: problem.sde.update(problem.process, x, u, a, b, n))(
                lanes(s["x"]), lanes(s["u"]), lanes(t_from), lanes(t_to), None if xi is None else lanes(xi))
            x_new = x_new.reshape(s["x"].shape)
            u_new, x0_new, r_new = problem.evaluate_each(x_new, t_to)
            cand_x0, cand_r = _best(x0_new, r_new)
            better = cand_r > s["best_r"]
            best_x0 = jnp.where(better.reshape((-1,) + (1,) * len(problem.shape)), cand_x0, s["best_x0"])
            used = s["used"] + 1
            on_last = level == last
            improved = r_new > s["step_r"]
            step_r = jnp.maximum(r_new, s["step_r"])
            expand = lambda m, a: m.reshape(m.shape + (1,) * (a.ndim - 2))  # noqa: E731
            step_x = jnp.where(expand(improved, x_new), x_new, s["step_x"])
            step_u = jnp.where(expand(improved, u_new), u_new, s["step_u"])
            accept = (r_new > s["seen"]) & ~on_last  # beats the best reward seen: advance at once
            exhausted = (used >= s["quota"]) & ~accept & ~on_last  # quota spent: advance with this step's best
            advance = accept | exhausted
            x = jnp.where(expand(accept, x_new), x_new, jnp.where(expand(exhausted, step_x), step_x, s["x"]))
            u = jnp.where(expand(accept, u_new), u_new, jnp.where(expand(exhausted, step_u), step_u, s["u"]))
            quota_next = jnp.where(accept, s["quota"] - used + quota, jnp.where(exhausted, quota, s["quota"]))
            return dict(x=x, u=u, level=level + advance, quota=quota_next, used=jnp.where(advance, 0, used),
                        seen=jnp.maximum(s["seen"], r_new), step_r=jnp.where(advance, -jnp.inf, step_r),
                        step_x=step_x, step_u=step_u, best_x0=best_x0, best_r=jnp.maximum(cand_r, s["best_r"]),
                        spent=s["spent"] + chains, accepted=s["accepted"] + accept,
                        proposals=s["proposals"] + 1)

        # One proposal per chain per round, while a whole round fits in the budget: the exact count of sheet B.
        state = jax.lax.while_loop(lambda s: s["spent"] + chains <= problem.budget, body, state)
        info = {"levels": state["level"], "accepted": state["accepted"], "quota": quota}
        return state["best_x0"], state["best_r"], state["spent"], info


STRATEGIES = Registry("search strategy", {cls.name: cls for cls in (BestOfN, SMC, RBF)}, ordered=True)


def search(strategy: str | Strategy, model_fn: ModelFn, process: Process | str, ts: ArrayLike, reward: Reward, *,
           budget: int, batch: int, shape: Shape, key: jax.Array | None, prediction: str = "velocity",
           args: PyTree = None, reward_args: PyTree = None, sde: FlowSDE | str | Callable = "square",
           dtype: DTypeLike | None = None, check_finite: bool = True, **options: Any) -> tuple[jax.Array, dict]:
    """Reward-guided search with the SDE twin of a flow, on a budget of model calls per returned sample.

    Args:
      strategy: "best_of_n", "smc", "rbf" (`STRATEGIES`) or a `Strategy` object.
      model_fn: model_fn(x, t) or model_fn(x, t, args) predicting `prediction` on `process` (converted to the
        velocity exactly; for the VP-SDE search of a linear flow, pass `schedules.transform(model_fn, "velocity",
        "ot", "vp_linear")` and the vp_linear process).
      process: a `schedules.Process` or a registered name.
      ts: the grid, strictly decreasing from t_max to t_min > 0 (the Tweedie estimate needs sigma > 0).
      reward: reward(x0_hat) -> (n,) rewards of n estimates (n, *shape), or reward(x0_hat, reward_args); traced, so
        it must be a jax function.
      budget: model calls per returned sample (static).
      batch: independent searches, run side by side; each returns one sample.
      shape: the shape of one sample.
      key: a PRNG key (required: every search draws its initial noise).
      prediction: what model_fn predicts.
      args, reward_args: traced arguments of the model and the reward (parameters, labels), or None.
      sde: the SDE twin (`FlowSDE`), or a diffusion name or callable for FlowSDE(diffusion=sde).
      dtype: of the samples (default: JAX's default float).
      check_finite: on concrete results, raise FloatingPointError for non-finite samples or rewards (else counted in
        info["num_nonfinite"]).
      **options: the strategy's options (`SMC`: lam, ess_threshold, resample; `RBF`: init, chains).

    Returns:
      (x, info): x (batch, *shape) the returned samples (each search's highest-reward x0_hat); info["nfe"] the model
      calls spent per search (<= budget), info["reward"] (batch,) the rewards of x, info["num_nonfinite"], and the
      strategy's own: "rewards" (batch, N) the final particles' rewards and, for smc, "ess" (batch, K) before each
      move and "log_weights"; for rbf "levels" and "accepted" (batch, chains) and "quota" (Q).

    Raises:
      ValueError: before any compute, for an unknown strategy, option or diffusion name (the valid ones listed), a
        budget too small for the strategy's first draws, a missing key, a reward that does not return (n,) for n
        estimates, or a bad grid.
    """
    if isinstance(strategy, str):
        strategy = STRATEGIES.build(strategy, **options)
    elif options:
        raise ValueError(f"options {sorted(options)} are given with a strategy object; set them on the object")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a name of {STRATEGIES.valid()} or a samplers.scaling.Strategy, got "
                        f"{type(strategy).__name__}")
    sde = as_sde(sde)
    process = get_process(process)
    predictions.check_kind(prediction)
    if not callable(model_fn):
        raise TypeError("model_fn must be a callable (x, t) -> prediction")
    if not callable(reward):
        raise TypeError("reward must be a callable x0_hat (n, *shape) -> (n,)")
    if key is None:
        raise ValueError(f"search {strategy.name!r} draws random initial noise: pass key=jax.random.PRNGKey(seed)")
    if not is_traced(ts):
        ts = np.asarray(ts)
    check_ts(ts, process, sde, prediction)
    num_steps = int(np.shape(ts)[0]) - 1
    for name, value in (("budget", budget), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1 (static), got {value!r}")
    budget, batch, shape = int(budget), int(batch), tuple(int(n) for n in shape)
    least, why = strategy.min_budget(num_steps)
    if budget < least:
        raise ValueError(f"budget={budget} model calls is too small for {strategy.name}: it needs at least {least} "
                         f"per sample for {why}")
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    has_reward_args = reward_args is not None
    for n in strategy.reward_sizes(batch, budget, num_steps):
        _check_reward(reward, n, shape, dtype, reward_args, has_reward_args)
    (strategy_key, strategy_leaves), (model_key, model_leaves) = split(strategy), split(model_fn)
    (reward_key, reward_leaves), (sde_key, sde_leaves) = split(reward), split(sde)
    static = (strategy_key, model_key, reward_key, sde_key, process, prediction, args is not None, has_reward_args,
              budget, batch, shape, dtype)
    traced = (strategy_leaves, model_leaves, reward_leaves, sde_leaves, as_float(ts), jnp.asarray(key), args,
              reward_args)
    program = _search_fn(*static) if is_traced(traced) else _search_compiled(*static)
    x, r, nfe, num_nonfinite, info = program(*traced)
    if check_finite and not is_traced(num_nonfinite) and int(num_nonfinite) > 0:
        raise FloatingPointError(f"search {strategy.name!r} produced {int(num_nonfinite)} non-finite values in its "
                                 f"samples or rewards; the model or the reward returned NaN/Inf or the SDE steps are "
                                 f"unstable (pass check_finite=False to get them anyway)")
    info.update(nfe=nfe if is_traced(nfe) else int(nfe), reward=r, num_nonfinite=num_nonfinite)
    return x, info


def _check_reward(reward, n, shape, dtype, reward_args, has_reward_args):
    """The reward's output for n estimates, checked by tracing alone: (n,) floats."""
    probe = jax.ShapeDtypeStruct((n,) + shape, dtype)
    try:
        out = jax.eval_shape(lambda x, a: reward(x, a) if has_reward_args else reward(x), probe, reward_args)
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"reward failed on x0_hat of shape {probe.shape}: {err}") from err
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == (n,) and jnp.issubdtype(out.dtype, jnp.floating)):
        got = f"shape {out.shape} ({out.dtype})" if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ValueError(f"reward must return one float per estimate, shape ({n},) for x0_hat of shape {probe.shape}; "
                         f"it returned {got}")


def _search_fn(strategy_key, model_key, reward_key, sde_key, process, prediction, has_args, has_reward_args, budget,
               batch, shape, dtype):
    def run(strategy_leaves, model_leaves, reward_leaves, sde_leaves, ts, key, args, reward_args):
        checked = checked_model(merge(model_key, model_leaves), has_args)
        velocity = predictions.converted(lambda x, t: checked(x, t, args), prediction, "velocity", process)
        reward_fn = merge(reward_key, reward_leaves)
        score = (lambda x: reward_fn(x, reward_args)) if has_reward_args else reward_fn
        problem = Problem(velocity, process, ts, merge(sde_key, sde_leaves), score, batch, shape, dtype, budget, key)
        x, r, nfe, info = merge(strategy_key, strategy_leaves).run(problem)
        x = x.astype(dtype)
        return x, r, nfe, jnp.sum(~jnp.isfinite(x)) + jnp.sum(~jnp.isfinite(r)), info

    return run


@functools.lru_cache(maxsize=32)
def _search_compiled(*static):
    """One compiled program per static configuration; the leaves, ts, key, args and reward_args are traced."""
    return jax.jit(_search_fn(*static))


def best_of_n(model_fn: ModelFn, process: Process | str, ts: ArrayLike, reward: Reward,
              **kwargs: Any) -> tuple[jax.Array, dict]:
    """`search("best_of_n", ...)`: budget // (K + 1) SDE trajectories per sample, the best by final reward."""
    return search("best_of_n", model_fn, process, ts, reward, **kwargs)


def smc(model_fn: ModelFn, process: Process | str, ts: ArrayLike, reward: Reward,
        **kwargs: Any) -> tuple[jax.Array, dict]:
    """`search("smc", ...)`: particles with reward potentials and ESS-triggered resampling (options lam,
    ess_threshold, resample)."""
    return search("smc", model_fn, process, ts, reward, **kwargs)


def rbf(model_fn: ModelFn, process: Process | str, ts: ArrayLike, reward: Reward,
        **kwargs: Any) -> tuple[jax.Array, dict]:
    """`search("rbf", ...)`: rollover budget forcing (options init, chains)."""
    return search("rbf", model_fn, process, ts, reward, **kwargs)
