"""Semi-discrete optimal transport: the Brenier map from a continuous source measure mu to N weighted points.

For targets y_1..y_N with masses nu_i, and the cost -<x, y> (the quadratic cost |x - y|^2 / 2 up to terms that do
not depend on the pairing), the optimal map is the gradient of the convex potential

    u_h(x) = max_i <x, y_i> + h_i,         T(x) = y_{argmax_i <x, y_i> + h_i},

piecewise constant on the power cells C_i = {x : argmax = i}. The weights h minimise the convex dual energy
E(h) = E_mu[u_h(x)] - sum_i nu_i h_i, whose gradient is dE/dh_i = mu(C_i) - nu_i (Gu et al. 2016; An et al.
2020 "AE-OT"; DPM-OT, Li et al. 2023): T pushes mu onto sum_i nu_i delta_{y_i} exactly when every cell carries its
target mass. The energy is invariant to adding a constant to h, so h is kept at zero mean.

The fit follows DPM-OT's `ot_utils/optimal_transport.py` (reference sheet, section 7): the cell masses mu(C_i) by
Monte Carlo (about 10 N source draws an iteration), a step of Adam on the estimated gradient, h -= mean(h); stop when
||grad|| < tol with no empty cell; after `patience` iterations without a new best ||grad||, double the draws and
multiply the step size by `lr_decay`, at most `max_doublings` times. It is one compiled `lax.while_loop`; the draws of
an iteration are made in chunks of `chunk_size`, so no more than N x chunk_size scores exist at once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, DTypeLike

Source = Callable[[jax.Array, int], jax.Array]  # (key, n) -> n draws of the source, (n, *shape)
SCORE_BUDGET = 2**22  # scores (N x chunk) held at once by default: 32 MiB in float64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SemiDiscreteOT:
    """A semi-discrete OT map T(x) = y_{argmax_i <x, y_i> + h_i} (a pytree: targets and h are its leaves).

    Attributes:
      targets: (N, *shape) the points y_i.
      h: (N,) the dual weights (zero mean).
      chunk_size: sources scored at once by `assign` (static): N x chunk_size scores at most.
    """

    targets: jax.Array
    h: jax.Array
    chunk_size: int = dataclasses.field(default=1024, metadata={"static": True})

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one target (and of one source point)."""
        return tuple(self.targets.shape[1:])

    def _flat(self, x: jax.Array) -> jax.Array:
        ndim = len(self.shape)
        if tuple(x.shape[x.ndim - ndim:]) != self.shape or x.ndim < ndim:
            raise ValueError(f"x must end in the targets' shape {self.shape}, got shape {x.shape}")
        return x.reshape(-1, math.prod(self.shape))

    def _best(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(max_i <x, y_i> + h_i, its argmax) of every point, over the flattened points in chunks."""
        flat, targets = self._flat(x), self.targets.reshape(self.targets.shape[0], -1)

        def one(point):
            scores = targets @ point + self.h
            return jnp.max(scores), jnp.argmax(scores)

        best, index = jax.lax.map(one, flat, batch_size=max(1, min(self.chunk_size, flat.shape[0])))
        batch = x.shape[:x.ndim - len(self.shape)]
        return best.reshape(batch), index.reshape(batch)

    def potential(self, x: jax.Array) -> jax.Array:
        """The Brenier potential u_h(x) = max_i <x, y_i> + h_i, shape x.shape minus the example shape."""
        return self._best(x)[0]

    def assign(self, x: jax.Array) -> jax.Array:
        """The cell of each point: argmax_i <x, y_i> + h_i (int), shape x.shape minus the example shape."""
        return self._best(x)[1]

    def map(self, x: jax.Array) -> jax.Array:
        """T(x) = y_assign(x): each point replaced by the target of its cell (x's shape)."""
        return self.targets[self.assign(x)].astype(self.targets.dtype)

    def cell_masses(self, x: jax.Array) -> jax.Array:
        """The Monte Carlo masses of the cells: the fraction of the points x (draws of the source) in each, (N,)."""
        cells = self.assign(x).reshape(-1)
        return jnp.bincount(cells, length=self.targets.shape[0]) / cells.size

    @classmethod
    def fit(cls, key: jax.Array, targets: ArrayLike, masses: ArrayLike | None = None, source: Source | None = None,
            *, lr: float = 0.1, tol: float = 8e-4, samples_per_iteration: int | None = None,
            max_iter: int = 10000, patience: int = 50, max_doublings: int = 3, lr_decay: float = 0.8,
            chunk_size: int | None = None) -> tuple[SemiDiscreteOT, dict]:
        """Fit the dual weights h by stochastic gradient on Monte Carlo cell masses (module docstring).

        Args:
          key: PRNG key of the source draws (iteration i, chunk c from fold_in(fold_in(key, i), c)).
          targets: (N, *shape) float array, the points y_i.
          masses: (N,) non-negative, summing to 1; None: uniform 1 / N (DPM-OT's ot_util line 74).
          source: (key, n) -> (n, *shape) draws of the source measure; None: the standard normal N(0, I), the
            whitened prior x_{t_max} / sigma(t_max) of every process here (DPM-OT draws U[0, 1]^d instead).
          lr: Adam's step size (DPM-OT: 0.1 for CIFAR-10, 20 for FFHQ).
          tol: stop when the estimated ||grad|| = ||mu_hat(C) - nu|| falls below it with no empty cell (DPM-OT:
            8e-4). The estimate's own Monte Carlo error is about sqrt(1 / draws): below it, only more draws help.
          samples_per_iteration: source draws an iteration, before any doubling; None: 10 N (DPM-OT).
          max_iter: iterations at most.
          patience: iterations without a new best ||grad|| before the draws double and lr *= lr_decay (DPM-OT: 50).
          max_doublings: at most this many doublings (DPM-OT: 3).
          lr_decay: the step size's factor at each doubling (DPM-OT: 0.8).
          chunk_size: draws scored at once; None: about 2^22 / N, at most samples_per_iteration.

        Returns:
          (ot, info): the fitted `SemiDiscreteOT`; info with "converged" (bool), "iterations", "grad_norm" and
          "num_empty" (the empty cells) at the last iteration, "samples_per_iteration" (at the end),
          "samples_drawn" (in all), "lr" (at the end), "doublings",
          "seconds" (wall time, compilation included).

        Raises:
          ValueError: bad targets, masses or options (before any compute).
          FloatingPointError: the fitted weights are not finite.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> targets = jnp.array([[-1.0], [1.0]])
            >>> ot, info = SemiDiscreteOT.fit(jax.random.PRNGKey(0), targets, jnp.array([0.25, 0.75]), tol=0.02,
            ...                               samples_per_iteration=4096)
            >>> bool(info["converged"]), ot.map(jnp.array([[-3.0], [3.0]])).ravel().tolist()
            (True, [-1.0, 1.0])
        """
        targets = jnp.asarray(targets)
        if targets.ndim < 2 or targets.shape[0] < 1 or not jnp.issubdtype(targets.dtype, jnp.floating):
            raise ValueError(f"targets must be a floating-point array (N, *shape) with N >= 1, got "
                             f"{targets.dtype} {targets.shape}")
        if not bool(jnp.all(jnp.isfinite(targets))):
            raise ValueError("targets hold NaN or Inf")
        n = targets.shape[0]
        masses = jnp.full((n,), 1.0 / n, targets.dtype) if masses is None else jnp.asarray(masses, targets.dtype)
        nu = np.asarray(masses, np.float64)
        if nu.shape != (n,) or not np.all(np.isfinite(nu)) or np.any(nu < 0) or abs(nu.sum() - 1) > 1e-6:
            raise ValueError(f"masses must be {n} finite non-negative numbers summing to 1, got shape {nu.shape} "
                             f"and sum {nu.sum() if nu.size else 0}")
        for name, value in (("lr", lr), ("tol", tol), ("lr_decay", lr_decay)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (("max_iter", max_iter), ("patience", patience), ("max_doublings", max_doublings)):
            if int(value) != value or value < (1 if name == "max_iter" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'max_iter' else 'non-negative'} "
                                 f"integer, got {value}")
        per_iteration = 10 * n if samples_per_iteration is None else int(samples_per_iteration)
        if per_iteration < 1:
            raise ValueError(f"samples_per_iteration must be >= 1, got {samples_per_iteration}")
        chunk = min(per_iteration, max(1, SCORE_BUDGET // n)) if chunk_size is None else int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        shape = tuple(targets.shape[1:])
        if source is None:
            source = _standard_normal(shape, jnp.dtype(targets.dtype))
        elif not callable(source):
            raise TypeError(f"source must be a callable (key, n) -> (n, *shape) draws, got {type(source).__name__}")
        num_chunks = -(-per_iteration // chunk)  # whole chunks: at least the draws asked for
        start = time.perf_counter()
        h, out = _fit_compiled(source, chunk)(key, targets, masses, lr, tol, num_chunks, max_iter, patience,
                                              max_doublings, lr_decay)
        out = jax.device_get(out)
        if not np.all(np.isfinite(np.asarray(h))):
            raise FloatingPointError("the fitted dual weights h are not finite (a source draw was NaN or Inf, or lr "
                                     "is far too large)")
        iterations = int(out["iterations"])
        info = {"converged": bool(out["converged"]), "iterations": iterations,
                "grad_norm": float(out["grad_norm"]), "num_empty": int(out["num_empty"]),
                "samples_per_iteration": int(num_chunks * chunk * 2 ** int(out["doublings"])),
                "samples_drawn": int(out["samples_drawn"]), "lr": float(out["lr"]),
                "doublings": int(out["doublings"]), "seconds": time.perf_counter() - start}
        return cls(targets=targets, h=h, chunk_size=chunk), info


@functools.lru_cache(maxsize=16)
def _standard_normal(shape: tuple[int, ...], dtype: DTypeLike) -> Source:
    """The source N(0, I) of this shape and dtype: one function per pair, so the fit's program is reused."""
    return lambda key, n: jax.random.normal(key, (n, *shape), dtype)


@functools.lru_cache(maxsize=16)
def _fit_compiled(source: Source, chunk: int) -> Callable:
    """The fit as one program per (source, chunk size); the targets, masses and numeric options traced."""

    def run(key, targets, masses, lr, tol, num_chunks, max_iter, patience, max_doublings, lr_decay):
        n = targets.shape[0]
        flat = targets.reshape(n, -1)
        dtype = targets.dtype

        def counts_at(h, key, chunks):
            def add_chunk(c, counts):
                x = source(jax.random.fold_in(key, c), chunk).reshape(chunk, -1).astype(dtype)
                return counts + jnp.bincount(jnp.argmax(x @ flat.T + h[None, :], axis=-1), length=n).astype(jnp.int32)

            return jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros(n, jnp.int32))

        def keep_going(s):
            return (s["iterations"] < max_iter) & ~s["converged"]

        def iteration(s):
            chunks = num_chunks * 2 ** s["doublings"]
            counts = counts_at(s["h"], jax.random.fold_in(key, s["iterations"]), chunks)
            grad = counts.astype(dtype) / (chunks * chunk).astype(dtype) - masses  # dE/dh_i = mu(C_i) - nu_i
            norm = jnp.sqrt(jnp.sum(grad**2))
            num_empty = jnp.sum(counts == 0).astype(jnp.int32)
            converged = (norm < tol) & (num_empty == 0)
            # DPM-OT's Adam (optimal_transport.py 155-164): moments without bias correction, so the first steps are
            # sqrt(1000) / 10 ~ 3.2 lr rather than optax's lr; kept to match the reference's step sizes.
            m = 0.9 * s["m"] + 0.1 * grad
            v = 0.999 * s["v"] + 0.001 * grad**2
            h = s["h"] - s["lr"] * m / (jnp.sqrt(v) + 1e-8)
            h = h - jnp.mean(h)
            # The reference returns the h after the step whose gradient met the criterion; this returns the h the
            # criterion was measured at.
            h = jnp.where(converged, s["h"], h)
            improved = norm < s["best"]
            bad = jnp.where(improved, 0, s["bad"] + 1)
            double = (bad > patience) & (s["doublings"] < max_doublings)  # optimal_transport.py 196-205
            return {"h": h, "m": m, "v": v, "lr": jnp.where(double, s["lr"] * lr_decay, s["lr"]),
                    "best": jnp.where(double, jnp.inf, jnp.minimum(norm, s["best"])),
                    "bad": jnp.where(double, 0, bad), "doublings": s["doublings"] + double.astype(jnp.int32),
                    "iterations": s["iterations"] + 1, "converged": converged, "grad_norm": norm,
                    "num_empty": num_empty,
                    "samples_drawn": s["samples_drawn"] + (chunks * chunk).astype(dtype)}

        zeros = jnp.zeros(n, dtype)
        state = {"h": zeros, "m": zeros, "v": zeros, "lr": jnp.asarray(lr, dtype), "best": jnp.asarray(jnp.inf, dtype),
                 "bad": jnp.int32(0), "doublings": jnp.int32(0), "iterations": jnp.int32(0),
                 "converged": jnp.bool_(False), "grad_norm": jnp.asarray(jnp.inf, dtype), "num_empty": jnp.int32(n),
                 "samples_drawn": jnp.asarray(0.0, dtype)}
        state = jax.lax.while_loop(keep_going, iteration, state)
        return state["h"], {k: v for k, v in state.items() if k not in ("h", "m", "v", "best", "bad")}

    return jax.jit(run)
