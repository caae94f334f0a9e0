"""The Gaussian-mixture oracle: data whose every prediction is known in closed form.

For data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and x = alpha x0 + sigma eps, the marginal of x under component k is
N(alpha mu_k, alpha^2 s_k^2 + sigma^2), and

  E[x0 | x, k]  = mu_k + alpha s_k^2 / v_k (x - alpha mu_k),      v_k = alpha^2 s_k^2 + sigma^2,
  E[eps | x, k] = sigma / v_k (x - alpha mu_k),

averaged with the posterior responsibilities of the components. Both stay finite at alpha = 0 and at sigma = 0
(when every s_k > 0), so the oracle is exact at every (x, t) of every process; the other prediction kinds follow
from (x0, eps) by `models.predictions`. This gives samplers a ground truth: the probability-flow map of the
oracle is computed to float64 precision by `samplers.reference.exact_flow_map`.

The conditional oracle takes the component index as the label: given label k the data is N(mu_k, diag(s_k^2)), and
the null label K (the number of components) gives the unconditional mixture. Conditional, unconditional and
classifier-free guided predictions are then all exact, and so is the guided probability-flow map (`guided`: the
same float64 reference ODE with the guided E[eps | y]), so guided sampling error is measured against truth.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from fastsamplers.core.typing import ArrayLike, ModelFn
from fastsamplers.models import predictions
from fastsamplers.schedules.processes import Process, as_float


@flax.struct.dataclass
class GaussianMixture:
    """A mixture of diagonal Gaussians. weights (K,), means (K, d), stds (K, d) (isotropic: equal along d)."""

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    @classmethod
    def create(cls, weights: ArrayLike, means: ArrayLike, stds: ArrayLike) -> GaussianMixture:
        """Validating constructor. `stds` may be a scalar, (K,) (isotropic) or (K, d) (diagonal)."""
        means = as_float(means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {means.shape}")
        k, d = means.shape
        weights = as_float(weights)
        if weights.shape != (k,) or bool(jnp.any(weights <= 0)):
            raise ValueError(f"weights must be {k} positive numbers, got shape {weights.shape}")
        stds = as_float(stds)
        if stds.ndim == 0:
            stds = jnp.full((k, d), stds)
        elif stds.shape == (k,):
            stds = jnp.broadcast_to(stds[:, None], (k, d))
        if stds.shape != (k, d) or bool(jnp.any(stds <= 0)):
            raise ValueError(f"stds must be positive with shape (), ({k},) or ({k}, {d}); got {stds.shape}")
        return cls(weights=weights / jnp.sum(weights), means=means, stds=stds)

    @classmethod
    def random(cls, key: jax.Array, dim: int = 8, num_components: int = 6, spread: float = 2.0,
               std_range: tuple[float, float] = (0.1, 0.5), diagonal: bool = True) -> GaussianMixture:
        """A random mixture: means ~ N(0, spread^2 / d), stds uniform in std_range, weights Dirichlet(5)."""
        k_mean, k_std, k_w = jax.random.split(key, 3)
        means = spread * jax.random.normal(k_mean, (num_components, dim)) / math.sqrt(dim)
        shape = (num_components, dim) if diagonal else (num_components,)
        stds = jax.random.uniform(k_std, shape, minval=std_range[0], maxval=std_range[1])
        weights = jax.random.dirichlet(k_w, 5.0 * jnp.ones(num_components))
        return cls.create(weights, means, stds)

    @property
    def dim(self) -> int:
        """The data dimension d."""
        return self.means.shape[-1]

    def sample(self, key: jax.Array, num: int) -> jax.Array:
        """`num` draws of clean data, shape (num, d)."""
        k_c, k_n = jax.random.split(key)
        comp = jax.random.categorical(k_c, jnp.log(self.weights), shape=(num,))
        return self.means[comp] + self.stds[comp] * jax.random.normal(k_n, (num, self.dim), self.means.dtype)

    def _posterior(self, x, alpha, sigma, weights=None):
        """Responsibilities (..., K) and the per-component offsets / variances at x ~ x_t; `weights` (..., K) are
        per-sample component weights (the prior's when None)."""
        lead = (1,) * (x.ndim - 1)  # explicit broadcasting of the (K, d) parameters against the batch axes
        var = jnp.reshape(alpha**2 * self.stds**2 + sigma**2, lead + self.stds.shape)  # (..., K, d)
        diff = x[..., None, :] - jnp.reshape(alpha * self.means, lead + self.means.shape)
        log_prob = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1)
        log_w = jnp.reshape(jnp.log(self.weights), lead + self.weights.shape) if weights is None else jnp.log(weights)
        resp = jax.nn.softmax(log_w + log_prob, axis=-1)
        return resp, diff, var

    @property
    def null_label(self) -> int:
        """The label of the unconditional model: K, the number of components (labels 0..K-1 name a component)."""
        return self.means.shape[0]

    def label_weights(self, labels: jax.Array) -> jax.Array:
        """Per-sample component weights (..., K) for integer labels (...,): one-hot for a component, the mixture's
        weights for the null label."""
        labels = jnp.asarray(labels)
        one_hot = jax.nn.one_hot(labels, self.null_label, dtype=self.weights.dtype)
        return jnp.where((labels == self.null_label)[..., None], self.weights, one_hot)

    def x0_eps(self, x: jax.Array, t: ArrayLike, process: Process,
               labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The exact E[x0 | x_t = x] and E[eps | x_t = x] under `process` (given the labels (x.shape[:-1]), when
        given: see `label_weights`)."""
        self._check(x)
        t = as_float(t)
        alpha, sigma = process.alpha(t), process.sigma(t)
        x_f = x.astype(jnp.promote_types(x.dtype, t.dtype))
        weights = None if labels is None else self.label_weights(labels)
        resp, diff, var = self._posterior(x_f, alpha, sigma, weights)
        lead = (1,) * (x.ndim - 1)
        means = jnp.reshape(self.means, lead + self.means.shape)
        stds = jnp.reshape(self.stds, lead + self.stds.shape)
        x0 = jnp.einsum("...k,...kd->...d", resp, means + alpha * stds**2 / var * diff)
        eps = jnp.einsum("...k,...kd->...d", resp, sigma / var * diff)
        return x0.astype(x.dtype), eps.astype(x.dtype)

    def predict(self, x: jax.Array, t: ArrayLike, process: Process, kind: str = "eps",
                labels: jax.Array | None = None) -> jax.Array:
        """The exact prediction of the given kind ("eps", "x0", "v", "velocity", "score") at (x, t), given the
        labels when given."""
        predictions.check_kind(kind)
        x0, eps = self.x0_eps(x, t, process, labels)
        return predictions.from_x0_eps(kind, x0, eps, t, process).astype(x.dtype)

    def model_fn(self, process: Process, kind: str = "eps") -> ModelFn:
        """A `model_fn(x, t)` for `samplers.sample`, predicting `kind` exactly."""
        predictions.check_kind(kind)
        return lambda x, t: self.predict(x, t, process, kind)

    def conditional_model_fn(self, process: Process, kind: str = "eps") -> ModelFn:
        """A `model_fn(x, t, labels)` for `samplers.sample(..., args=labels)`: the exact class-conditional prediction
        (labels (batch,) ints; the null label `null_label` gives the unconditional model)."""
        predictions.check_kind(kind)
        return lambda x, t, labels: self.predict(x, t, process, kind, labels)

    def guided(self, labels: jax.Array, scale: ArrayLike) -> GuidedMixture:
        """The exact classifier-free guided oracle for these labels and scale, for `samplers.exact_flow_map`."""
        return GuidedMixture(self, self.label_weights(labels), jnp.asarray(scale, self.weights.dtype))

    def eps_y(self, y: jax.Array, gamma: ArrayLike, weights: jax.Array | None = None) -> jax.Array:
        """E[eps | y] in the process-free form y = x0 + gamma eps: the right side of dy/dgamma = E[eps | y]
        (under per-sample component weights when given)."""
        resp, diff, var = self._posterior(y, 1.0, gamma, weights)
        return jnp.einsum("...k,...kd->...d", resp, gamma / var * diff)

    def log_prob(self, x: jax.Array, t: ArrayLike, process: Process) -> jax.Array:
        """log p_t(x) of the marginal at time t."""
        self._check(x)
        t = as_float(t)
        alpha, sigma = process.alpha(t), process.sigma(t)
        _, diff, var = self._posterior(x, alpha, sigma)
        log_prob = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1)
        lead = (1,) * (x.ndim - 1)
        return jax.scipy.special.logsumexp(jnp.reshape(jnp.log(self.weights), lead + self.weights.shape) + log_prob,
                                           axis=-1)

    def marginal_sample(self, key: jax.Array, num: int, t: ArrayLike, process: Process) -> jax.Array:
        """`num` exact draws of x_t."""
        k_data, k_noise = jax.random.split(key)
        return process.marginal(k_noise, self.sample(k_data, num), t)

    def marginal(self, t: ArrayLike, process: Process) -> GaussianMixture:
        """The mixture of x_t: components N(alpha mu_k, alpha^2 s_k^2 + sigma^2), the same weights."""
        t = as_float(t)
        alpha, sigma = process.alpha(t), process.sigma(t)
        return GaussianMixture(self.weights, alpha * self.means, jnp.sqrt(alpha**2 * self.stds**2 + sigma**2))

    def product(self, other: GaussianMixture) -> GaussianMixture:
        """The normalised product p(x) q(x), a mixture of the K x L Gaussian products: N(m_a, v_a) N(m_b, v_b) =
        N(m_a; m_b, v_a + v_b) N(v (m_a / v_a + m_b / v_b), v), 1 / v = 1 / v_a + 1 / v_b (per coordinate)."""
        va, vb = self.stds[:, None] ** 2, other.stds[None] ** 2  # (K, 1, d), (1, L, d)
        ma, mb = self.means[:, None], other.means[None]
        v = 1.0 / (1.0 / va + 1.0 / vb)
        log_w = (jnp.log(self.weights)[:, None] + jnp.log(other.weights)[None]
                 - 0.5 * jnp.sum((ma - mb) ** 2 / (va + vb) + jnp.log(2 * math.pi * (va + vb)), axis=-1))
        d = self.dim
        return GaussianMixture(jax.nn.softmax(log_w.reshape(-1)), (v * (ma / va + mb / vb)).reshape(-1, d),
                               jnp.sqrt(v).reshape(-1, d))

    def _check(self, x):
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"the oracle is {self.dim}-dimensional: x must have shape (..., {self.dim}), "
                             f"got {x.shape}")


@flax.struct.dataclass
class GuidedMixture:
    """The classifier-free guided oracle: E[eps | y] = eps_u + scale (eps_c - eps_u), eps_c under per-sample
    component weights (`GaussianMixture.label_weights`), eps_u under the mixture's. Its flow map, by
    `samplers.exact_flow_map`, is the exact guided sampler's target."""

    mixture: GaussianMixture
    weights: jax.Array
    scale: jax.Array

    def eps_y(self, y: jax.Array, gamma: ArrayLike) -> jax.Array:
        uncond = self.mixture.eps_y(y, gamma)
        return uncond + self.scale * (self.mixture.eps_y(y, gamma, self.weights) - uncond)
