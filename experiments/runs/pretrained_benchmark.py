"""A loaded diffusers checkpoint against diffusers itself, on this machine: network call and sampler
(`scripts/benchmark_pretrained.py`).

`benchmark(settings)`:

1. The diffusers side writes a random-weight `UNet2DModel` with google/ddpm-cifar10-32's architecture
   (`pretrained_benchmark_torch.UNET_CONFIG`: 35.7M parameters, diffusers' default initialisation, seed 0) in the
   diffusers pipeline layout to `settings.model_dir` (default: a temporary folder), once. Both sides read those
   files: `models.pretrained.load` here, `UNet2DModel.from_pretrained` there.
2. Workers, one process each and one at a time (so that each one's peak resident set size, getrusage's maxrss, is
   its own): for each framework, one worker per batch of `settings.batches` and one at `settings.sampler_batch`.
   Each gets a JSON spec and writes a JSON record (`pretrained_benchmark_jax`, `pretrained_benchmark_torch`).
   - network: one warm-up call, then `repeats` timed calls, the minimum reported; at the largest batch
     `large_repeats` (default 1) calls and no warm-up (a call there takes about a minute on two cores).
   - sampler, at `sampler_batch` only: NFE 10 of DDIM (eta 0, DDIMScheduler's "leading" timesteps) and of
     DPM-Solver++(2M) (DPMSolverMultistepScheduler), from the initial noise to [0, 1] numpy images, diffusers'
     pipelines against `samplers.sample` on the schedulers' own grids (tests/test_pretrained_sampling.py checks the
     two loops agree to 1e-5). At the other batches the sampler time is extrapolated: NFE x (network call there) x
     (the loop's overhead factor measured at sampler_batch, at least 1); the table marks these "extrap.".
   - ours also reports XLA's FLOPs per network call and, at the largest batch, the memory XLA plans for the sampler.
   - where the time goes (at the first batch; `ops=False` skips it): the main operators alone in both frameworks
     and the network's convolutions, each distinct one timed alone and weighted by its count; torch's network is
     also timed on one thread there. `profile(settings)` runs just this part into an existing record.
   The torch workers run with OMP_WAIT_POLICY=PASSIVE (`torch_omp_wait_policy`; "" keeps the environment's): on a
   CPU shared with other jobs, OpenMP's spinning threads slowed torch down up to 4x at small batches, which would
   flatter ours.
3. Output: a markdown table (printed) and the JSON record (`core.write_json`): every worker's numbers, the ratios
   (diffusers time / ours: > 1 means ours is faster), the machine (cores, load averages before and after: the CPU
   may be shared), versions and the command.

The diffusers side needs a python with torch and diffusers (not this project's): `settings.torch_python`, or the
environment variable FASTSAMPLERS_TORCH_PYTHON. Ours runs with this interpreter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import fastsamplers
from fastsamplers import core
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.runs import pretrained_benchmark_jax, pretrained_benchmark_torch
from fastsamplers.experiments.runs.pretrained_benchmark_torch import EXPECTED_PARAMS, NFE, SOLVERS

TORCH_PYTHON_ENV = "FASTSAMPLERS_TORCH_PYTHON"
LABELS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `benchmark` and `profile` measure, and where the record goes.

    Attributes:
      json: the record's path.
      torch_python: a python with torch and diffusers; None: $FASTSAMPLERS_TORCH_PYTHON.
      model_dir: where the diffusers side writes the random model (None: a temporary folder).
      batches: the network's batches (the first also gets the operator profile, the largest the memory plan).
      sampler_batch: the batch of the measured NFE-10 loops.
      repeats: timed calls after the warm-up (the minimum is reported); large_repeats at the largest batch.
      torch_omp_wait_policy: OMP_WAIT_POLICY of the torch workers ("" keeps the environment's).
      ops: the operator timings and the convolution profile.
      command: the command line recorded with the results.
    """

    json: str
    torch_python: str | None = None
    model_dir: str | None = None
    batches: tuple = (64, 256)
    sampler_batch: int = 8
    repeats: int = 2
    large_repeats: int = 1
    torch_omp_wait_policy: str = "PASSIVE"
    ops: bool = True
    command: str = ""

    def check(self) -> str:
        """The torch python to use, after checking every setting; ValueError naming the one that is wrong."""
        for name in ("sampler_batch", "repeats", "large_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be one or more numbers >= 1, got {list(self.batches)}")
        return torch_python(self.torch_python, "the diffusers side needs a python with torch and diffusers")


def torch_python(python: str | None, needs: str) -> str:
    """`python`, or $FASTSAMPLERS_TORCH_PYTHON, checked: ValueError "{needs}: pass --torch-python PATH ..." when
    neither is given, and when it is not an executable file."""
    python = python or os.environ.get(TORCH_PYTHON_ENV)
    if not python:
        raise ValueError(f"{needs}: pass --torch-python PATH or set {TORCH_PYTHON_ENV}")
    if not os.access(python, os.X_OK):
        raise ValueError(f"the torch python {python!r} is not an executable file")
    return python


def benchmark(settings: Settings) -> dict:
    """Every worker of the module docstring, the table printed and the record written to settings.json.

    Returns:
      The record (JSON-ready).
    """
    torch_python = settings.check()
    load_before = load_average()
    start = time.perf_counter()
    batches = tuple(settings.batches)
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = settings.model_dir or os.path.join(workdir, "ddpm-cifar10-32-random")
        print(f"writing the random model to {model_dir}", flush=True)
        saved = run_worker(torch_python, dict(mode="save", model_dir=model_dir), workdir, "save")
        if saved["num_params"] != EXPECTED_PARAMS:
            raise RuntimeError(f"the model has {saved['num_params']} parameters, expected {EXPECTED_PARAMS}")
        records = {}
        plan = [(settings.sampler_batch, True, False, False)]
        plan += [(b, False, settings.ops and i == 0, b == max(batches)) for i, b in enumerate(batches)]
        for batch, loops, ops, memory in plan:
            for framework in ("jax", "torch"):
                records[(framework, batch, loops)] = measure(
                    settings, torch_python, framework, model_dir, batch, loops, ops, memory and framework == "jax",
                    large=batch == max(batches) and not loops, workdir=workdir)
    load_after = load_average()
    rows, ratios = summarize(records, batches, settings.sampler_batch)
    print(render_table(["", "ours (s)", "diffusers (s)", "speed-up (diffusers / ours)", "note"], rows))
    first = batches[0]
    profile_record = operator_report(records[("jax", first, False)], records[("torch", first, False)]) \
        if settings.ops else None
    flops = {b: records[("jax", b, False)].get("network_flops") for b in batches}
    gflops = {f"{fw}_b{b}": flops[b] / min(records[(fw, b, False)]["network_s"]) / 1e9
              for b in batches for fw in ("jax", "torch") if flops[b]}
    print(f"\nnetwork FLOPs per image (XLA cost analysis): {flops[first] / first / 1e9:.1f} G; achieved "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gflops.items()))
    j, t = records[("jax", first, False)], records[("torch", first, False)]
    record = {
        "command": settings.command, "nfe": NFE, "batches": list(batches), "sampler_batch": settings.sampler_batch,
        "repeats": settings.repeats,
        "model": {"architecture": "google/ddpm-cifar10-32 (random weights, seed 0)", "num_params": saved["num_params"],
                  "unet_config": pretrained_benchmark_torch.UNET_CONFIG,
                  "scheduler_config": pretrained_benchmark_torch.SCHEDULER_CONFIG},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after,
                    "torch_threads": t["threads"], "torch_omp_wait_policy": t["omp_wait_policy"],
                    "jax_backend": j["backend"]},
        "versions": {"jax": j["jax"], "torch": t["torch"], "diffusers": t["diffusers"]},
        "table": rows, "ratios": ratios, "profile": profile_record, "network_flops": flops, "achieved_gflops": gflops,
        "workers": [dict(r, loops=k[2]) for k, r in records.items()], "total_wall_s": time.perf_counter() - start,
        "notes": [
            "ratios are diffusers time / ours: > 1 means ours is faster; minimum over the repeats",
            f"the NFE-{NFE} samplers are measured at batch {settings.sampler_batch}; at the other batches they are "
            "extrapolated: NFE x network call x the loop overhead factor measured at the small batch (sampler time / "
            "(NFE x network call), taken as 1 where noise makes it smaller)",
            "peak RSS is each worker process's getrusage maxrss (the network at that batch, plus compile for ours)",
        ],
    }
    core.write_json(settings.json, record)
    print(f"\nwrote {settings.json} ({record['total_wall_s']:.0f} s; load average before {load_before}, after "
          f"{load_after})")
    return record


def profile(settings: Settings) -> dict:
    """Only the operator timings and the convolution profile, at the first of settings.batches; they replace the
    'profile' entry of the record at settings.json (or start one). Returns the profile."""
    torch_python = settings.check()
    batch = settings.batches[0]
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = settings.model_dir or os.path.join(workdir, "ddpm-cifar10-32-random")
        run_worker(torch_python, dict(mode="save", model_dir=model_dir), workdir, "save")
        j, t = (measure(settings, torch_python, framework, model_dir, batch, False, True, False, large=False,
                        workdir=workdir) for framework in ("jax", "torch"))
    result = operator_report(j, t)
    result.update(command=settings.command, load_average_after=load_average(), workers=[j, t])
    record = {}
    if os.path.isfile(settings.json):
        with open(settings.json, encoding="utf-8") as f:
            record = json.load(f)
    record["profile"] = result
    core.write_json(settings.json, record)
    print(f"\nwrote the profile into {settings.json}")
    return result


def measure(settings, torch_python, framework, model_dir, batch, loops, ops, memory, *, large, workdir) -> dict:
    """One worker's record: `framework` ("jax" or "torch") at `batch`; at the largest batch (`large`)
    large_repeats calls, without a warm-up when that is one call."""
    repeats = settings.large_repeats if large else settings.repeats
    spec = dict(mode="measure", model_dir=model_dir, batch=batch, repeats=repeats,
                warmup=not (large and settings.large_repeats == 1), loops=loops, ops=ops, memory=memory)
    env = None
    if framework == "torch" and settings.torch_omp_wait_policy:
        env = dict(os.environ, OMP_WAIT_POLICY=settings.torch_omp_wait_policy)
    start = time.perf_counter()
    record = run_worker(torch_python if framework == "torch" else None, spec, workdir,
                        f"{framework}_{batch}_{int(loops)}", env)
    record["load_average_after"] = load_average()
    record["worker_wall_s"] = time.perf_counter() - start
    print(f"  {framework} batch {batch}{' (loops)' if loops else ''}: network {min(record['network_s']):.3f} s/call, "
          f"peak RSS {record['peak_rss_mib']:.0f} MiB, worker {record['worker_wall_s']:.0f} s", flush=True)
    return record


def run_worker(torch_python: str | None, spec: dict, workdir: str, name: str, env: dict | None = None) -> dict:
    """Run one worker process on `spec` and return its record: the diffusers side (`pretrained_benchmark_torch`,
    as a file) with torch_python, ours (`pretrained_benchmark_jax`, as a module) with this interpreter when
    torch_python is None. RuntimeError with the worker's stderr if it fails."""
    spec = dict(spec, result=os.path.join(workdir, f"{name}.json"))
    spec_path = os.path.join(workdir, f"{name}_spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    env = dict(os.environ if env is None else env)
    if torch_python is None:
        cmd = [sys.executable, "-m", pretrained_benchmark_jax.__name__, spec_path]
        # The folder that holds the fastsamplers package, so that the worker imports this same copy of it.
        root = os.path.dirname(os.path.dirname(os.path.abspath(fastsamplers.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    else:
        cmd = [torch_python, os.path.abspath(pretrained_benchmark_torch.__file__), spec_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({shlex.join(cmd)}):\n{proc.stderr[-4000:]}")
    with open(spec["result"], encoding="utf-8") as f:
        return json.load(f)


def fmt(seconds) -> str:
    return "–" if seconds is None else (f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms")


def ratio(theirs, ours):
    return None if theirs is None or ours is None else theirs / ours


def summarize(records: dict, batches, sampler_batch: int) -> tuple[list, dict]:
    """(table rows, ratios) from {(framework, batch, loops): record}: the network at every batch, the samplers
    measured at sampler_batch and extrapolated at the others, the compile times, peak RSS and XLA's memory plan."""
    rows, ratios = [], {}
    small = sampler_batch
    loop = {fw: records[(fw, small, True)] for fw in ("jax", "torch")}
    measured = {fw: {s: min(loop[fw]["sampler_s"][s]) / (NFE * min(loop[fw]["network_s"])) for s in SOLVERS}
                for fw in ("jax", "torch")}
    # A loop cannot be faster than its network calls: a factor under 1 is timing noise, so it is taken as 1.
    overhead = {fw: {s: max(1.0, v) for s, v in d.items()} for fw, d in measured.items()}

    def add(label, ours, theirs, note=""):
        r = ratio(theirs, ours)
        rows.append([label, fmt(ours), fmt(theirs), "–" if r is None else f"{r:.2f}x", note])
        return r

    for key in [(small, True)] + [(b, False) for b in batches]:
        b = key[0]
        j, t = records[("jax",) + key], records[("torch",) + key]
        ratios[f"network_b{b}"] = add(f"network call, batch {b}", min(j["network_s"]), min(t["network_s"]))
        if "network_1thread_s" in t:
            ratios[f"network_b{b}_torch_1thread"] = add(f"network call, batch {b}", min(j["network_s"]),
                                                        min(t["network_1thread_s"]), "diffusers on 1 thread")
    for s in SOLVERS:
        ratios[f"{s}_nfe{NFE}_b{small}"] = add(f"{LABELS[s]} NFE {NFE}, batch {small}",
                                               min(loop["jax"]["sampler_s"][s]), min(loop["torch"]["sampler_s"][s]),
                                               "measured")
        for b in batches:
            ours, theirs = (NFE * min(records[(fw, b, False)]["network_s"]) * overhead[fw][s]
                            for fw in ("jax", "torch"))
            ratios[f"{s}_nfe{NFE}_b{b}"] = add(f"{LABELS[s]} NFE {NFE}, batch {b}", ours, theirs,
                                               f"extrap. (loop overhead x{overhead['jax'][s]:.3f} / "
                                               f"x{overhead['torch'][s]:.3f})")
    for s in SOLVERS:
        rows.append([f"compile, {s} sampler, batch {small} (ours)", fmt(loop["jax"]["sampler_compile_s"][s]), "–",
                     "–", "first call minus a steady one"])
    for b in batches:
        rows.append([f"compile, network, batch {b} (ours)", fmt(records[("jax", b, False)]["network_compile_s"]), "–",
                     "–", "jit(...).lower(...).compile()"])
    big = max(batches)
    j, t = records[("jax", big, False)], records[("torch", big, False)]
    rows.append([f"peak RSS MiB, batch {big} (network)", f"{j['peak_rss_mib']:.0f}", f"{t['peak_rss_mib']:.0f}",
                 f"{t['peak_rss_mib'] / j['peak_rss_mib']:.2f}x", "getrusage maxrss of each worker"])
    ratios[f"peak_rss_b{big}"] = t["peak_rss_mib"] / j["peak_rss_mib"]
    if "sampler_xla_memory_mib" in j:
        mem = j["sampler_xla_memory_mib"]
        rows.append([f"XLA plan MiB, DDIM sampler, batch {big}", f"{mem['argument'] + mem['temp']:.0f}", "–", "–",
                     f"arguments {mem['argument']:.0f} + temporaries {mem['temp']:.0f}"])
    ratios["loop_overhead_measured"] = measured
    ratios["loop_overhead_used"] = overhead
    return rows, ratios


def operator_report(j: dict, t: dict) -> dict:
    """The operator timings and the convolution share of the network of a jax and a torch record (measured with
    ops), printed as a table, returned as a dict."""
    b = j["batch"]
    ops = {k: {"ours_s": j["ops_s"][k], "diffusers_s": t["ops_s"].get(k), "speed_up": ratio(t["ops_s"].get(k),
                                                                                              j["ops_s"][k])}
           for k in j["ops_s"]}
    rows = [[k, fmt(v["ours_s"]), fmt(v["diffusers_s"]), "–" if v["speed_up"] is None else f"{v['speed_up']:.2f}x"]
            for k, v in ops.items()]
    net = {"ours_s": min(j["network_s"]), "diffusers_s": min(t["network_s"])}
    conv = {"ours_s": j["convolutions"]["total_s"], "diffusers_s": t["convolutions"]["total_s"]}
    rest = {k: net[k] - conv[k] for k in net}
    for label, v in ((f"network call ({j['convolutions']['num_calls']} convolutions)", net),
                     ("its convolutions, each timed alone x its count", conv),
                     ("the rest (network - convolutions)", rest)):
        rows.append([label, fmt(v["ours_s"]), fmt(v["diffusers_s"]), f"{ratio(v['diffusers_s'], v['ours_s']):.2f}x"])
    print(f"\nwhere the time goes, batch {b}:")
    print(render_table(["", "ours (s)", "diffusers (s)", "speed-up"], rows))
    return {"batch": b, "operators": ops, "network": net, "convolutions": conv, "rest": rest,
            "convolutions_distinct": {"ours": j["convolutions"]["distinct"],
                                      "diffusers": t["convolutions"]["distinct"]}}


def load_average():
    """os.getloadavg() as a list, or None where the platform has none."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None
