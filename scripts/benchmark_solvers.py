"""Benchmark the samplers: accuracy against an exact flow map, and the overhead around the model calls.

Command (the full run, from the repository root):

    python scripts/benchmark_solvers.py --json outputs/bench/benchmark_solvers.json

Smoke test (a tiny subset, under a minute):

    python scripts/benchmark_solvers.py --json outputs/bench/benchmark_solvers.json --quick

1. Accuracy. An 8-dimensional, 6-component `GaussianMixture` oracle (exact eps prediction); x_init is an exact draw
   of the marginal at t_max; the ground truth is `samplers.exact_flow_map` (float64, computed once). Every solver
   configuration x time grid x target NFE runs with the largest number of steps N whose NFE does not exceed the
   target (cells that cannot run, N < 1 or a ValueError from the grid or the solver, are recorded as skipped). Each
   cell records the RMSE over all entries, the NFE actually used, the non-finite count and the wall time of a
   compiled call (best of 3, after a first, compiling call). The adaptive diffrax solver adds one row per tolerance.
2. Overhead. A random-init `MLP` (hidden 256, depth 3) on 8-dimensional data: the steady-state time of
   `samplers.sample` against NFE x the time of one compiled model call on the same batch, giving the fraction of
   the sampling time spent in the model, and the compile time of the first `sample` call.
3. Output: FILE (all rows and metadata), benchmark_solvers.md (tables, also printed) and benchmark_solvers.png
   (RMSE vs NFE, log-log, one panel per grid) in --out-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shlex
import sys
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fastsamplers import core  # noqa: E402
from fastsamplers import samplers  # noqa: E402
from fastsamplers import schedules  # noqa: E402
from fastsamplers.experiments.report.tables import render_table  # noqa: E402
from fastsamplers.models import MLP, GaussianMixture  # noqa: E402

ORACLE_DIM, ORACLE_COMPONENTS = 8, 6
MLP_HIDDEN, MLP_DEPTH = 256, 3
SUMMARY_NFES = (5, 10)
OVERHEAD_NFE = 10
OVERHEAD_GRID = "logsnr"


# --------------------------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class Config:
    """A solver name with its options, hashable, with a readable label."""

    solver: str
    options: tuple = ()

    @property
    def label(self):
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.solver}[{opts}]" if opts else self.solver

    def build(self):
        return samplers.get_solver(self.solver, **dict(self.options))


def cfg(solver, **options):
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

    def record(self):
        """The plan as JSON-ready values (configs by label)."""
        return {f.name: [getattr(v, "label", v) for v in value] if isinstance(value, tuple) else value
                for f in dataclasses.fields(self) for value in [getattr(self, f.name)]}


def quick_plan(batch):
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


# ----------------------------------------------------------------------------------------------------------- helpers


def steps_for_nfe(solver, target):
    """The largest number of steps whose NFE is <= target, or None when even one step costs more."""
    try:
        return solver.steps_for_nfe(target)
    except ValueError:
        return None


def timed(fn, repeats):
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


def error_stats(x, ref):
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


def run_sampler(model_fn, solver, process, x_init, ts, repeats):
    """One compiled `samplers.sample` call, timed: a dict of nfe, time_s (best of repeats) and first_call_s."""
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


def make_oracle(process, batch, seed):
    key_gm, key_x = jax.random.split(jax.random.PRNGKey(seed))
    gm = GaussianMixture.random(key_gm, dim=ORACLE_DIM, num_components=ORACLE_COMPONENTS)
    x_init = gm.marginal_sample(key_x, batch, process.t_max, process)
    start = time.perf_counter()
    reference = samplers.exact_flow_map(gm, process, x_init, process.t_max, process.t_min)
    return Oracle(process, gm.model_fn(process, "eps"), x_init, reference, time.perf_counter() - start)


def accuracy_cell(oracle, config, grid, num_steps, repeats):
    """The measurements of one (config, grid, num_steps) run, or a skipped / error status with its message."""
    try:
        ts = schedules.get_timesteps(grid, oracle.process, num_steps)
        x, timing = run_sampler(oracle.model_fn, config.build(), oracle.process, oracle.x_init, ts, repeats)
    except ValueError as exc:
        return {"status": "skipped", "message": str(exc)}
    except Exception as exc:  # recorded, not fatal: one broken cell must not lose the whole run
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", **timing, **error_stats(x, oracle.reference)}


def run_accuracy(oracle, plan):
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


def run_adaptive(oracle, plan):
    """One row per tolerance; the grid is a single step t_max -> t_min (the solver chooses its own steps)."""
    rows = []
    for tol in plan.adaptive_tols:
        config = cfg("adaptive", rtol=tol, atol=tol)
        rows.append({"section": "adaptive", "config": config.label, "solver": "adaptive",
                     "options": dict(config.options), "grid": None, "nfe_target": None, "num_steps": None,
                     **accuracy_cell(oracle, config, "uniform", 1, plan.accuracy_repeats)})
        log_row(rows[-1])
    return rows


def log_row(row):
    where = f"{row['config']:<26} {row['grid'] or '-':<10} target={row['nfe_target']}"
    if row["status"] != "ok":
        print(f"  {where}: {row['status']}: {row['message'][:120]}", file=sys.stderr)
    else:
        rmse = "nonfinite" if row["rmse"] is None else f"{row['rmse']:.3e}"
        print(f"  {where}: nfe={row['nfe']:<3} rmse={rmse} t={row['time_s'] * 1e3:.2f} ms", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------- overhead


def run_overhead(process, plan, seed):
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


def jitted_program_time(model_fn, solver, process, x, ts, repeats):
    """Best time of the sampler as one outer jit (no host-side checks per call): the device program alone."""
    program = jax.jit(lambda x, ts: samplers.sample(model_fn, solver, process, x, ts, check_finite=False)[0])
    return timed(lambda: program(x, ts), repeats)[2]


# ---------------------------------------------------------------------------------------------------------- markdown


def fmt_cell(row):
    if row["status"] != "ok":
        return row["status"]
    if row["rmse"] is None:
        return f"nonfinite ({row['num_nonfinite']})"
    text = f"{row['rmse']:.2e}"
    return text if row["nfe"] == row["nfe_target"] else f"{text} ({row['nfe']})"


def accuracy_markdown(rows, plan):
    by_cell = {(r["config"], r["grid"], r["nfe_target"]): r for r in rows}
    body = [[c.label, g, *(fmt_cell(by_cell[(c.label, g, n)]) for n in plan.nfe_targets)]
            for c in plan.configs for g in plan.grids]
    return render_table(["solver", "grid", *(f"NFE {n}" for n in plan.nfe_targets)], body)


def best_per_family_markdown(rows, plan):
    targets = [n for n in SUMMARY_NFES if n in plan.nfe_targets]
    families = list(dict.fromkeys(c.solver for c in plan.configs))
    body = []
    for family in families:
        cells = []
        for target in targets:
            ok = [r for r in rows if r["solver"] == family and r["nfe_target"] == target and r["rmse"] is not None
                  and r["status"] == "ok"]
            best = min(ok, key=lambda r: r["rmse"], default=None)
            cells.append("-" if best is None else f"{best['rmse']:.2e} ({best['config']}, {best['grid']}, "
                                                  f"NFE {best['nfe']})")
        body.append([family, *cells])
    return render_table(["family", *(f"best at NFE <= {n}" for n in targets)], body)


def adaptive_markdown(rows):
    body = [[r["config"], r.get("nfe", "-"), fmt_rmse(r), fmt_ms(r.get("time_s"))] for r in rows]
    return render_table(["solver", "NFE (reported)", "RMSE", "time (ms)"], body)


def overhead_markdown(rows):
    body = [[r["config"], r["nfe"], fmt_ms(r["sample_s"]), fmt_ms(r["program_s"]), fmt_ms(r["model_call_s"]),
             fmt_ms(r["model_total_s"]), f"{100 * r['model_fraction']:.0f}%", f"{r['compile_s']:.2f}"]
            for r in rows]
    return render_table(["solver", "NFE", "sample (ms)", "jit program (ms)", "1 model call (ms)", "NFE x model (ms)",
                     "model fraction", "compile (s)"], body)


def fmt_rmse(row):
    if row["status"] != "ok":
        return f"{row['status']}: {row['message'][:80]}"
    return f"nonfinite ({row['num_nonfinite']})" if row["rmse"] is None else f"{row['rmse']:.2e}"


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def render_markdown(meta, plan, accuracy, adaptive, overhead):
    suspicious = suspicious_cells(accuracy, plan)
    parts = [
        "# Solver benchmark",
        f"`{meta['command']}`  \n{meta['date']}, jax {meta['jax_version']}, {meta['device']}, process "
        f"{meta['process']}, total {meta['runtime_s']:.0f} s, {meta['cpu_count']} CPUs, load average "
        f"{meta['load_average_at_start'][0]:.1f} at start / {meta['load_average_at_end'][0]:.1f} at end.",
        f"## Accuracy: RMSE vs the exact flow map\n\n{ORACLE_DIM}-d, {ORACLE_COMPONENTS}-component Gaussian-mixture "
        f"oracle (eps prediction), batch {plan.accuracy_batch}, x_init ~ exact marginal at t_max, t_max -> t_min. "
        "Cell: RMSE, with the NFE actually used in parentheses when it differs from the column's target. "
        "deis_tab order k is the paper's tAB-(k-1). The RMSE is dominated by the few trajectories that end near "
        "another mixture component; the JSON also has the median per-sample error (`median_sample_err`).",
        accuracy_markdown(accuracy, plan),
        "### Best per solver family (over its configurations and grids)",
        best_per_family_markdown(accuracy, plan),
        "### Adaptive (diffrax tsit5, its own NFE count)",
        adaptive_markdown(adaptive),
        f"## Overhead: MLP (hidden {MLP_HIDDEN}, depth {MLP_DEPTH}), batch {plan.overhead_batch}, "
        f"{OVERHEAD_GRID} grid, NFE <= {OVERHEAD_NFE}\n\n`sample`: compiled `samplers.sample` call, best of "
        f"{plan.sample_repeats}; jit program: the same under one outer `jax.jit` (no host-side checks); model "
        f"fraction = NFE x model call / sample; compile = first call - steady state.",
        overhead_markdown(overhead),
    ]
    if suspicious:
        parts += ["## Flagged cells", "\n".join(f"- {s}" for s in suspicious)]
    return "\n\n".join(parts) + "\n"


def suspicious_cells(rows, plan, tolerance=1.5):
    """Non-finite or errored cells, and RMSE that grows by more than `tolerance` as the actual NFE increases."""
    flags = [f"{r['config']} / {r['grid']} / NFE {r['nfe_target']}: "
             + (r["message"][:100] if r["status"] == "error" else f"{r['num_nonfinite']} non-finite values")
             for r in rows if r["status"] == "error" or (r["status"] == "ok" and r["rmse"] is None)]
    for config in plan.configs:
        for grid in plan.grids:
            series = curve(rows, config.label, grid)
            for (n0, e0), (n1, e1) in zip(series, series[1:]):
                if e1 > tolerance * e0:
                    flags.append(f"{config.label} / {grid}: RMSE grows from {e0:.2e} (NFE {n0}) to {e1:.2e} "
                                 f"(NFE {n1})")
    return flags


# -------------------------------------------------------------------------------------------------------------- plot


def curve(rows, label, grid):
    """Sorted distinct (actual NFE, RMSE) points of one config on one grid."""
    points = {r["nfe"]: r["rmse"] for r in rows
              if r["config"] == label and r["grid"] == grid and r["status"] == "ok" and r["rmse"] is not None}
    return sorted(points.items())


def plot(rows, adaptive, plan, path):
    cols = min(2, len(plan.grids))
    nrows = math.ceil(len(plan.grids) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 5 * nrows), sharex=True, sharey=True, squeeze=False)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(plan.configs)))
    styles = ["-", "--", "-.", ":"]
    for ax, grid in zip(axes.flat, plan.grids):
        for i, config in enumerate(plan.configs):
            points = curve(rows, config.label, grid)
            if points:
                ax.plot(*zip(*points), styles[i % len(styles)], marker="o", ms=3, color=colors[i],
                        label=config.label)
        for marker, r in zip("*XPD", adaptive):
            if r["status"] == "ok" and r["rmse"] is not None:
                ax.plot(r["nfe"], r["rmse"], marker, color="k", ms=9, label=r["config"])
        ax.set(xscale="log", yscale="log", title=f"grid: {grid}", xlabel="NFE", ylabel="RMSE")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(plan.grids):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"RMSE vs NFE against the exact flow map ({ORACLE_DIM}-d Gaussian mixture)")
    fig.tight_layout(rect=(0, 0, 0.82, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------------------- main


def metadata(args, process):
    device = jax.devices()[0]
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
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
        "seed": args.seed,
        "quick": args.quick,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="output JSON file (all rows and metadata)")
    parser.add_argument("--out-dir", help="directory for benchmark_solvers.{md,png} (default: the JSON's directory)")
    parser.add_argument("--batch", type=int, default=None, help="accuracy batch size (default 1024; 128 if --quick)")
    parser.add_argument("--quick", action="store_true", help="a tiny subset, for smoke-testing (< 1 minute)")
    parser.add_argument("--process", default="vp_linear", help="noise process (schedules.PROCESSES)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the oracle, x_init and the MLP init")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    plan = quick_plan(args.batch or 128) if args.quick else Plan(accuracy_batch=args.batch or 1024)
    process = schedules.get_process(args.process)
    meta = metadata(args, process)
    start = time.perf_counter()

    print("exact reference ...", file=sys.stderr)
    oracle = make_oracle(process, plan.accuracy_batch, args.seed)
    meta["reference_s"] = oracle.reference_s
    print("accuracy ...", file=sys.stderr)
    accuracy = run_accuracy(oracle, plan)
    adaptive = run_adaptive(oracle, plan)
    print("overhead ...", file=sys.stderr)
    overhead = run_overhead(process, plan, args.seed)
    meta["runtime_s"] = time.perf_counter() - start
    meta["load_average_at_end"] = os.getloadavg()
    meta["plan"] = plan.record()

    markdown = render_markdown(meta, plan, accuracy, adaptive, overhead)
    core.write_json(args.json, {"metadata": meta, "rows": accuracy + adaptive + overhead}, indent=1)
    core.write_atomic(os.path.join(out_dir, "benchmark_solvers.md"), markdown)
    plot(accuracy, adaptive, plan, os.path.join(out_dir, "benchmark_solvers.png"))
    print(markdown)


if __name__ == "__main__":
    main()
