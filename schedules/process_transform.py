"""Process transforms: a model trained on one affine Gaussian path, sampled exactly on another.

Every process here is x_t = alpha(t) x0 + sigma(t) eps with the same data scale (alpha = 1 at sigma = 0). Two
processes A (trained) and B (target) agree wherever their log-SNRs do: with t_A = A.t_of_log_snr(B.log_snr(t_B)),
x_B(t_B) / alpha_B(t_B) = x_A(t_A) / alpha_A(t_A), because both equal y = x0 + gamma eps at the same gamma. So a
model of A answers B's question at (x_B, t_B) by looking at x_A = (alpha_A(t_A) / alpha_B(t_B)) x_B at t_A. Its
eps and x0 predictions carry over unchanged; v, velocity and score are re-expressed for B through the pair
(x0, eps) (`models.predictions`), which is the chain rule in t and the scale of x.

The probability-flow ODE is the same curve in (gamma, y) for both processes, so the transformed model's exact flow map
is the original's, and every solver and grid of B (the flow solvers on the OT path for a VP eps model, DEIS on VP for
an OT velocity model) samples A's model.

Example:
    >>> import jax
    >>> from fastsamplers import schedules
    >>> from fastsamplers.models import GaussianMixture
    >>> vp, ot = schedules.get_process("vp_linear"), schedules.get_process("ot")
    >>> gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=2)
    >>> on_ot = schedules.transform(gm.model_fn(vp, "eps"), "eps", vp, ot)
    >>> x = jax.numpy.ones((3, 2))
    >>> bool(jax.numpy.allclose(on_ot(x, 0.5), gm.predict(x, 0.5, ot, "eps"), atol=1e-5))
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import ArrayLike, ModelFn
from fastsamplers.models import predictions
from fastsamplers.schedules.processes import Process, as_float, get_process


def matched_time(trained: Process, target: Process, t: ArrayLike) -> jax.Array:
    """The trained process's time with the same log-SNR as the target's time t."""
    return trained.t_of_log_snr(target.log_snr(as_float(t)))


def matching_range(trained: Process, target: Process) -> tuple[float, float]:
    """(t_min, t_max) of the target process whose log-SNRs are those of the trained process's ends, so that a grid
    of the target between them queries the model only where it was trained."""
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        lam = np.asarray(trained.log_snr(np.array([trained.t_min, trained.t_max], np.float64)))
        ends = np.asarray(target.t_of_log_snr(lam), np.float64)
    return float(ends[0]), float(ends[1])


def transform(model_fn: ModelFn, prediction: str, trained_process: Process | str,
              target_process: Process | str) -> ModelFn:
    """A model function on `target_process` from one trained on `trained_process`.

    Args:
      model_fn: model_fn(x, t) or model_fn(x, t, args), predicting `prediction` on the trained process.
      prediction: the kind it predicts ("eps", "x0", "v", "velocity", "score").
      trained_process, target_process: `schedules.Process` objects or registered names.

    Returns:
      model_fn(x, t, *args) predicting the same kind on the target process (pass it to `samplers.sample` with the
      same `prediction`, the target process and a grid of the target's times).

    Raises:
      ValueError: a process whose data scale alpha is not 1 at clean data (the two paths then cannot be matched by a
        change of time and a scale of x alone), or an unknown prediction kind.
    """
    predictions.check_kind(prediction)
    trained = get_process(trained_process)
    target = get_process(target_process)
    for role, process in (("trained", trained), ("target", target)):
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            alpha0 = float(process.alpha(np.float64(process.t_zero if process.t_zero is not None else 0.0)))
        if abs(alpha0 - 1.0) > 1e-6:
            raise ValueError(f"the {role} process {process.name!r} has alpha = {alpha0} at clean data, not 1: its "
                             f"data scale differs, and no change of time maps it onto the other process")
    if trained == target:
        return model_fn

    def transformed(x, t, *args):
        t_b = as_float(t)
        t_a = matched_time(trained, target, t_b)
        x_a = (trained.alpha(t_a) / target.alpha(t_b)).astype(x.dtype) * x
        pred = model_fn(x_a, t_a, *args)
        x0, eps = predictions.to_x0_eps(prediction, pred, x_a, t_a, trained)
        return predictions.from_x0_eps(prediction, x0, eps, t_b, target).astype(pred.dtype)

    return transformed
