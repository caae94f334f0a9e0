"""DPM-Solver-v3 (Zheng et al., NeurIPS 2023): the exponential integrator of the ODE rewritten with the model's
empirical statistics l, s, b (reference sheet, section C; the statistics come from `schedules.optimal.ems`).

In lambda = log(alpha / sigma) and per dimension (Eq. 4-9), with N = sigma eps - l x, f = N / alpha:

  dx/dlambda = (alpha'/alpha - l) x - N,      g = e^{-S_s(lambda)} f - int_s^lambda e^{-S_s(r)} b(r) dr,

L, S the integrals of l, s on the statistics grid. With the Taylor expansion of g at lambda_s (order n + 1):

  x_t = alpha_t e^{L_s - L_t} [x_s / alpha_s - sum_k E_k g^(k) - E_b],
  E_k = int_s^t e^{(L+S)(lambda) - (L+S)(lambda_s)} (lambda - lambda_s)^k / k! dlambda,
  E_b = int_s^t e^{(L+S)(lambda) - (L+S)(lambda_s)} e^{S_s} (B(lambda) - B_s) dlambda,  B = int e^{-S} b,

which is the reference's update (dpm_solver_v3.py, multistep_predictor_update: E_0 = e^{-S_s}(I_t - I_s) e^{L_s},
E_b = e^{-L_s}(C_t - C_s - B_s(I_t - I_s))) written relative to lambda_s (no difference of large cumulative sums).
The g^(k) solve the Vandermonde system sum_k delta_i^k g^(k) / k! = g_i - g_0 over the last n points (the pseudo
order: g^(k) = k! times the k-th Newton divided difference); the corrector is the same update from the previous
point, with the fresh prediction as an extra point, after which the cached eps is eps + l (x^c - x) / sigma (so N,
and f, are unchanged). Every step is linear in (x_s, the f's of the history): x_t = A x_s - sum_j W_j f_j + c, with
the per-dimension A, W, c computed once per grid, outside the loop (`coefficients`).

Quadrature on the statistics grid. "trapezoid" is the reference's rule (weighted_cumsumexp_trapezoid).
"exponential" (default) takes the exponent L + S and the weights b, B linear on each cell and integrates
e^{linear} x polynomial exactly (phi functions): the same second order in the grid spacing, and exact where
l, s are constant, so that l = 1, s = b = 0 is DPM-Solver++ to rounding (the reference's `degenerated` is that
only up to its trapezoid error).

Step times are snapped to the statistics grid, as the reference does (convert_to_indexes): a time's statistics
are those of its nearest grid point, and `check_times` refuses a time more than 1e-3 of a cell away from every
grid point (`grid_times` snaps a grid). Interpolating would run on any grid, but the statistics are only defined
on the grid (s, b are per-point regressions), and snapping keeps the fixture comparison exact.

Without statistics (the registry's default) the solver runs with l = 1, s = b = 0 on the step grid itself: the
exact-coefficient DPM-Solver++ (order 2: the phi_2 ("heun") rule; order 3: the third-order 3M).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.samplers.base import Model, Solver, StepInputs, cast_like
from fastsamplers.samplers.exponential import phi_functions
from fastsamplers.samplers.multistep import check_lower_order_final, step_orders
from fastsamplers.samplers.pytrees import known

if TYPE_CHECKING:
    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process

QUADRATURES = Registry.of_names("quadrature", ("exponential", "trapezoid"), ordered=True,
                                unknown="dpm_solver_v3: {kind} must be {alternatives}, got {name!r}")
STATISTICS = ("lambdas", "l", "s", "b")
# How far (in cells) a step's log-SNR may sit from its grid point: float32 grids (the reference's) are off by ~1e-5.
SNAP_TOLERANCE = 1e-3


def _cumulative_trapezoid(lam: jax.Array, v: jax.Array) -> jax.Array:
    """int_{lam_0}^{lam_j} v, (N+1, *E), by the trapezoid rule (exact for v linear on each cell)."""
    h = _cells(lam, v)
    return jnp.concatenate([jnp.zeros_like(v[:1]), jnp.cumsum(0.5 * h * (v[1:] + v[:-1]), axis=0)])


def _cells(lam: jax.Array, like: jax.Array) -> jax.Array:
    """The cell widths lam_{j+1} - lam_j shaped (N, 1, ...) to broadcast against (N, *E)."""
    return (lam[1:] - lam[:-1]).reshape((-1,) + (1,) * (like.ndim - 1))


def _weighted_cells(lam: jax.Array, a: jax.Array, anchor: jax.Array, mask: jax.Array, w: jax.Array,
                    rule: str) -> jax.Array:
    """sum over the cells in `mask` of int_cell e^{a - anchor} w dlambda, w linear on each cell (given at the grid
    points), a linear on each cell ("exponential") or the trapezoid rule. mask (N,), a, w (N+1, *E)."""
    h = _cells(lam, a)
    m = mask.reshape(h.shape)
    a0 = jnp.where(m, a[:-1] - anchor[None], 0.0)  # masked cells may overflow: keep their exponent at 0
    a1 = jnp.where(m, a[1:] - anchor[None], 0.0)
    if rule == "trapezoid":
        cell = 0.5 * h * (jnp.exp(a0) * w[:-1] + jnp.exp(a1) * w[1:])
    else:
        # lambda = lam_j + h u, a = a0 + z u (z = a1 - a0), w = w0 + (w1 - w0) u; int_0^1 e^{z u} u^m / m! du
        # = e^z phi_{m+1}(-z) (phi_{m+1}(y) = int_0^1 e^{(1-v) y} v^m / m! dv): all terms positive, no cancellation.
        phi1, phi2 = phi_functions(a0 - a1, 2)
        cell = jnp.exp(a1) * h * (w[:-1] * phi1 + (w[1:] - w[:-1]) * phi2)
    return jnp.sum(jnp.where(m, cell, 0.0), axis=0)


def _moment_cells(lam: jax.Array, a: jax.Array, i_s: jax.Array, mask: jax.Array, k: int, rule: str) -> jax.Array:
    """E_k = int over the masked cells of e^{a - a[i_s]} (lambda - lam[i_s])^k / k!. The polynomial is exact per
    cell in the exponential rule: with c = lam_j - lam_s >= 0 and lambda = lam_j + h u, (lambda - lam_s)^k / k! =
    sum_m c^{k-m} / (k-m)! (h u)^m / m!, and int_0^1 e^{z u} u^m / m! du = e^z phi_{m+1}(-z) (`_weighted_cells`)."""
    anchor = a[i_s]
    if rule == "trapezoid":
        poly = ((lam - lam[i_s]) ** k / math.factorial(k)).reshape((-1,) + (1,) * (a.ndim - 1))
        return _weighted_cells(lam, a, anchor, mask, jnp.broadcast_to(poly, a.shape), rule)
    h = _cells(lam, a)
    m = mask.reshape(h.shape)
    a1 = jnp.where(m, a[1:] - anchor[None], 0.0)
    phis = phi_functions(jnp.where(m, a[:-1] - a[1:], 0.0), k + 1)  # phi_{m+1}(-z), z = a1 - a0
    c = (lam[:-1] - lam[i_s]).reshape(h.shape)
    total = sum(c ** (k - j) / math.factorial(k - j) * h**j * phis[j] for j in range(k + 1))
    return jnp.sum(jnp.where(m, jnp.exp(a1) * h * total, 0.0), axis=0)


def derivative_weights(lams: jax.Array, pseudo: bool) -> jax.Array:
    """M (n, n) with g^(k) = sum_j M[k, j] g_j (k = 0..n-1; g^(0) = g_0) from the values g_j at lams[j] (lams[0] the
    expansion point): the Vandermonde solve of the reference's compute_high_order_derivatives, or with `pseudo` k!
    times the k-th Newton divided difference. Linear in g: computed on the unit vectors."""
    n = lams.shape[0]
    eye = jnp.eye(n, dtype=lams.dtype)
    if n == 1:
        return eye
    if pseudo:
        table, rows = eye, [eye[0]]
        for k in range(1, n):
            table = (table[:-1] - table[1:]) / (lams[:n - k] - lams[k:])[:, None]
            rows.append(math.factorial(k) * table[0])
        return jnp.stack(rows)
    delta = lams[1:] - lams[0]
    powers = jnp.stack([delta**k for k in range(1, n)], axis=1)  # (i, k): delta_i^k
    solution = jnp.linalg.solve(powers, eye[1:] - eye[:1])  # (k, j)
    factorials = jnp.asarray([math.factorial(k) for k in range(1, n)], lams.dtype)[:, None]
    return jnp.concatenate([eye[:1], factorials * solution])


@dataclasses.dataclass(frozen=True)
class DPMSolverV3(Solver):
    """DPM-Solver-v3's multistep predictor (order 1-3, `predictor_pseudo`) with its optional corrector (no extra
    model call; `corrector_pseudo` raises its order by one, the reference's c_pseudo), warm-up and lower-order final
    steps by the multistep rule (`samplers.multistep`).

    The statistics are pytree leaves (one compile serves new statistics): `lambdas` (N+1,) the increasing log-SNR
    grid, `l`, `s`, `b` (N+1, *E) with E broadcastable to a sample's shape (E = () for statistics shared by every
    dimension). All None: l = 1, s = b = 0 on the step grid (DPM-Solver++, module docstring).
    """

    name = "dpm_solver_v3"
    native = "eps"
    order: int = 3
    predictor_pseudo: bool = False
    corrector: bool = False
    corrector_pseudo: bool = False
    lower_order_final: bool | str = True
    quadrature: str = "exponential"
    lambdas: Any = None
    l: Any = None
    s: Any = None
    b: Any = None
    traced: ClassVar[tuple[str, ...]] = STATISTICS

    def __post_init__(self) -> None:
        for field in STATISTICS:
            value = getattr(self, field)
            if value is not None and not isinstance(value, (jax.Array, np.ndarray)):
                object.__setattr__(self, field, np.asarray(value, np.float64))
        super().__post_init__()

    def check(self) -> None:
        if isinstance(self.order, bool) or self.order not in (1, 2, 3):
            raise ValueError(f"dpm_solver_v3 supports order in [1, 2, 3], got {self.order!r}")
        for flag in ("predictor_pseudo", "corrector", "corrector_pseudo"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"dpm_solver_v3 option {flag} must be True or False, got {getattr(self, flag)!r}")
        check_lower_order_final(self.name, self.lower_order_final)
        QUADRATURES.check(self.quadrature)
        given = [f for f in STATISTICS if getattr(self, f) is not None]
        if given and len(given) != len(STATISTICS):
            raise ValueError(f"dpm_solver_v3 needs all of the statistics {list(STATISTICS)} or none (none: l = 1, "
                             f"s = b = 0, DPM-Solver++), got only {given}")
        values = {f: known(getattr(self, f)) for f in given}
        if not given or any(v is None for v in values.values()):
            return
        lam = values["lambdas"]
        if lam.ndim != 1 or lam.size < 2 or not np.all(np.isfinite(lam)) or not np.all(np.diff(lam) > 0):
            raise ValueError(f"dpm_solver_v3: lambdas must be a finite, strictly increasing 1-D log-SNR grid of >= 2 "
                             f"points, got shape {lam.shape}")
        shapes = {f: values[f].shape for f in ("l", "s", "b")}
        if len(set(shapes.values())) != 1 or shapes["l"][:1] != lam.shape:
            raise ValueError(f"dpm_solver_v3: l, s and b must share one shape (N+1, ...) with N+1 = {lam.size} grid "
                             f"points, got {shapes}")
        if not all(np.all(np.isfinite(values[f])) for f in ("l", "s", "b")):
            raise ValueError("dpm_solver_v3: the statistics l, s, b must be finite")

    @classmethod
    def variants(cls) -> tuple[dict, ...]:
        return (dict(order=1), dict(order=2), dict(order=3, predictor_pseudo=True), dict(order=3, corrector=True),
                dict(order=3))

    @property
    def convergence_order(self) -> int:
        # The pseudo order's g^(1) is the first divided difference, O(h) off the derivative: order 3 drops to 2.
        order = 2 if self.order == 3 and self.predictor_pseudo else self.order
        return min(order, 2) if self.lower_order_final == "always" else order

    def spec(self) -> dict[str, Any]:
        options = super().spec()["options"]
        for field in STATISTICS:  # arrays: `schedules.save_learned` stores them beside the JSON
            if options[field] is not None:
                options[field] = np.asarray(options[field])
        return {"name": self.name, "options": options}

    def at_order(self, order: int) -> DPMSolverV3:
        return dataclasses.replace(self, order=order)

    def check_grid(self, num_steps: int) -> None:
        if num_steps < self.order:
            raise ValueError(f"dpm_solver_v3 of order {self.order} needs a grid of at least {self.order} steps, got "
                             f"{num_steps}; use more steps or a lower order")

    def check_times(self, process: Process, ts: HostArrayLike) -> None:
        lam = np.asarray(process.log_snr(jnp.asarray(ts)), np.float64)
        if not np.all(np.isfinite(lam)):
            raise ValueError(f"dpm_solver_v3 needs a finite log-SNR at every time (sigma > 0 and alpha > 0): "
                             f"ts = {np.asarray(ts).tolist()} of {process.name} reach {lam.tolist()}")
        grid = known(self.lambdas)
        if grid is None or self.lambdas is None:
            return
        index = np.abs(lam[:, None] - grid[None, :]).argmin(axis=1)
        spacing = np.diff(grid).min()
        off = np.abs(lam - grid[index]) / spacing
        if np.any(off > SNAP_TOLERANCE) or lam.min() < grid[0] - spacing * SNAP_TOLERANCE:
            raise ValueError(f"dpm_solver_v3: the times must lie on the statistics grid (log-SNR {grid[0]:.4g} to "
                             f"{grid[-1]:.4g}, {grid.size} points); {int(np.sum(off > SNAP_TOLERANCE))} of "
                             f"{lam.size} do not: snap them with solver.grid_times(process, ts)")

    def grid_times(self, process: Process, ts: HostArrayLike) -> np.ndarray:
        """ts snapped to the statistics grid (the nearest grid point in log-SNR of each time; the reference's
        convert_to_indexes / convert_to_timesteps), as float64 numpy.

        Raises:
          ValueError: two times snap to one grid point (the grid is too coarse for this many steps).
        """
        if self.lambdas is None:
            return np.asarray(ts, np.float64)
        grid = np.asarray(self.lambdas, np.float64)
        lam = np.asarray(process.log_snr(np.asarray(ts, np.float64)), np.float64)
        index = np.abs(lam[:, None] - grid[None, :]).argmin(axis=1)
        if np.any(np.diff(index) <= 0):
            raise ValueError(f"dpm_solver_v3: {len(ts)} times snap to grid indices {index.tolist()} of a "
                             f"{grid.size}-point statistics grid; two share a point: use a finer grid or fewer steps")
        return np.asarray(process.t_of_log_snr(np.asarray(grid[index], np.float64)), np.float64)

    # -- the coefficient table -------------------------------------------------------------------------------

    def history(self) -> int:
        """How many (x, eps) points the state keeps: the predictor's `order`, one more for a pseudo corrector."""
        return self.order + int(self.corrector and self.corrector_pseudo)

    def coefficients(self, process: Process, ts: jax.Array) -> dict[str, jax.Array]:
        n = ts.shape[0] - 1
        lam_t, alpha, sigma = process.log_snr(ts), process.alpha(ts), process.sigma(ts)
        if self.lambdas is None:
            grid, index = lam_t, jnp.arange(n + 1)
            l = jnp.ones_like(lam_t)
            s = b = jnp.zeros_like(lam_t)
        else:
            grid = jnp.asarray(self.lambdas, lam_t.dtype)
            l, s, b = (jnp.asarray(v, lam_t.dtype) for v in (self.l, self.s, self.b))
            index = jnp.argmin(jnp.abs(lam_t[:, None] - grid[None, :]), axis=1)
        L, S = _cumulative_trapezoid(grid, l), _cumulative_trapezoid(grid, s)
        a = L + S
        cells = jnp.arange(grid.shape[0] - 1)
        # B_j = int_{lam_0}^{lam_j} e^{-S} b: each cell's integral (anchor 0), accumulated.
        b_cells = jax.vmap(lambda j: _weighted_cells(grid, -S, jnp.zeros_like(S[0]), cells == j, b,
                                                     self.quadrature))(cells)
        B = jnp.concatenate([jnp.zeros_like(b[:1]), jnp.cumsum(b_cells, axis=0)])
        width = self.history()

        def transfer(i_from, i_to, newest, points, count, pseudo):
            """(A, W over the history positions, c) of the update from ts[i_from] to ts[i_to] expanded at ts[i_from]
            on the history positions `points` (position p is grid point newest - p; the expansion point first), of
            which the first `count` are used."""
            gi, gt = index[i_from], index[i_to]
            mask = (cells >= gi) & (cells < gt)
            moments = [_moment_cells(grid, a, gi, mask, k, self.quadrature) for k in range(count)]
            beta = jnp.exp(S[gi])[None] * (B - B[gi][None])
            e_b = _weighted_cells(grid, a, a[gi], mask, beta, self.quadrature)
            pts = [newest - p for p in points[:count]]
            weights = derivative_weights(lam_t[jnp.asarray(pts)], pseudo)
            k_factor = alpha[i_to] * jnp.exp(L[gi] - L[gt])
            w = jnp.zeros((width,) + l.shape[1:], l.dtype)
            c = -e_b
            for j, (p, i_p) in enumerate(zip(points[:count], pts)):
                gj = index[i_p]
                combined = sum(moments[k] * weights[k, j] for k in range(count))
                w = w.at[p].add(k_factor * combined * jnp.exp(S[gi] - S[gj]))
                c = c + combined * jnp.exp(S[gi]) * (B[gj] - B[gi])
            return k_factor / alpha[i_from] * jnp.ones_like(c), w, k_factor * c

        orders = step_orders(self.order, n, self.lower_order_final)
        rows = []
        for i in range(n):
            hist = np.clip(i - np.arange(width), 0, None)  # the grid points of the history positions
            A, W, c = transfer(i, i + 1, i, list(range(width)), int(orders[i]), self.predictor_pseudo)
            row = dict(A=A, W=W, c=c, sigma=sigma[hist], alpha=alpha[hist], l=l[index[hist]])
            if self.corrector:
                c_order = (int(orders[i - 1]) if i > 0 else 0) + int(self.corrector_pseudo)
                if c_order > 1:  # the reference applies it from order 2 (sample: step_c_order > 1)
                    # From the previous point (position 1), the fresh one (position 0) next, then older ones.
                    Ac, Wc, cc = transfer(i - 1, i, i, [1, 0] + list(range(2, width)), c_order, self.corrector_pseudo)
                    row.update(use=jnp.asarray(True), Ac=Ac, Wc=Wc, cc=cc)
                else:
                    row.update(use=jnp.asarray(False), Ac=jnp.zeros_like(A), Wc=jnp.zeros_like(W),
                               cc=jnp.zeros_like(c))
            rows.append(row)
        return jax.tree.map(lambda *v: jnp.stack(v), *rows)

    # -- the loop ---------------------------------------------------------------------------------------------

    def init(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        zeros = jnp.zeros((self.history(),) + x.shape, x.dtype)
        return zeros, zeros

    def past_state(self, xs: list[jax.Array], preds: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(the states, the eps predictions) at the points before the newest of xs, newest first, zero-padded."""
        width, past = self.history(), len(xs) - 1
        take = lambda vs: [vs[past - 1 - j] if j < past else jnp.zeros_like(xs[0]) for j in range(width)]
        return jnp.stack(take(xs)), jnp.stack(take(preds))

    def step(self, model: Model, process: Process, x: jax.Array, state: tuple[jax.Array, jax.Array],
             inp: StepInputs) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        coef = inp.coef
        xs, eps = state
        eps_s = model(x, inp.s).astype(x.dtype)
        xs = jnp.concatenate([x[None], xs[:-1]])
        eps = jnp.concatenate([eps_s[None], eps[:-1]])

        def per_point(v):  # (H, *E) -> broadcastable against (H, *x.shape)
            return v.reshape(v.shape[:1] + (1,) * (xs.ndim - v.ndim) + v.shape[1:])

        def per_sample(v):
            return v.reshape((1,) * (x.ndim - v.ndim) + v.shape)

        # f = N / alpha with N = sigma eps - l x (Eq. 4), at every history point.
        f = (per_point(coef["sigma"]) * eps - per_point(coef["l"]) * xs) / per_point(coef["alpha"])
        if self.corrector:
            x_c = per_sample(coef["Ac"]) * xs[1] - jnp.sum(per_point(coef["Wc"]) * f, axis=0) + per_sample(coef["cc"])
            x_c = jnp.where(coef["use"], x_c, x)
            # The reference's eps^c = eps + l (x^c - x) / sigma keeps N (and f) as they were.
            eps = eps.at[0].set(eps_s + per_sample(coef["l"][0]) * (x_c - x) / coef["sigma"][0])
            xs = xs.at[0].set(x_c)
            x = x_c
        x_next = per_sample(coef["A"]) * x - jnp.sum(per_point(coef["W"]) * f, axis=0) + per_sample(coef["c"])
        return cast_like(x_next, x), (xs, eps)
