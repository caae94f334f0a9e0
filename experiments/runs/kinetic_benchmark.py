"""Kinetic-optimal Gaussian paths against conditional OT (`scripts/benchmark_kinetic.py`; `schedules.kinetic`).

On the 2-D sets (`experiments.train.data`: 8gaussians exactly, a Gaussian mixture; moons, checkerboard and swissroll
through a Gaussian kernel density of `kde_points` draws, bandwidth by Scott's rule, itself a `GaussianMixture`), with
the exact oracle velocity on both paths, so no training enters:
- the separation function from the oracle's denoiser (`schedules.separation_from_denoiser`), the fitted path's Phi;
- the kinetic energy int E||u||^2 dt by Monte Carlo with the oracle velocity (`kinetic_energy_mc`: the same draws on
  both paths, with standard errors) beside the formula (`schedules.kinetic_energy`);
- straightness (Liu et al. 2022; `experiments.metrics.transport.straightness`) of 128-step Heun trajectories;
- the exact W2 between Euler samples at 2, 4 and 8 steps from t = 1 and exact draws of the target, beside the floor
  (W2 between two exact draws of the same size).

"digits" (scikit-learn's 8x8 digits): the separation of the data set (`schedules.separation_from_data`) and the two
paths' kinetic energies by the formula. With trained runs (`models`: the run directories of `digits_fm.py` and
`digits_fm.py:path=kinetic`, about 15-25 minutes each on a CPU; the runner does not train them), FD-digits
(`experiments.metrics.fd_digits`) of Euler at 2, 4 and 8 uniform steps in t and of the config's converged Heun
(39 NFE), from the same noise for both paths, and each run's own path (Phi, kinetic energy by the formula).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.metrics.transport import straightness, w2_exact
from fastsamplers.experiments.report import versions
from fastsamplers.experiments.train import data
from fastsamplers.models import GaussianMixture

DATASETS = ("8gaussians", "moons", "checkerboard", "swissroll")
STEPS = (2, 4, 8)
PARTS = core.Registry.of_names("part", ("toy2d", "digits"), ordered=True)
EDM = schedules.get_process("edm")  # alpha = 1, sigma = t: y = x1 + gamma eps, the denoiser's form


def toy_oracle(name: str, key: jax.Array, kde_points: int = 512) -> GaussianMixture:
    """The exact Gaussian mixture of a 2-D set: 8gaussians' own components, or a kernel density of the others."""
    dataset = data.get_dataset(name)
    if name == "8gaussians":
        angle = (math.pi / 4) * np.arange(8)
        means = dataset.radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        return GaussianMixture.create(np.ones(8), means, dataset.std)
    points = np.asarray(dataset.sample(key, kde_points), np.float64)
    bandwidth = points.std(axis=0) * kde_points ** (-1.0 / 6.0)  # Scott's rule in d = 2
    return GaussianMixture.create(np.ones(kde_points), points, np.broadcast_to(bandwidth, points.shape))


def oracle_denoiser(oracle: GaussianMixture):
    """D(y, gamma) = E[x1 | x1 + gamma eps = y], exact."""
    return lambda y, gamma: oracle.predict(y, gamma, EDM, "x0")


def kinetic_energy_mc(key: jax.Array, oracle: GaussianMixture, processes: dict, num: int = 4096,
                      num_t: int = 64) -> dict:
    """int_0^1 E||u_t||^2 dt for each process, u the oracle's exact velocity, by Gauss-Legendre in t and Monte Carlo
    in (x1, eps), the same draws for every process and time: {name: (KE, standard error)}, and the standard error
    of each difference from the first process under "se_diff".

    Each draw j's KE_j = sum_i w_i ||u(x_ij, t_i)||^2 is independent over j, so the errors are std(KE_j) / sqrt(n).
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_t)
    ts, weights = jnp.asarray(0.5 * (nodes + 1.0)), jnp.asarray(0.5 * weights)
    k_data, k_eps = jax.random.split(key)
    x1 = oracle.sample(k_data, num)
    eps = jax.random.normal(k_eps, x1.shape, x1.dtype)
    per_draw = {}
    for name, process in processes.items():
        def at_t(t, process=process):
            x = process.alpha(t) * x1 + process.sigma(t) * eps
            return jnp.sum(oracle.predict(x, t, process, "velocity") ** 2, axis=-1)

        per_draw[name] = np.asarray(jnp.einsum("t,tn->n", weights, jax.lax.map(jax.jit(at_t), ts)))
    first = next(iter(per_draw.values()))
    out = {name: (float(v.mean()), float(v.std() / math.sqrt(num))) for name, v in per_draw.items()}
    out["se_diff"] = {name: float((v - first).std() / math.sqrt(num)) for name, v in per_draw.items()}
    return out


def euler_w2(key: jax.Array, oracle: GaussianMixture, process: schedules.Process, steps: int, num: int) -> float:
    """Exact W2 between `num` Euler samples (the oracle velocity, uniform t from 1 to 0) and `num` exact draws."""
    k_init, k_ref = jax.random.split(key)
    ts = np.linspace(1.0, 0.0, steps + 1)
    x_init = process.prior(k_init, (num, oracle.dim), t=1.0)
    x, _ = samplers.sample(oracle.model_fn(process, "velocity"), "euler", process, x_init, ts, prediction="velocity")
    return w2_exact(np.asarray(x), np.asarray(oracle.sample(k_ref, num)))


def path_straightness(key: jax.Array, oracle: GaussianMixture, process: schedules.Process, num: int,
                      steps: int = 128) -> float:
    """Straightness of the probability-flow trajectories from t = 1 to 0 (128-step Heun, the oracle velocity)."""
    ts = np.linspace(1.0, 0.0, steps + 1)
    x_init = process.prior(key, (num, oracle.dim), t=1.0)
    _, info = samplers.sample(oracle.model_fn(process, "velocity"), "heun", process, x_init, ts,
                              prediction="velocity", save_trajectory=True)
    return straightness(np.asarray(info["trajectory"]), ts)


def toy_rows(name: str, seed: int = 0, num: int = 1000, steps: tuple[int, ...] = STEPS, num_s: int = 128) -> dict:
    """One 2-D set's row: Phi, kinetic energies (Monte Carlo and formula), straightness, Euler W2 and the floor."""
    key = jax.random.PRNGKey(seed)
    keys = jax.random.split(key, 8)
    oracle = toy_oracle(name, keys[0])
    sep = schedules.separation_from_denoiser(keys[1], oracle_denoiser(oracle), oracle.sample(keys[2], 8192), num_s)
    paths = {"cond_ot": schedules.get_process("ot"), "kinetic": schedules.kinetic_optimal_process(sep)}
    mc = kinetic_energy_mc(keys[3], oracle, paths)
    row = {"dataset": name, "data_scale": sep.data_scale, "big_phi": paths["kinetic"].big_phi,
           "kinetic_energy_formula_min": paths["kinetic"].kinetic_energy(oracle.dim)}
    for label, process in paths.items():
        row[label] = {"kinetic_energy_mc": mc[label][0], "kinetic_energy_se": mc[label][1],
                      "kinetic_energy_formula": schedules.kinetic_energy(sep, process),
                      "straightness": path_straightness(keys[4], oracle, process, num),
                      "euler_w2": {str(n): euler_w2(jax.random.fold_in(keys[5], n), oracle, process, n, num)
                                   for n in steps}}
    row["kinetic_energy_diff_se"] = mc["se_diff"]["kinetic"]
    row["w2_floor"] = w2_exact(np.asarray(oracle.sample(keys[6], num)), np.asarray(oracle.sample(keys[7], num)))
    return row


DIGITS_CONFIGS = core.Registry("digits run", {"cond_ot": "experiments/configs/digits_fm.py",
                                               "kinetic": "experiments/configs/digits_fm.py:path=kinetic"})
HEUN_NFE = 39  # digits_fm's converged sampler (config.sample: heun, 39 NFE = 20 steps)


def digits_row(seed: int = 0, num_s: int = 128, models: dict[str, str] | None = None,
               num_samples: int = 10_000) -> dict:
    """The digits data set's separation and the kinetic energies of cond-OT and the kinetic-optimal path (formula);
    with `models` ({"cond_ot": run_dir, "kinetic": run_dir}), the trained runs' FD-digits (module docstring)."""
    images = np.asarray(data.get_dataset("digits").data, np.float64)
    sep = schedules.separation_from_data(jax.random.PRNGKey(seed), images, num_s=num_s, num_queries=2048)
    kinetic = schedules.kinetic_optimal_process(sep)
    row = {"dataset": "digits", "data_scale": sep.data_scale, "big_phi": kinetic.big_phi,
           "cond_ot": {"kinetic_energy_formula": schedules.kinetic_energy(sep, schedules.get_process("ot"))},
           "kinetic": {"kinetic_energy_formula": schedules.kinetic_energy(sep, kinetic)}}
    if not models:
        row["fd_digits"] = "not measured: give the trained runs (models)"
        return row
    from fastsamplers.experiments.metrics import fd_digits
    from fastsamplers.experiments.train import checkpoint_target

    for label, run_dir in models.items():
        target = checkpoint_target(DIGITS_CONFIGS.lookup(label), run_dir)
        p = target.process
        x_init = p.prior(jax.random.PRNGKey(seed + 1), (num_samples, *target.shape), dtype=jnp.float32)
        fd = {}
        for solver, nfe in [("euler", n) for n in STEPS] + [("heun", HEUN_NFE)]:
            steps = nfe if solver == "euler" else (nfe + 1) // 2
            ts = jnp.linspace(1.0, 0.0, steps + 1)
            x, _ = samplers.sample(target.model_fn, solver, p, x_init, ts, prediction=target.prediction,
                                   args=target.args)
            fd[f"{solver}_{nfe}"] = float(fd_digits.fd_digits(np.asarray(x, np.float64)))
        own = {"run": run_dir, "step": target.step, "fd_digits": fd}
        if isinstance(p, schedules.KineticOptimal):
            own.update(big_phi=p.big_phi, kinetic_energy_formula=p.kinetic_energy(int(np.prod(target.shape))))
        row[label]["trained"] = own
    return row


def benchmark(json_path: str, *, parts: tuple[str, ...] = ("toy2d",), datasets: tuple[str, ...] = DATASETS,
              seed: int = 0, num: int = 1000, models: dict[str, str] | None = None, num_samples: int = 10_000,
              command: str = "") -> dict:
    """Run the parts, write the JSON record (with `command`, the command line), print a table; returns it."""
    for part in parts:
        PARTS.check(part)
    for label in models or {}:
        DIGITS_CONFIGS.check(label)
    start = time.time()
    rows = [toy_rows(name, seed, num) for name in datasets] if "toy2d" in parts else []
    if "digits" in parts:
        rows.append(digits_row(seed, models=models, num_samples=num_samples))
    record = {"command": command, "rows": rows, "seed": seed, "num": num, "seconds": time.time() - start,
              "versions": versions()}
    core.write_json(json_path, record)
    print(f"{'dataset':14s} {'Phi':>6s} {'KE ot':>8s} {'KE kin':>8s} {'S ot':>7s} {'S kin':>7s}  W2 ot / kin at "
          + ", ".join(map(str, STEPS)))
    for row in rows:
        ot, kin = row["cond_ot"], row["kinetic"]
        ke = "kinetic_energy_mc" if "kinetic_energy_mc" in ot else "kinetic_energy_formula"
        w2 = "  ".join(f"{ot['euler_w2'][k]:.3f}/{kin['euler_w2'][k]:.3f}" for k in ot.get("euler_w2", {}))
        s = f"{ot.get('straightness', float('nan')):7.3f} {kin.get('straightness', float('nan')):7.3f}"
        print(f"{row['dataset']:14s} {row['big_phi']:6.3f} {ot[ke]:8.3f} {kin[ke]:8.3f} {s}  {w2}")
        for label in ("cond_ot", "kinetic"):
            if "trained" in row[label]:
                fd = row[label]["trained"]["fd_digits"]
                print(f"  {label} (trained, step {row[label]['trained']['step']}) FD-digits: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in fd.items()))
    return record
