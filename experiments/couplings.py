"""Minibatch couplings for conditional flow matching: pure functions `(key, x_noise, x_data) -> (x_noise, x_data)`.

A coupling re-pairs a batch of noise draws with a batch of data before the flow-matching loss, so that the
conditional paths cross less and the learned flow is straighter (Pooladian et al. 2023, "Multisample flow matching",
arXiv:2304.14772; Tong et al. 2023, "Improving and generalizing flow-based generative models with minibatch optimal
transport", arXiv:2302.00482). Examples may have any per-example shape; the cost between a noise draw and a data
example is the squared Euclidean distance between the flattened vectors. Outputs keep the inputs' shapes and dtypes.

- "independent": the identity (the product coupling).
- "ot": exact minibatch OT; with equal weights its solution is a permutation (Birkhoff), found by a linear
  assignment solver; the noise keeps its order and the data are permuted. `solver="scipy"` (the default) calls
  `scipy.optimize.linear_sum_assignment` through `jax.pure_callback`; `solver="optax"` runs
  `optax.assignment.hungarian_algorithm` in pure JAX. Both work under jit and vmap, and the scipy one also when the
  inputs are sharded over several devices (the callback receives the gathered cost matrix).
  Choice of default, measured by `scripts/benchmark_couplings.py` (inside jit, CPU with 2 cores shared with other
  jobs, float32, median ms per call; noise N(0, I) against N(1, 0.25 I); both solvers gave the same matching cost
  in every case):

      batch    2D: scipy   optax     64D: scipy   optax
         64         0.5      2.2            0.3      3.3
        128         2.8     12.3            1.6      7.6
        256        31.3     65.8           11.4     34.1
        512       161.3    494.6           48.4    122.6

  scipy is 2-3x faster at batch 256 (and up to 11x at batch 64), hence the default; "optax" remains for setups
  where a host callback is unwelcome. Both are cubic in the batch size; Sinkhorn is cheaper at large batches.
- "sinkhorn": entropic OT (Cuturi 2013) with ott-jax. By default `epsilon` is RELATIVE to the mean of the batch's
  squared-distance matrix (ott's `relative_epsilon="mean"`), default 0.05, so one value suits any data scale or
  dimension. `relative_epsilon=None` makes it absolute, in units of |x0 - x1|^2: then it equals POT's `reg`, which
  TorchCFM's OTPlanSampler uses on the raw cost (unless its normalize_cost=True divides the cost by its maximum).
  Pairs are then drawn from the plan:
  `sampling="joint"` draws n index pairs (i, j) from the whole plan WITH replacement (TorchCFM's OTPlanSampler), so
  some noise draws repeat and others drop out; `sampling="conditional"` keeps every noise draw exactly once and
  draws its data partner from its row of the plan, j ~ P[i, :] / sum_j P[i, j].

>>> import jax.numpy as jnp
>>> coupling = get_coupling("ot")
>>> x0 = jnp.array([[0.0], [1.0]]); x1 = jnp.array([[1.5], [0.5]])
>>> coupling(jax.random.PRNGKey(0), x0, x1)[1].tolist()
[[0.5], [1.5]]
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

OT_SOLVERS = ("scipy", "optax")
DEFAULT_OT_SOLVER = "scipy"  # the faster one at batch 256 (module docstring)
SINKHORN_SAMPLING = ("joint", "conditional")
RELATIVE_EPSILON = ("mean", "std", None)


def independent(key, x_noise, x_data):
    """The independent (product) coupling: returns the inputs unchanged.

    Args:
      key: unused.
      x_noise: (n, ...) noise draws.
      x_data: (n, ...) data examples.

    Returns:
      (x_noise, x_data).
    """
    del key
    _check_batch(x_noise, x_data)
    return x_noise, x_data


def ot(key, x_noise, x_data, *, solver=DEFAULT_OT_SOLVER):
    """Exact minibatch OT coupling (Pooladian et al. 2023; Tong et al. 2023): x_data permuted to minimise
    sum_i ||x_noise[i] - x_data[perm[i]]||^2.

    Args:
      key: unused (the assignment is deterministic).
      x_noise: (n, ...) noise draws.
      x_data: (n, ...) data examples, same shape.
      solver: "scipy" (linear_sum_assignment on the host through `jax.pure_callback`) or "optax" (pure-JAX
        Hungarian algorithm).

    Returns:
      (x_noise, x_data[perm]).
    """
    del key
    _check_batch(x_noise, x_data)
    _check_choice("ot", "solver", solver, OT_SOLVERS)
    return _ot(x_noise, x_data, solver)


@functools.partial(jax.jit, static_argnames="solver")
def _ot(x_noise, x_data, solver):
    # Jitted as a whole (inlined under an outer jit) so that the host callback's output never surfaces eagerly:
    # with explicitly sharded inputs an eager gather by it would fail.
    b = _replicated(x_data)
    # The matching only chooses indices: gradients flow through the gather below, never into the solver.
    perm = assignment(jax.lax.stop_gradient(squared_distances(_replicated(x_noise), b)), solver)
    return x_noise, _resharded_like(b[perm], x_data)


def sinkhorn(key, x_noise, x_data, *, epsilon=0.05, relative_epsilon="mean", sampling="joint", threshold=1e-3,
             max_iterations=2000):
    """Entropic minibatch OT coupling (Tong et al. 2023): pairs drawn from the Sinkhorn plan computed by ott-jax.

    Args:
      key: PRNG key for drawing pairs from the plan.
      x_noise: (n, ...) noise draws.
      x_data: (n, ...) data examples, same shape.
      epsilon: entropic regularisation. Small: close to exact OT; large: close to independent.
      relative_epsilon: "mean" (epsilon times the batch's mean squared distance), "std" (times its standard
        deviation) or None (epsilon is absolute, POT's `reg`).
      sampling: "joint" (n pairs from the plan with replacement) or "conditional" (each noise draw once, its partner
        from its row of the plan).
      threshold: Sinkhorn's marginal-error tolerance.
      max_iterations: Sinkhorn's iteration cap.

    Returns:
      (x_noise[i], x_data[j]) for the drawn index pairs (i = arange(n) for "conditional").
    """
    _check_batch(x_noise, x_data)
    _check_choice("sinkhorn", "sampling", sampling, SINKHORN_SAMPLING)
    _check_choice("sinkhorn", "relative_epsilon", relative_epsilon, RELATIVE_EPSILON)
    if isinstance(epsilon, (int, float, np.number)) and not epsilon > 0:
        raise ValueError(f"coupling 'sinkhorn': epsilon must be > 0, got {epsilon!r}")
    # epsilon is traced (one compilation serves every value); the rest shapes the program and is static.
    return _sinkhorn(key, x_noise, x_data, epsilon, relative_epsilon, sampling, float(threshold), int(max_iterations))


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _sinkhorn(key, x_noise, x_data, epsilon, relative_epsilon, sampling, threshold, max_iterations):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    n = x_noise.shape[0]
    x0, x1 = _replicated(x_noise), _replicated(x_data)
    # The plan only chooses indices: no gradient flows through it (and ott's implicit differentiation is skipped).
    # It is solved in the default float precision: ott-jax mixes float32 and float64 if given float32 under x64.
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    a, b = (jax.lax.stop_gradient(_flat(x).astype(dtype)) for x in (x0, x1))
    with jax.numpy_rank_promotion("allow"):  # ott-jax relies on implicit rank promotion internally
        geometry = pointcloud.PointCloud(a, b, epsilon=epsilon, relative_epsilon=relative_epsilon)
        out = ott_sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations)(
            linear_problem.LinearProblem(geometry))
        cost, scaled_epsilon = geometry.cost_matrix, geometry.epsilon
    # log P_ij = (f_i + g_j - C_ij) / epsilon: sampling from logits avoids the underflow of exp for small epsilon.
    logits = (out.f[:, None] + out.g[None, :] - cost) / scaled_epsilon
    if sampling == "joint":
        flat = jax.random.categorical(key, logits.reshape(-1), shape=(n,))
        rows, cols = flat // n, flat % n
        return _resharded_like(x0[rows], x_noise), _resharded_like(x1[cols], x_data)
    return x_noise, _resharded_like(x1[jax.random.categorical(key, logits, axis=-1)], x_data)


def squared_distances(x, y):
    """Matrix of squared Euclidean distances between flattened examples, (n, m), in the inputs' float dtype.

    Args:
      x: (n, ...) array.
      y: (m, ...) array with the same per-example shape.

    Returns:
      C with C[i, j] = ||x[i] - y[j]||^2 (clipped at 0 against round-off).
    """
    a, b = _flat(x), _flat(y)
    dtype = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    a, b = a.astype(dtype), b.astype(dtype)
    # HIGHEST: no reduced-precision (TF32/bf16) matmul passes on accelerators, so near-ties are resolved correctly.
    cross = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    cost = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * cross
    return jnp.maximum(cost, 0.0)


def assignment(cost, solver=DEFAULT_OT_SOLVER):
    """Optimal linear assignment of a square cost matrix: perm with sum_i cost[i, perm[i]] minimal.

    Args:
      cost: (n, n) cost matrix (may be traced; vmap adds leading axes).
      solver: "scipy" or "optax" (see the module docstring).

    Returns:
      int32 (n,) permutation.
    """
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"assignment needs a square cost matrix, got shape {cost.shape}")
    _check_choice("ot", "solver", solver, OT_SOLVERS)
    if solver == "scipy":
        # "expand_dims": under vmap the callback gets the whole stack of problems at once, one host round trip.
        return jax.pure_callback(_scipy_assignment, jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32), cost,
                                 vmap_method="expand_dims")
    import optax

    rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[:1], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _scipy_assignment(cost):
    """Host side of the "scipy" solver: cost (..., n, n) -> int32 (..., n) column of each row."""
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost)
    problems = cost.reshape((-1,) + cost.shape[-2:])
    perms = np.empty(problems.shape[:2], np.int32)
    for k, problem in enumerate(problems):
        rows, cols = linear_sum_assignment(problem)
        perms[k, rows] = cols
    return perms.reshape(cost.shape[:-1])


def _replicated(x):
    """x itself, or a replicated copy when it is sharded over explicit mesh axes (`jax.sharding.AxisType.Explicit`):
    the assignment needs the whole batch, and explicit mode would reject the (data, data)-sharded cost matrix.
    Under automatic sharding, XLA gathers by itself (the callback runs on one device)."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.explicit_axes:
        return x
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _resharded_like(y, x):
    """y placed like x when x is explicitly sharded (the coupling's outputs keep their inputs' shardings)."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.explicit_axes:
        return y
    return jax.sharding.reshard(y, sharding)


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _check_choice(name, option, value, choices):
    if value not in choices:
        raise ValueError(f"coupling {name!r}: {option} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_batch(x_noise, x_data):
    if x_noise.ndim < 1 or x_noise.shape != x_data.shape:
        raise ValueError(f"a coupling needs x_noise and x_data of one shape (n, ...), got {x_noise.shape} and "
                         f"{x_data.shape}")


# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------

COUPLINGS = {"independent": independent, "ot": ot, "sinkhorn": sinkhorn}

_CHOICES = {("ot", "solver"): OT_SOLVERS, ("sinkhorn", "sampling"): SINKHORN_SAMPLING,
            ("sinkhorn", "relative_epsilon"): RELATIVE_EPSILON}


def get_coupling(name, **options):
    """A registered coupling with its options bound: `coupling(key, x_noise, x_data) -> (x_noise, x_data)`.

    Args:
      name: "independent", "ot" or "sinkhorn".
      **options: that coupling's keyword options (ot: solver; sinkhorn: epsilon, relative_epsilon, sampling,
        threshold, max_iterations).

    Returns:
      A pure function (a `functools.partial`, hashable, so usable as a jit static argument).

    >>> get_coupling("sinkhorn", epsilon=0.1).keywords
    {'epsilon': 0.1}
    """
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; valid names: {', '.join(COUPLINGS)}")
    fn = COUPLINGS[name]
    valid = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"coupling {name!r} has no option(s) {unknown}; its options: {', '.join(valid) or 'none'}")
    for option, value in options.items():
        if (name, option) in _CHOICES:
            _check_choice(name, option, value, _CHOICES[(name, option)])
    if name == "sinkhorn" and "epsilon" in options and not options["epsilon"] > 0:
        raise ValueError(f"coupling 'sinkhorn': epsilon must be > 0, got {options['epsilon']!r}")
    return functools.partial(fn, **options)
