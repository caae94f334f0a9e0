"""models.pretrained.score_sde_pytorch and scripts/convert_checkpoint.py's score_sde_pytorch section.

The committed fixtures (tests/fixtures/score_sde_pytorch/, written by scripts/make_score_sde_pytorch_fixtures.py in
a torch environment) are tiny random-weight NCSNpp networks of score_sde_pytorch's own code, saved as its training
loop saves them and converted by the converter, with the reference network's outputs on fixed inputs (EMA and raw
weights). Where torch imports and SCORE_SDE_PYTORCH_REPO names a checkout, the whole path runs live on fresh
networks. Numbers are compared in float32: max |ours - reference| <= 1e-5 max |reference|.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.models import pretrained
from script_loader import load_script, reference_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "score_sde_pytorch")
# name -> (process name, prediction)
EXPECTED = {"ddpmpp_vp": ("vp_linear", "eps"), "ncsnpp_ve": ("ve", "score")}


CONVERT = load_script("convert_checkpoint")  # imports torch only inside its functions


def _relative_error(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


@pytest.fixture(scope="module")
def loaded():
    """{folder name: (Pretrained, jitted apply)}; the raw-weights folder shares the EMA one's compiled function."""
    out = {}
    for name in ("ddpmpp_vp", "ddpmpp_vp_raw", "ncsnpp_ve"):
        m = pretrained.load(os.path.join(FIXTURES, name))
        out[name] = (m, out[name[:-4]][1] if name.endswith("_raw") else jax.jit(m.apply))
    return out


def _run(entry, x, labels):
    m, apply = entry
    with jax.enable_x64(False):
        return apply(m.params, jnp.asarray(x), jnp.asarray(labels))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_matches_the_reference_network(name, loaded):
    m, _ = loaded[name]
    assert (m.layout, m.process.name, m.prediction, m.image_shape) == ("score_sde_pytorch", *EXPECTED[name],
                                                                        (8, 8, 3))
    d = np.load(os.path.join(FIXTURES, name, "outputs.npz"))
    np.testing.assert_allclose(np.asarray(m.timestep(jnp.asarray(d["t"]))), d["labels"], rtol=1e-6)
    out = _run(loaded[name], d["x"], d["labels"])
    assert out.dtype == jnp.float32 and out.shape == d["out"].shape
    assert _relative_error(out, d["out"]) <= 1e-5


def test_the_same_process_as_the_flax_loader(loaded):
    """The DDPM++ deep and NCSN++ CelebA-HQ configs give the flax loader's processes (score_sde's sampling eps)."""
    vp, ve = loaded["ddpmpp_vp"][0].process, loaded["ncsnpp_ve"][0].process
    assert (vp.beta_min, vp.beta_max, vp.t_min) == (0.1, 20.0, 1e-3)
    assert (ve.sigma_min, ve.sigma_max, ve.t_min) == (0.01, 348.0, 1e-5)
    discrete = pretrained.load(os.path.join(FIXTURES, "ddpmpp_vp"), continuous=False)
    assert discrete.process.name == "vp_discrete" and discrete.config == loaded["ddpmpp_vp"][0].config


def test_ema_and_raw_weights(loaded):
    """The default conversion holds the EMA weights, `--params model` the raw ones; each reproduces its output,
    and the two outputs differ far beyond the tolerance."""
    d = np.load(os.path.join(FIXTURES, "ddpmpp_vp", "outputs.npz"))
    assert _relative_error(_run(loaded["ddpmpp_vp_raw"], d["x"], d["labels"]), d["out_raw"]) <= 1e-5
    assert _relative_error(d["out"], d["out_raw"]) > 1e-2
    ema, raw = (loaded[n][0].params["conv_in"]["kernel"] for n in ("ddpmpp_vp", "ddpmpp_vp_raw"))
    assert float(jnp.max(jnp.abs(ema - raw))) > 1e-3


# ---- the converter's naming of the EMA list (no torch: numpy arrays stand in for tensors) ----------------------

def _checkpoint(name="ncsnpp_ve"):
    """A training state as score_sde_pytorch saves it, rebuilt from a converted folder: 'model' with `module.` and
    the sigmas buffer, 'ema' the trainable parameters in order (the Fourier W is not one)."""
    from safetensors.numpy import load_file

    state = load_file(os.path.join(FIXTURES, name, "model.safetensors"))
    order = sorted(state, key=lambda k: (int(k.split(".")[1]), k))  # module order; within one any fixed order
    model = {"module.sigmas": np.ones(1000, np.float32), **{f"module.{k}": state[k] for k in order}}
    shadow = [state[k] + 1.0 for k in order if k != "all_modules.0.W"]
    return {"model": model, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1,
            "optimizer": {}}, state


def test_converter_names_the_ema_list():
    checkpoint, state = _checkpoint()
    ema = CONVERT.score_sde_weights(checkpoint)
    assert sorted(ema) == sorted(state)  # no module., no sigmas, the Fourier W kept
    assert np.array_equal(ema["all_modules.0.W"], state["all_modules.0.W"])  # from 'model', not shifted
    assert np.array_equal(ema["all_modules.5.Conv_1.weight"], state["all_modules.5.Conv_1.weight"] + 1.0)
    raw = CONVERT.score_sde_weights(checkpoint, "model")
    assert all(np.array_equal(raw[k], state[k]) for k in state) and sorted(raw) == sorted(state)


def test_converter_count_and_shape_mismatch_sentences():
    checkpoint, state = _checkpoint()
    trainable = len(state) - 1
    checkpoint["ema"]["shadow_params"].pop()
    with pytest.raises(ValueError) as raised:
        CONVERT.score_sde_weights(checkpoint)
    assert str(raised.value) == (
        f"the EMA holds {trainable - 1} tensors but the model has {trainable} trainable parameters (its state dict "
        "less the sigmas buffer and the Fourier W), so the EMA weights cannot be named; pass --params model to "
        "convert the raw weights")
    checkpoint, _ = _checkpoint()
    shadow = checkpoint["ema"]["shadow_params"]
    shadow[3], shadow[4] = shadow[4], shadow[3]  # a conv weight and a bias swapped: out of order
    with pytest.raises(ValueError, match="EMA tensor 3 has shape .* not in the model's order"):
        CONVERT.score_sde_weights(checkpoint)
    with pytest.raises(ValueError, match="not a score_sde_pytorch checkpoint.*got \\['state_dict'\\]"):
        CONVERT.score_sde_weights({"state_dict": {}})
    del checkpoint["ema"]
    with pytest.raises(ValueError, match="no EMA weights.*--params model"):
        CONVERT.score_sde_weights(checkpoint)


# ---- bad folders, before any compute ---------------------------------------------------------------------------

def _copy(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), target)
    return target


def test_a_pth_file_is_refused_with_the_conversion_command(tmp_path):
    pth = tmp_path / "checkpoint_8.pth"
    pth.write_bytes(b"PK\x03\x04 not opened")
    assert pretrained.detect_layout(str(pth)) == "score_sde_pytorch"
    with pytest.raises(ValueError, match="never unpickles") as raised:
        pretrained.load(str(pth))
    assert f"scripts/convert_checkpoint.py {pth} OUT_FOLDER --layout score_sde_pytorch" in str(raised.value)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a converted score_sde_pytorch folder"):
        pretrained.load(str(tmp_path / "nothing.safetensors"), layout="score_sde_pytorch")
    root = _copy("ncsnpp_ve", tmp_path)
    os.remove(root / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        pretrained.load(str(root))

    root = _copy("ddpmpp_vp", tmp_path / "layout")
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({"layout": "onnx"}))
    with pytest.raises(ValueError, match="valid layouts"):
        pretrained.load(str(root))
    (root / "config.json").write_text(json.dumps({"layout": "score_sde_pytorch", "model": config["config"]}))
    with pytest.raises(ValueError, match="expected .* as scripts/convert_checkpoint.py writes it, got \\['layout', "
                                         "'model'\\]"):
        pretrained.load(str(root))
    (root / "config.json").write_text(json.dumps({"layout": "score_sde_pytorch", "config": "nope"}))
    with pytest.raises(ValueError, match="unknown score_sde config 'nope'"):
        pretrained.load(str(root))
    (root / "config.json").write_text(json.dumps({"layout": "score_sde_pytorch",
                                                  "config": "vp/cifar10_ddpmpp_deep_continuous"}))
    with pytest.raises(ValueError, match="missing 858 key") as raised:  # the full-size network of the preset
        pretrained.load(str(root))
    assert f"the score_sde preset 'vp/cifar10_ddpmpp_deep_continuous' in {root / 'config.json'} needs" in str(
        raised.value)
    (root / "config.json").write_text(json.dumps({"layout": "score_sde_pytorch", "config": config["config"]}))
    with pytest.raises(NotImplementedError, match="sde='subvpsde'") as raised:
        pretrained.load(str(root), sde="subvpsde")
    assert str(root / "config.json") in str(raised.value)

    from safetensors.numpy import load_file, save_file

    state = load_file(str(root / "model.safetensors"))
    del state["all_modules.6.NIN_2.W"]
    save_file(state, str(root / "model.safetensors"))
    with pytest.raises(ValueError, match="missing 1 key.*all_modules.6.NIN_2.W"):
        pretrained.load(str(root))


# ---- live: fresh networks through the whole path ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_live_against_score_sde_pytorch(name, tmp_path):
    repo = reference_checkout("SCORE_SDE_PYTORCH_REPO", "models")
    folder = load_script("make_score_sde_pytorch_fixtures").save(name, str(tmp_path), repo, seed=7, raw=True)
    d = np.load(os.path.join(folder, "outputs.npz"))
    for suffix, key in (("", "out"), ("_raw", "out_raw")):
        m = pretrained.load(folder + suffix)
        assert _relative_error(_run((m, jax.jit(m.apply)), d["x"], d["labels"]), d[key]) <= 1e-5
