"""The tarflow layout against Apple's ml-tarflow `transformer_flow.Model` on random weights.

The committed fixtures (tests/fixtures/tarflow/, written by scripts/make_tarflow_fixtures.py from an ml-tarflow
checkout) are two tiny reference TarFlows in the converted layout with the reference's outputs: "rgb8" (8 px RGB,
patch 2, one head, 2 blocks x 2 layers, 3 classes) and "gray16" (16 px, patch 4, two heads, 3 blocks x 1 layer,
2 classes), every weight redrawn and the prior variance random. Where torch imports and TARFLOW_REPO names a
checkout, both are rebuilt with fresh weights and checked the same way.

Tolerances: both sides compute in float32 the same operations in another order (matrix products, the softmax, the
LayerNorm), each block's output rounding ~1e-7 relative; the inverse composes the T token updates of each block,
x_{t+1} = z exp(a) + b with |a| < 0.3 here, so the errors add over a few blocks and tokens without growing: 1e-5 of
the output's scale is 20x above what we measure (2e-7 to 5e-7). Jacobi with T iterations and GS-Jacobi with a
segment's length of iterations are exact solvers of the same triangular system as sequential: they differ from it by
rounding only, 1e-5 relative too.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fastsamplers.models import pretrained
from fastsamplers.models.tarflow import TarFlow, denoise, patchify, unpatchify
from fastsamplers.samplers import causal
from script_loader import load_script, reference_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tarflow")
NAMES = ("rgb8", "gray16")
TOLERANCE = 1e-5
REVERSES = {"reverse_cond": dict(), "reverse_guided": dict(guidance=1.5),
            "reverse_annealed": dict(guidance=1.5, annealed_guidance=True),
            "reverse_temp": dict(guidance=1.5, attn_temperature=0.7)}


CONVERTER = load_script("convert_checkpoint")


def _nhwc(a):
    return np.transpose(np.asarray(a), (0, 2, 3, 1))


def _rel_error(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def _check_folder(folder):
    """Forward (conditional, unconditional) and every reverse of outputs.npz; returns the loaded model."""
    m = pretrained.load(folder)
    ref = np.load(os.path.join(folder, "outputs.npz"))
    with jax.enable_x64(False):
        x = jnp.asarray(_nhwc(ref["x"]))
        std = np.asarray(m.flow.apply(m.params, method=TarFlow.prior_std))
        forward = jax.jit(m.flow.apply)
        for y, key in ((ref["y"], ""), (None, "_uncond")):
            z, logdet = forward(m.params, x, y)
            # the reference's z is before the prior's scaling, its logdet per dimension (models/tarflow.py)
            assert _rel_error(np.asarray(z) * std, _nhwc(ref["z" + key])) <= TOLERANCE, key
            per_dim = (np.asarray(logdet) + np.sum(np.log(std))) / x[0].size
            assert _rel_error(per_dim, ref["logdet" + key]) <= TOLERANCE, key
        noise, labels = jnp.asarray(_nhwc(ref["noise"])), jnp.asarray(ref["labels"])
        x_u, _ = causal.invert(m.flow, m.params, noise, None)
        assert _rel_error(x_u, _nhwc(ref["reverse_uncond"])) <= TOLERANCE
        for key, options in REVERSES.items():
            x_r, _ = causal.invert(m.flow, m.params, noise, labels, **options)
            assert _rel_error(x_r, _nhwc(ref[key])) <= TOLERANCE, key
    return m


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_reverse_match_the_reference(name):
    m = _check_folder(os.path.join(FIXTURES, name))
    assert m.layout == "tarflow" and m.noise_std in (0.07, 0.05) and m.num_classes in (2, 3)
    assert m.flow.num_heads == m.flow.hidden // 64 and m.image_shape == (m.flow.image_size,) * 2 + (m.flow.channels,)


def test_jacobi_and_gs_jacobi_agree_with_sequential_and_denoise_runs():
    m = pretrained.load(os.path.join(FIXTURES, "gray16"))
    ref = np.load(os.path.join(FIXTURES, "gray16", "outputs.npz"))
    with jax.enable_x64(False):
        noise, labels = jnp.asarray(_nhwc(ref["noise"])), jnp.asarray(ref["labels"])
        x_seq, _ = causal.invert(m.flow, m.params, noise, labels, guidance=1.5)
        plan = [{"mode": "jacobi"}, {"mode": "gs_jacobi", "segments": 4}, {"mode": "gs_jacobi", "segments": 2}]
        x_par, info = causal.invert(m.flow, m.params, noise, labels, plan=plan, guidance=1.5)
        assert _rel_error(x_par, np.asarray(x_seq)) <= TOLERANCE
        assert list(np.asarray(info["passes"])) == [16, 16, 16]  # every segment runs its length: exact
        clean = denoise(m.flow, m.params, x_seq, m.noise_std, labels)
        assert clean.shape == x_seq.shape and bool(jnp.all(jnp.isfinite(clean)))


def test_patch_orders_invert_each_other_and_chw_is_torch_unfold():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    for order in ("hwc", "chw"):
        assert np.array_equal(unpatchify(patchify(x, 2, order), 2, 4, 4, order), x)
    tokens = np.asarray(patchify(x, 2, "chw"))
    # unfold on NCHW: token (row-major patch), vector index c * p * p + i * p + j
    assert tokens[1, 1, 2 * 4 + 1 * 2 + 0] == x[1, 1, 2, 2]
    with pytest.raises(ValueError, match="valid: \\['hwc', 'chw'\\]"):
        TarFlow(patch_order="cwh")


# ---- bad folders: one sentence before any compute -----------------------------------------------------------------

def _copy(tmp_path, name="rgb8"):
    folder = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), folder)
    return folder


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if key in ("layout", "noise_std", "init_kwargs"):
            config[key] = value
        else:
            config["init_kwargs"][key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, error, match", [
    (dict(layout="edm"), ValueError, "layout 'edm' is not 'tarflow'"),
    (dict(init_kwargs=[1]), ValueError, "holds init_kwargs"),
    (dict(head_dim=32), ValueError, "unknown init_kwargs key 'head_dim'; valid: \\['in_channels'"),
    (dict(channels=96), ValueError, "not a multiple of the reference's head size 64"),
    (dict(nvp=False), NotImplementedError, "nvp=False"),
    (dict(patch_size=3), ValueError, "not divisible by patch_size=3"),
    (dict(noise_std="high"), ValueError, "noise_std must be"),
])
def test_bad_config_is_one_sentence(tmp_path, changes, error, match):
    folder = _copy(tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(error, match=match) as raised:
        pretrained.load(str(folder), layout="tarflow")
    assert "\n" not in str(raised.value) and "config.json" in str(raised.value)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("blocks.1.proj_out.weight"), "missing 1 key.*blocks.1.proj_out.weight"),
    (lambda s: s.update({"blocks.0.attn_blocks.0.attention.qkv.weight": np.zeros((64, 64), np.float32)}),
     "'blocks.0.attn_blocks.0.attention.qkv.weight' has shape \\(64, 64\\), expected \\(192, 64\\)"),
    (lambda s: s.update({"blocks.0.attn_mask": np.ones((16, 16), np.float32)}), "not the causal mask"),
    (lambda s: s.update({"var": np.zeros_like(s["var"])}), "entries <= 0"),
])
def test_bad_weights_are_one_sentence(tmp_path, edit, match):
    folder = _copy(tmp_path)
    state = dict(load_file(str(folder / "model.safetensors")))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=match) as raised:
        pretrained.load(str(folder))
    assert "\n" not in str(raised.value)


def test_detect_layout_reads_tarflow():
    assert pretrained.detect_layout(os.path.join(FIXTURES, "rgb8")) == "tarflow"


def test_converter_config_from_preset_name_and_json():
    afhq = CONVERTER.tarflow_config("/x/afhq_model_8_768_8_8_0.07.pth", None, None)
    assert afhq["init_kwargs"] == dict(in_channels=3, img_size=256, patch_size=8, channels=768, num_blocks=8,
                                       layers_per_block=8, num_classes=3) and afhq["noise_std"] == 0.07
    parsed = CONVERTER.tarflow_config("/x/afhq_model_4_512_4_2_0.10.pth", None, None)
    assert parsed["init_kwargs"]["patch_size"] == 4 and parsed["noise_std"] == 0.1
    given = CONVERTER.tarflow_config("/x/imagenet_model_4_1024_8_8_0.20.pth", None, '{"img_size": 128}')
    assert given["init_kwargs"]["num_classes"] == 1000 and given["init_kwargs"]["img_size"] == 128
    preset = CONVERTER.tarflow_config("/x/model.pth", "imagenet_model_4_1024_8_8_0.15", '{"noise_std": 0.2}')
    assert preset["init_kwargs"]["channels"] == 1024 and preset["noise_std"] == 0.2
    with pytest.raises(SystemExit, match="\\['img_size'\\] are unknown"):
        CONVERTER.tarflow_config("/x/imagenet_model_4_1024_8_8_0.20.pth", None, None)
    with pytest.raises(SystemExit, match="unknown tarflow preset"):
        CONVERTER.tarflow_config("/x/model.pth", "afhq", None)
    for preset in CONVERTER.TARFLOW_PRESETS:  # every preset builds
        kwargs, _ = CONVERTER.TARFLOW_PRESETS[preset]
        assert pretrained.ml_tarflow.flow_of(kwargs).num_heads == kwargs["channels"] // 64


# ---- live: fresh networks from ml-tarflow's code -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_matches_ml_tarflow_live(name, tmp_path):
    repo = reference_checkout("TARFLOW_REPO", "transformer_flow.py")
    load_script("make_tarflow_fixtures").write(name, repo, str(tmp_path), seed=11)
    _check_folder(str(tmp_path / name))
