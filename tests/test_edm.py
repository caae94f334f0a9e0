"""models.pretrained.edm: EDM's preconditioned SongUNet / DhariwalUNet networks against EDM's own forward.

The committed fixtures (tests/fixtures/edm/, written by scripts/make_edm_fixtures.py with NVlabs/edm's
training/networks.py) are small random-weight networks in the converted layout with EDM's D(x; sigma) on fixed inputs;
from_pickle/ is the "ddpmpp" network pickled by EDM's persistence and converted by scripts/convert_checkpoint.py.
Where torch and an EDM checkout import (EDM_REPO names it), the checks also run live on every spec of
the script, two of them (several heads; skip encoder and decoder with FIR on three levels) only live.
Numbers are compared in float32, per sample: max |ours - EDM| <= 1e-5 max |EDM| (EDM runs in float32; measured
errors are 1e-7 to 2e-6 relative).
"""

import json
import os
import runpy
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models import pretrained
from fastsamplers.models.pretrained import edm
from script_loader import reference_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "edm")
# name -> (class_name, model_type, num_classes, the process's (t_min, t_max))
EXPECTED = {"ddpmpp": ("EDMPrecond", "SongUNet", None, (0.002, 80.0)),
            "ncsnpp_ve": ("VEPrecond", "SongUNet", None, (0.02, 80.0)),
            "vp_cond": ("VPPrecond", "SongUNet", 3, (0.002, 80.0)),
            "iddpm": ("iDDPMPrecond", "DhariwalUNet", 3, (0.006422337144613266, 80.0)),  # u_{M-1}, float32
            "adm": ("EDMPrecond", "DhariwalUNet", 3, (0.002, 80.0))}


SCRIPT = runpy.run_path(os.path.join(ROOT, "scripts", "make_edm_fixtures.py"))  # its globals


def _check_outputs(m, folder):
    """D(x; sigma) per sample and D(x; scalar sigma), through one jitted model_fn, against EDM's outputs."""
    d = np.load(os.path.join(folder, "outputs.npz"))
    with jax.enable_x64(False):
        labels = None if d["labels"][0] < 0 else jnp.asarray(d["labels"], jnp.int32)
        args = m.params if labels is None else (m.params, labels)
        model_fn = jax.jit(m.model_fn)
        x = jnp.asarray(d["x"])
        for t, ref in ((jnp.asarray(d["sigma"]), d["out"]), (jnp.float32(d["sigma_scalar"]), d["out_scalar"])):
            out = np.asarray(model_fn(x, t, args))
            assert out.dtype == np.float32 and out.shape == ref.shape
            err = np.max(np.abs(out - ref), axis=(1, 2, 3)) / np.max(np.abs(ref), axis=(1, 2, 3))
            assert np.all(err <= 1e-5), f"{folder}: max |ours - EDM| / max |EDM| per sample = {err}"


@pytest.fixture(scope="module")
def loaded():
    return {name: pretrained.load(os.path.join(FIXTURES, name)) for name in EXPECTED}


def test_the_fixtures_are_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(FIXTURES) for f in files)
    assert total < 1_500_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_matches_edms_outputs(name, loaded):
    m = loaded[name]
    class_name, model_type, num_classes, (t_min, t_max) = EXPECTED[name]
    assert (m.layout, m.prediction, m.process.name, m.image_shape, m.num_classes) == (
        "edm", "x0", "edm", (8, 8, 3), num_classes)
    assert (m.config.class_name, m.config.network.model_type) == (class_name, model_type)
    assert (m.process.t_min, m.process.t_max) == pytest.approx((t_min, t_max), rel=1e-7)
    np.testing.assert_array_equal(np.asarray(m.timestep(jnp.asarray([0.5, 3.0]))), [0.5, 3.0])  # t is sigma
    _check_outputs(m, os.path.join(FIXTURES, name))


def test_vp_sigma_range_is_edms():
    """VPPrecond's range [sigma(epsilon_t), sigma(1)] (networks.py:491-492), which the process clamps to EDM's
    sampler defaults."""
    cfg = edm.edm_config("VPPrecond", dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1]))
    sigma_min, sigma_max = cfg.sigma_range()
    assert sigma_min == pytest.approx(1e-3, rel=1e-3) and sigma_max == pytest.approx(152.167, rel=1e-5)


def test_converted_pickle_equals_the_direct_folder(loaded):
    direct = loaded["ddpmpp"]
    converted = pretrained.load(os.path.join(FIXTURES, "from_pickle"))
    assert converted.config == direct.config
    assert converted.model_fn is direct.model_fn  # one architecture, one set of compiled programs
    flat_a = jax.tree_util.tree_flatten_with_path(converted.params)[0]
    flat_b = jax.tree_util.tree_flatten_with_path(direct.params)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat_a, flat_b))


def test_heun_samples_on_a_loaded_network(loaded):
    """EDM's deterministic sampler's shape: heun on the rho = 7 grid ending at 0, conditional args."""
    m = loaded["vp_cond"]
    ts = schedules.get_timesteps("edm", m.process, num_steps=3, append_zero=True)
    x_init = m.process.prior(jax.random.PRNGKey(0), (2,) + m.image_shape)
    with jax.enable_x64(False):
        x, info = samplers.sample(m.model_fn, "heun", m.process, x_init.astype(jnp.float32), ts.astype(jnp.float32),
                                  prediction=m.prediction, args=(m.params, jnp.asarray([0, 2])))
    assert x.shape == x_init.shape and bool(jnp.all(jnp.isfinite(x))) and info["nfe"] >= 3


# ---- bad folders --------------------------------------------------------------------------------------------------

def _copy(tmp_path, name="ddpmpp"):
    folder = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, name), folder)
    return folder


def _edit_config(folder, edit):
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    edit(config)
    json.dump(config, open(path, "w"))


def _edit_weights(folder, edit):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(class_name="SuperPrecond"),
     r"unknown EDM preconditioner class_name 'SuperPrecond'; valid: \['VPPrecond', 'VEPrecond', 'iDDPMPrecond', "),
    (lambda c: c["init_kwargs"].update(model_type="UNet3D"),
     r"unknown EDM model_type 'UNet3D'; valid: \['SongUNet', 'DhariwalUNet'\]"),
    (lambda c: c["init_kwargs"].update(encoder_typ="skip"),
     r"SongUNet option 'encoder_typ' does not exist; valid options: \[.*'encoder_type'"),
    (lambda c: c["init_kwargs"].update(decoder_type="residual"),
     r"SongUNet: decoder_type='residual' is not supported; valid: \['standard', 'skip'\]"),
    (lambda c: c["init_kwargs"].pop("img_resolution"), r"EDMPrecond needs \['img_resolution'\]"),
    (lambda c: c.pop("init_kwargs"), r"missing key 'init_kwargs'"),
    (lambda c: c.update(layout="guided_diffusion"), r"layout 'guided_diffusion' is not 'edm'"),
])
def test_bad_configs_are_one_sentence(tmp_path, edit, message):
    folder = _copy(tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(ValueError, match=message) as error:
        edm.load(folder)
    assert "config.json" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.enc.8x8_block0.conv1.weight"),
     r"missing 1 key\(s\) the network in config.json needs: 'model.enc.8x8_block0.conv1.weight'"),
    (lambda s: s.update({"model.map_layer0.weight": np.zeros((32, 7), np.float32)}),
     r"parameter 'model.map_layer0.weight' has shape \(32, 7\), expected \(32, 8\)"),
    (lambda s: s.update({"model.enc.4x4_down.conv0.resample_filter": np.ones((1, 1, 2, 2), np.float32)}),
     r"buffer 'model.enc.4x4_down.conv0.resample_filter' is not the resample_filter \[1, 1\]"),
])
def test_bad_weights_are_one_sentence(tmp_path, edit, message):
    folder = _copy(tmp_path)
    _edit_weights(folder, edit)
    with pytest.raises(ValueError, match=message):
        edm.load(folder)


def test_layouts_are_detected_and_refused(tmp_path):
    folder = _copy(tmp_path)
    assert pretrained.detect_layout(folder) == "edm"
    _edit_config(folder, lambda c: c.update(layout="guided_difusion"))
    with pytest.raises(ValueError, match=r"unknown layout 'guided_difusion'; valid layouts: \[.*'edm'"):
        pretrained.load(folder)
    with pytest.raises(ValueError, match="the model is class-conditional \\(3 classes\\)"):
        pretrained.load(os.path.join(FIXTURES, "vp_cond")).model_fn(jnp.zeros((1, 8, 8, 3)), 1.0, {})


# ---- live, against EDM's code ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPT["LIVE_SPECS"]))
def test_matches_edm_live(name, tmp_path):
    repo = reference_checkout("EDM_REPO", os.path.join("training", "networks.py"))
    net = SCRIPT["build"](name, repo, seed=5)
    folder = SCRIPT["write"](str(tmp_path / name), net, SCRIPT["outputs"](name, net, seed=5))
    _check_outputs(pretrained.load(folder), folder)
