"""Light Schroedinger Bridge (Korotin, Gushchin & Burnaev, ICLR 2024, arXiv:2310.01174): the entropic OT plan and
Schroedinger bridge between two sample sets, with a Gaussian-mixture potential and everything in closed form.

Time here runs from the source (t = 0, samples x0 ~ p0) to the target (t = 1, samples x1 ~ p1), as in the paper
and the reference code (not the diffusion convention of the rest of the package: nothing here is a noise process).
The reference process is dX = sqrt(eps) dW; its static problem is entropic OT with the cost |x - y|^2 / 2 and
entropy weight eps: min E|x - y|^2 / 2 - eps H(pi) over couplings pi of p0 and p1. (Reference sheet section 6;
reference code ngushchin/LightSB src/light_sb.py, cited by line below.)

The adjusted Schroedinger potential is a Gaussian mixture (sheet 6, light_sb.py 179-200)

  v(y) = sum_k alpha_k N(y | r_k, eps S_k),     S_k = Q_k diag(lambda_k) Q_k^T,

and the conditional plan is the mixture (paper eq. 12; light_sb.py 59-105)

  pi(y | x) = exp(<x, y> / eps) v(y) / C(x) = sum_k w_k(x) N(y | r_k + S_k x, eps S_k),
  w_k(x) ∝ alpha_k exp((x^T S_k x + 2 r_k^T x) / (2 eps)),   log C(x) = logsumexp_k of the same exponent.

The fit minimises the paper's loss (eq. 14; the notebooks' training cell) E_{x~p0} log C(x) - E_{y~p1} log v(y).

Bridge posterior (derived here; it gives the sheet's drift without autodiff). Given X_t = x on the bridge, the
endpoint Y is again a Gaussian mixture: in the eigenbasis of S_k, with x~ = Q_k^T x, r~ = Q_k^T r_k and
D_k = 1 + t (lambda_k - 1) (per coordinate),

  Y | X_t = x, k ~ N(Q_k m~_k, Q_k diag(eps lambda_k (1 - t) / D_k) Q_k^T),   m~_k = (lambda_k x~ + (1 - t) r~) / D_k,
  logit_k(x, t) = log alpha_k - 1/2 sum log D_k + sum [(lambda_k - 1) x~^2 + 2 x~ r~ - t r~^2] / (2 eps D_k).

These logits are the sheet's exponent log alpha_k - 1/2 log|S_k| - 1/2 log|A_k| - r_k^T S_k^-1 r_k / (2 eps)
+ 1/2 c_k^T A_k^-1 c_k (light_sb.py 132-150) less the k-independent |x|^2 / (2 eps (1 - t)) + const, which diverges
as t -> 1; without it they stay finite on all of [0, 1]. The mean A_k^-1 c_k is m_k, so the sheet's drift
-x / (1 - t) + eps grad_x logsumexp(...) is the Brownian-bridge drift

  g(x, t) = (E[Y | X_t = x] - x) / (1 - t).

At t = 0 the posterior is the plan pi(y | x) (D = 1), so sampling, the drift and log C share one formula.

Example:
    >>> import jax, jax.numpy as jnp
    >>> sb = LightSB.gaussian(0.0, 1.0, 2.0, 4.0, eps=1.0)  # the exact plan between N(0, 1) and N(2, 4)
    >>> round(float(sb.conditional_mean(jnp.ones((1, 1)))[0, 0]), 6)  # 2 + c / s0^2, c = (sqrt(1 + 16) - 1) / 2
    3.561553
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fastsamplers.core.registry import Registry
from fastsamplers.core.typing import ArrayLike
from fastsamplers.schedules.processes import as_float

# "diagonal": S_k = diag(exp(log_s_k)); "full": S_k = Q_k diag(exp(log_s_k)) Q_k^T (light_sb.py 45-50).
COVARIANCES = Registry.of_names("covariance", ("diagonal", "full"), ordered=True)


@flax.struct.dataclass
class LightSB:
    """A Light Schroedinger Bridge: the potential v(y) = sum_k alpha_k N(y | r_k, eps S_k) and everything it fixes.

    Fields (all traced leaves: a LightSB is a pytree, so jit, grad and vmap see through it):
      log_alpha: (K,) log alpha_k (unnormalised: only their differences matter for the plan).
      r: (K, d) the component means r_k.
      log_s: (K, d) log eigenvalues of S_k.
      rotation: (K, d, d) orthogonal Q_k (covariance "full"), or None (diagonal S_k).
      eps: () the variance of the reference Brownian motion (the entropy weight).
    """

    log_alpha: jax.Array
    r: jax.Array
    log_s: jax.Array
    rotation: jax.Array | None
    eps: jax.Array

    @classmethod
    def gaussian(cls, mean0: ArrayLike, cov0: ArrayLike, mean1: ArrayLike, cov1: ArrayLike,
                 eps: ArrayLike) -> LightSB:
        """The exact LightSB (K = 1) between N(mean0, cov0) and N(mean1, cov1): the Gaussian entropic OT plan.

        pi(y | x) = N(r + S x, eps S) with S = `gaussian_eot_slope(cov0, cov1, eps)` and r = mean1 - S mean0: the
        K = 1 potential with these parameters makes the loss stationary (the test checks it by quadrature).

        Args:
          mean0, mean1: () or (d,) means.
          cov0, cov1: () or (d,) variances (diagonal), or (d, d) covariances (full).
          eps: the entropy weight.

        Returns:
          A LightSB with one component; diagonal when both covariances are given as variances.
        """
        cov0, cov1 = as_float(cov0), as_float(cov1)
        slope = gaussian_eot_slope(cov0, cov1, eps)
        d = slope.shape[-1]
        mean0 = jnp.broadcast_to(as_float(mean0), (d,))
        mean1 = jnp.broadcast_to(as_float(mean1), (d,))
        if slope.ndim == 1:
            rotation, lam = None, slope
            r = mean1 - slope * mean0
        else:
            lam, q = jnp.linalg.eigh(slope)
            rotation, r = q[None], mean1 - slope @ mean0
        return cls(log_alpha=jnp.zeros(1, lam.dtype), r=r[None], log_s=jnp.log(lam)[None], rotation=rotation,
                   eps=as_float(eps))

    @property
    def num_potentials(self) -> int:
        """K, the number of mixture components."""
        return self.log_alpha.shape[0]

    @property
    def dim(self) -> int:
        """d, the data dimension."""
        return self.r.shape[-1]

    @property
    def covariance(self) -> str:
        """"diagonal" or "full"."""
        return "diagonal" if self.rotation is None else "full"

    @property
    def scale(self) -> jax.Array:
        """S_k: (K, d) diagonals, or (K, d, d) matrices Q_k diag(lambda_k) Q_k^T."""
        lam = jnp.exp(self.log_s)
        if self.rotation is None:
            return lam
        return jnp.einsum("kij,kj,klj->kil", self.rotation, lam, self.rotation)

    def _to_basis(self, v: jax.Array) -> jax.Array:
        """(..., d) -> (..., K, d): Q_k^T v for each k (v broadcast when diagonal)."""
        if self.rotation is None:
            return jnp.broadcast_to(v[..., None, :], v.shape[:-1] + self.r.shape)
        return jnp.einsum("kji,...j->...ki", self.rotation, v)

    def _from_basis(self, v: jax.Array) -> jax.Array:
        """(..., K, d) -> (..., K, d): Q_k v_k."""
        return v if self.rotation is None else jnp.einsum("kij,...kj->...ki", self.rotation, v)

    def _r_basis(self) -> jax.Array:
        """(K, d): Q_k^T r_k."""
        return self.r if self.rotation is None else jnp.einsum("kji,kj->ki", self.rotation, self.r)

    def _posterior(self, x: jax.Array, t: ArrayLike):
        """The endpoint mixture Y | X_t = x (module docstring): logits (..., K), means and stds (..., K, d) in each
        component's eigenbasis."""
        xb = self._to_basis(x)
        nd = xb.ndim
        t = _lead(as_float(t)[..., None, None], nd)  # the parameters broadcast explicitly against (..., K, d)
        lam, rb = _lead(jnp.exp(self.log_s), nd), _lead(self._r_basis(), nd)
        denom = 1 + t * (lam - 1)
        logits = _lead(self.log_alpha, nd - 1) - 0.5 * jnp.sum(jnp.log(denom), -1) + jnp.sum(
            ((lam - 1) * xb**2 + 2 * xb * rb - t * rb**2) / (2 * self.eps * denom), -1)
        means = (lam * xb + (1 - t) * rb) / denom
        stds = jnp.broadcast_to(jnp.sqrt(self.eps * lam * (1 - t) / denom), means.shape)
        return logits, means, stds

    def log_normaliser(self, x: jax.Array) -> jax.Array:
        """log C(x) = log sum_k alpha_k exp((x^T S_k x + 2 r_k^T x) / (2 eps)) (light_sb.py 203-221), shape (...,):
        the bridge logits at t = 0 plus the k-independent |x|^2 / (2 eps) they leave out."""
        logits, _, _ = self._posterior(x, 0.0)
        return jax.nn.logsumexp(logits, -1) + jnp.sum(x**2, -1) / (2 * self.eps)

    def log_potential(self, y: jax.Array) -> jax.Array:
        """log v(y) = log sum_k alpha_k N(y | r_k, eps S_k) (light_sb.py 179-200), shape (...,)."""
        z = self._to_basis(y)
        z = z - _lead(self._r_basis(), z.ndim)
        var = _lead(self.eps * jnp.exp(self.log_s), z.ndim)
        log_n = -0.5 * jnp.sum(z**2 / var + jnp.log(2 * math.pi * var), -1)
        return jax.nn.logsumexp(_lead(self.log_alpha, log_n.ndim) + log_n, -1)

    def conditional_mean(self, x: jax.Array, t: ArrayLike = 0.0) -> jax.Array:
        """E[Y | X_t = x], shape (..., d); at t = 0 the plan's mean sum_k w_k(x) (r_k + S_k x)."""
        logits, means, _ = self._posterior(x, t)
        return jnp.einsum("...k,...kd->...d", jax.nn.softmax(logits, -1), self._from_basis(means))

    def drift(self, x: jax.Array, t: ArrayLike) -> jax.Array:
        """The bridge's drift g(x, t) = (E[Y | X_t = x] - x) / (1 - t), shape (..., d), t in [0, 1) (scalar or
        (...,)): the sheet's closed form (light_sb.py 108-155) without autodiff (module docstring)."""
        t = as_float(t)
        return (self.conditional_mean(x, t) - x) / _lead((1 - t)[..., None], x.ndim)

    def sample(self, key: jax.Array, x0: jax.Array) -> jax.Array:
        """One draw y ~ pi(y | x0) per row of x0 (..., d): a component by its weight w_k(x0), then its Gaussian
        N(r_k + S_k x0, eps S_k) (light_sb.py 59-105)."""
        self._check(x0, "x0")
        k_comp, k_noise = jax.random.split(key)
        logits, means, stds = self._posterior(x0, 0.0)
        comp = jax.random.categorical(k_comp, logits)  # (...,)
        pick = lambda a: jnp.take_along_axis(a, comp[..., None, None], axis=-2)[..., 0, :]  # noqa: E731
        z = pick(means) + pick(stds) * jax.random.normal(k_noise, x0.shape, means.dtype)
        if self.rotation is not None:
            z = jnp.einsum("...ij,...j->...i", self.rotation[comp], z)
        return z.astype(x0.dtype)

    def sde_sample(self, key: jax.Array, x0: jax.Array, num_steps: int,
                   return_path: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Euler-Maruyama for dX = g(X, t) dt + sqrt(eps) dW from t = 0 to 1 in `num_steps` equal steps
        (light_sb.py 158-169), one lax.scan; step i's noise from fold_in(key, i).

        Returns:
          The terminal states (..., d); with return_path, also the path (num_steps + 1, ..., d) at t = i / n.
        """
        self._check(x0, "x0")
        if int(num_steps) < 1:
            raise ValueError(f"sde_sample needs num_steps >= 1, got {num_steps}")
        dt = 1.0 / num_steps

        def step(x, i):
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            x = x + self.drift(x, i * dt).astype(x.dtype) * dt + jnp.sqrt(self.eps * dt).astype(x.dtype) * noise
            return x, x

        x1, path = jax.lax.scan(step, x0, jnp.arange(num_steps))
        return (x1, jnp.concatenate([x0[None], path])) if return_path else x1

    def bridge(self, key: jax.Array, x0: jax.Array, y: jax.Array, t: ArrayLike) -> jax.Array:
        """A draw of the Brownian bridge of variance eps from x0 (t = 0) to y (t = 1) at time t (scalar or (...,)):
        t y + (1 - t) x0 + sqrt(t (1 - t) eps) xi (light_sb.py 172-176). With y = sample(key', x0) it is the
        bridge's marginal at t."""
        noise = jax.random.normal(key, jnp.broadcast_shapes(x0.shape, y.shape), x0.dtype)
        t = _lead(as_float(t)[..., None], noise.ndim)
        return t * y + (1 - t) * x0 + jnp.sqrt(t * (1 - t) * self.eps) * noise

    def _check(self, x, name):
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {x.shape}")


def _lead(a, ndim):
    """`a` with leading axes of size 1 up to `ndim` axes (explicit broadcasting against a batch)."""
    return jnp.reshape(a, (1,) * (ndim - a.ndim) + a.shape)


def gaussian_eot_slope(cov0: ArrayLike, cov1: ArrayLike, eps: ArrayLike) -> jax.Array:
    """The slope S of the entropic OT plan between N(m0, cov0) and N(m1, cov1) for the cost |x - y|^2 / 2 and entropy
    weight eps: pi(y | x) = N(m1 + S (x - m0), eps S).

    In 1-d (Janati et al. 2020, Mallasto et al. 2021, with their sigma^2 = eps) the plan is the Gaussian with
    covariance [[s0^2, c], [c, s1^2]], c = (sqrt(4 s0^2 s1^2 + eps^2) - eps) / 2: the only joint Gaussian whose
    density has the cross term exp(x y / eps) (its precision's off-diagonal -c / (s0^2 s1^2 - c^2) = -1 / eps gives
    c^2 + eps c = s0^2 s1^2). So S = c / s0^2 and the conditional variance s1^2 - c^2 / s0^2 = eps S. In d
    dimensions S solves S cov0 S + eps S = cov1: S = cov0^-1/2 T cov0^-1/2 with
    T = ((eps^2 I + 4 cov0^1/2 cov1 cov0^1/2)^1/2 - eps I) / 2 (Janati et al.'s C = cov0 S).

    Args:
      cov0, cov1: () or (d,) variances, or (d, d) symmetric positive-definite covariances (both the same form).
      eps: the entropy weight, > 0.

    Returns:
      S: (d,) for variances (a scalar is d = 1), (d, d) for covariances.

    >>> float(gaussian_eot_slope(1.0, 4.0, 1.0)[0])  # (sqrt(17) - 1) / 2
    1.5615528128088303
    """
    cov0, cov1, eps = as_float(cov0), as_float(cov1), as_float(eps)
    if cov0.ndim == 0:
        cov0, cov1 = cov0[None], cov1[None]
    if cov0.shape != cov1.shape or cov0.ndim > 2 or (cov0.ndim == 2 and cov0.shape[0] != cov0.shape[1]):
        raise ValueError(f"gaussian_eot_slope needs two variances (d,) or two covariances (d, d) of one shape, got "
                         f"{cov0.shape} and {cov1.shape}")
    if cov0.ndim == 1:
        return (jnp.sqrt(4 * cov0 * cov1 + eps**2) - eps) / (2 * cov0)
    root0 = _sqrtm(cov0)
    inv_root0 = jnp.linalg.inv(root0)
    t = 0.5 * (_sqrtm(eps**2 * jnp.eye(cov0.shape[0], dtype=cov0.dtype) + 4 * root0 @ cov1 @ root0)
               - eps * jnp.eye(cov0.shape[0], dtype=cov0.dtype))
    s = inv_root0 @ t @ inv_root0
    return 0.5 * (s + s.T)


def _sqrtm(a):
    """The symmetric square root of a symmetric positive-definite matrix."""
    lam, q = jnp.linalg.eigh(a)
    return (q * jnp.sqrt(lam)[None, :]) @ q.T


def fit(key: jax.Array, x0: jax.Array, x1: jax.Array, eps: ArrayLike, *, num_potentials: int = 100,
        steps: int = 5000, lr: float = 1e-3, batch_size: int | None = 128, covariance: str = "diagonal",
        s_init: float = 0.1, return_losses: bool = False) -> LightSB | tuple[LightSB, jax.Array]:
    """Fit a LightSB between the sample sets x0 (source) and x1 (target) by Adam on the paper's loss (eq. 14)
    E_{x0} log C(x0) - E_{x1} log v(x1), each step on fresh minibatches drawn with replacement (fold_in(key, step)),
    the whole loop one compiled lax.scan.

    Parametrisation and initialisation as the reference (light_sb.py 20-56; the swiss-roll notebook): log alpha =
    log_alpha_raw / eps with alpha = 1 / K at the start; r_k = K target samples (without replacement when K <= n);
    S_k = s_init I. The full covariance's Q_k is the Cayley map (I - A)^-1 (I + A) of a skew A = W - W^T, W = 0 at the
    start (the reference uses geotorch's orthogonal parametrisation; S starts isotropic, so Q's start is immaterial).

    Args:
      key: PRNG key (r's initial samples and the minibatches).
      x0, x1: (n0, d) and (n1, d) samples of the source and target.
      eps: the entropy weight (the reference Brownian motion's variance), > 0; traced: new values do not recompile.
      num_potentials: K. steps: Adam steps. lr: Adam's learning rate (the reference: 1e-3 for eps 0.1 / 0.01, 3e-4
        for eps 0.002). batch_size: samples of each set per step; None: the whole sets every step (a deterministic
        fit of the empirical loss). covariance: "diagonal" or "full".
      s_init: the initial eigenvalues of S_k (the reference's S_diagonal_init).
      return_losses: also return the loss at each step.

    Returns:
      The fitted LightSB (and the (steps,) losses with return_losses).

    Raises:
      ValueError: bad shapes or options (before any compute). FloatingPointError: a non-finite fit.
    """
    COVARIANCES.check(covariance)
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    if x0.ndim != 2 or x1.ndim != 2 or x0.shape[1] != x1.shape[1] or not min(x0.shape[0], x1.shape[0]):
        raise ValueError(f"fit needs x0 (n0, d) and x1 (n1, d) of one dimension d, got {x0.shape} and {x1.shape}")
    if not float(eps) > 0 or not s_init > 0 or not lr > 0:
        raise ValueError(f"fit needs eps, s_init and lr > 0, got {eps}, {s_init}, {lr}")
    for name, value in (("num_potentials", num_potentials), ("steps", steps), ("batch_size", batch_size or 1)):
        if int(value) < 1:
            raise ValueError(f"fit needs {name} >= 1, got {value}")
    model, losses = _fit(key, x0, x1, as_float(eps).astype(x0.dtype), jnp.asarray(lr, x0.dtype),
                         jnp.asarray(s_init, x0.dtype), num_potentials=int(num_potentials), steps=int(steps),
                         batch_size=batch_size and int(batch_size), covariance=covariance)
    if not (bool(jnp.all(jnp.isfinite(losses))) and all(bool(jnp.all(jnp.isfinite(leaf)))
                                                         for leaf in jax.tree_util.tree_leaves(model))):
        raise FloatingPointError(f"the LightSB fit went non-finite (eps {float(eps)}, lr {lr}): lower lr, or raise "
                                 "eps relative to the data's scale")
    return (model, losses) if return_losses else model


def _cayley(w):
    """Orthogonal (..., d, d) matrices from free ones: (I - A)^-1 (I + A), A = w - w^T skew (never singular)."""
    a = w - jnp.swapaxes(w, -1, -2)
    eye = _lead(jnp.eye(w.shape[-1], dtype=w.dtype), w.ndim)
    return jnp.linalg.solve(eye - a, eye + a)


def _model(params, eps):
    rotation = None if params["w"] is None else _cayley(params["w"])
    return LightSB(log_alpha=params["log_alpha_raw"] / eps, r=params["r"], log_s=params["log_s"], rotation=rotation,
                   eps=eps)


@functools.partial(jax.jit, static_argnames=("num_potentials", "steps", "batch_size", "covariance"))
def _fit(key, x0, x1, eps, lr, s_init, *, num_potentials, steps, batch_size, covariance):
    n0, d = x0.shape
    n1 = x1.shape[0]
    k_init, k_steps = jax.random.split(key)
    start = jax.random.choice(k_init, n1, (num_potentials,), replace=num_potentials > n1)
    params = {"log_alpha_raw": jnp.full(num_potentials, eps * math.log(1 / num_potentials), x0.dtype),
              "r": x1[start], "log_s": jnp.full((num_potentials, d), jnp.log(s_init), x0.dtype),
              "w": None if covariance == "diagonal" else jnp.zeros((num_potentials, d, d), x0.dtype)}
    optimiser = optax.adam(lr)

    def loss_fn(params, b0, b1):
        model = _model(params, eps)
        return jnp.mean(model.log_normaliser(b0)) - jnp.mean(model.log_potential(b1))

    def step(carry, i):
        params, opt_state = carry
        k0, k1 = jax.random.split(jax.random.fold_in(k_steps, i))
        b0 = x0 if batch_size is None else x0[jax.random.randint(k0, (batch_size,), 0, n0)]
        b1 = x1 if batch_size is None else x1[jax.random.randint(k1, (batch_size,), 0, n1)]
        loss, grads = jax.value_and_grad(loss_fn)(params, b0, b1)
        updates, opt_state = optimiser.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimiser.init(params)), jnp.arange(steps))
    return _model(params, eps), losses
