"""models.pretrained: diffusers UNet2DModel and score_sde NCSN++ checkpoints in Flax.

The committed fixtures (tests/fixtures/pretrained/, written by scripts/make_pretrained_fixtures.py) are small
random-weight diffusers models with torch's outputs on fixed inputs; ncsnpp/score_sde/ holds the NCSN++ one's weights
in score_sde's parameter tree (a flax msgpack training state, checked when it was written against score_sde's own
NCSNpp, whose tree of names and shapes is recorded in tree.json); ddpmpp_vp/ is a score_sde DDPM++ made and run by
score_sde's own code (diffusers cannot build it). Where torch and diffusers import, the diffusers checks run live on
fresh random models of every spec in the script. Numbers are compared in float32:
max |ours - reference| <= 1e-5 max(1, max |reference|).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.models import pretrained
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models.pretrained import score_sde
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pretrained")
SCORE_SDE_DIR = os.path.join(FIXTURES, "ncsnpp", "score_sde")
DDPMPP_DIR = os.path.join(FIXTURES, "ddpmpp_vp")
# name -> (process name, prediction, image shape, num_classes)
EXPECTED = {"ddpm": ("vp_discrete", "eps", (8, 8, 3), None), "ncsnpp": ("ve", "score", (16, 16, 3), None),
            "conditional": ("vp_discrete", "v", (8, 8, 3), 10)}


def _script():
    return load_script("make_pretrained_fixtures")


SCRIPT = _script()


def _outputs(folder):
    d = np.load(os.path.join(folder, "outputs.npz"))
    labels = None if d["labels"][0] < 0 else jnp.asarray(d["labels"])
    return d, labels


def _max_error(ours, theirs):
    """(max abs difference, the allowed 1e-5 max(1, max |theirs|))."""
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs))), 1e-5 * max(1.0, float(np.max(np.abs(theirs))))


@pytest.fixture(scope="module")
def loaded():
    """{name: (Pretrained, jitted apply)} of the committed diffusers fixtures."""
    out = {}
    for name in EXPECTED:
        m = pretrained.load(os.path.join(FIXTURES, name))
        out[name] = (m, jax.jit(m.apply))
    return out


def _same_tree(a, b):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    return [p for p, _ in flat_a] == [p for p, _ in flat_b] and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for (_, u), (_, v) in zip(flat_a, flat_b))


def _write_score_sde(tree, folder, name="checkpoint_3", **extra):
    from flax import serialization

    os.makedirs(folder, exist_ok=True)
    state = {"step": np.int64(3), "params_ema": tree, "rng": np.zeros(2, np.uint32), **extra}
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(state))
    return path


# ---- numbers against torch ----------------------------------------------------------------------------------------

def test_the_fixtures_are_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(FIXTURES) for f in files)
    assert total < 3_000_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_matches_the_recorded_torch_outputs(name, loaded):
    m, apply = loaded[name]
    process, prediction, image_shape, num_classes = EXPECTED[name]
    assert (m.process.name, m.prediction, m.image_shape, m.num_classes, m.layout) == (
        process, prediction, image_shape, num_classes, "diffusers")
    d, labels = _outputs(os.path.join(FIXTURES, name))
    with jax.enable_x64(False):
        out = apply(m.params, jnp.asarray(d["x"]), jnp.asarray(d["timesteps"]), labels)
    assert out.dtype == jnp.float32 and out.shape == d["out"].shape
    err, allowed = _max_error(out, d["out"])
    assert err <= allowed, f"{name}: max |ours - torch| = {err}"


def test_score_sde_checkpoint_matches_torch_with_score_sde_groups():
    """The score_sde file loads into the NCSN++ network with score_sde's group counts and reproduces torch's output
    of that network; the diffusers output differs (the fixture tells the two group rules apart)."""
    recorded = json.load(open(os.path.join(SCORE_SDE_DIR, "tree.json")))
    m = pretrained.load(os.path.join(SCORE_SDE_DIR, "checkpoint_1"), config=recorded["config"])
    assert (m.layout, m.process.name, m.prediction, m.image_shape) == ("score_sde", "ve", "score", (16, 16, 3))
    assert (m.process.sigma_min, m.process.sigma_max, m.process.t_min) == (0.01, 50.0, 1e-5)
    d, _ = _outputs(os.path.join(FIXTURES, "ncsnpp"))
    with jax.enable_x64(False):
        out = jax.jit(m.apply)(m.params, jnp.asarray(d["x"]), jnp.asarray(d["timesteps"]))
    err, allowed = _max_error(out, d["out_score_sde"])
    assert err <= allowed, f"max |ours - torch| = {err}"
    assert _max_error(d["out"], d["out_score_sde"])[0] > 1e3 * allowed


def test_score_sde_names_are_score_sdes(loaded):
    """The mapping's tree of names and shapes is the one score_sde's NCSNpp creates (recorded in tree.json)."""
    recorded = json.load(open(os.path.join(SCORE_SDE_DIR, "tree.json")))
    m, _ = loaded["ncsnpp"]
    config = score_sde.unet_config(score_sde.resolve_config(recorded["config"]))
    tree = score_sde.to_score_sde_tree(m.params, config)
    ours = {"/".join(str(getattr(k, "key", k)) for k in path): list(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    assert ours == recorded["params"]
    assert len(ours) == 225 and ours["GaussianFourierProjection_0/W"] == [16]


def test_score_sde_ddpmpp_matches_score_sdes_output():
    """DDPM++ (VP, no pyramids, positional embedding of 999 t) against score_sde's own NCSNpp output."""
    m = pretrained.load(os.path.join(DDPMPP_DIR, "checkpoint_1"), config=os.path.join(DDPMPP_DIR, "config.json"))
    assert (m.process.name, m.process.beta_min, m.process.beta_max, m.process.t_min) == ("vp_linear", 0.1, 20.0, 1e-3)
    assert (m.prediction, m.image_shape, m.config.up_block_types) == ("eps", (8, 8, 3),
                                                                      ("AttnUpBlock2D", "ResnetUpsampleBlock2D"))
    d = np.load(os.path.join(DDPMPP_DIR, "outputs.npz"))
    np.testing.assert_allclose(np.asarray(m.timestep(jnp.asarray(d["t"]))), d["timesteps"], rtol=1e-6)
    with jax.enable_x64(False):
        out = jax.jit(m.apply)(m.params, jnp.asarray(d["x"]), jnp.asarray(d["timesteps"]))
    err, allowed = _max_error(out, d["out"])
    assert err <= allowed, f"max |ours - score_sde| = {err}"


def test_score_sde_discrete_vp_table():
    """A discrete-time DDPM++ (vp/cifar10_ddpmpp) runs on score_sde's table, betas linspace(0.1, 20) / N."""
    m = pretrained.load(os.path.join(DDPMPP_DIR, "checkpoint_1"), config=os.path.join(DDPMPP_DIR, "config.json"),
                        continuous=False)
    table = np.cumprod(1.0 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
    n = np.array([0, 500, 999])
    assert m.process.name == "vp_discrete"
    np.testing.assert_allclose(np.asarray(m.process.alpha(jnp.asarray((n + 1) / 1000.0))) ** 2, table[n], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(m.timestep(jnp.asarray((n + 1) / 1000.0))), n, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SCRIPT.SPECS))
def test_matches_diffusers_live(name, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    folder = SCRIPT.save(name, str(tmp_path), seed=11)
    m = pretrained.load(folder)
    d, labels = _outputs(folder)
    with jax.enable_x64(False):
        apply = jax.jit(m.apply)
        out = apply(m.params, jnp.asarray(d["x"]), jnp.asarray(d["timesteps"]), labels)
        err, allowed = _max_error(out, d["out"])
        assert err <= allowed, f"{name}: max |ours - torch| = {err}"
        if name == "ncsnpp":  # the spec SCORE_SDE_CONFIG describes: also through score_sde's tree
            cfg = dict(SCRIPT.SCORE_SDE_CONFIG)
            tree = score_sde.to_score_sde_tree(m.params, score_sde.unet_config(score_sde.resolve_config(cfg)))
            s = pretrained.load(_write_score_sde(tree, str(tmp_path / "sde")), config=cfg)
            err, allowed = _max_error(jax.jit(s.apply)(s.params, jnp.asarray(d["x"]), jnp.asarray(d["timesteps"])),
                                      d["out_score_sde"])
            assert err <= allowed, f"{name} via score_sde: max |ours - torch| = {err}"


@pytest.mark.parametrize("schedule, extra", [
    ("linear", {}), ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)), ("squaredcos_cap_v2", {}),
    ("sigmoid", {}), ("laplace", {})])
def test_beta_tables_match_diffusers_live(schedule, extra):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from fastsamplers.models.pretrained.diffusers import alphas_cumprod

    theirs = diffusers.DDPMScheduler(beta_schedule=schedule, **extra).alphas_cumprod.numpy()
    ours = alphas_cumprod(dict(beta_schedule=schedule, **extra), "scheduler_config.json")
    assert np.max(np.abs(ours / theirs - 1.0)) < 2e-5  # diffusers' table is float32 products


# ---- framework time --------------------------------------------------------------------------------------------

def test_model_fn_is_apply_at_the_mapped_time(loaded):
    t = jnp.asarray([0.05, 0.3, 0.62, 1.0], jnp.float32)
    sigma = 0.01 * (50.0 / 0.01) ** np.asarray(t, np.float64)  # the ScoreSdeVeScheduler config's sigma(t)
    index = 1000.0 * np.asarray(t, np.float64) - 1.0  # DPM-Solver's discrete index of 1000 training steps
    for name, steps in (("ddpm", index), ("conditional", index), ("ncsnpp", sigma)):
        np.testing.assert_allclose(np.asarray(loaded[name][0].timestep(t)), steps, rtol=2e-6)
    m, apply = loaded["ddpm"]
    d, _ = _outputs(os.path.join(FIXTURES, "ddpm"))
    x = jnp.asarray(d["x"])
    with jax.enable_x64(False):
        ours = jax.jit(m.model_fn)(x, t, m.params)
        direct = apply(m.params, x, jnp.asarray(index, jnp.float32))
    err, allowed = _max_error(ours, np.asarray(direct))
    assert err <= allowed
    assert _max_error(direct, d["out"])[0] > 1e-2  # other times than the fixture's: a different output


def test_ddpm_process_is_the_scheduler_table(loaded):
    """alpha(t)^2 at t = (n + 1) / N is the scheduler's alphas_cumprod[n] (linear betas 1e-4 .. 0.02, N = 1000)."""
    m, _ = loaded["ddpm"]
    table = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    n = np.array([0, 10, 499, 999])
    np.testing.assert_allclose(np.asarray(m.process.alpha(jnp.asarray((n + 1) / 1000.0))) ** 2, table[n], rtol=1e-12)
    assert np.asarray(m.timestep(jnp.asarray((n + 1) / 1000.0))).tolist() == pytest.approx(n.tolist())


def test_samples_with_ddim(loaded):
    m, _ = loaded["ddpm"]
    with jax.enable_x64(False):
        x_init = m.process.prior(jax.random.PRNGKey(0), (2,) + m.image_shape, dtype=jnp.float32)
        ts = schedules.get_timesteps("uniform", m.process, num_steps=3)
        x, info = samplers.sample(m.model_fn, "ddim", m.process, x_init, ts, prediction=m.prediction, args=m.params)
    assert x.shape == x_init.shape and bool(jnp.all(jnp.isfinite(x)))
    assert int(info["nfe"]) == 3
    assert float(jnp.max(jnp.abs(x - x_init))) > 0.1


def test_null_label(loaded):
    """Labels are required unless the caller names a null label; model_fn with labels None uses it."""
    m, apply = loaded["conditional"]
    d, labels = _outputs(os.path.join(FIXTURES, "conditional"))
    x, t = jnp.asarray(d["x"]), jnp.asarray(d["timesteps"])
    with pytest.raises(ValueError, match="class-conditional"):
        m.apply(m.params, x, t)
    with pytest.raises(ValueError, match="null_label"):
        pretrained.load(os.path.join(FIXTURES, "conditional"), null_label=10)
    m9 = pretrained.load(os.path.join(FIXTURES, "conditional"), null_label=9)
    assert (m9.num_classes, m9.null_label) == (10, 9)
    with jax.enable_x64(False):
        unconditional = jax.jit(m9.model_fn)(x, 0.5, (m9.params, None))
        nines = apply(m.params, x, jnp.full((4,), 499.0, jnp.float32), jnp.full_like(labels, 9))
    err, allowed = _max_error(unconditional, np.asarray(nines))
    assert err <= allowed
    assert _max_error(nines, d["out"])[0] > 1e-2


def test_a_conditional_checkpoint_without_labels_is_one_sentence(loaded):
    """The parameters alone as args: a sentence saying to pass (params, labels), not the parameter tree."""
    m, _ = loaded["conditional"]
    with jax.enable_x64(False):
        x_init = m.process.prior(jax.random.PRNGKey(0), (2,) + m.image_shape, dtype=jnp.float32)
        ts = schedules.get_timesteps("uniform", m.process, num_steps=2)
        with pytest.raises(ValueError) as raised:
            samplers.sample(m.model_fn, "ddim", m.process, x_init, ts, prediction=m.prediction, args=m.params)
    message = str(raised.value).split("\n")[0]  # (jax may add a line about its traceback filtering)
    leaves = jax.tree.leaves(m.params)
    assert message == (
        f"model_fn(x, t, args) failed for x of shape (2, 8, 8, 3) (float32) and args a dict of {len(leaves)} arrays "
        f"({sum(leaf.size for leaf in leaves):,} numbers): the model is class-conditional (10 classes): pass "
        "args=(params, labels), labels of shape (batch,) in 0..9, not a dict")


def test_a_broken_config_json_names_the_file(tmp_path):
    root = _copy("conditional", tmp_path)
    (root / "config.json").write_text('{"_class_name": "UNet2DModel",')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON") as raised:
        pretrained.load(str(root))
    assert str(root / "config.json") in str(raised.value)
    recorded = json.load(open(os.path.join(SCORE_SDE_DIR, "tree.json")))
    (tmp_path / "score_sde.json").write_text(json.dumps(recorded["config"])[:-5])
    with pytest.raises(ValueError, match="score_sde.json is not valid JSON"):
        pretrained.load(os.path.join(SCORE_SDE_DIR, "checkpoint_1"), config=str(tmp_path / "score_sde.json"))


# ---- errors, before any compute --------------------------------------------------------------------------------

def _copy(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), target)
    return target


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pretrained.load(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        pretrained.load(str(tmp_path), layout="diffusers")
    root = _copy("ddpm", tmp_path)
    os.remove(root / "scheduler" / "scheduler_config.json")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        pretrained.load(str(root))
    scheduler = os.path.join(FIXTURES, "ddpm", "scheduler", "scheduler_config.json")
    assert pretrained.load(str(root), scheduler_config=scheduler).process.name == "vp_discrete"
    os.rename(root / "unet" / "diffusion_pytorch_model.safetensors",
              root / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(FileNotFoundError, match="variant=") as raised:
        pretrained.load(str(root / "unet"), scheduler_config=scheduler)
    assert "diffusion_pytorch_model.safetensors" in str(raised.value)
    assert pretrained.load(str(root / "unet"), scheduler_config=scheduler, variant="fp16").image_shape == (8, 8, 3)


def test_pickled_only_folder_is_refused(tmp_path):
    root = _copy("ddpm", tmp_path)
    os.remove(root / "unet" / "diffusion_pytorch_model.safetensors")
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(ValueError, match="never unpickles") as error:
        pretrained.load(str(root))
    assert "scripts/convert_to_safetensors.py" in str(error.value) and "diffusion_pytorch_model.bin" in str(error.value)


@pytest.mark.parametrize("changes, error, words", [
    (dict(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D"]), NotImplementedError,
     ["down_block_types", "CrossAttnDownBlock2D", "SkipDownBlock2D"]),
    (dict(up_block_types=["AttnUpBlock2D", "UpDecoderBlock2D"]), NotImplementedError, ["up_block_types"]),
    (dict(time_embedding_type="learned"), NotImplementedError, ["time_embedding_type"]),
    (dict(class_embed_type="timestep"), NotImplementedError, ["class_embed_type"]),
    (dict(resnet_time_scale_shift="spatial"), NotImplementedError, ["resnet_time_scale_shift", "scale_shift"]),
    (dict(act_fn="tanh"), NotImplementedError, ["act_fn"]),
    (dict(_class_name="UNet2DConditionModel"), NotImplementedError, ["_class_name"]),
    (dict(cross_attention_dim=768), ValueError, ["cross_attention_dim"]),
    (dict(attention_head_dim=5), ValueError, ["attention_head_dim"]),
])
def test_unsupported_config(changes, error, words, tmp_path):
    root = _copy("ddpm", tmp_path)
    _edit_json(root / "unet" / "config.json", **changes)
    with pytest.raises(error) as raised:
        pretrained.load(str(root))
    assert all(w in str(raised.value) for w in words + ["config.json"]), str(raised.value)


@pytest.mark.parametrize("changes, error, word", [
    (dict(beta_schedule="exotic"), NotImplementedError, "beta_schedule"),
    (dict(prediction_type="flow"), NotImplementedError, "prediction_type"),
    (dict(_class_name="FlowMatchEulerDiscreteScheduler", beta_schedule=None), NotImplementedError, "scheduler"),
    (dict(rescale_betas_zero_snr=True), NotImplementedError, "rescale_betas_zero_snr"),
])
def test_unsupported_scheduler(changes, error, word, tmp_path):
    root = _copy("ddpm", tmp_path)
    path = root / "scheduler" / "scheduler_config.json"
    config = {k: v for k, v in {**json.loads(path.read_text()), **changes}.items() if v is not None}
    path.write_text(json.dumps(config))
    with pytest.raises(error, match=word) as raised:
        pretrained.load(str(root))
    assert "scheduler_config.json" in str(raised.value)


def _edit_weights(root, edit):
    from safetensors.numpy import load_file, save_file

    path = str(root / "unet" / "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_wrong_shape_missing_and_extra_keys(tmp_path):
    key = "down_blocks.1.attentions.0.to_q.weight"
    root = _copy("ddpm", tmp_path)
    _edit_weights(root, lambda s: s.update({key: s[key][:, :16]}))
    with pytest.raises(ValueError, match="expected") as raised:
        pretrained.load(str(root))
    assert key in str(raised.value) and "(24, 16)" in str(raised.value) and "(24, 24)" in str(raised.value)

    root = _copy("ddpm", tmp_path / "missing")
    _edit_weights(root, lambda s: s.pop("mid_block.resnets.1.conv2.bias"))
    with pytest.raises(ValueError, match="missing 1 key") as raised:
        pretrained.load(str(root))
    assert "mid_block.resnets.1.conv2.bias" in str(raised.value)

    root = _copy("ddpm", tmp_path / "extra")
    _edit_weights(root, lambda s: s.update({"up_blocks.9.surprise.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="unexpected") as raised:
        pretrained.load(str(root))
    assert "up_blocks.9.surprise.weight" in str(raised.value)


def test_legacy_attention_names_load(tmp_path, loaded):
    """Pre-0.10 names (query, key, value, proj_attn) are renamed as diffusers renames them."""
    root = _copy("ddpm", tmp_path)

    def rename(state):
        for key in [k for k in state if ".attentions." in k]:
            for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
                if f".{new}." in key:
                    state[key.replace(f".{new}.", f".{old}.")] = state.pop(key)

    _edit_weights(root, rename)
    m = pretrained.load(str(root))
    reference, _ = loaded["ddpm"]
    assert _same_tree(m.params, reference.params)


def test_score_sde_errors(tmp_path):
    recorded = json.load(open(os.path.join(SCORE_SDE_DIR, "tree.json")))
    checkpoint = os.path.join(SCORE_SDE_DIR, "checkpoint_1")
    with pytest.raises(NotImplementedError, match="sde='subvpsde'"):
        pretrained.load(checkpoint, config="subvp/cifar10_ddpmpp_continuous")
    with pytest.raises(NotImplementedError, match="progressive='none' with progressive_input='residual'"):
        pretrained.load(checkpoint, config="ncsnpp_continuous_ve")  # alias of ve/cifar10_ncsnpp_continuous
    with pytest.raises(NotImplementedError, match="continuous=False"):
        pretrained.load(checkpoint, config=recorded["config"], continuous=False)
    with pytest.raises(NotImplementedError, match="fir=True"):  # DDPM++ (no pyramids) resamples without FIR
        pretrained.load(checkpoint, config="vp/cifar10_ddpmpp_continuous", fir=True)
    with pytest.raises(NotImplementedError, match="progressive_combine"):
        pretrained.load(checkpoint, config=recorded["config"], progressive_combine="cat")
    with pytest.raises(ValueError, match="image_size is required"):
        pretrained.load(checkpoint, config={k: v for k, v in recorded["config"].items() if k != "image_size"})
    with pytest.raises(ValueError, match="sigma_max is required"):
        pretrained.load(checkpoint, config={k: v for k, v in recorded["config"].items() if k != "sigma_max"})
    with pytest.raises(ValueError, match="unknown score_sde config 'nope'"):
        pretrained.load(checkpoint, config="nope")
    with pytest.raises(ValueError, match="unknown score_sde config key 'widths'"):
        pretrained.load(checkpoint, config=recorded["config"], widths=3)
    with pytest.raises(FileNotFoundError, match="checkpoint_9"):
        pretrained.load(os.path.join(SCORE_SDE_DIR, "checkpoint_9"), layout="score_sde", config=recorded["config"])
    with pytest.raises(ValueError, match="expected") as raised:  # nf=32 instead of 16: every layer is wider
        pretrained.load(checkpoint, config={**recorded["config"], "nf": 32})
    assert "'AttnBlockpp_0/GroupNorm_0/bias' has shape (32,), expected (64,)" in str(raised.value)
    with pytest.raises(ValueError, match="no 'params'"):
        pretrained.load(checkpoint, config=recorded["config"], params="params")
    (tmp_path / "checkpoint_2").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a flax msgpack"):
        pretrained.load(str(tmp_path), config=recorded["config"])


def test_score_sde_folder_params_and_missing_key(tmp_path, loaded):
    """A folder reads its highest checkpoint_N; params="params" reads the optimizer's target; a missing parameter
    is named."""
    recorded = json.load(open(os.path.join(SCORE_SDE_DIR, "tree.json")))
    from flax import serialization

    with open(os.path.join(SCORE_SDE_DIR, "checkpoint_1"), "rb") as f:
        tree = serialization.msgpack_restore(f.read())["params_ema"]
    doubled = jax.tree.map(lambda a: np.asarray(a, np.float32) * 2, tree)
    _write_score_sde(tree, str(tmp_path), "checkpoint_2")
    _write_score_sde(doubled, str(tmp_path), "checkpoint_10", optimizer={"target": tree})
    m = pretrained.load(str(tmp_path), config=recorded["config"])
    assert m.source.endswith("checkpoint_10")
    assert float(m.params["conv_in"]["kernel"][0, 0, 0, 0]) == 2 * float(tree["Conv_0"]["kernel"][0, 0, 0, 0])
    p = pretrained.load(str(tmp_path), config=recorded["config"], params="params")
    reference, _ = loaded["ncsnpp"]
    assert _same_tree(p.params, reference.params)
    del tree["AttnBlockpp_1"]["NIN_2"]
    with pytest.raises(ValueError, match="AttnBlockpp_1/NIN_2/W"):
        pretrained.load(_write_score_sde(tree, str(tmp_path / "broken")), config=recorded["config"])


def test_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="valid layouts"):
        pretrained.load(os.path.join(FIXTURES, "ddpm"), layout="onnx")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="layout"):
        pretrained.load(str(tmp_path / "weights.bin"))


def test_convert_to_safetensors_live(tmp_path):
    torch = pytest.importorskip("torch")
    convert = load_script("convert_to_safetensors")
    from safetensors.numpy import load_file

    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "model.ckpt")
    convert.main([str(tmp_path / "model.ckpt"), "--key", "state_dict"])
    out = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(out) == ["a.weight", "b"] and out["a.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
