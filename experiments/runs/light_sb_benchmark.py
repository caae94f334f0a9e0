"""LightSB (`models.light_sb`) measured against exact and discrete entropic OT plans (`scripts/benchmark_light_sb.py`).

Gaussian rows: source N(m0, diag v0), target N(m1, diag v1) with random means and variances in d = 2, 16, 64
(eps 0.5, cost |x - y|^2 / 2), n samples each. LightSB is fitted (K potentials, diagonal, Adam, float32) and its
plan compared with the closed form (`gaussian_eot_slope`) on held-out x0: the relative conditional-mean error
sqrt(E|E_fit[y | x] - E[y | x]|^2 / E|E[y | x] - m1|^2), and the relative Frobenius error of the conditional covariance
(the mixture's, averaged over x). Beside them: the same errors of the closed-form plan of the *empirical* moments (the
floor that n samples allow any fit) and of the independent coupling (conditional mean m1, covariance v1: the
uncorrected baseline). Fit time: the first call (compile included) and a second compiled call.

2-D rows: N(0, I) to the procedural sets of experiments/train/data.py (eps 0.1 in the data's units). LightSB's
conditional means on m held-out x0 against those of ott-jax's Sinkhorn plan (log domain, the cost |x - y|^2 / 2, the
same eps) between the m x0 and m target samples (relative RMSE as above, the target's total variance as the scale);
the floor is Sinkhorn against Sinkhorn on two independent target sets; the baseline the independent coupling. And
the plan's target marginal: the energy distance of LightSB's draws to fresh target samples against the
exact-vs-exact floor.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.train import couplings, data
from fastsamplers.models import light_sb

DATA_2D = ("8gaussians", "moons", "swissroll")


def benchmark(dims=(2, 16, 64), datasets=DATA_2D, *, num_samples: int = 4096, num_potentials: int = 10,
              steps: int = 5000, lr: float = 1e-2, eps_gaussian: float = 0.5, eps_2d: float = 0.1,
              potentials_2d: int = 100, held_out: int = 1024, seed: int = 0, json_path: str | None = None) -> dict:
    """Both tables, printed as measured, and (with json_path) written with the settings.

    Returns:
      {"gaussian": rows, "two_d": rows}.
    """
    for name in datasets:
        data.DATASETS.check(name)
    print(f"LightSB on {jax.devices()[0].platform} ({os.cpu_count()} CPU cores), float32")
    gaussian = [gaussian_row(d, num_samples, num_potentials, steps, lr, eps_gaussian, held_out, seed) for d in dims]
    print(render_table(["d", "fit s (compile)", "fit s", "mean err", "floor", "independent", "cov err", "floor",
                        "independent"],
                       [[r["dim"], f"{r['first_fit_s']:.2f}", f"{r['fit_s']:.2f}", f"{r['mean_error']:.4f}",
                         f"{r['mean_error_floor']:.4f}", f"{r['mean_error_independent']:.4f}",
                         f"{r['cov_error']:.4f}", f"{r['cov_error_floor']:.4f}", f"{r['cov_error_independent']:.4f}"]
                        for r in gaussian]), flush=True)
    two_d = [two_d_row(name, num_samples, potentials_2d, steps, lr, eps_2d, held_out, seed) for name in datasets]
    print(render_table(["data", "fit s", "mean err vs Sinkhorn", "Sinkhorn floor", "independent", "energy dist",
                        "floor"],
                       [[r["data"], f"{r['fit_s']:.2f}", f"{r['mean_error']:.4f}", f"{r['mean_error_floor']:.4f}",
                         f"{r['mean_error_independent']:.4f}", f"{r['energy_distance']:.5f}",
                         f"{r['energy_floor']:.5f}"] for r in two_d]), flush=True)
    record = {"gaussian": gaussian, "two_d": two_d}
    if json_path:
        core.write_json(json_path, {
            **record,
            "settings": dict(dims=list(dims), datasets=list(datasets), num_samples=num_samples,
                             num_potentials=num_potentials, steps=steps, lr=lr, eps_gaussian=eps_gaussian,
                             eps_2d=eps_2d, potentials_2d=potentials_2d, held_out=held_out, seed=seed,
                             platform=jax.devices()[0].platform),
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
                         "machine": platform.machine(), "cpu_count": os.cpu_count()},
        }, indent=2)
        print(f"wrote {json_path}")
    return record


def _timed_fit(key, x0, x1, eps, **options):
    """(first call's seconds, compile included; a second compiled call's seconds; its model)."""
    start = time.perf_counter()
    jax.block_until_ready(light_sb.fit(key, x0, x1, eps, **options))
    first = time.perf_counter() - start
    start = time.perf_counter()
    model = jax.block_until_ready(light_sb.fit(jax.random.fold_in(key, 1), x0, x1, eps, **options))
    return first, time.perf_counter() - start, model


def _conditional_moments(model, x):
    """E[y | x] (m, d) and Cov[y | x] (m, d, d) of the plan's mixture."""
    logits, means, stds = model._posterior(x, 0.0)
    w = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    means = np.asarray(model._from_basis(means), np.float64)
    rot = np.broadcast_to(np.eye(model.dim), (model.num_potentials, model.dim, model.dim)) \
        if model.rotation is None else np.asarray(model.rotation, np.float64)
    var = np.asarray(stds, np.float64) ** 2
    cov_k = np.einsum("kij,mkj,klj->mkil", rot, var, rot)
    mean = np.einsum("mk,mkd->md", w, means)
    second = np.einsum("mk,mkil->mil", w, cov_k + means[..., :, None] * means[..., None, :])
    return mean, second - mean[:, :, None] * mean[:, None, :]


def _errors(mean, cov, exact_mean, exact_cov, m1):
    mean_err = np.sqrt(np.mean(np.sum((mean - exact_mean) ** 2, -1)) / np.mean(np.sum((exact_mean - m1) ** 2, -1)))
    cov_err = np.mean(np.linalg.norm(cov - exact_cov, axis=(-2, -1))) / np.linalg.norm(exact_cov)
    return float(mean_err), float(cov_err)


def gaussian_row(d, n, num_potentials, steps, lr, eps, held_out, seed):
    """One dimension of the Gaussian table (module docstring)."""
    keys = jax.random.split(jax.random.PRNGKey(seed + d), 7)
    m0, m1 = jax.random.normal(keys[0], (d,)), jax.random.normal(keys[1], (d,))
    v0, v1 = jax.random.uniform(keys[2], (d,), minval=0.25, maxval=2.0), jax.random.uniform(keys[3], (d,), minval=0.25,
                                                                                         maxval=2.0)
    x0 = m0 + jnp.sqrt(v0) * jax.random.normal(keys[4], (n, d))
    x1 = m1 + jnp.sqrt(v1) * jax.random.normal(keys[5], (n, d))
    first, fit_s, model = _timed_fit(keys[6], x0, x1, eps, num_potentials=num_potentials, steps=steps, lr=lr)
    test = np.asarray(m0 + jnp.sqrt(v0) * jax.random.normal(jax.random.fold_in(keys[4], 1), (held_out, d)))
    exact = light_sb.LightSB.gaussian(m0, v0, m1, v1, eps)
    empirical = light_sb.LightSB.gaussian(jnp.mean(x0, 0), jnp.var(x0, 0), jnp.mean(x1, 0), jnp.var(x1, 0), eps)
    exact_mean, exact_cov = _conditional_moments(exact, jnp.asarray(test))
    m1 = np.asarray(m1, np.float64)
    fit_err = _errors(*_conditional_moments(model, jnp.asarray(test)), exact_mean, exact_cov, m1)
    floor = _errors(*_conditional_moments(empirical, jnp.asarray(test)), exact_mean, exact_cov, m1)
    independent = _errors(np.broadcast_to(m1, exact_mean.shape), np.broadcast_to(np.diag(np.asarray(v1)),
                                                                                  exact_cov.shape),
                          exact_mean, exact_cov, m1)
    row = {"dim": d, "first_fit_s": first, "fit_s": fit_s, "mean_error": fit_err[0], "cov_error": fit_err[1],
           "mean_error_floor": floor[0], "cov_error_floor": floor[1], "mean_error_independent": independent[0],
           "cov_error_independent": independent[1]}
    print(row, flush=True)
    return row


def _sinkhorn_means(x0, y, eps):
    """E[y | x0_i] under the discrete entropic plan between the uniform sets x0 and y (cost |x - y|^2 / 2)."""
    cost = 0.5 * couplings.squared_distances(x0, y)
    logits = couplings.sinkhorn_log_plan(cost, eps, threshold=1e-4, max_iterations=20000, lse_mode=True)
    return np.asarray(jax.nn.softmax(logits, axis=1) @ y, np.float64)


def two_d_row(name, n, num_potentials, steps, lr, eps, held_out, seed):
    """One 2-D set (module docstring)."""
    target = data.get_dataset(name)
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    x0 = jax.random.normal(keys[0], (n, 2))
    x1 = target.sample(keys[1], n)
    _, fit_s, model = _timed_fit(keys[2], x0, x1, eps, num_potentials=num_potentials, steps=steps, lr=lr)
    test = jax.random.normal(keys[3], (held_out, 2))
    y_a, y_b, y_c = (target.sample(k, held_out) for k in keys[4:7])
    sinkhorn_a, sinkhorn_b = _sinkhorn_means(test, y_a, eps), _sinkhorn_means(test, y_b, eps)
    mean = np.asarray(model.conditional_mean(test), np.float64)
    centre = np.asarray(jnp.mean(x1, 0), np.float64)
    scale = np.mean(np.sum((sinkhorn_a - centre) ** 2, -1))  # a mean square: the errors are sqrt(mse / scale)
    draws = np.asarray(model.sample(keys[7], test))
    row = {"data": name, "fit_s": fit_s,
           "mean_error": float(np.sqrt(np.mean(np.sum((mean - sinkhorn_a) ** 2, -1)) / scale)),
           "mean_error_floor": float(np.sqrt(np.mean(np.sum((sinkhorn_b - sinkhorn_a) ** 2, -1)) / scale)),
           "mean_error_independent": float(np.sqrt(np.mean(np.sum((centre - sinkhorn_a) ** 2, -1)) / scale)),
           "energy_distance": energy_distance(draws, np.asarray(y_c)),
           "energy_floor": energy_distance(np.asarray(y_a), np.asarray(y_b))}
    print(row, flush=True)
    return row
