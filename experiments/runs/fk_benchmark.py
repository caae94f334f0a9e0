"""Feynman-Kac correctors on the exact oracle (`scripts/benchmark_fk.py`): distance to the exact annealed, guided,
product and tilted targets, and the particle loop's overhead.

Targets (vp_linear, t_min 0.02; every target is the one the corrector samples at ts[-1] = t_min, the experts'
marginals there, which is not the marginal of the t = 0 product):
- anneal_1d    p^beta of a 1-d two-component mixture (exact: inverse CDF on a fine grid);
- guided_1d    p(x|c)^w p(x)^(1-w), c one component (grid);
- tilt_1d      p(x) exp(-(x - 0.5)^2 / 2) (closed form: a product of mixtures, `GaussianMixture.product`);
- product_1d, product_2d  p_a p_b of two mixtures (closed form).

"rows": for each target, step count and particle count N: the energy distance (`experiments.metrics`) between N
particles and N exact draws for the corrected sampler (`samplers.fk.sample`, systematic resampling where ESS / N <
0.9, churn 1), the uncorrected one (the same SDE, `resample="none"`) and the plain ODE (`samplers.sample` with
dpmpp_2m on the guided / summed / scaled prediction, the same steps); beside the floor, the mean energy distance
between two independent exact draws of N (over `floor_pairs` pairs); and the model calls per sample.

"digits" (with a class-conditional digits_vp run): FK-guided against CFG-guided samples at equal network calls, by
FD-digits and the classifier's accuracy on the asked labels (`digits_rows`).

"overhead": on the 8-d, 6-component conditional oracle of the guidance benchmark, the wall time of
`samplers.fk.sample` (guided target, populations of 8, the default ESS threshold) against `samplers.sample` with
`samplers.guided` and ddim eta = 1 (the same SDE, the same 2 model calls per step), both compiled, the median of
`repeats` runs.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import GaussianMixture

STEPS = (50, 200)
PARTICLES = (512, 2048)
PARTS = core.Registry.of_names("part", ("rows", "overhead", "digits"), ordered=True)
DIGITS_SCALES = (2.0, 4.0)
DIGITS_STEPS = (25, 50)


class Problem(NamedTuple):
    """A target with its exact draws: the fk target, its args, the ODE baseline's model and args, exact(key, n)."""

    target: samplers.fk.Target
    args: object
    ode_model: Callable
    ode_args: object
    exact: Callable[[jax.Array, int], jax.Array]
    dim: int


def process():
    return schedules.get_process("vp_linear", t_min=0.02)


def mixture_1d() -> GaussianMixture:
    return GaussianMixture.create([0.3, 0.7], [[-1.5], [1.0]], [0.3, 0.5])


def grid_draws(key: jax.Array, log_density: Callable, lo: float, hi: float, num: int,
               cells: int = 20000) -> jax.Array:
    """`num` exact draws (num, 1) of a 1-d density known up to a constant, by inverse CDF on `cells` equal cells of
    [lo, hi] (uniform within a cell: a piecewise-constant density, error O(cell width))."""
    edges = np.linspace(lo, hi, cells + 1)
    centres = jnp.asarray(0.5 * (edges[1:] + edges[:-1]))[:, None]
    k_cell, k_in = jax.random.split(key)
    cell = jax.random.categorical(k_cell, log_density(centres), shape=(num,))
    return (jnp.asarray(edges[:-1])[cell] + (hi - lo) / cells * jax.random.uniform(k_in, (num,)))[:, None]


def problem(name: str, n: int, param: float | None = None) -> Problem:
    """The target `name` (module docstring) for n particles; `param` its beta / scale (default 2)."""
    PROBLEMS.check(name)
    p, w = process(), 2.0 if param is None else param
    gm = mixture_1d()
    if name == "anneal_1d":
        return Problem(samplers.fk.anneal(gm.model_fn(p), w), None, lambda x, t: w * gm.model_fn(p)(x, t), None,
                       lambda key, m: grid_draws(key, lambda x: w * gm.log_prob(x, p.t_min, p), -6.0, 6.0, m), 1)
    if name == "guided_1d":
        labels, null = jnp.full((n,), 1), jnp.full((n,), gm.null_label)
        cond = GaussianMixture.create([1.0], gm.means[1:], gm.stds[1:])
        return Problem(samplers.fk.guided(gm.conditional_model_fn(p), w, null, batch_axes=0), labels,
                       samplers.guided(gm.conditional_model_fn(p), w, null, batch_axes=0), labels,
                       lambda key, m: grid_draws(key, lambda x: w * cond.log_prob(x, p.t_min, p)
                                                 + (1 - w) * gm.log_prob(x, p.t_min, p), -6.0, 6.0, m), 1)
    if name == "tilt_1d":
        centre, var = 0.5, 1.0  # r(x) = -(x - centre)^2 / (2 var): p exp(r) is p times a Gaussian, a mixture
        reward = GaussianMixture.create([1.0], [[centre]], var**0.5)
        target = gm.marginal(p.t_min, p).product(reward)
        return Problem(samplers.fk.tilt(gm.model_fn(p), lambda x: -jnp.sum((x - centre) ** 2, -1) / (2 * var)),
                       None, None, None, target.sample, 1)
    if name == "product_1d":
        gm_a, gm_b = gm, GaussianMixture.create([0.5, 0.5], [[-1.0], [1.8]], [0.6, 0.6])
    else:
        gm_a = GaussianMixture.create([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.5, 0.4])
        gm_b = GaussianMixture.create([0.4, 0.6], [[0.0, -0.8], [0.6, 1.0]], [0.5, 0.6])
    target = gm_a.marginal(p.t_min, p).product(gm_b.marginal(p.t_min, p))
    summed = lambda x, t: gm_a.model_fn(p)(x, t) + gm_b.model_fn(p)(x, t)  # noqa: E731
    return Problem(samplers.fk.product(gm_a.model_fn(p), gm_b.model_fn(p)), None, summed, None, target.sample,
                   gm_a.dim)


PROBLEMS = core.Registry.of_names("fk problem", ("anneal_1d", "guided_1d", "tilt_1d", "product_1d", "product_2d"),
                                  ordered=True)


def run_problem(name: str, num_steps: int, n: int, seed: int, param: float | None = None,
                churn: float = 1.0) -> dict:
    """Energy distances of the corrected, uncorrected and ODE samples of one target to n exact draws."""
    p = process()
    prob = problem(name, n, param)
    ts = schedules.get_timesteps("logsnr", p, num_steps)
    x_init = p.prior(jax.random.PRNGKey(seed), (n, prob.dim))
    exact = prob.exact(jax.random.PRNGKey(seed + 1), n)
    key = jax.random.PRNGKey(seed + 2)
    row = {"target": name, "num_steps": num_steps, "n": n}
    x, info = samplers.fk.sample(prob.target, p, x_init, ts, key=key, args=prob.args, churn=churn)
    row.update(nfe=info["nfe"], fk=energy_distance(x, exact), min_ess=float(jnp.min(info["ess"])),
               resamples=int(info["num_resamples"][0]))
    x, _ = samplers.fk.sample(prob.target, p, x_init, ts, key=key, args=prob.args, churn=churn, resample="none")
    row["uncorrected"] = energy_distance(x, exact)
    if prob.ode_model is not None:
        x, _ = samplers.sample(prob.ode_model, "dpmpp_2m", p, x_init, ts, args=prob.ode_args)
        row["ode"] = energy_distance(x, exact)
    return row


def floor(name: str, n: int, pairs: int, seed: int = 1000) -> float:
    """The mean energy distance between two independent exact draws of n (the floor at this sample size)."""
    exact = problem(name, n).exact
    return float(np.mean([energy_distance(exact(jax.random.PRNGKey(seed + 2 * k), n),
                                          exact(jax.random.PRNGKey(seed + 2 * k + 1), n)) for k in range(pairs)]))


def benchmark(json_path: str, *, targets: tuple[str, ...] = tuple(PROBLEMS), steps: tuple[int, ...] = STEPS,
              particles: tuple[int, ...] = PARTICLES, seed: int = 0, floor_pairs: int = 5, repeats: int = 5,
              overhead_batch: int = 4096, overhead_steps: int = 100,
              parts: tuple[str, ...] = ("rows", "overhead"), train_config: str = "", checkpoint_dir: str = "",
              digits_samples: int = 2000, seeds: int = 3) -> dict:
    """The tables of the module docstring, printed and written with their rows to json_path.

    Args:
      json_path: the JSON file.
      targets: names of `PROBLEMS`; steps, particles: the grid sizes and particle counts of "rows".
      seed: the draws' and the noise's seed (of "rows": the first of `seeds` consecutive ones).
      seeds: "rows" runs every cell with this many seeds and reports the median distances (one SMC run's mode
        proportions wander by a few times their binomial error: samplers/fk.py); each seed's are in the record.
      floor_pairs: pairs of exact draws behind each floor.
      repeats: timed runs of each sampler in "overhead" (the median is reported).
      overhead_batch, overhead_steps: the particles and steps of "overhead".
      parts: which of "rows", "overhead" and "digits" to run.
      train_config, checkpoint_dir, digits_samples: the "digits" part's class-conditional run and sample count.

    Returns:
      The record written: rows, floors, overhead, digits, versions.
    """
    for part in parts:
        PARTS.check(part)
    for name in targets:
        PROBLEMS.check(name)
    record = {"versions": versions()}
    if "rows" in parts:
        floors = {f"{name}/{n}": floor(name, n, floor_pairs) for name in targets for n in particles}
        rows = []
        for name in targets:
            for n in particles:
                for num_steps in steps:
                    runs = [run_problem(name, num_steps, n, seed + k) for k in range(seeds)]
                    row = dict(runs[0], floor=floors[f"{name}/{n}"], seeds=seeds,
                               min_ess=min(r["min_ess"] for r in runs))
                    for key in ("fk", "uncorrected", "ode"):
                        if key in runs[0]:
                            row[f"{key}_per_seed"] = [r[key] for r in runs]
                            row[key] = float(np.median(row[f"{key}_per_seed"]))
                    rows.append(row)
                    print(f"  {rows[-1]}", flush=True)
        record.update(rows=rows, floors=floors)
        print(f"\n## Energy distance to the exact target at t_min, the median of {seeds} seeds (vp_linear; FK: "
              "systematic resampling where ESS / N < 0.9, churn 1; uncorrected: the same SDE; ODE: dpmpp_2m on the "
              "guided / summed / scaled prediction)\n")
        print(render_table(["target", "N", "steps", "NFE", "floor", "FK", "uncorrected", "ODE", "min ESS"],
                           [[r["target"], r["n"], r["num_steps"], r["nfe"], f"{r['floor']:.2e}", f"{r['fk']:.2e}",
                             f"{r['uncorrected']:.2e}", f"{r['ode']:.2e}" if "ode" in r else "-",
                             f"{r['min_ess']:.0f}"] for r in rows]))
    if "overhead" in parts:
        record["overhead"] = overhead(overhead_batch, overhead_steps, repeats, seed)
    if "digits" in parts:
        if not (train_config and checkpoint_dir):
            raise ValueError("the digits part needs train_config and checkpoint_dir (a digits_vp.py:conditional run)")
        record["digits"] = digits_rows(train_config, checkpoint_dir, num_samples=digits_samples, seed=seed)
    core.write_json(json_path, record, indent=1)
    return record


def digits_rows(train_config: str, checkpoint_dir: str, scales: tuple[float, ...] = DIGITS_SCALES,
                steps: tuple[int, ...] = DIGITS_STEPS, num_samples: int = 2000, particles: int = 8,
                seed: int = 0) -> list[dict]:
    """FK-guided against CFG-guided samples of a class-conditional digits model at equal NFE (2 calls a step): the
    FD-digits to the real digits and the FD-digits classifier's accuracy on the labels asked for. Populations of
    `particles` share a label (balanced over the classes); CFG is the same SDE (ddim eta = 1) and the probability-flow
    ODE (dpmpp_2m) on `samplers.guided`, from the same starting noise."""
    from fastsamplers.experiments.metrics import digits_classifier, fd_digits
    from fastsamplers.experiments.train import checkpoint_target

    target = checkpoint_target(train_config, checkpoint_dir)
    if not target.num_classes:
        raise ValueError(f"{checkpoint_dir}: the digits part needs a class-conditional run (digits_vp.py:conditional)")
    process, size = target.process, target.shape[0]
    labels = (jnp.arange(num_samples) // particles) % target.num_classes
    null = jnp.full_like(labels, target.num_classes)
    x_init = process.prior(jax.random.PRNGKey(seed), (num_samples, *target.shape), dtype=jnp.float32)
    key = jax.random.PRNGKey(seed + 1)
    rows = []
    for num_steps in steps:
        ts = schedules.get_timesteps("logsnr", process, num_steps)
        for scale in scales:
            guided = samplers.guided(target.model_fn, scale, (target.args, null))
            runs = {"FK": lambda: samplers.fk.sample(samplers.fk.guided(target.model_fn, scale, (target.args, null)),
                                                     process, x_init, ts, key=key, prediction=target.prediction,
                                                     args=(target.args, labels), num_particles=particles),
                    "CFG SDE": lambda: samplers.sample(guided, samplers.get_solver("ddim", eta=1.0), process, x_init,
                                                       ts, prediction=target.prediction, key=key,
                                                       args=(target.args, labels)),
                    "CFG ODE": lambda: samplers.sample(guided, "dpmpp_2m", process, x_init, ts,
                                                       prediction=target.prediction, args=(target.args, labels))}
            for name, run in runs.items():
                start = time.perf_counter()
                x, info = run()
                x = np.asarray(x, np.float64)
                # network calls: samplers.guided's wrapper counts one per step for its two (cond, uncond)
                calls = int(info["nfe"]) * (1 if name == "FK" else 2)
                row = {"sampler": name, "scale": scale, "num_steps": num_steps, "network_calls": calls,
                       "fd_digits": fd_digits.fd_digits(x), "seconds": time.perf_counter() - start}
                classifier = digits_classifier.read_classifier(size)  # trained by fd_digits where it was missing
                logits = classifier.model.apply({"params": classifier.params}, np.clip(x, -1, 1).astype(np.float32))
                row["accuracy"] = float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels)))
                rows.append(row)
                print(f"  {row}", flush=True)
    print("\n## Digits: FK-guided against CFG-guided samples (FD-digits to the real digits; the classifier's accuracy "
          "on the asked labels)\n")
    print(render_table(["sampler", "scale", "steps", "network calls", "FD-digits", "accuracy"],
                       [[r["sampler"], r["scale"], r["num_steps"], r["network_calls"], f"{r['fd_digits']:.3f}",
                         f"{r['accuracy']:.3f}"] for r in rows]))
    return rows


def overhead(batch: int, num_steps: int, repeats: int, seed: int = 0) -> dict:
    """Wall time of the FK particle loop against `samplers.sample` of the same SDE at equal NFE (module docstring)."""
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=8, num_components=6)
    p = schedules.get_process("vp_linear")
    x_init = p.prior(jax.random.PRNGKey(seed + 1), (batch, 8))
    labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (batch,), 0, gm.null_label)
    null = jnp.full((batch,), gm.null_label)
    ts = schedules.get_timesteps("logsnr", p, num_steps)
    key = jax.random.PRNGKey(seed + 3)
    model = gm.conditional_model_fn(p)
    runs = {
        "fk": lambda: samplers.fk.sample(samplers.fk.guided(model, 2.0, null, batch_axes=0), p, x_init, ts, key=key,
                                         args=labels, num_particles=8)[0],
        "plain": lambda: samplers.sample(samplers.guided(model, 2.0, null, batch_axes=0),
                                         samplers.get_solver("ddim", eta=1.0), p, x_init, ts, key=key, args=labels)[0],
    }
    times = {}
    for label, run in runs.items():
        run().block_until_ready()  # compile
        measured = []
        for _ in range(repeats):
            start = time.perf_counter()
            run().block_until_ready()
            measured.append(time.perf_counter() - start)
        times[label] = float(np.median(measured))
    result = {"batch": batch, "num_steps": num_steps, "nfe": 2 * num_steps, "fk_s": times["fk"],
              "plain_s": times["plain"], "overhead": times["fk"] / times["plain"] - 1.0,
              "device": jax.devices()[0].device_kind}
    print(f"\n## Particle-loop overhead ({batch} particles in populations of 8, {num_steps} steps, NFE "
          f"{2 * num_steps}, {result['device']}): fk {times['fk']:.3f} s, plain SDE {times['plain']:.3f} s, "
          f"overhead {100 * result['overhead']:.1f}%")
    return result
