"""AMED (Zhou et al., CVPR 2024): a learned intermediate time and scales per step, the AMED-Solver and AMED-Plugin.

Each step from t_n to t_{n+1} makes two model calls, in EDM units (y = x / alpha, gamma = sigma / alpha, where the
probability-flow ODE is dy/dgamma = eps and EDM's direction (y - D) / gamma is eps; sheet section D):

  1. p_n = the model at (x_n, t_n) (with `afs` on the first step: the analytic eps = y / sqrt(1 + gamma^2), i.e.
     x / sqrt(alpha^2 + sigma^2), no model call; `solvers_amed.py` L133);
  2. the predictor (`AMEDPredictor`) reads the step's times and features of (x_n, p_n) and returns, per sample,
     r in (0, 1), a direction scale c in [1 - scale_dir, 1 + scale_dir] and a time scale a in
     [1 - scale_time, 1 + scale_time] (`training/networks.py` L141-L151; c = a = 1 where the range is 0);
  3. gamma_mid = gamma_{n+1}^r gamma_n^(1 - r) (L144: t_mid = t_next^r t_cur^(1 - r)), i.e. lambda_mid = (1 - r)
     lambda_n + r lambda_{n+1};
  4. the base's update from t_n to t_mid, then the model at (alpha(t_eval) y_mid, t_eval) with gamma(t_eval) =
     a gamma_mid, and the direction (y_mid - D) / gamma_mid = a eps (L150);
  5. the base's update to t_{n+1}, its prediction terms scaled by c.

Bases (`base`):
- "euler", the AMED-Solver (`amed_sampler`): y_mid = y_n + (gamma_mid - gamma_n) eps_n and
  y_{n+1} = y_n + c (gamma_{n+1} - gamma_n) d_mid. With r = 1/2, c = a = 1 it is the geometric-midpoint solver
  (order 2: gamma_mid - gamma_n = h / 2 + O(h^2)).
- "ipndm", the plugin into iPNDM (`ipndm_sampler`): the intermediate points are inserted into the grid and every
  point, t_n and t_mid alike, takes iPNDM's Adams-Bashforth step in gamma on its history of directions (the fixed
  weights of `samplers.multistep.IPNDM_WEIGHTS`, order min(k + 1, order) at the k-th point, no lower final orders,
  as published); the second update's direction terms are scaled by c. order=1 is the Euler plugin
  (`euler_sampler`).
- "dpmpp", the plugin into multistep DPM-Solver++ (`dpm_pp_sampler`): the same insertion with DPM-Solver++'s data-
  prediction update (`samplers.multistep.dpmpp_weights`) on the per-sample log-SNRs of the history; the published
  code lowers the orders of the final points on every grid (`lower_order_final="always"`, its default here); c
  scales the x0 terms of the second update (`solver_utils.py` L109-L130, `scale`).

NFE = 2 per step, 2N - 1 with afs. The predictor's outputs are per sample, so the model is called at per-sample
times at t_mid: it is vmapped over the leading (batch) axis there (models take a scalar t). Without a predictor
(`params=None`) r is the option `r` for every sample and c = a = 1.

The predictor's features: the published network reads the U-Net bottleneck (averaged over channels to 64 values);
no model here exposes its activations, so the features are a fixed random projection (stored with the parameters,
never trained) of x_n / sqrt(alpha^2 + sigma^2) and of p_n, 32 values each: the state and the model's output at it,
which the step has already computed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like, step_inputs
from fastsamplers.samplers.multistep import IPNDM_WEIGHTS, check_lower_order_final, dpmpp_weights, step_orders
from fastsamplers.samplers.pytrees import is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

BASES = Registry.of_names("AMED base", ("euler", "ipndm", "dpmpp"), ordered=True,
                          unknown="amed: unknown {kind} {name!r}; valid bases: {valid}")
# base: (native prediction, allowed orders, default order, default lower_order_final), as published.
_BASE = {"euler": ("eps", (1,), 1, False), "ipndm": ("eps", (1, 2, 3, 4), 4, False),
         "dpmpp": ("x0", (1, 2, 3), 3, "always")}
NOISE_CHANNELS = 8  # the positional embedding of each time (networks.py: noise_channels)
FEATURES = 64  # the features the encoder reads (networks.py: bottleneck_input_dim)


def positional_embedding(x: jax.Array, channels: int = NOISE_CHANNELS, max_positions: float = 10000.0) -> jax.Array:
    """EDM's PositionalEmbedding with endpoint=True and the sin/cos halves swapped, as AMED's predictor uses it
    (networks.py L41-L50, L124): [sin(x f_k), cos(x f_k)], f_k = max_positions^(-k / (channels / 2 - 1))."""
    freqs = (1.0 / max_positions) ** (jnp.arange(channels // 2, dtype=x.dtype) / (channels // 2 - 1))
    angle = x[..., None] * freqs
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class AMEDPredictor(nn.Module):
    """The AMED predictor (networks.py `AMED_predictor`): features (B, 64) -> 128 -> 4 (SiLU), the times' embeddings
    (8 -> 8, SiLU, one layer shared by t_n and t_{n+1}), and Linear(20 -> 1) heads with sigmoid ranges.
    About 9k parameters. Returns (r, c, a), each (B,)."""

    scale_dir: float = 0.0
    scale_time: float = 0.0
    hidden: int = 128
    out: int = 4

    @nn.compact
    def __call__(self, features: jax.Array, gamma_s: jax.Array,
                 gamma_t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        kaiming = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # networks.py: kaiming_normal
        embed = nn.Dense(NOISE_CHANNELS, kernel_init=nn.initializers.xavier_uniform(), name="map_layer0")
        emb = jnp.concatenate([nn.silu(embed(positional_embedding(g))) for g in (gamma_s, gamma_t)], axis=-1)
        emb = jnp.broadcast_to(emb, features.shape[:1] + emb.shape[-1:])
        h = nn.Dense(self.hidden, kernel_init=kaiming, name="enc_layer0")(features)
        h = nn.Dense(self.out, kernel_init=kaiming, name="enc_layer1")(nn.silu(h))
        h = jnp.concatenate([h, emb], axis=-1)

        def head(name, half_range):
            if half_range == 0:
                return jnp.ones(features.shape[:1], features.dtype)
            # sigmoid * 2 range + (1 - range): [1 - range, 1 + range] (networks.py L143, L149)
            return jax.nn.sigmoid(nn.Dense(1, kernel_init=kaiming, name=name)(h)[:, 0]) * 2 * half_range + (
                1 - half_range)

        r = jax.nn.sigmoid(nn.Dense(1, kernel_init=kaiming, name="fc_r")(h)[:, 0])
        return r, head("fc_scale_dir", self.scale_dir), head("fc_scale_time", self.scale_time)


def init_params(key: jax.Array, dim: int, scale_dir: float = 0.0, scale_time: float = 0.0,
                dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Fresh predictor parameters for samples of `dim` elements, as the flat dict `AMED.params` holds ("/"-joined
    flax paths, and "projection", the fixed (dim, 32) random feature projection).

    Example:
        >>> params = init_params(jax.random.PRNGKey(0), dim=8)
        >>> sum(v.size for k, v in params.items() if k != "projection")
        8929
    """
    k_proj, k_net = jax.random.split(key)
    module = AMEDPredictor(scale_dir, scale_time)
    g = jnp.ones((), dtype)
    variables = module.init(k_net, jnp.zeros((1, FEATURES), dtype), g, g)
    flat = {k: v.astype(dtype) for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items()}
    flat["projection"] = (jax.random.normal(k_proj, (dim, FEATURES // 2)) / np.sqrt(dim)).astype(dtype)
    return flat


class AMEDCoefficients(NamedTuple):
    """Per step: gamma and log-SNR at its ends (N,), the orders of its two updates (N, 2) for a multistep base."""

    gamma_s: jax.Array
    gamma_t: jax.Array
    lam_s: jax.Array
    lam_t: jax.Array
    orders: jax.Array


@dataclasses.dataclass(frozen=True)
class AMED(Solver):
    """AMED-Solver ("euler") and AMED-Plugin ("ipndm", "dpmpp"): module docstring.

    Fields: base; order (the multistep base's largest order; default 4 for ipndm, 3 for dpmpp, as published);
    lower_order_final (dpmpp: `samplers.multistep`'s rule over the 2N inserted points; default "always" as the
    published code); afs; scale_dir, scale_time (the ranges of c and a; 0 fixes them at 1); r (the intermediate
    fraction without a predictor); params (the predictor's parameters, `init_params`; None: no predictor).
    r and params are traced leaves: a trained solver is a pytree.
    """

    name = "amed"
    stages = 2  # type: ignore[assignment]  # the base's property, a constant here
    base: str = "euler"
    order: int | None = None
    lower_order_final: bool | str | None = None
    afs: bool = False
    scale_dir: float = 0.0
    scale_time: float = 0.0
    r: float = 0.5
    params: Any = None
    traced = ("r", "params")

    def __post_init__(self) -> None:
        BASES.check(self.base)
        _, _, order, lof = _BASE[self.base]
        if self.order is None:
            object.__setattr__(self, "order", order)
        if self.lower_order_final is None:
            object.__setattr__(self, "lower_order_final", lof)
        if isinstance(self.params, dict):  # JSON / npz round trips give numpy arrays
            object.__setattr__(self, "params", {k: jnp.asarray(v) for k, v in self.params.items()})
        super().__post_init__()

    def check(self) -> None:
        allowed = _BASE[self.base][1]
        if isinstance(self.order, bool) or self.order not in allowed:
            raise ValueError(f"amed with base {self.base!r} supports order in {list(allowed)}, got {self.order!r}")
        check_lower_order_final(self.name, self.lower_order_final)
        if not isinstance(self.afs, (bool, np.bool_)):
            raise ValueError(f"amed option afs must be True or False, got {self.afs!r}")
        for field, upper in (("scale_dir", 1.0), ("scale_time", 1.0)):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < upper):
                raise ValueError(f"amed option {field} must be a number in [0, {upper}) (the half-width of its "
                                 f"range around 1; 0 fixes it at 1), got {value!r}")
        r = known(self.r)
        if r is not None and not (is_real(r) and np.all((r > 0) & (r < 1))):
            raise ValueError(f"amed option r must lie in (0, 1), got {self.r!r}")
        if self.params is not None and not (isinstance(self.params, dict) and "projection" in self.params):
            raise ValueError("amed option params must be None or a predictor's flat parameter dict "
                             "(samplers.amed.init_params), with its 'projection'")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return (dict(), dict(afs=True), dict(base="ipndm"), dict(base="ipndm", order=1), dict(base="dpmpp"),
                dict(base="dpmpp", order=2, afs=True))

    @property
    def native(self) -> str:  # type: ignore[override]  # the base's class constant, from the base here
        return _BASE[self.base][0]

    @property
    def convergence_order(self) -> int:
        # "euler" is a midpoint rule (order 2). The plugins (r = 1/2) under grid refinement on the oracle
        # (tests/test_order.py's slow sweep) measured 1.98 with ipndm order 4 and dpmpp order 3, 1.02 with ipndm
        # order 1 and 0.94 with dpmpp order 2 and AFS: their inserted points make unequal substeps, on which the
        # base's fixed weights are not exact. Claimed from those measurements.
        if self.base == "euler":
            return 2
        return 2 if int(self.order) >= 3 else 1  # type: ignore[arg-type]  # set in __post_init__

    @property
    def width(self) -> int:
        """The history the multistep base keeps (its largest order)."""
        return int(self.order)  # type: ignore[arg-type]  # set in __post_init__

    def loop_nfe(self, num_steps: int) -> int:
        return 2 * num_steps - int(self.afs)

    def check_times(self, process: Process, ts: Any) -> None:
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            gamma = np.asarray(process.gamma(np.asarray(ts, np.float64)))
        if not np.all(np.isfinite(gamma) & (gamma > 0)):
            raise ValueError(f"amed needs 0 < sigma / alpha < inf at every grid point (its intermediate time is the "
                             f"geometric mean gamma_n^(1-r) gamma_(n+1)^r); got gamma = {gamma.tolist()}: end at "
                             f"t_min > 0 and start where alpha > 0")

    def coefficients(self, process: Process, ts: jax.Array) -> AMEDCoefficients:
        gamma, lam = process.gamma(ts), process.log_snr(ts)
        n = ts.shape[0] - 1
        orders = step_orders(self.width, 2 * n, self.lower_order_final).reshape(n, 2)  # type: ignore[arg-type]
        return AMEDCoefficients(gamma[:-1], gamma[1:], lam[:-1], lam[1:], jnp.asarray(orders))

    def init(self, x: jax.Array) -> Any:
        if self.base == "euler":
            return ()
        # The history of the base: predictions (newest first) and their log-SNRs, per sample.
        return jnp.zeros((self.width,) + x.shape, x.dtype), jnp.zeros((self.width,) + x.shape[:1], x.dtype)

    def predict(self, process: Process, x: jax.Array, pred: jax.Array, s: jax.Array,
                coef: AMEDCoefficients) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(r, c, a) for the step from s, each (B,) (scalars without a predictor)."""
        if self.params is None:
            one = jnp.ones((), x.dtype)
            return jnp.asarray(self.r, x.dtype), one, one
        params = dict(self.params)
        projection = jax.lax.stop_gradient(params.pop("projection"))  # fixed, never trained
        flat = lambda v: v.reshape(v.shape[0], -1).astype(projection.dtype)  # noqa: E731
        norm = jnp.sqrt(process.alpha(s) ** 2 + process.sigma(s) ** 2)  # x at unit scale, as y / sqrt(1 + gamma^2)
        features = jnp.concatenate([flat(x) @ projection / norm, flat(pred) @ projection], axis=-1)
        module = AMEDPredictor(self.scale_dir, self.scale_time)
        r, c, a = module.apply({"params": traverse_util.unflatten_dict(params, sep="/")}, features,
                               coef.gamma_s.astype(projection.dtype), coef.gamma_t.astype(projection.dtype))
        return r.astype(x.dtype), c.astype(x.dtype), a.astype(x.dtype)

    def step(self, model: Model, process: Process, x: jax.Array, state: Any,
             inp: StepInputs) -> tuple[jax.Array, Any]:
        return self.forced_step(model, process, x, state, inp)[:2]

    def forced_step(self, model: Model, process: Process, x: jax.Array, state: Any,
                    inp: StepInputs) -> tuple[jax.Array, Any, tuple[jax.Array, ...]]:
        """`step`, also returning (r, c, a) (what `schedules.learn("amed", ...)` trains and reports)."""
        co = inp.coef
        alpha_s = process.alpha(inp.s)
        if self.afs:
            eps_afs = x / jnp.sqrt(alpha_s**2 + process.sigma(inp.s) ** 2)  # solvers_amed.py L133
            if self.native == "x0":
                eps_afs = (x - process.sigma(inp.s) * eps_afs) / alpha_s  # denoised = x - t d (L596)
            pred = jax.lax.cond(inp.i == 0, lambda: eps_afs.astype(x.dtype),
                                lambda: model(x, inp.s).astype(x.dtype))
        else:
            pred = model(x, inp.s).astype(x.dtype)
        r, c, a = self.predict(process, x, pred, inp.s, co)
        lam_mid = (1.0 - r) * co.lam_s + r * co.lam_t  # gamma_mid = gamma_t^r gamma_s^(1 - r)
        per_sample = jnp.ndim(lam_mid) > 0
        bshape = (-1,) + (1,) * (x.ndim - 1) if per_sample else ()
        t_mid = process.t_of_log_snr(lam_mid)
        t_eval = process.t_of_log_snr(lam_mid - jnp.log(a))  # gamma(t_eval) = a gamma_mid
        alpha_mid, alpha_eval = process.alpha(t_mid), process.alpha(t_eval)

        def evaluate(x_mid):
            x_in = cast_like(x_mid * jnp.reshape(alpha_eval / alpha_mid, bshape), x)
            if per_sample:
                out = jax.vmap(lambda xi, ti: model(xi[None], ti)[0])(x_in, t_eval)
            else:
                out = model(x_in, t_eval)
            out = out.astype(x.dtype)
            if self.native == "eps":  # the direction (y_mid - D) / gamma_mid = a eps (L150)
                return out * jnp.reshape(a, bshape)
            return out  # D(y_mid, a gamma_mid) is the x0 prediction itself (dpm_pp_sampler L613)

        if self.base == "euler":
            g_mid = jnp.exp(-lam_mid)
            y = x / alpha_s
            y_mid = y + jnp.reshape(g_mid - co.gamma_s, bshape) * pred
            d_mid = evaluate(y_mid * jnp.reshape(alpha_mid, bshape))
            y_next = y + jnp.reshape(c * (co.gamma_t - co.gamma_s), bshape) * d_mid
            return cast_like(y_next * process.alpha(inp.t), x), state, (r, c, a)
        preds, lams = state
        lam_s = jnp.broadcast_to(co.lam_s, x.shape[:1]).astype(x.dtype)
        lam_mid_b = jnp.broadcast_to(lam_mid, x.shape[:1]).astype(x.dtype)
        lam_t = jnp.broadcast_to(co.lam_t, x.shape[:1]).astype(x.dtype)
        preds = jnp.concatenate([pred[None], preds[:-1]])
        lams = jnp.concatenate([lam_s[None], lams[:-1]])
        x_mid = self._update(process, x, preds, lams, lam_mid_b, co.orders[0], jnp.ones((), x.dtype))
        pred_mid = evaluate(x_mid)
        preds = jnp.concatenate([pred_mid[None], preds[:-1]])
        lams = jnp.concatenate([lam_mid_b[None], lams[:-1]])
        x_next = self._update(process, x_mid, preds, lams, lam_t, co.orders[1], c)
        return cast_like(x_next, x), (preds, lams), (r, c, a)

    def _update(self, process, x, preds, lams, lam_next, order, scale):
        """One multistep update of the base from lams[0] to lam_next (per sample), its prediction terms scaled."""
        bshape = (-1,) + (1,) * (x.ndim - 1)
        t_cur, t_next = process.t_of_log_snr(lams[0]), process.t_of_log_snr(lam_next)
        if self.base == "ipndm":
            weights = jnp.asarray(IPNDM_WEIGHTS, x.dtype)[order - 1, : self.width]  # (W,)
            d = jnp.tensordot(weights, preds, axes=1)
            a_ratio = process.alpha(t_next) / process.alpha(t_cur)
            dg = jnp.exp(-lam_next) - jnp.exp(-lams[0])
            step = jnp.reshape(scale * process.alpha(t_next) * dg, bshape) * d
            return jnp.reshape(a_ratio, bshape) * x + step
        h = lam_next - lams[0]
        # History spacings; where the history is short the order does not use them, and 1 keeps every weight finite
        # (and its gradient: a where() does not stop NaNs flowing back from the unused branch).
        h_prev = jnp.where(order >= 2, lams[0] - lams[1], 1.0)
        h_prev2 = jnp.where(order >= 3, lams[1] - lams[2], 1.0) if self.width >= 3 else jnp.ones_like(h)
        b = dpmpp_weights(h, h_prev, h_prev2, order, self.width)  # (B, W)
        x0_terms = jnp.einsum("bw,wb...->b...", b, preds)
        ratio = process.sigma(t_next) / process.sigma(t_cur)
        return (jnp.reshape(ratio, bshape) * x
                + jnp.reshape(scale * process.alpha(t_next), bshape) * x0_terms)

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        if self.params is not None:  # arrays: `schedules.save_learned` stores them beside the JSON
            spec["options"]["params"] = {k: np.asarray(v) for k, v in self.params.items()}
        if not isinstance(self.r, float):
            spec["options"]["r"] = np.asarray(self.r)
        return spec


STUDENTS = Registry.of_names("AMED students", ("single", "chained", "unrolled"), ordered=True,
                              unknown="amed: unknown {kind} {name!r}; valid: {valid}")


def student_states(solver: AMED, model: Model, process: Process, xs: jax.Array, ts: jax.Array,
                   students: str = "single") -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """The student's state after each step against the teacher's states xs, as AMED's training loss reads them.

    `students` (`training/training_loop.py` L194-L215, `training/loss.py`):
    - "single": step n starts from xs[n], the teacher's state (the published choice for single-step students,
      "euler"); the base's history comes from the student's own previous steps, gradient stopped (the published
      buffers are detached).
    - "chained": step n starts from the student's own x_n with its own history, both gradient stopped (the
      published choice for multistep students: `latents = stu_out`, which loss.py returns detached), so each step's
      loss sees only its own step's parameters' effect.
    - "unrolled": the whole student trajectory, x_n and history carried with their gradients: the loss at step n
      differentiates through every earlier step (backpropagation through the sampler; not in the published code).

    Args:
      solver: an `AMED` solver.
      model: (x, t) -> the solver's native prediction.
      xs: (num_steps + 1, *x.shape) the teacher's states on ts (xs[0], the common start).
      ts: the student's grid.
      students: "single", "chained" or "unrolled".

    Returns:
      (the student's states at ts[1:], (num_steps, *x.shape); (r, c, a) per step).
    """
    STUDENTS.check(students)
    stop = jax.lax.stop_gradient if students != "unrolled" else (lambda v: v)

    def body(carry, args):
        x_own, state = carry
        x_tea, inp = args
        x_next, state, rca = solver.forced_step(model, process, x_tea if students == "single" else x_own, state, inp)
        return (stop(x_next), stop(state)), (x_next, rca)

    carry = (xs[0], solver.init(xs[0]))
    _, (out, rca) = jax.lax.scan(body, carry, (xs[:-1], step_inputs(solver, process, ts)))
    return out, rca
