"""Training objectives: regression of one prediction kind on the affine Gaussian path of a process.

With x_t = alpha(t) x0 + sigma(t) eps, a model of kind `prediction` regresses the exact target of that kind at
(x0, eps, t) (`models.predictions.from_x0_eps`). One formula covers
  - conditional flow matching on the OT path (Lipman et al. 2022; Tong et al. 2023): process "ot" (sigma_min
    option), prediction "velocity", target d x_t / dt = sigma'(t) eps + alpha'(t) x0 = (1 - sigma_min) eps - x0;
  - flow matching on the VP path: process "vp_linear" / "vp_cosine", prediction "velocity";
  - denoising score matching (Ho et al. 2020; Salimans & Ho 2022; Karras et al. 2022) with eps, x0 or v prediction
    on VP, cosine and EDM processes.
The pairs (eps, x0) are the coupling's (`experiments.train.couplings`): independent, exact minibatch OT or Sinkhorn.
Besides: a normalizing flow's likelihood (`make_flow_loss`) and BOSS straightening, the fine-tuning of a velocity
model on a teacher's trajectories at its Bellman steps (`make_straightening_loss`, `experiments.train.straighten`).

Time sampling (`TIME_SAMPLINGS`):
  "uniform"       t ~ U(t_min, t_max);
  "logit_normal"  t = t_min + (t_max - t_min) sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, SD3);
  "log_normal"    log(sigma / alpha) ~ N(m, s) (EDM's P_mean = -1.2, P_std = 1.2), mapped to t by the process and
                  clipped to [t_min, t_max].
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core import Registry
from fastsamplers.models import predictions


def _uniform(key, n, process, t_min, t_max, mean, std):
    return jax.random.uniform(key, (n,), jnp.float32, t_min, t_max)


def _logit_normal(key, n, process, t_min, t_max, mean, std):
    normal = mean + std * jax.random.normal(key, (n,), jnp.float32)
    return (t_min + (t_max - t_min) * jax.nn.sigmoid(normal)).astype(jnp.float32)


def _log_normal(key, n, process, t_min, t_max, mean, std):
    normal = mean + std * jax.random.normal(key, (n,), jnp.float32)
    return jnp.clip(process.t_of_log_snr(-normal), t_min, t_max).astype(jnp.float32)


# The module docstring's time samplings: name -> fn(key, n, process, t_min, t_max, mean, std) -> (n,) times.
TIME_SAMPLINGS = Registry("time sampling", {"uniform": _uniform, "logit_normal": _logit_normal,
                                            "log_normal": _log_normal},
                          ordered=True, unknown="unknown {kind} {name!r}; valid: {valid}")


def sample_times(key, n, process, method="uniform", t_min=None, t_max=None, mean=0.0, std=1.0):
    """n training times in [t_min, t_max] (defaults: the process's ends), float32.

    Example:
        >>> import jax
        >>> from fastsamplers import schedules
        >>> t = sample_times(jax.random.PRNGKey(0), 5, schedules.get_process("ot"), t_min=0.0, t_max=1.0)
        >>> bool(((t >= 0) & (t <= 1)).all())
        True
    """
    draw = TIME_SAMPLINGS.lookup(method)
    t_min = process.t_min if t_min is None else t_min
    t_max = process.t_max if t_max is None else t_max
    return draw(key, n, process, t_min, t_max, mean, std)


def drop_labels(key, labels, rate, null_label):
    """Label dropout for classifier-free guidance (Ho & Salimans 2022): each label replaced by `null_label` with
    probability `rate`, independently per example; int32, labels' shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> drop_labels(jax.random.PRNGKey(0), jnp.arange(4), 0.0, 10).tolist()
        [0, 1, 2, 3]
    """
    labels = jnp.asarray(labels, jnp.int32)
    if not rate:
        return labels
    return jnp.where(jax.random.bernoulli(key, rate, labels.shape), jnp.int32(null_label), labels)


def _check_label_dropout(label_dropout):
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")


class Loss(NamedTuple):
    """A training objective split where the parameters enter: `draw` makes the training pairs, `regress` scores them.

    For diffusion, `draw(key, x0) -> (eps, x0, t)` samples the noise, pairs it with the data through the coupling
    and samples the times (`draw(key, x0, labels) -> (eps, x0, t, labels)` for a class-conditional model, the
    labels after dropout). It does not see the parameters, so a trainer can draw the pairs of many steps at once
    (one host round trip for a callback coupling) and outside the gradient. `regress(params, eps, x0, t) -> scalar`
    (`regress(params, eps, x0, t, labels)`) is the mean squared error of the model's prediction. For a normalizing flow
    (`make_flow_loss`),
    `draw(key, x0[, labels]) -> (x_noisy, labels)` and `regress` is the negative log-likelihood.
    `loss(params, key, x0[, labels])` is the two in turn.
    """

    draw: Callable
    regress: Callable

    def __call__(self, params, key, *batch):
        return self.regress(params, *self.draw(key, *batch))


def make_loss(model_fn, process, prediction, *, coupling=None, time_sampling="uniform", t_min=None, t_max=None,
              time_mean=0.0, time_std=1.0, constrain=None, num_classes=0, label_dropout=0.0):
    """The mean squared error of `prediction` on the process's path, as a `Loss`: `loss(params, key, x0) -> scalar`,
    or `loss(params, key, x0, labels)` for a class-conditional model (num_classes > 0).

    Args:
      model_fn: fn(params, x, t[, labels]) with t of shape (batch,) (`models.conditioning.network_fn`).
      process: a `schedules.Process`.
      prediction: what the model predicts: "eps", "x0", "v" or "velocity" ("score" is eps scaled by 1 / sigma,
        a poorly conditioned regression target, and is refused).
      coupling: (key, eps, x0) -> (eps, x0), how noise and data are paired (default: independent).
      time_sampling, t_min, t_max, time_mean, time_std: see `sample_times`.
      constrain: optional fn applied to every batch-shaped array (a sharding constraint for data parallelism).
      num_classes: > 0 for a class-conditional model: `draw` then needs the batch's labels, and label num_classes
        is the null label.
      label_dropout: with num_classes > 0, the probability of replacing a label by the null label (`drop_labels`,
        drawn from the step's key), which trains the unconditional branch of guidance.

    Returns:
      A `Loss`; calling it gives the batch mean over examples and dimensions, float32.
    """
    predictions.check_kind(prediction)
    if prediction == "score":
        raise ValueError("prediction 'score' is not a training target (it blows up as sigma -> 0); train 'eps' "
                         "and convert with models.predictions.convert")
    TIME_SAMPLINGS.check(time_sampling)
    _check_label_dropout(label_dropout)
    constrain = constrain or (lambda x: x)

    def draw(key, x0, labels=None):
        if num_classes and labels is None:
            raise ValueError("a class-conditional model (num_classes > 0) needs labels; the dataset has none")
        key_eps, key_t, key_pair = jax.random.split(key, 3)
        eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
        if coupling is not None:
            # The pairing only chooses which examples meet: no gradient flows into it.
            eps, x0 = jax.lax.stop_gradient(coupling(key_pair, eps, x0))
        t = sample_times(key_t, x0.shape[0], process, time_sampling, t_min, t_max, time_mean, time_std)
        if not num_classes:
            return constrain(eps), constrain(x0), constrain(t)
        # (a coupling that re-pairs x0 would separate it from its labels: `experiment.build` allows only the
        # independent one with labels)
        labels = drop_labels(jax.random.fold_in(key, 3), labels, label_dropout, num_classes)
        return constrain(eps), constrain(x0), constrain(t), constrain(labels)

    def regress(params, eps, x0, t, labels=None):
        t_x = jnp.reshape(t, t.shape + (1,) * (x0.ndim - 1))
        x_t = (process.alpha(t_x) * x0 + process.sigma(t_x) * eps).astype(x0.dtype)
        target = predictions.from_x0_eps(prediction, x0, eps, t_x, process).astype(x0.dtype)
        error = model_fn(params, x_t, t, *(() if labels is None else (labels,))) - target
        return jnp.mean(jnp.square(error.astype(jnp.float32)))

    return Loss(draw, regress)


def make_straightening_loss(model_fn, ts, constrain=None):
    """BOSS straightening (Nguyen et al. 2023, "Bellman Optimal Step-size Straightening of Flow-Matching Models"):
    one Euler step of the velocity model along each chosen interval, from the teacher's state, lands on the
    teacher's next state,

        loss = mean_k mean || x(t_k) + (t_{k+1} - t_k) v_theta(x(t_k), t_k) - x(t_{k+1}) ||^2

    (the mean over the K intervals, the batch and the elements), x the teacher's trajectory at the chosen times.

    Args:
      model_fn: fn(params, x, t) -> velocity dx/dt, t of shape (batch,) (`models.conditioning.network_fn`).
      ts: the K + 1 chosen times, strictly decreasing (the Bellman steps: `schedules.distill("bellman", ...)`).
      constrain: optional fn applied to every batch-shaped array (a sharding constraint).

    Returns:
      A `Loss`: `draw(key, trajectories)`, trajectories (batch, K + 1, *shape) the teacher's states at ts, gives
      every interval of every trajectory as (x_start, x_end, t_start, dt), batch * K rows (no randomness: the key is
      unused); `regress(params, x_start, x_end, t_start, dt) -> scalar` float32.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> loss = make_straightening_loss(lambda p, x, t: p * jnp.ones_like(x), np.array([1.0, 0.5, 0.0]))
        >>> straight = jnp.linspace(1.0, 0.0, 3).reshape(1, 3, 1)  # x = t: the exact velocity is 1
        >>> float(loss(1.0, None, straight)), float(loss(0.0, None, straight))
        (0.0, 0.25)
    """
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or ts.size < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"ts must hold K + 1 >= 2 strictly decreasing times, got {ts}")
    t_start, dt = ts[:-1].astype(np.float32), np.diff(ts).astype(np.float32)
    num_intervals = t_start.size
    constrain = constrain or (lambda x: x)

    def draw(key, trajectories):
        del key  # every interval of every trajectory
        if trajectories.ndim < 3 or trajectories.shape[1] != num_intervals + 1:
            raise ValueError(f"expected teacher trajectories (batch, {num_intervals + 1}, *shape), got shape "
                             f"{trajectories.shape}")
        rows = (trajectories.shape[0] * num_intervals, *trajectories.shape[2:])  # row b * K + k: interval k of b
        x_start = jnp.reshape(trajectories[:, :-1], rows)
        x_end = jnp.reshape(trajectories[:, 1:], rows)
        batch = trajectories.shape[0]
        return (constrain(x_start), constrain(x_end), constrain(jnp.tile(jnp.asarray(t_start), batch)),
                constrain(jnp.tile(jnp.asarray(dt), batch)))

    def regress(params, x_start, x_end, t_start, dt):
        dt_x = jnp.reshape(dt, dt.shape + (1,) * (x_start.ndim - 1)).astype(x_start.dtype)
        error = x_start + dt_x * model_fn(params, x_start, t_start) - x_end
        return jnp.mean(jnp.square(error.astype(jnp.float32)))

    return Loss(draw, regress)


def make_flow_loss(flow, noise_std, label_dropout=0.0, constrain=None):
    """A normalizing flow's training objective (TarFlow, Zhai et al. 2024): the negative log-likelihood per
    dimension (nats) of the data with Gaussian noise augmentation, x + noise_std * n.

    Args:
      flow: a `models.tarflow.TarFlow`.
      noise_std: the augmentation noise's standard deviation (the paper uses 0.05-0.15 for images in [-1, 1]);
        the Tweedie denoising step after sampling uses the same sigma.
      label_dropout: for a class-conditional flow, the probability of replacing a label by "no label"
        (index num_classes), which trains the unconditional branch of guidance.
      constrain: optional fn applied to every batch-shaped array (a sharding constraint).

    Returns:
      A `Loss`: `draw(key, x0, labels=None) -> (x, labels)`, `regress(params, x, labels) -> scalar` (float32).
    """
    from fastsamplers.models.tarflow import nll

    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    _check_label_dropout(label_dropout)
    constrain = constrain or (lambda x: x)

    def draw(key, x0, labels=None):
        key_noise, key_drop = jax.random.split(key)
        x = x0 + noise_std * jax.random.normal(key_noise, x0.shape, x0.dtype)
        if flow.num_classes and labels is None:
            raise ValueError("a class-conditional flow (num_classes > 0) needs labels; the dataset has none")
        if labels is None:
            labels = jnp.zeros(x0.shape[:1], jnp.int32)
        else:
            labels = drop_labels(key_drop, labels, label_dropout, flow.num_classes)
        return constrain(x), constrain(labels.astype(jnp.int32))

    def regress(params, x, labels):
        return jnp.mean(nll(flow, params, x, labels if flow.num_classes else None).astype(jnp.float32))

    return Loss(draw, regress)


def make_flow_map_loss(student, teacher, aux, process, *, correction_weight=1.0, start_at_prior=0.5,
                       r_min=0.02, r_max=0.98, t_min=None, t_max=None, constrain=None):
    """Data-free flow-map distillation (FreeFlow, Tong et al. 2025; reference sheet section 9, whose losses come
    from secondary summaries: the forms below are derived here and tested in tests/test_flow_map.py).

    The student f(x, t, s) = x + (s - t) F(x, t, s) (`models.flow_map.FlowMapFn`) learns the teacher's flow from
    prior noise z alone (t_max the noise end, t_min the data end; t = 1 and 0 on the OT path):

    - prediction loss: the student's generating velocity is the teacher's velocity at the student's own state,
          L_pred = mean || d/ds f(x_t, t, s) - sg(u_T(f(x_t, t, s), s)) ||^2,
      d/ds by `jax.jvp` in s (= F + (s - t) dF/ds). The start is x_t = z at t = t_max with probability
      `start_at_prior` (the brief's one-step map f(z, t_max, s)), else x_t = sg(f(z, t_max, t)), the student's own
      state at t ~ U(t_min, t_max): the states a multi-step flow-map sampler starts its later steps from. s ~ U(t_min,
      t) (uniform in time). Its minimiser is the teacher's flow map: d/ds x_s = u_T(x_s, s) with x_t = x is the ODE.
    - correction (VSD / DMD style): the one-step sample x_hat = f(z, t_max, t_min), re-noised to
      x_r = alpha(r) x_hat + sigma(r) eps, r ~ U(r_min, r_max). An auxiliary velocity network v_psi, trained by flow
      matching on those samples (L_aux = mean || v_psi(sg(x_r), r) - (alpha'(r) sg(x_hat) + sigma'(r) eps) ||^2),
      estimates the velocity of the student's noised marginal; theta is moved along g = sg(v_psi - u_T)(x_r) through
      x_hat by the surrogate
          L_corr = 1/2 mean || x_hat - sg(x_hat + g) ||^2,   dL_corr / d x_hat = -g / N (N elements),
      whose value is 1/2 mean ||g||^2. Why the sign: with x = alpha x0 + sigma eps, E[velocity | x] =
      (alpha' / alpha) x + (sigma' - alpha' sigma / alpha) E[eps | x] and E[eps | x] = -sigma score, so
      v_psi - u_T = -sigma (sigma' - alpha' sigma / alpha) (score_student - score_teacher) = c(r) (score_teacher -
      score_student) with c(r) = sigma^2 d/dr log(sigma / alpha) > 0 (on the OT path c = r / (1 - r)): moving x_hat
      along g descends KL(p_student,r || p_teacher,r), whose gradient in x_r is score_student - score_teacher
      (Wang et al. 2023, VSD; Yin et al. 2024, DMD), with the weight 1 / c(r) folded into r's sampling.
    The total is L_pred + correction_weight (L_corr + L_aux); the stop-gradients make theta see only L_pred and
    L_corr and psi only L_aux, so one gradient step updates both networks jointly. correction_weight = 0 drops the
    correction and the auxiliary network's training (static: no compute spent on them).

    Args:
      student: a `models.flow_map.FlowMapFn`, fn(params, x, t, s).
      teacher: fn(params, x, t) -> velocity dx/dt (a `conditioning.NetworkFn` of a flow-matching run).
      aux: fn(params, x, t) -> velocity, the auxiliary network (the teacher's architecture).
      process: the `schedules.Process` of the teacher (alpha, sigma and their derivatives re-noise x_hat).
      correction_weight: the weight of the correction (a Python float; 0 turns it off).
      start_at_prior: the probability that the prediction loss starts at z (t = t_max).
      r_min, r_max: the re-noising levels' range.
      t_min, t_max: the data and noise ends (default the process's).
      constrain: optional fn applied to every batch-shaped array (a sharding constraint).

    Returns:
      A `Loss`: `draw(key, z)`, z the prior noise batch (`experiments.train.flow_map_training.PriorNoise`; no data
      is read),
      gives (z, t, s, r, eps); `regress(params, z, t, s, r, eps, frozen=teacher_params) -> scalar` float32, params
      {"student": ..., "aux": ...}. `terms` has the same arguments and returns the named parts (pred, corr, aux).
    """
    t_min = process.t_min if t_min is None else float(t_min)
    t_max = process.t_max if t_max is None else float(t_max)
    if not 0.0 <= start_at_prior <= 1.0:
        raise ValueError(f"start_at_prior must lie in [0, 1], got {start_at_prior}")
    if not t_min < r_min < r_max < t_max and correction_weight:
        raise ValueError(f"the re-noising range must satisfy t_min={t_min} < r_min={r_min} < r_max={r_max} < "
                         f"t_max={t_max}")
    if not correction_weight >= 0:
        raise ValueError(f"correction_weight must be >= 0, got {correction_weight}")
    constrain = constrain or (lambda x: x)

    def draw(key, z):
        k_start, k_t, k_s, k_r, k_eps = jax.random.split(key, 5)
        n = z.shape[0]
        t = jnp.where(jax.random.bernoulli(k_start, start_at_prior, (n,)), t_max,
                      jax.random.uniform(k_t, (n,), jnp.float32, t_min, t_max)).astype(jnp.float32)
        s = t_min + (t - t_min) * jax.random.uniform(k_s, (n,), jnp.float32)
        r = jax.random.uniform(k_r, (n,), jnp.float32, r_min, r_max)
        eps = jax.random.normal(k_eps, z.shape, z.dtype)
        return tuple(constrain(a) for a in (z, t, s, r, eps))

    def expand(v, x):
        return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1)).astype(x.dtype)

    def terms(params, z, t, s, r, eps, frozen):
        theta, psi = params["student"], params["aux"]
        n = z.shape[0]
        start = jnp.full((n,), t_max, jnp.float32)
        # the start state: z itself at t_max, else the student's own state there (no gradient through it)
        x_t = jnp.where(expand(t == t_max, z) > 0, z, jax.lax.stop_gradient(student(theta, z, start, t)))
        x_s, dx_ds = jax.jvp(lambda s_: student(theta, x_t, t, s_), (s,), (jnp.ones_like(s),))
        target = jax.lax.stop_gradient(teacher(frozen, x_s, s))
        out = {"pred": jnp.mean(jnp.square((dx_ds - target).astype(jnp.float32)))}
        if not correction_weight:
            return out
        x_hat = student(theta, z, start, jnp.full((n,), t_min, jnp.float32))
        alpha, sigma = expand(process.alpha(r), z), expand(process.sigma(r), z)
        x_r = jax.lax.stop_gradient(alpha * x_hat + sigma * eps)
        g = jax.lax.stop_gradient(aux(psi, x_r, r) - teacher(frozen, x_r, r))
        out["corr"] = 0.5 * jnp.mean(jnp.square((x_hat - jax.lax.stop_gradient(x_hat + g)).astype(jnp.float32)))
        velocity = predictions.from_x0_eps("velocity", jax.lax.stop_gradient(x_hat), eps, expand(r, z), process)
        out["aux"] = jnp.mean(jnp.square((aux(psi, x_r, r) - velocity).astype(jnp.float32)))
        return out

    def regress(params, z, t, s, r, eps, frozen=None):
        parts = terms(params, z, t, s, r, eps, frozen)
        return parts["pred"] + correction_weight * (parts.get("corr", 0.0) + parts.get("aux", 0.0))

    return FlowMapLoss(draw, regress, terms)


class FlowMapLoss(NamedTuple):
    """A `Loss` with the flow-map objective's named parts (`make_flow_map_loss`): `terms(params, *pairs, frozen)`."""

    draw: Callable
    regress: Callable
    terms: Callable

    def __call__(self, params, key, *batch, frozen=None):
        return self.regress(params, *self.draw(key, *batch), frozen=frozen)
