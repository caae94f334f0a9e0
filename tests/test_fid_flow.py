"""The FID runner's flow branch (`experiments.runs.fid_protocol` on a `PretrainedFlow`): the committed reference-layout
TarFlow fixture (tests/fixtures/tarflow/rgb8: 8 px RGB, 2 blocks of 16 tokens, 3 classes, noise_std 0.07) sampled
as ml-tarflow's evaluate_fid.py does, with the random-projection test feature.

Tolerances: the runner's program and the direct computation below run the same float32 operations compiled
separately (the runner's is one jit over the batch with sharding constraints), so they agree to float32 rounding,
~1e-6 of the [-1, 1] scale; after round(clip((x + 1) 127.5)) that moves a pixel by one level only where (x + 1)
127.5 lies within ~1e-4 of a .5 tie, i.e. for a few pixels in ten thousand: at most one level, almost all equal.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fastsamplers.experiments.configs import fid_pretrained as fid_config
from fastsamplers.experiments.metrics import features
from fastsamplers.experiments.report import tables
from fastsamplers.experiments.runs import fid_protocol
from fastsamplers.models import pretrained
from fastsamplers.models.tarflow import TarFlow, denoise
from fastsamplers.samplers import causal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW = os.path.join(ROOT, "tests", "fixtures", "tarflow", "rgb8")
PLAN = '{"mode": "gs_jacobi", "segments": 4}'  # exact: each segment iterated its length


def flow_config(reference, **overrides):
    config = fid_config.get_config("smoke")
    config.update(dict(checkpoint=FLOW, solver="", flow_plan=PLAN, flow_guidance=1.0, label="GS-Jacobi",
                       num_samples=8, reference=str(reference), keep_shards=True), **overrides)
    return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("flow_reference") / "images.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, reference):
    workdir = tmp_path_factory.mktemp("flow_run")
    return fid_protocol.run(flow_config(reference), str(workdir)), workdir


def test_saved_samples_are_invert_denoise_clip_quantise(flow_run):
    """Sample k: z from fold_in(fold_in(PRNGKey(0), NOISE_STREAM), k), label k mod 3, inverted with the plan and
    annealed guidance 1, the Tweedie step at noise_std 0.07, clipped and quantised."""
    results, workdir = flow_run
    assert results["solver"]["plan"] == json.loads(PLAN) and results["solver"]["denoise"]["sigma"] == 0.07
    assert results["guidance"]["classes"] == [0, 1, 2] and results["grid"] is None
    assert results["nfe"]["dependent_passes_per_block"] == [16.0, 16.0] and results["nfe"]["batches_measured"] == 2
    assert results["rows"][0]["grid"] == tables.FLOW_GRID and results["rows"][0]["nfe"] == 32
    m = pretrained.load(FLOW)
    key = jax.random.fold_in(jax.random.PRNGKey(0), fid_protocol.NOISE_STREAM)
    z = jnp.stack([jax.random.normal(jax.random.fold_in(key, k), m.image_shape, jnp.float32) for k in range(4)])
    labels = jnp.arange(4) % 3

    @jax.jit
    def direct(params, z):
        x, info = causal.invert(m.flow, params, z, labels, json.loads(PLAN), guidance=1.0, annealed_guidance=True)
        return jnp.clip(denoise(m.flow, params, x, 0.07, labels), -1, 1), x

    x, raw = direct(m.params, z)
    diff = np.abs(np.load(workdir / "samples.npz")["images"].astype(int) - np.asarray(features.quantise(x), int))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99  # float32 rounding meeting a .5 tie (module docstring)
    # evaluate_fid.py's step: x - lr grad(loss) with loss = 0.5 mean(z^2) - mean(logdet per dimension) over the batch
    # and lr = B H W C noise_std^2 is Tweedie's x + noise_std^2 grad log p(x) (the loss is -log p / (B D) + const).
    dim = raw[0].size

    def loss(v):
        out, logdet = m.flow.apply(m.params, v, labels)
        return 0.5 * jnp.mean(out**2) - jnp.mean(logdet / dim)

    stepped = raw - raw.shape[0] * dim * 0.07**2 * jax.grad(loss)(raw)
    scale = float(jnp.max(jnp.abs(stepped - raw)))
    assert scale > 1e-4  # the step does something
    np.testing.assert_allclose(np.asarray(jnp.clip(stepped, -1, 1)), np.asarray(x), atol=1e-3 * scale)


def test_flow_resumes_to_the_same_value_and_passes(flow_run, reference, tmp_path, monkeypatch):
    original = fid_protocol.write_shard

    def write_then_die(*args):
        original(*args)
        raise KeyboardInterrupt("killed after one shard")

    monkeypatch.setattr(fid_protocol, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        fid_protocol.run(flow_config(reference), str(tmp_path))
    monkeypatch.setattr(fid_protocol, "write_shard", original)
    results = fid_protocol.run(flow_config(reference), str(tmp_path))
    assert results["resumed_shards"] == 1 and results["sampled_this_run"] == 4
    assert abs(results["value"] - flow_run[0]["value"]) <= 1e-9
    assert results["nfe"] == flow_run[0]["nfe"]  # the resumed shard's passes come from its record
    final = fid_protocol.run(flow_config(reference), str(tmp_path))  # scored again from sample_stats.npz
    assert final["reused_final_statistics"] and final["nfe"] == flow_run[0]["nfe"]
    text = tables.markdown(final["rows"])
    assert "| flow plan | dependent passes |" in text and "| GS-Jacobi | 32 |" in text


def _unconditional(tmp_path):
    """The fixture without its class embeddings: an unconditional flow."""
    folder = tmp_path / "uncond"
    shutil.copytree(FLOW, folder)
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "class_embed" not in k}
    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["init_kwargs"]["num_classes"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("overrides, match", [
    (dict(solver="ddim", flow_plan=""), "is a normalizing flow .* not by the diffusion solver 'ddim'"),
    (dict(solver="ddim"), "solver='ddim' and flow_plan=.*set the other to ''"),
    (dict(checkpoint=os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")),
     "is for a normalizing flow; ddpm is a diffusion model"),
    (dict(flow_plan="gs:8"),
     "unknown inversion mode 'gs:8'; valid: .*: a plan is a mode name \\(sequential, jacobi, gs_jacobi\\)"),
    (dict(flow_plan='{"mode": "gs_jacobi", segments: 3}'), "is not valid JSON .*a plan is a mode name"),
    (dict(flow_plan='{"mode": "gs_jacobi", "segments": 3}'), "segments=3 does not divide the 16 tokens"),
    (dict(flow_plan='[{"mode": "jacobi"}]'), "the plan lists 1 blocks but the flow has 2"),
    ("unconditional", "flow_guidance=1.0 needs a class-conditional flow"),
    (dict(guidance_scale=2.0), "guidance_scale and classifier are a diffusion model's"),
    (dict(flow_guidance=0.0, flow_attn_temp=0.5), "flow_attn_temp=0.5 tempers guidance's unconditional branch"),
    (dict(flow_guidance=-1.0), "flow_guidance must be finite and >= 0"),
    (dict(solver="", flow_plan=""), "set solver .* or flow_plan"),
])
def test_flow_bad_input_fails_before_compute(overrides, match, reference, tmp_path, monkeypatch):
    if overrides == "unconditional":
        overrides = dict(checkpoint=_unconditional(tmp_path))

    def no_compute(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(fid_protocol, "_flow_program", no_compute)
    monkeypatch.setattr(fid_protocol, "_sample_program", no_compute)
    monkeypatch.setattr(features, "_program", no_compute)
    with pytest.raises(ValueError, match=match):
        fid_protocol.run(flow_config(reference, **overrides), str(tmp_path / "w"))


def test_unconditional_flow_samples_without_labels(tmp_path, reference):
    """The unconditional flow loads and its plan is accepted (labels None: the mean class embedding is not used)."""
    plan = fid_protocol.make_plan(flow_config(reference, checkpoint=_unconditional(tmp_path), flow_guidance=0.0),
                                  str(tmp_path / "w"))
    assert plan.source.classes is None and plan.source.flow.num_classes in (None, 0)
    assert isinstance(plan.source.flow.flow, TarFlow) and plan.solver.guidance == 0.0
