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
  The scipy solver first reduces the cost by Sinkhorn potentials (`warm_start` iterations, default 30; see
  `_linear_sum_assignment`): the same optimum, found 4-6x faster on low-dimensional batches. Under vmap (the
  trainer draws a chunk's pairs at once) one callback receives every problem and solves them on a thread pool.
  Measured by `python scripts/benchmark_couplings.py` (inside jit, CPU with 2 cores, float32, median ms per call;
  noise N(0, I) against N(1, 0.25 I); "stacked" is per problem in a vmapped stack of 16; every solver found the
  same matching cost in every row):

      dim  batch   scipy   scipy cold   scipy stacked    optax   sinkhorn
        2    128    1.53         3.39            0.71    10.11       0.76
        2    256    4.17        16.55            2.54    46.10       4.31
        2    512   18.23       107.71            9.27   328.95      15.85
       64    256    3.62         6.88            2.24    21.55       1.64
       64    512   14.31        34.69            7.86   121.99       6.66

  (On the moons of the flow-matching benchmark, batch 256: 4.00 / 18.05 / 2.61 / 51.97 ms, `--data moons`.)
  scipy is 6-18x faster than optax's Hungarian, hence the default; "optax" remains for setups where a host
  callback is unwelcome (the trainer picks it on several devices). Both are cubic in the batch size.
- "sinkhorn": entropic OT (Cuturi 2013) with ott-jax. By default `epsilon` is RELATIVE to the mean of the batch's
  squared-distance matrix (ott's `relative_epsilon="mean"`), default 0.05, so one value suits any data scale or
  dimension. `relative_epsilon=None` makes it absolute, in units of |x0 - x1|^2: then it equals POT's `reg`, which
  TorchCFM's OTPlanSampler uses on the raw cost (unless its normalize_cost=True divides the cost by its maximum).
  Pairs are then drawn from the plan:
  `sampling="joint"` draws n index pairs (i, j) from the whole plan WITH replacement (TorchCFM's OTPlanSampler), so
  some noise draws repeat and others drop out; `sampling="conditional"` keeps every noise draw exactly once and
  draws its data partner from its row of the plan, j ~ P[i, :] / sum_j P[i, j].
  The default solve is ott's kernel (scaling) mode on a row- and column-shifted cost, to a marginal error of 1%;
  `lse_mode=True` is the log-domain solve for small epsilon or far outliers (see `sinkhorn`).

>>> import jax.numpy as jnp
>>> coupling = get_coupling("ot")
>>> x0 = jnp.array([[0.0], [1.0]]); x1 = jnp.array([[1.5], [0.5]])
>>> coupling(jax.random.PRNGKey(0), x0, x1)[1].tolist()
[[0.5], [1.5]]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry

_OPTION = "coupling {coupling!r}: {kind} must be one of {choices}, got {name!r}"  # an option's unknown value
OT_SOLVERS = Registry.of_names("solver", ("scipy", "optax"), ordered=True, unknown=_OPTION)
DEFAULT_OT_SOLVER = "scipy"  # the faster one at batch 256 (module docstring)
WARM_START_ITERATIONS = 30  # Sinkhorn iterations before scipy's exact solve (`_linear_sum_assignment`)
WARM_START_EPSILON = 0.03  # their epsilon, relative to the mean cost
SINKHORN_SAMPLING = Registry.of_names("sampling", ("joint", "conditional"), ordered=True, unknown=_OPTION)
RELATIVE_EPSILON = Registry.of_names("relative_epsilon", ("mean", "std", None), ordered=True, unknown=_OPTION)
SINKHORN_MAX_MARGINAL_ERROR = 0.1  # L1 error of the plan's two marginals (each sums to 1) beyond which pairs are NaN


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


def ot(key, x_noise, x_data, *, solver=DEFAULT_OT_SOLVER, warm_start=None):
    """Exact minibatch OT coupling (Pooladian et al. 2023; Tong et al. 2023): x_data permuted to minimise
    sum_i ||x_noise[i] - x_data[perm[i]]||^2.

    Args:
      key: unused (the assignment is deterministic).
      x_noise: (n, ...) noise draws.
      x_data: (n, ...) data examples, same shape.
      solver: "scipy" (linear_sum_assignment on the host through `jax.pure_callback`) or "optax" (pure-JAX
        Hungarian algorithm).
      warm_start: "scipy" only: the number of Sinkhorn iterations whose potentials reduce the cost matrix before
        the exact solve (default WARM_START_ITERATIONS; 0 turns it off). It changes the speed, not the answer.

    Returns:
      (x_noise, x_data[perm]).
    """
    del key
    _check_batch(x_noise, x_data)
    OT_SOLVERS.check(solver, coupling="ot")
    return _ot(x_noise, x_data, solver, _warm_start(solver, warm_start))


@functools.partial(jax.jit, static_argnames=("solver", "warm_start"))
def _ot(x_noise, x_data, solver, warm_start):
    # Jitted as a whole (inlined under an outer jit) so that the host callback's output never surfaces eagerly:
    # with explicitly sharded inputs an eager gather by it would fail.
    b = _replicated(x_data)
    # The matching only chooses indices: gradients flow through the gather below, never into the solver.
    perm = assignment(jax.lax.stop_gradient(squared_distances(_replicated(x_noise), b)), solver, warm_start)
    return x_noise, _resharded_like(b[perm], x_data)


def _warm_start(solver, warm_start):
    if warm_start is None:
        return WARM_START_ITERATIONS if solver == "scipy" else 0
    if isinstance(warm_start, bool) or not isinstance(warm_start, (int, np.integer)) or warm_start < 0:
        raise ValueError(f"coupling 'ot': warm_start must be an integer >= 0 (Sinkhorn iterations), got {warm_start!r}")
    if warm_start and solver != "scipy":
        raise ValueError(f"coupling 'ot': warm_start={warm_start} needs solver='scipy' (optax's Hungarian algorithm "
                         "takes no starting potentials); use warm_start=0")
    return int(warm_start)


def sinkhorn(key, x_noise, x_data, *, epsilon=0.05, relative_epsilon="mean", sampling="joint", threshold=1e-2,
             max_iterations=2000, lse_mode=False):
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
      threshold: Sinkhorn's tolerance on the marginal error (ott's: the L1 norm, the marginals summing to 1). The
        default, 1% of the mass, is below the noise of drawing n pairs from the plan.
      max_iterations: Sinkhorn's iteration cap.
      lse_mode: False (default): ott's kernel (scaling) updates, two matrix-vector products an iteration, 3x faster
        than log-sum-exp on CPU. The cost matrix is first shifted by its row minima and then its column minima
        (which leaves the plan unchanged), so the kernel has a 1 in every row and column. Kernel updates can still
        underflow when the potentials span more than about 87 epsilon (far outliers, or a small epsilon), and the
        iteration stalls: then the plan's marginals are off, the pairs are NaN and training stops at that step.
        True: log-domain updates, which do not underflow (4-5x slower).

    Returns:
      (x_noise[i], x_data[j]) for the drawn index pairs (i = arange(n) for "conditional").
    """
    _check_batch(x_noise, x_data)
    SINKHORN_SAMPLING.check(sampling, coupling="sinkhorn")
    RELATIVE_EPSILON.check(relative_epsilon, coupling="sinkhorn")
    if isinstance(epsilon, (int, float, np.number)) and not epsilon > 0:
        raise ValueError(f"coupling 'sinkhorn': epsilon must be > 0, got {epsilon!r}")
    # epsilon is traced (one compilation serves every value); the rest shapes the program and is static.
    return _sinkhorn(key, x_noise, x_data, epsilon, relative_epsilon, sampling, float(threshold), int(max_iterations),
                     bool(lse_mode))


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _sinkhorn(key, x_noise, x_data, epsilon, relative_epsilon, sampling, threshold, max_iterations, lse_mode):
    n = x_noise.shape[0]
    x0, x1 = _replicated(x_noise), _replicated(x_data)
    # The plan only chooses indices: no gradient flows through it (and ott's implicit differentiation is skipped).
    cost = jax.lax.stop_gradient(squared_distances(x0, x1))
    if relative_epsilon is not None:
        epsilon = epsilon * (jnp.mean(cost) if relative_epsilon == "mean" else jnp.std(cost))
    logits = sinkhorn_log_plan(cost, epsilon, threshold, max_iterations, lse_mode)
    # A plan that misses its marginals by more than SINKHORN_MAX_MARGINAL_ERROR of the mass (a kernel update that
    # underflowed and stalled), or non-finite potentials, poison the pairs with NaN so that the loss reports them.
    error = sum(jnp.sum(jnp.abs(jnp.exp(jax.nn.logsumexp(logits, axis=axis)) - 1.0 / n)) for axis in (0, 1))
    poison = jnp.where(error <= SINKHORN_MAX_MARGINAL_ERROR, 0.0, jnp.nan).astype(x1.dtype)
    key_rows, key_cols = jax.random.split(key)
    if sampling == "joint":
        # A pair (i, j) ~ P as i ~ sum_j P[i, j], then j ~ P[i, :] / sum_j P[i, j]: the same law as one draw from
        # the flattened plan.
        rows = _inverse_cdf_draw(key_rows, jax.nn.logsumexp(logits, axis=1), (n,))
        cols = _inverse_cdf_draw(key_cols, logits[rows], (n,))
        return _resharded_like(x0[rows], x_noise), _resharded_like(x1[cols] + poison, x_data)
    return x_noise, _resharded_like(x1[_inverse_cdf_draw(key_cols, logits, (n,))] + poison, x_data)


def sinkhorn_log_plan(cost, epsilon, threshold=1e-2, max_iterations=2000, lse_mode=False):
    """log P for the entropic OT plan P between uniform marginals 1/n and 1/m, solved by ott-jax's Sinkhorn.

    Args:
      cost: (n, m) cost matrix.
      epsilon: absolute entropic regularisation.
      threshold, max_iterations, lse_mode: see `sinkhorn`.

    Returns:
      (n, m) array with log P_ij = (f_i + g_j - C_ij) / epsilon (logits: no underflow for small epsilon).
    """
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    # Subtracting a row vector and then a column vector changes the potentials, not the plan; afterwards every row
    # and every column of the cost has a 0, so every row and column of the kernel exp(-C / epsilon) has a 1.
    cost = cost - jnp.min(cost, axis=1, keepdims=True)
    cost = cost - jnp.min(cost, axis=0, keepdims=True)
    with jax.numpy_rank_promotion("allow"):  # ott-jax relies on implicit rank promotion internally
        if lse_mode:
            geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
        else:
            geom = _fixed_kernel_geometry()(kernel_matrix=jnp.exp(-cost / epsilon), epsilon=epsilon)
        out = ott_sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations, lse_mode=lse_mode)(
            linear_problem.LinearProblem(geom))
    return (out.f[:, None] + out.g[None, :] - cost) / epsilon


@functools.cache
def _fixed_kernel_geometry():
    """An ott `Geometry` for one fixed epsilon whose kernel-mode products use the kernel as given.

    ott's kernel update passes its epsilon schedule's value to `apply_kernel`, which then recomputes the kernel
    (exp(-C / eps), or K ** (epsilon / eps)) in every iteration: 4x the cost of the two matrix-vector products at
    batch 256 on CPU. With no epsilon schedule that power is 1, and this subclass skips it.
    """
    from ott.geometry import geometry

    @jax.tree_util.register_pytree_node_class
    class FixedKernelGeometry(geometry.Geometry):
        def apply_kernel(self, vec, eps=None, axis=0):
            del eps  # the one epsilon the kernel was made with
            kernel = self.kernel_matrix
            return jnp.matmul(kernel if axis == 1 else kernel.T, vec, precision=jax.lax.Precision.HIGHEST)

    return FixedKernelGeometry


def _inverse_cdf_draw(key, logits, shape):
    """Indices into the last axis of logits (..., n) with probabilities softmax(logits), by inverting the CDF:
    `shape` draws, `shape` broadcasting against logits.shape[:-1] (one draw per row, or many from one row).

    One uniform per draw, where `jax.random.categorical` spends n Gumbel variates per draw (2.5 ms of a 7 ms
    Sinkhorn coupling at batch 256 on CPU). The draw is the first k with cdf[k] > u for u ~ U[0, cdf[-1]), so an
    index of probability 0 is never drawn.
    """
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    cdf = jnp.cumsum(weights, axis=-1)
    u = jax.random.uniform(key, shape, cdf.dtype) * cdf[..., -1]
    cdf = cdf.reshape((1,) * (len(shape) + 1 - cdf.ndim) + cdf.shape)  # ranks aligned for the comparison
    index = jnp.sum(cdf <= u[..., None], axis=-1)
    return jnp.minimum(index, logits.shape[-1] - 1)  # u rounded up to cdf[-1]


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


def assignment(cost, solver=DEFAULT_OT_SOLVER, warm_start=None):
    """Optimal linear assignment of a square cost matrix: perm with sum_i cost[i, perm[i]] minimal.

    Args:
      cost: (n, n) cost matrix (may be traced; vmap adds leading axes).
      solver: "scipy" or "optax" (see the module docstring).
      warm_start: "scipy" only: Sinkhorn iterations before the exact solve (see `ot`).

    Returns:
      int32 (n,) permutation.
    """
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"assignment needs a square cost matrix, got shape {cost.shape}")
    OT_SOLVERS.check(solver, coupling="ot")
    warm_start = _warm_start(solver, warm_start)
    if solver == "scipy":
        # "expand_dims": under vmap the callback gets the whole stack of problems at once, one host round trip,
        # and solves them on parallel threads.
        return jax.pure_callback(functools.partial(_scipy_assignment, warm_start=warm_start),
                                 jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32), cost, vmap_method="expand_dims")
    import optax

    rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[:1], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _scipy_assignment(cost, warm_start):
    """Host side of the "scipy" solver: cost (..., n, n) -> int32 (..., n) column of each row. Several problems
    are solved on a thread pool (scipy's solver and numpy's products release the GIL)."""
    cost = np.asarray(cost)
    problems = cost.reshape((-1,) + cost.shape[-2:])
    perms = np.empty(problems.shape[:2], np.int32)

    def solve(k):
        perms[k] = _linear_sum_assignment(problems[k], warm_start)

    if len(problems) == 1:
        solve(0)
    else:
        list(_thread_pool().map(solve, range(len(problems))))
    return perms.reshape(cost.shape[:-1])


def _linear_sum_assignment(cost, warm_start):
    """The column of each row in an optimal assignment of one (n, n) cost matrix, in float64.

    The solver (scipy's shortest augmenting path, Crouse 2016) starts from zero potentials. On costs between
    low-dimensional point clouds its augmenting paths are long: 2-D batches of 256 take 4x as long as random costs.
    With warm_start > 0, Sinkhorn potentials (f, g) at epsilon = WARM_START_EPSILON x the mean cost, from that many
    iterations of the kernel updates, reduce the cost to C_ij - f_i - g_j first. Subtracting a row and a column
    vector adds the same constant to every assignment's cost, so the optimal permutation is the same; the potentials
    only shorten the paths. If they are not finite (an underflowed kernel column), the plain cost is solved.
    """
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, np.float64)
    reduced = _sinkhorn_reduced_cost(cost, warm_start) if warm_start else None
    rows, cols = linear_sum_assignment(cost if reduced is None else reduced)
    perm = np.empty(cost.shape[0], np.int32)
    perm[rows] = cols
    return perm


def _sinkhorn_reduced_cost(cost, iterations):
    """C_ij - f_i - g_j for the Sinkhorn potentials after `iterations` kernel updates (uniform marginals), or None
    when they are not finite. Near the optimal assignment's entries it is close to 0, and positive elsewhere."""
    epsilon = WARM_START_EPSILON * cost.mean()
    if not epsilon > 0:
        return None
    shifted = cost - cost.min(axis=1, keepdims=True)  # a row shift, absorbed by f; every row keeps a 1 in K
    kernel = np.exp(-shifted / epsilon)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        v = np.ones(cost.shape[1])
        for _ in range(iterations):
            u = 1.0 / (kernel @ v)
            v = 1.0 / (kernel.T @ u)
        # K_ij u_i v_j is the plan, so f = epsilon log u and g = epsilon log v (for the shifted cost).
        reduced = shifted - epsilon * (np.log(u)[:, None] + np.log(v)[None, :])
    return reduced if np.all(np.isfinite(reduced)) else None


@functools.cache
def _thread_pool():
    import concurrent.futures
    import os

    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                 thread_name_prefix="ot-assignment")


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


def _check_batch(x_noise, x_data):
    if x_noise.ndim < 1 or x_noise.shape != x_data.shape:
        raise ValueError(f"a coupling needs x_noise and x_data of one shape (n, ...), got {x_noise.shape} and "
                         f"{x_data.shape}")


# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------

COUPLINGS = Registry("coupling", {"independent": independent, "ot": ot, "sinkhorn": sinkhorn},
                     reserved=("key", "x_noise", "x_data"))  # the call's inputs; the options are keyword-only

_CHOICES = {("ot", "solver"): OT_SOLVERS, ("sinkhorn", "sampling"): SINKHORN_SAMPLING,
            ("sinkhorn", "relative_epsilon"): RELATIVE_EPSILON}


def get_coupling(name: str, **options: Any) -> functools.partial:
    """A registered coupling with its options bound: `coupling(key, x_noise, x_data) -> (x_noise, x_data)`.

    Args:
      name: "independent", "ot" or "sinkhorn".
      **options: that coupling's keyword options (ot: solver, warm_start; sinkhorn: epsilon, relative_epsilon, sampling,
        threshold, max_iterations, lse_mode).

    Returns:
      A pure function (a `functools.partial`, hashable, so usable as a jit static argument).

    >>> get_coupling("sinkhorn", epsilon=0.1).keywords
    {'epsilon': 0.1}
    """
    COUPLINGS.check_options(name, options)
    for option, value in options.items():
        if (name, option) in _CHOICES:
            _CHOICES[(name, option)].check(value, coupling=name)
    if name == "ot" and "warm_start" in options:
        _warm_start(options.get("solver", DEFAULT_OT_SOLVER), options["warm_start"])
    if name == "sinkhorn" and "epsilon" in options and not options["epsilon"] > 0:
        raise ValueError(f"coupling 'sinkhorn': epsilon must be > 0, got {options['epsilon']!r}")
    return functools.partial(COUPLINGS[name], **options)
