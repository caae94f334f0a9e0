"""The stochastic samplers against the ODE samplers by distribution, and the compilation count with `args`
(`scripts/benchmark_stochastic.py`).

On a 2-dimensional, 3-component Gaussian-mixture oracle (vp_linear, t_min 0.02; `seed` picks it), from exact draws
of the marginal at t_max, for each solver of SOLVERS and NFE in 10 .. 1000 (logSNR grid): the two-sample energy
distance between N samples (default 2000) and N exact draws of the marginal at t_min, beside the noise floor (the mean
and max energy distance between two independent exact samples of the same size, over 10 pairs). The ODE samplers'
samples are a deterministic map of exact draws, so they too should reach the floor as NFE grows.

Then the compilation count: `calls` `samplers.sample` calls of an MLP whose parameters are passed as `args`, each
with new parameter values, counted by the Python-side traces of the model function.

Issue 26's samplers on the same oracle (`restart_rows`, `cfg_pp_rows`; `parts` picks what runs):
- Restart (`samplers.restart`, Heun base, one interval) against Heun at equal NFE and Heun on the same (coarse)
  main grid: the energy distance to exact draws at t_min, over main-grid sizes.
- CFG++ (`samplers.cfg_pp`, DDIM and DPM-Solver++(2M)) over lambda against classifier-free guidance (`samplers.guided`)
  over its scale w, at equal NFE, from exact draws at t_max with labels of every class: the energy distance to exact
  draws of the conditional p(x | c) and to the exact guided flow map (`samplers.exact_flow_map` of
  `GaussianMixture.guided`) at the scales `cfg_pp_targets`. (Both are oracle-only; the digits comparison is the
  lead's, with a trained model, outside this runner.)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.metrics.transport import energy_distance
from fastsamplers.experiments.report import render_table, versions
from fastsamplers.models import MLP, GaussianMixture

SOLVERS = (
    ("ddim eta=1 (DDPM)", "ddim", {"eta": 1.0}),
    ("euler_ancestral", "euler_ancestral", {}),
    ("edm_stochastic", "edm_stochastic", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
    ("sa_solver p2c2 tau=1", "sa_solver", {}),
    ("sa_solver p3c3 tau=1", "sa_solver", {"predictor_order": 3, "corrector_order": 3}),
    ("ddim (ODE)", "ddim", {}),
    ("dpmpp_2m (ODE)", "dpmpp_2m", {}),
    ("unipc (ODE)", "unipc", {}),
)
NFES = (10, 20, 50, 100, 200, 500, 1000)


PARTS = core.Registry.of_names("benchmark part", ("distribution", "compilations", "restart", "cfg_pp"), ordered=True)
RESTART_INTERVALS = ((3, 2, 0.1, 1.0),)
RESTART_MAIN_STEPS = (4, 6, 10, 18)
CFG_PP_LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
CFG_SCALES = (1.0, 2.0, 4.0)


def benchmark(json_path: str, *, num_samples: int = 2000, seed: int = 3, solvers=SOLVERS, nfes=NFES,
              floor_pairs: int = 10, calls: int = 100, parts: tuple[str, ...] = ("distribution", "compilations"),
              restart_main_steps=RESTART_MAIN_STEPS, cfg_pp_lambdas=CFG_PP_LAMBDAS, cfg_scales=CFG_SCALES,
              cfg_pp_steps: int = 20) -> dict:
    """The energy-distance table and the compilation count (and issue 26's Restart and CFG++ tables), printed
    (markdown) and written to json_path.

    Args:
      json_path: the JSON file (rows, floor, compilations, restart, cfg_pp, versions: the parts run).
      num_samples: samples per cell (and exact draws).
      seed: the oracle's and the draws' seed.
      solvers: (label, solver name, options) rows; nfes: the NFE budgets.
      floor_pairs: the pairs of exact samples behind the noise floor.
      calls: the `sample` calls of the compilation count.
      parts: which tables to make, of `PARTS`.
      restart_main_steps: the Restart table's main-grid sizes.
      cfg_pp_lambdas, cfg_scales: CFG++'s lambdas and CFG's scales (also the guided targets' scales).
      cfg_pp_steps: the guidance table's steps (NFE).

    Returns:
      The record written.
    """
    for part in parts:
        PARTS.check(part)
    for _, name, options in solvers:  # every name, before any compute
        samplers.get_solver(name, **options)
    record = {}
    if "restart" in parts:
        record["restart"] = restart_rows(seed, num_samples, restart_main_steps, floor_pairs)
        print(f"\n## Restart (Heun, intervals {RESTART_INTERVALS}) against Heun: energy distance to exact draws "
              f"({num_samples} samples; floor mean {record['restart']['floor']['mean']:.2e}, max "
              f"{record['restart']['floor']['max']:.2e})\n\n" + render_table(
                  ["main steps", "NFE", "Restart", "Heun, equal NFE", "Heun, same main grid"],
                  [[r["main_steps"], r["nfe"], f"{r['restart']:.2e}", f"{r['heun_equal_nfe']:.2e}",
                    f"{r['heun_main_grid']:.2e}"] for r in record["restart"]["rows"]]))
    if "cfg_pp" in parts:
        record["cfg_pp"] = cfg_pp_rows(seed, num_samples, cfg_pp_lambdas, cfg_scales, cfg_pp_steps, floor_pairs)
        targets = record["cfg_pp"]["targets"]
        print(f"\n## CFG++ against CFG at NFE {cfg_pp_steps}: energy distance to the exact conditional and guided "
              f"targets (floor max {record['cfg_pp']['floor']['max']:.2e})\n\n" + render_table(
                  ["method", "solver", "knob", "to p(x|c)"] + [f"to guided w={w:g}" for w in targets],
                  [[r["method"], r["solver"], f"{r['knob']:g}", f"{r['conditional']:.2e}"]
                   + [f"{r['guided'][str(w)]:.2e}" for w in targets] for r in record["cfg_pp"]["rows"]]))
    if "distribution" in parts:
        record["rows"], record["floor"] = distribution_rows(seed, num_samples, solvers, nfes, floor_pairs)
        print_distribution(record, solvers, floor_pairs)
    if "compilations" in parts:
        compiles = record["compilations"] = compilation_count(calls)
        print(f"## Compilations: {compiles['calls']} sample calls with new parameter values as args -> "
              f"{compiles['traces']} trace(s) of the model function ({compiles['wall_s']:.2f} s in all)")
    record["versions"] = versions()
    core.write_json(json_path, record, indent=1)
    return record


def print_distribution(record, solvers, floor_pairs):
    """The solver x NFE energy-distance table, printed (markdown)."""
    rows, floor = record["rows"], record["floor"]
    labels = [label for label, _, _ in solvers]
    by = {(r["solver"], r["nfe"]): r for r in rows}
    measured = sorted({r["nfe"] for r in rows})
    table = render_table(["solver"] + [f"NFE {n}" for n in measured],
                         [[label] + [f"{by[(label, n)]['energy_distance']:.2e}" if (label, n) in by else "-"
                                     for n in measured] for label in labels])
    print(f"\n## Energy distance to the exact marginal at t_min ({floor['n']} samples; noise floor: mean "
          f"{floor['mean']:.2e}, max {floor['max']:.2e} over {floor_pairs} exact pairs)\n\n{table}\n")


def oracle_problem(seed, n, floor_pairs):
    """(oracle, process, x_init: exact draws at t_max, exact draws at t_min, the noise floor {mean, max, n})."""
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=2, num_components=3, std_range=(0.3, 0.6))
    p = schedules.get_process("vp_linear", t_min=0.02)
    x_init = gm.marginal_sample(jax.random.PRNGKey(seed + 1), n, p.t_max, p)
    exact = gm.marginal_sample(jax.random.PRNGKey(seed + 2), n, p.t_min, p)
    floor = [energy_distance(gm.marginal_sample(jax.random.PRNGKey(1000 + 2 * k), n, p.t_min, p),
                             gm.marginal_sample(jax.random.PRNGKey(1001 + 2 * k), n, p.t_min, p))
             for k in range(floor_pairs)]
    return gm, p, x_init, exact, {"mean": float(np.mean(floor)), "max": float(np.max(floor)), "n": n}


def restart_rows(seed, n, main_steps=RESTART_MAIN_STEPS, floor_pairs=10, intervals=RESTART_INTERVALS) -> dict:
    """{rows: per main-grid size, the energy distances of Restart(Heun), Heun at equal NFE and Heun on the main
    grid (edm grids), floor, intervals}."""
    gm, p, x_init, exact, floor = oracle_problem(seed, n, floor_pairs)
    heun = samplers.get_solver("heun")
    solver = samplers.restart(heun, intervals)
    rows = []
    for steps in main_steps:
        ts = schedules.get_timesteps("edm", p, steps)
        x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(seed + 3))
        equal = heun.steps_for_nfe(info["nfe"])
        x_equal, info_equal = samplers.sample(gm.model_fn(p), heun, p, x_init, schedules.get_timesteps("edm", p, equal))
        x_main, _ = samplers.sample(gm.model_fn(p), heun, p, x_init, ts)
        rows.append({"main_steps": steps, "nfe": int(info["nfe"]), "heun_steps_equal_nfe": equal,
                     "heun_nfe_equal": int(info_equal["nfe"]), "restart": energy_distance(x, exact),
                     "heun_equal_nfe": energy_distance(x_equal, exact),
                     "heun_main_grid": energy_distance(x_main, exact)})
        print(f"  restart main={steps:3d} nfe={rows[-1]['nfe']:4d} ED={rows[-1]['restart']:.2e} "
              f"heun(equal)={rows[-1]['heun_equal_nfe']:.2e} heun(main)={rows[-1]['heun_main_grid']:.2e}", flush=True)
    return {"rows": rows, "floor": floor, "intervals": [list(i) for i in intervals]}


def cfg_pp_rows(seed, n, lambdas=CFG_PP_LAMBDAS, scales=CFG_SCALES, num_steps=20, floor_pairs=10) -> dict:
    """{rows: CFG (scale w) and CFG++ (lambda) with DDIM and DPM-Solver++(2M), their energy distances to exact draws
    of p(x | c) and to the exact guided flow map at each of `scales`, targets, floor}."""
    gm, p, x_init, _, floor = oracle_problem(seed, n, floor_pairs)  # the floor of the unconditional marginal
    labels = jnp.arange(n) % gm.null_label
    null = jnp.full(n, gm.null_label)
    ts = schedules.get_timesteps("logsnr", p, num_steps)
    t_max, t_min = float(ts[0]), float(ts[-1])
    cond_model = gm.conditional_model_fn(p)
    # Exact draws of p(x | c) at t_min for the same labels, component by component.
    k_data, k_noise = jax.random.split(jax.random.PRNGKey(seed + 5))
    x0 = gm.means[labels] + gm.stds[labels] * jax.random.normal(k_data, (n, gm.dim), gm.means.dtype)
    conditional = p.marginal(k_noise, x0, t_min)
    targets = {w: samplers.exact_flow_map(gm.guided(labels, w), p, x_init, t_max, t_min) for w in scales}
    rows = []
    for base in ("ddim", "dpmpp_2m"):
        runs = [("CFG", w, samplers.guided(cond_model, w, null), base) for w in scales]
        runs += [("CFG++", lam, samplers.cfg_pp(cond_model, lam, null), samplers.cfg_pp_solver(base))
                 for lam in lambdas]
        for method, knob, model, solver in runs:
            x, info = samplers.sample(model, solver, p, x_init, ts, args=labels)
            rows.append({"method": method, "solver": base, "knob": float(knob), "nfe": int(info["nfe"]),
                         "conditional": energy_distance(x, conditional),
                         "guided": {str(w): energy_distance(x, target) for w, target in targets.items()}})
            print(f"  {method:5s} {base:8s} {knob:4.2f} to p(x|c) {rows[-1]['conditional']:.2e}", flush=True)
    return {"rows": rows, "targets": list(scales), "num_steps": num_steps, "floor": floor}


def distribution_rows(seed, n, solvers=SOLVERS, nfes=NFES, floor_pairs=10):
    """(rows: solver x NFE energy distances and times, the noise floor {mean, max, n})."""
    gm, p, x_init, exact, floor = oracle_problem(seed, n, floor_pairs)
    rows = []
    for label, name, options in solvers:
        solver = samplers.get_solver(name, **options)
        for nfe in nfes:
            num_steps = solver.steps_for_nfe(nfe)
            ts = schedules.get_timesteps("logsnr", p, num_steps)
            start = time.perf_counter()
            x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts, key=jax.random.PRNGKey(seed + 3))
            x.block_until_ready()
            rows.append({"solver": label, "name": name, "options": options, "nfe": int(info["nfe"]),
                         "energy_distance": energy_distance(x, exact), "time_s": time.perf_counter() - start})
            print(f"  {label:20s} nfe={rows[-1]['nfe']:5d} ED={rows[-1]['energy_distance']:.2e}", flush=True)
    return rows, floor


def compilation_count(calls: int = 100) -> dict:
    """{calls, traces, wall_s}: `calls` sample calls of an MLP with new parameter values as args each time, and
    the traces of its model function they caused (1: the parameters are traced, never compiled in)."""
    net = MLP(hidden=64, depth=2)
    p = schedules.get_process("vp_linear")
    x_init = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    params = net.init(jax.random.PRNGKey(1), x_init, 0.5)
    ts = schedules.get_timesteps("logsnr", p, 10)
    traces = []

    def model_fn(x, t, params):
        traces.append(1)
        return net.apply(params, x, t)

    start = time.perf_counter()
    for k in range(calls):
        samplers.sample(model_fn, "deis_tab", p, x_init, ts, args=jax.tree.map(lambda a: a * (1 + 1e-3 * k), params))
    return {"calls": calls, "traces": len(traces), "wall_s": time.perf_counter() - start}
