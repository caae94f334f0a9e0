"""Published architectures against their reference PyTorch code on the same weights, on this machine: one network
call and the whole sampler (`scripts/benchmark_checkpoints.py`).

`benchmark(settings)`, for each architecture of `settings.architectures` (`checkpoint_benchmark_torch.ARCHITECTURES`:
EDM's CIFAR-10 DDPM++ at 55.7M parameters, guided-diffusion's ImageNet-64 model at 296M, a DiT-B/2 on 32 x 32 x 4
latents at 130M):

1. The reference side writes the architecture with its own random initialisation (torch seed 0) in the converted
   layout `scripts/convert_checkpoint.py` writes, once, to `settings.model_dir/ARCH`; ours reads that folder with
   `models.pretrained.load`, so both run the same weights.
2. For each batch of `settings.batches`: the reference in a worker process (`checkpoint_benchmark_torch`, with
   `settings.torch_python`), ours in this process. A network call: one warm-up call (ours: the compilation), then
   the minimum of `repeats` timed calls. The sampler, at `settings.sampler_batch`: the reference's own (EDM's
   `edm_sampler`, Heun on the rho = 7 grid with 6 points, NFE 11; guided-diffusion's (and DiT's copy of it)
   `ddim_sample_loop` on "ddim10", NFE 10, unguided) against `samplers.sample` with the same method on the same
   grid (`heun` with its final Euler step to sigma = 0; `ddim` ending at the clean data), from noise to the
   sample, compiled once before timing.
3. Output: a markdown table (printed) and a JSON record (`core.write_json`): every number, the ratios (reference
   time / ours: > 1 means ours is faster), the machine (cores, load averages before and after: the CPU may be
   shared), versions and the command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp

import fastsamplers
from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.report.tables import render_table
from fastsamplers.experiments.runs import checkpoint_benchmark_torch as reference
from fastsamplers.experiments.runs.pretrained_benchmark import torch_python
from fastsamplers.experiments.runs.pretrained_benchmark_torch import timed

ARCHITECTURES = core.Registry.of_names("architecture", tuple(reference.ARCHITECTURES), ordered=True,
                                       unknown="unknown {kind} {name!r}; valid: {valid}")
# an architecture's kind -> the Settings field naming its reference checkout
REPO_FLAGS = {"edm": "edm_repo", "guided_diffusion": "guided_diffusion_repo", "dit": "dit_repo"}
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `benchmark` measures. torch_python: a python with torch, numpy and safetensors (default
    $FASTSAMPLERS_TORCH_PYTHON, `pretrained_benchmark.torch_python`); edm_repo, guided_diffusion_repo, dit_repo:
    checkouts of NVlabs/edm, openai/guided-diffusion and facebookresearch/DiT (with timm); model_dir: where the
    random models go (default: a temporary folder)."""

    json: str
    torch_python: str | None = None
    edm_repo: str = ""
    guided_diffusion_repo: str = ""
    dit_repo: str = ""
    model_dir: str | None = None
    architectures: tuple[str, ...] = tuple(reference.ARCHITECTURES)
    batches: tuple[int, ...] = (1, 8)
    sampler_batch: int = 1
    repeats: int = 2
    command: str = ""

    def check(self) -> None:
        """ValueError, one sentence, for a setting that cannot run."""
        for name in self.architectures:
            ARCHITECTURES.check(name)
        torch_python(self.torch_python, "the reference side needs a python with torch, numpy and safetensors")
        for name in self.architectures:
            repo = self._repo(name)
            if not os.path.isdir(repo):
                flag = REPO_FLAGS[reference.ARCHITECTURES[name]["kind"]].replace("_", "-")
                raise ValueError(f"{name} needs a checkout of the reference code (--{flag}), got {repo!r}")
        if min(self.batches) < 1 or self.sampler_batch < 1 or self.repeats < 1:
            raise ValueError("batches, sampler_batch and repeats must be >= 1")

    def _repo(self, name):
        return getattr(self, REPO_FLAGS[reference.ARCHITECTURES[name]["kind"]])


def _worker(settings, spec):
    python = torch_python(settings.torch_python, "the reference side")
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(spec, result=os.path.join(tmp, "result.json"), scripts_dir=SCRIPTS,
                    **{field: getattr(settings, field) for field in REPO_FLAGS.values()})
        path = os.path.join(tmp, "spec.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        subprocess.run([python, reference.__file__, path], check=True)
        with open(spec["result"], encoding="utf-8") as f:
            return json.load(f)


def _ours(model, architecture, batch, repeats, sampler):
    """Our numbers for a loaded model at one batch: the jitted model function, and with `sampler` the whole
    sampler (`samplers.sample`, compiled before timing)."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch,) + tuple(model.latent_shape or model.image_shape))
    labels = jnp.zeros((batch,), jnp.int32)
    args = model.params if model.num_classes is None else (model.params, labels)
    if reference.ARCHITECTURES[architecture]["kind"] == "edm":
        t = jnp.full((batch,), 2.5)
        ts = schedules.get_timesteps("edm", model.process, reference.EDM_STEPS, t_min=0.002, t_max=80.0,
                                     append_zero=True)
        solver, name = "heun", "heun (edm grid, rho 7, final Euler step to 0)"
    else:
        t = jnp.full((batch,), 501 / 1000)
        stride = 1000 // int(reference.ADM_RESPACING[4:])  # space_timesteps' "ddimN": steps 0, stride, ...
        ts = jnp.concatenate([(jnp.arange(1000 - stride, -1, -stride) + 1) / 1000.0, jnp.zeros(1)])
        solver, name = "ddim", f"ddim ({reference.ADM_RESPACING} steps, then the clean data)"
    call = jax.jit(model.model_fn)
    record = {"framework": "jax", "batch": batch, "jax": jax.__version__, "devices": str(jax.devices()[0]),
              "network_first_s": timed(lambda: call(x, t, args).block_until_ready(), 1)[0]}
    record["network_s"] = timed(lambda: call(x, t, args).block_until_ready(), repeats)
    if sampler:
        x_init = model.process.prior(key, x.shape, t=ts[0])

        def run():
            out, info = samplers.sample(model.model_fn, solver, model.process, x_init, ts,
                                        prediction=model.prediction, args=args)
            out.block_until_ready()
            return info

        record["sampler_first_s"] = timed(run, 1)[0]
        record["sampler_s"] = timed(run, repeats)
        record["sampler"] = {"name": name, "nfe": int(run()["nfe"])}
    return record


def benchmark(settings: Settings) -> dict:
    """Measure, print the table, write the JSON record; returns the record."""
    from fastsamplers.models import pretrained

    settings.check()
    root = settings.model_dir or tempfile.mkdtemp(prefix="checkpoint_benchmark_")
    load_before = os.getloadavg()
    started = time.time()
    results = {}
    for name in settings.architectures:
        model_dir = os.path.join(root, name)
        saved = (_worker(settings, {"mode": "save", "architecture": name, "model_dir": model_dir})
                 if not os.path.isfile(os.path.join(model_dir, "model.safetensors")) else {"model_dir": model_dir})
        model = pretrained.load(model_dir)
        rows = []
        for batch in sorted(set(settings.batches) | {settings.sampler_batch}):
            sampler = batch == settings.sampler_batch
            theirs = _worker(settings, {"mode": "measure", "architecture": name, "model_dir": model_dir,
                                        "batch": batch, "repeats": settings.repeats, "sampler": sampler})
            ours = _ours(model, name, batch, settings.repeats, sampler)
            rows.append({"batch": batch, "torch": theirs, "jax": ours,
                         "network_ratio": min(theirs["network_s"]) / min(ours["network_s"]),
                         "sampler_ratio": (min(theirs["sampler_s"]) / min(ours["sampler_s"]) if sampler else None)})
        results[name] = {"saved": saved, "num_params": int(sum(p.size for p in jax.tree_util.tree_leaves(
            model.params))), "rows": rows}
    record = {"results": results, "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                                              "load_after": os.getloadavg()},
              "versions": {"fastsamplers": fastsamplers.__version__, "jax": jax.__version__},
              "wall_s": time.time() - started, "command": settings.command}
    print(table(record))
    core.write_json(settings.json, record)
    return record


def table(record: dict) -> str:
    """The markdown table of a record: per architecture and batch, seconds per network call and per sample of the
    sampler, both sides, and reference / ours."""
    lines = []
    for name, result in record["results"].items():
        body = []
        for row in result["rows"]:
            torch_s, jax_s = min(row["torch"]["network_s"]), min(row["jax"]["network_s"])
            body.append([row["batch"], f"{torch_s:.3f}", f"{jax_s:.3f}", f"{row['network_ratio']:.2f}",
                         *(["—"] * 3 if row["sampler_ratio"] is None else
                           [f"{min(row['torch']['sampler_s']):.2f} (NFE {row['torch']['sampler']['nfe']})",
                            f"{min(row['jax']['sampler_s']):.2f} (NFE {row['jax']['sampler']['nfe']})",
                            f"{row['sampler_ratio']:.2f}"])])
        lines += [f"### {name} ({result['num_params'] / 1e6:.1f}M parameters)", "",
                  render_table(["batch", "torch call s", "ours call s", "torch / ours", "torch sampler s",
                                "ours sampler s", "torch / ours"], body), ""]
    return "\n".join(lines)
