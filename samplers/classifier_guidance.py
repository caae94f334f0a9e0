"""Classifier guidance (Dhariwal & Nichol 2021) as a model-function wrapper, so every solver gets it.

With a classifier p(y | x_t) of the noisy state, the guided noise prediction is

    eps_guided(x, t) = eps(x, t) - scale * sigma(t) * grad_x log p(y | x_t = x),

the score of p_t(x) p(y | x)^scale: scale = 1 is the exact class-conditional model when the classifier is exact
(Bayes: grad log p_t(x | y) = grad log p_t(x) + grad log p(y | x)), scale = 0 the unconditional one. The gradient
is taken by `jax.grad` inside the compiled sampling loop, of the sum over the batch of each sample's log p(y | x)
(samples are independent, so it is each sample's own gradient), as guided-diffusion's `cond_fn` does. A model that
predicts another kind than eps is converted to eps, guided there and converted back (`models.predictions`), so the
guided model predicts the kind the model does and the sample does not depend on it.

The wrapper is a pytree (`ClassifierGuided`, `samplers.pytrees`): `scale` is its traced leaf, so a sweep over the
scale is one compiled program, or one `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.models.conditioning import split_conditional_args
from fastsamplers.samplers.pytrees import TracedOptions, is_real, known

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process


def classifier_guided(model_fn: ModelFn, classifier_fn: ModelFn, scale: ArrayLike, *, process: Process,
                      prediction: str = "eps") -> ClassifierGuided:
    """The classifier-guided model function.

    Args:
      model_fn: model_fn(x, t, model_args) -> prediction of kind `prediction` (unconditional, or class-conditional
        with model_args = (params, labels)).
      classifier_fn: classifier_fn(x, t, classifier_params) -> logits of shape (batch, num_classes), x the noisy
        state at time t (the time the sampler passes; a loaded guided-diffusion classifier's
        `PretrainedClassifier.classifier_fn` maps t to its step index as its model's loader does).
      scale: the guidance scale (0: no guidance, 1: the classifier's Bayes posterior); a finite number, an array,
        or a tracer (a `jax.vmap` over it is one program).
      process: the process the model is sampled on (sigma(t), and the conversions between prediction kinds).
      prediction: the kind model_fn predicts ("eps", "x0", "v", "velocity", "score").

    Returns:
      A `ClassifierGuided` model function (x, t, args) -> the guided prediction, of model_fn's kind, with
      args = (model_args, (classifier_params, labels)), labels integer class indices of shape (batch,). It is a
      pytree whose leaf is scale, so `samplers.sample` traces it: a new scale reuses the compiled program.

    Raises:
      ValueError: a known scale that is not finite, or an unknown prediction kind.

    Example:
        >>> import jax.numpy as jnp
        >>> from fastsamplers import schedules
        >>> p = schedules.get_process("vp_linear")
        >>> model = lambda x, t, params: jnp.zeros_like(x)  # eps = 0
        >>> classifier = lambda x, t, w: jnp.stack([x[:, 0] * w, -x[:, 0] * w], axis=-1)  # two classes
        >>> g = classifier_guided(model, classifier, 2.0, process=p)
        >>> g(jnp.zeros((1, 2)), 0.5, (None, (1.0, jnp.array([0])))).shape
        (1, 2)
    """
    values = known(scale)
    if values is not None and not (is_real(values) and np.all(np.isfinite(values))):
        raise ValueError(f"classifier guidance scale must be a finite number, got {scale!r}")
    if values is not None and values.ndim == 0:
        scale = float(values)  # a number stays weakly typed: it takes the prediction's dtype
    return ClassifierGuided(model_fn=model_fn, classifier_fn=classifier_fn, scale=scale, process=process,
                            prediction=predictions.check_kind(prediction))


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierGuided(TracedOptions):
    """The model function `classifier_guided` returns. Its pytree child is `scale` (traced under jit and vmap);
    `model_fn`, `classifier_fn`, `process` and `prediction` are static."""

    model_fn: ModelFn
    classifier_fn: ModelFn
    scale: Any
    process: Any
    prediction: str = "eps"
    traced = ("scale",)

    def __call__(self, x: jax.Array, t: ArrayLike, args: PyTree) -> jax.Array:
        model_args, classifier_args = _pair(args)
        classifier_params, labels = split_conditional_args(classifier_args)
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), x.shape[:1])
        t_b = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # (batch,): t per sample, as the model's

        def log_prob(x_in):
            logits = self.classifier_fn(x_in, t, classifier_params)
            if logits.shape[:1] != x.shape[:1] or logits.ndim != 2:
                raise ValueError(f"classifier_fn must return logits of shape (batch, num_classes) = "
                                 f"({x.shape[0]}, K), got {logits.shape}")
            log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
            return jnp.sum(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

        grad = jax.grad(log_prob)(x).astype(x.dtype)
        pred = self.model_fn(x, t, model_args)
        eps = predictions.convert(pred, self.prediction, "eps", x, _column(t_b, x), self.process)
        sigma = _column(self.process.sigma(t_b), x)
        guided = eps - (self.scale * sigma * grad).astype(eps.dtype)
        return predictions.convert(guided, "eps", self.prediction, x, _column(t_b, x), self.process)


def _pair(args):
    """(model_args, classifier_args) from the guided model's args, or one sentence saying what they must be."""
    if isinstance(args, (tuple, list)) and len(args) == 2:
        return args[0], args[1]
    given = f"a {type(args).__name__}" + (f" of {len(args)}" if isinstance(args, (tuple, list)) else "")
    raise ValueError(f"a classifier-guided model takes args=(model_args, (classifier_params, labels)), not {given}")


def _column(values, x):
    """A (batch,) array shaped to broadcast against x (batch, ...)."""
    return jnp.reshape(values, values.shape + (1,) * (x.ndim - 1))
