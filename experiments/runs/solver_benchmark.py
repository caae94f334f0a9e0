"""The samplers' benchmark: accuracy against an exact flow map, and the overhead around the model calls
(`scripts/benchmark_solvers.py`; the tables and the plot: `experiments.report.solver_report`).

1. Accuracy. An 8-dimensional, 6-component `GaussianMixture` oracle (exact eps prediction); x_init is an exact draw
   of the marginal at t_max; the ground truth is `samplers.exact_flow_map` (float64, computed once). Every solver
   configuration x time grid x target NFE runs with the largest number of steps N whose NFE does not exceed the
   target (cells that cannot run, N < 1 or a ValueError from the grid or the solver, are recorded as skipped). Each
   cell records the RMSE over all entries, the NFE actually used, the non-finite count and the wall time of a
   compiled call (best of `accuracy_repeats`, after a first, compiling call). The adaptive diffrax solver adds one
   row per tolerance.
2. Overhead. A random-init `MLP` (hidden 256, depth 3) on 8-dimensional data: the steady-state time of
   `samplers.sample` against NFE x the time of one compiled model call on the same batch, giving the fraction of
   the sampling time spent in the model, and the compile time of the first `sample` call.
3. Output (`benchmark`): the JSON file (all rows and metadata), benchmark_solvers.md (tables, also printed) and
   benchmark_solvers.png (RMSE vs NFE, log-log, one panel per grid).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report import solver_report as report
from fastsamplers.models import MLP, GaussianMixture

ORACLE_DIM, ORACLE_COMPONENTS = 8, 6
MLP_HIDDEN, MLP_DEPTH = 256, 3
OVERHEAD_NFE = 10
OVERHEAD_GRID = "logsnr"


@dataclasses.dataclass(frozen=True)
class Config:
    """A solver name with its options, hashable, with a readable label."""

    solver: str
    options: tuple = ()

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.solver}[{opts}]" if opts else self.solver

    def build(self):
        return samplers.get_solver(self.solver, **dict(self.options))


def cfg(solver: str, **options) -> Config:
    return Config(solver, tuple(sorted(options.items())))


ALL_CONFIGS = (
    cfg("ddim"),
    cfg("euler"),
    cfg("heun"),
    *(cfg("deis_tab", order=k) for k in (1, 2, 3, 4)),
    *(cfg("deis_rhoab", order=k) for k in (1, 2, 3, 4)),
    *(cfg("deis_rhork", method=m) for m in ("2heun", "3kutta", "4rk")),
    cfg("ipndm", order=4),
    cfg("dpmpp_2m"),
    cfg("dpmpp_3m"),
    *(cfg("unipc", order=k, variant=v) for k in (2, 3) for v in ("bh1", "bh2")),
    # UniC on DPM-Solver++, and SA-Solver's deterministic (tau = 0) predictor-correctors
    cfg("dpmpp_2m", corrector=True),
    cfg("dpmpp_3m", corrector=True),
    cfg("sa_solver", predictor_order=2, corrector_order=2, tau=0.0),
    cfg("sa_solver", predictor_order=3, corrector_order=3, tau=0.0),
    # the multistep methods that blow up on coarse grids, with the published lower-order final steps
    cfg("deis_tab", order=4, lower_order_final=True),
    cfg("ipndm", order=4, lower_order_final=True),
    cfg("dpmpp_3m", lower_order_final=False),
)
OVERHEAD_CONFIGS = (
    cfg("ddim"),
    cfg("deis_tab", order=3),
    cfg("dpmpp_2m"),
    cfg("ipndm", order=4),
    cfg("heun"),
    cfg("deis_rhork", method="3kutta"),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the benchmark runs: the solver configurations, grids, NFE targets, batches and repeats."""

    configs: tuple = ALL_CONFIGS
    grids: tuple = ("uniform", "quadratic", "logsnr", "edm")
    nfe_targets: tuple = (4, 5, 6, 8, 10, 15, 20, 50)
    adaptive_tols: tuple = (1e-5, 1e-3)
    overhead_configs: tuple = OVERHEAD_CONFIGS
    accuracy_batch: int = 1024
    overhead_batch: int = 1024
    accuracy_repeats: int = 3
    sample_repeats: int = 20
    model_repeats: int = 200

    def record(self) -> dict:
        """The plan as JSON-ready values (configs by label)."""
        return {f.name: [getattr(v, "label", v) for v in value] if isinstance(value, tuple) else value
                for f in dataclasses.fields(self) for value in [getattr(self, f.name)]}

    def check(self) -> None:
        """Every solver, option and grid name of the plan exists, before any compute (ValueError otherwise)."""
        for config in self.configs + self.overhead_configs:
            config.build()
        for grid in self.grids:
            schedules.GRIDS.lookup(grid)
        for name in ("accuracy_batch", "overhead_batch", "accuracy_repeats", "sample_repeats", "model_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def quick_plan(batch: int = 128) -> Plan:
    """A tiny subset, for smoke tests (under a minute)."""
    return Plan(
        configs=(cfg("ddim"), cfg("heun"), cfg("deis_tab", order=3), cfg("deis_rhork", method="3kutta"),
                 cfg("dpmpp_2m")),
        grids=("uniform", "logsnr"),
        nfe_targets=(5, 10),
        adaptive_tols=(1e-3,),
        overhead_configs=(cfg("ddim"), cfg("deis_tab", order=3)),
        accuracy_batch=batch,
        model_repeats=50,
    )


def benchmark(plan: Plan, json_path: str, *, out_dir: str | None = None, process: str = "vp_linear",
              seed: int = 0, command: str = "") -> dict:
    """Run the plan, write the JSON record, benchmark_solvers.md and benchmark_solvers.png, print the markdown.

    Args:
      plan: what to run (`Plan()` is the full benchmark, `quick_plan()` a smoke test).
      json_path: the JSON file (all rows and metadata).
      out_dir: the folder of the markdown and the plot (default: the JSON file's folder).
      process: the noise process (`schedules.PROCESSES`).
      seed: the seed of the oracle, x_init and the MLP's initialisation.
      command: the command line, recorded.

    Returns:
      The record written: {"metadata", "rows"}.
    """
    process = schedules.get_process(process)
    plan.check()
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    meta = metadata(process, seed, command)
    start = time.perf_counter()
    print("exact reference ...", file=sys.stderr)
    oracle = make_oracle(process, plan.accuracy_batch, seed)
    meta["reference_s"] = oracle.reference_s
    print("accuracy ...", file=sys.stderr)
    accuracy = run_accuracy(oracle, plan)
    adaptive = run_adaptive(oracle, plan)
    print("overhead ...", file=sys.stderr)
    overhead = run_overhead(process, plan, seed)
    meta["runtime_s"] = time.perf_counter() - start
    meta["load_average_at_end"] = os.getloadavg()
    meta["plan"] = plan.record()

    markdown = report.render_markdown(meta, plan, accuracy, adaptive, overhead)
    record = {"metadata": meta, "rows": accuracy + adaptive + overhead}
    core.write_json(json_path, record, indent=1)
    core.write_atomic(os.path.join(out_dir, "benchmark_solvers.md"), markdown)
    report.plot(accuracy, adaptive, plan, os.path.join(out_dir, "benchmark_solvers.png"), meta)
    print(markdown)
    return record


def steps_for_nfe(solver, target: int) -> int | None:
    """The largest number of steps whose NFE is <= target, or None when even one step costs more."""
    try:
        return solver.steps_for_nfe(target)
    except ValueError:
        return None


def timed(fn, repeats: int):
    """(output, seconds of the first call, best seconds of `repeats` further calls); outputs are waited for."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return out, first, best


def error_stats(x, ref) -> dict:
    """RMSE and max |error| over all entries, the median per-sample RMS error (robust to the few trajectories that
    end in another mixture component), all None when x is not finite, and the non-finite count."""
    x = np.asarray(x, np.float64)
    num_nonfinite = int(np.sum(~np.isfinite(x)))
    if num_nonfinite:
        return {"rmse": None, "max_abs_err": None, "median_sample_err": None, "num_nonfinite": num_nonfinite}
    err = x - ref
    per_sample = np.sqrt(np.mean(err.reshape(err.shape[0], -1) ** 2, axis=1))
    return {"rmse": float(np.sqrt(np.mean(err**2))), "max_abs_err": float(np.max(np.abs(err))),
            "median_sample_err": float(np.median(per_sample)), "num_nonfinite": 0}


def run_sampler(model_fn, solver, process, x_init, ts, repeats: int):
    """One compiled `samplers.sample` call, timed: (x, a dict of nfe, time_s (best of repeats) and first_call_s)."""
    (x, info), first, best = timed(
        lambda: samplers.sample(model_fn, solver, process, x_init, ts, prediction="eps", check_finite=False),
        repeats)
    return x, {"nfe": int(info["nfe"]), "time_s": best, "first_call_s": first}


# ---------------------------------------------------------------------------------------------------------- accuracy


@dataclasses.dataclass
class Oracle:
    process: object
    model_fn: object
    x_init: jax.Array
    reference: np.ndarray
    reference_s: float


def make_oracle(process, batch: int, seed: int) -> Oracle:
    """The Gaussian-mixture oracle, an exact draw of x at t_max and its exact flow map to t_min (timed)."""
    key_gm, key_x = jax.random.split(jax.random.PRNGKey(seed))
    gm = GaussianMixture.random(key_gm, dim=ORACLE_DIM, num_components=ORACLE_COMPONENTS)
    x_init = gm.marginal_sample(key_x, batch, process.t_max, process)
    start = time.perf_counter()
    reference = samplers.exact_flow_map(gm, process, x_init, process.t_max, process.t_min)
    return Oracle(process, gm.model_fn(process, "eps"), x_init, reference, time.perf_counter() - start)


def accuracy_cell(oracle: Oracle, config: Config, grid: str, num_steps: int, repeats: int) -> dict:
    """The measurements of one (config, grid, num_steps) run, or a skipped / error status with its message."""
    try:
        ts = schedules.get_timesteps(grid, oracle.process, num_steps)
        x, timing = run_sampler(oracle.model_fn, config.build(), oracle.process, oracle.x_init, ts, repeats)
    except ValueError as exc:
        return {"status": "skipped", "message": str(exc)}
    except Exception as exc:  # recorded, not fatal: one broken cell must not lose the whole run
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", **timing, **error_stats(x, oracle.reference)}


def run_accuracy(oracle: Oracle, plan: Plan) -> list[dict]:
    """One row per (config, NFE target, grid)."""
    rows, cache = [], {}
    for config in plan.configs:
        solver = config.build()
        for target in plan.nfe_targets:  # grids innermost: they share one compiled program per (config, N)
            num_steps = steps_for_nfe(solver, target)
            for grid in plan.grids:
                if num_steps is None:
                    result = {"status": "skipped", "message": f"one step costs {solver.nfe(1)} > {target} NFE"}
                else:
                    key = (config, grid, num_steps)
                    if key not in cache:
                        cache[key] = accuracy_cell(oracle, config, grid, num_steps, plan.accuracy_repeats)
                    result = cache[key]
                rows.append({"section": "accuracy", "config": config.label, "solver": config.solver,
                             "options": dict(config.options), "grid": grid, "nfe_target": target,
                             "num_steps": num_steps, **result})
                log_row(rows[-1])
    return rows


def run_adaptive(oracle: Oracle, plan: Plan) -> list[dict]:
    """One row per tolerance; the grid is a single step t_max -> t_min (the solver chooses its own steps)."""
    rows = []
    for tol in plan.adaptive_tols:
        config = cfg("adaptive", rtol=tol, atol=tol)
        rows.append({"section": "adaptive", "config": config.label, "solver": "adaptive",
                     "options": dict(config.options), "grid": None, "nfe_target": None, "num_steps": None,
                     **accuracy_cell(oracle, config, "uniform", 1, plan.accuracy_repeats)})
        log_row(rows[-1])
    return rows


def log_row(row: dict) -> None:
    where = f"{row['config']:<26} {row['grid'] or '-':<10} target={row['nfe_target']}"
    if row["status"] != "ok":
        print(f"  {where}: {row['status']}: {row['message'][:120]}", file=sys.stderr)
    else:
        rmse = "nonfinite" if row["rmse"] is None else f"{row['rmse']:.3e}"
        print(f"  {where}: nfe={row['nfe']:<3} rmse={rmse} t={row['time_s'] * 1e3:.2f} ms", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------- overhead


def run_overhead(process, plan: Plan, seed: int) -> list[dict]:
    """One row per overhead config: the sampler's time against NFE x one model call, and its compile time."""
    key_init, key_x = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(key_x, (plan.overhead_batch, ORACLE_DIM)) * process.sigma(process.t_max)
    mlp = MLP(hidden=MLP_HIDDEN, depth=MLP_DEPTH)
    params = mlp.init(key_init, x, jnp.asarray(process.t_max))
    model_fn = lambda x, t: mlp.apply(params, x, t)  # noqa: E731 -- one object: sample's compile cache is reused
    model_jit = jax.jit(model_fn)
    t_mid = jnp.asarray(0.5 * process.t_max, jnp.float32)
    rows = []
    for config in plan.overhead_configs:
        solver = config.build()
        num_steps = steps_for_nfe(solver, OVERHEAD_NFE)
        ts = schedules.get_timesteps(OVERHEAD_GRID, process, num_steps)
        _, timing = run_sampler(model_fn, solver, process, x, ts, plan.sample_repeats)
        t_program = jitted_program_time(model_fn, solver, process, x, ts, plan.sample_repeats)
        # timed next to each sampler, so that a change of load on the machine moves both alike
        t_model = timed(lambda: model_jit(x, t_mid), plan.model_repeats)[2]
        model_s = timing["nfe"] * t_model
        rows.append({
            "section": "overhead", "config": config.label, "solver": config.solver, "options": dict(config.options),
            "grid": OVERHEAD_GRID, "nfe_target": OVERHEAD_NFE, "num_steps": num_steps, "nfe": timing["nfe"],
            "sample_s": timing["time_s"], "program_s": t_program, "model_call_s": t_model, "model_total_s": model_s,
            "model_fraction": model_s / timing["time_s"], "compile_s": timing["first_call_s"] - timing["time_s"],
            "first_call_s": timing["first_call_s"], "batch": plan.overhead_batch,
        })
        print(f"  overhead {config.label:<26} nfe={timing['nfe']} sample={timing['time_s'] * 1e3:.2f} ms "
              f"model={model_s * 1e3:.2f} ms compile={rows[-1]['compile_s']:.2f} s", file=sys.stderr)
    return rows


def jitted_program_time(model_fn, solver, process, x, ts, repeats: int) -> float:
    """Best time of the sampler as one outer jit (no host-side checks per call): the device program alone."""
    program = jax.jit(lambda x, ts: samplers.sample(model_fn, solver, process, x, ts, check_finite=False)[0])
    return timed(lambda: program(x, ts), repeats)[2]


def metadata(process, seed: int, command: str) -> dict:
    """What ran where: the command, date, versions, device, machine load, process and the benchmark's sizes."""
    device = jax.devices()[0]
    return {
        "command": command,
        "cwd": os.getcwd(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "device": f"{device.platform}: {device.device_kind}",
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "default_float": str(jnp.result_type(float)),
        "process": process.name,
        "process_params": dataclasses.asdict(process),
        "seed": seed,
        "oracle": {"dim": ORACLE_DIM, "num_components": ORACLE_COMPONENTS},
        "overhead_model": {"hidden": MLP_HIDDEN, "depth": MLP_DEPTH, "grid": OVERHEAD_GRID, "nfe": OVERHEAD_NFE},
    }
