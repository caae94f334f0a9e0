"""guided-diffusion (ADM) checkpoints and classifier guidance against openai/guided-diffusion's own code.

The committed fixtures (tests/fixtures/guided_diffusion/, written by scripts/make_guided_diffusion_fixtures.py from a
guided-diffusion checkout) are tiny random-weight networks in the converted layout with the reference's outputs:
"adm_new" (class-conditional, learned sigma, new attention order, scale-shift, resampling ResBlocks), "adm_legacy"
(legacy attention order with num_heads / num_heads_upsample, conv resampling, cosine betas) and "classifier" (the
EncoderUNetModel with its attention pool: logits and the input gradient of log softmax[y]), and ddim_guided.npz:
guided-diffusion's classifier-guided `ddim_sample_loop` (ddim5, eta 0, clip_denoised=False) on "adm_new" and
"classifier". Where torch imports and GUIDED_DIFFUSION_REPO names a checkout, every spec of the script (live-only ones
included) is rebuilt with fresh weights and checked the same way.

Tolerances: a network equals its reference to 1e-5 relative (max |ours - ref| / max |ref|), both in float32 (measured:
7e-7 to 1.7e-6, the gradient the largest). The DDIM trajectory is float32 arithmetic on both sides through 5 steps:
each step is a few float32 operations on the network's outputs (x0_hat = (x - sigma eps) / alpha amplifies eps's
rounding by sigma / alpha <= 21 at step 800, and alpha_s / alpha_t scales x up as much), and the networks agree to
~1e-6 relative, so every state agrees to 1e-5 of its own scale (measured: 6e-7 to 7e-7).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers.models import pretrained
from fastsamplers.models.pretrained import guided_diffusion as gd
from fastsamplers.models.pretrained.adm import ADMConfig, ADMEncoder, ADMUNet
from fastsamplers.models.pretrained.diffusers import expected_params, torch_shape
from script_loader import load_script, reference_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "guided_diffusion")
TOLERANCE = 1e-5


SCRIPT = load_script("make_guided_diffusion_fixtures")
CONVERTER = load_script("convert_checkpoint")


def _rel_error(ours, theirs):
    theirs = np.asarray(theirs, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def _check_network(folder, name=""):
    """Load a converted folder and compare with its outputs.npz (float32): the output, and a classifier's gradient."""
    m = pretrained.load(folder)
    d = np.load(os.path.join(folder, "outputs.npz"))
    labels = None if d["labels"][0] < 0 else jnp.asarray(d["labels"])
    with jax.enable_x64(False):
        x, ts = jnp.asarray(d["x"]), jnp.asarray(d["timesteps"])
        if isinstance(m, pretrained.PretrainedClassifier):
            def log_prob(x_in):  # what guided-diffusion's cond_fn differentiates (classifier_sample.py:54-61)
                logits = m.apply(m.params, x_in, ts)
                return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)), logits

            grad, out = jax.jit(jax.grad(log_prob, has_aux=True))(x)
            assert grad.dtype == jnp.float32 and _rel_error(grad, d["grad"]) <= TOLERANCE, name
        else:
            out = jax.jit(m.apply)(m.params, x, ts, labels)
    assert out.dtype == jnp.float32 and out.shape == d["out"].shape
    err = _rel_error(out, d["out"])
    assert err <= TOLERANCE, f"{name}: max |ours - guided-diffusion| / max |theirs| = {err}"
    return m


@pytest.fixture(scope="module")
def models():
    return {name: _check_network(os.path.join(FIXTURES, name), name)
            for name, spec in SCRIPT.SPECS.items() if spec["fixture"]}


# ---- numbers against guided-diffusion -----------------------------------------------------------------------------

def test_the_fixtures_are_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(FIXTURES) for f in files)
    assert total < 3_000_000


def test_networks_match_the_recorded_reference(models):
    """The three networks (and the classifier's input gradient) equal guided-diffusion's, checked as they load."""
    m, legacy, c = models["adm_new"], models["adm_legacy"], models["classifier"]
    assert (m.layout, m.process.name, m.prediction, m.image_shape, m.num_classes) == (
        "guided_diffusion", "vp_discrete", "eps", (8, 8, 3), 1000)
    assert (m.config.out_channels, legacy.config.out_channels, legacy.num_classes) == (6, 3, None)
    assert (c.layout, c.num_classes, c.image_shape, c.config.pool) == ("guided_diffusion", 1000, (8, 8, 3),
                                                                      "attention")


def test_model_fn_is_the_eps_half_at_the_mapped_step(models):
    """model_fn(x, t) = apply(x, 1000 t - 1)[..., :3] for t scalar or (B,); labels through args=(params, labels)."""
    m = models["adm_new"]
    d = np.load(os.path.join(FIXTURES, "adm_new", "outputs.npz"))
    t = (d["timesteps"] + 1.0) / 1000.0
    np.testing.assert_allclose(np.asarray(m.timestep(jnp.asarray(t))), d["timesteps"], atol=1e-6)
    with jax.enable_x64(False):
        eps = jax.jit(m.model_fn)(jnp.asarray(d["x"]), jnp.asarray(t, jnp.float32), (m.params, d["labels"]))
        assert eps.shape == (4, 8, 8, 3)
        assert _rel_error(eps, d["out"][..., :3]) <= TOLERANCE
        one = m.model_fn(jnp.asarray(d["x"][:1]), 0.5, (m.params, d["labels"][:1]))
        np.testing.assert_allclose(one, m.apply(m.params, jnp.asarray(d["x"][:1]), 499.0, d["labels"][:1])[..., :3],
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"class-conditional \(1000 classes\): pass args=\(params, labels\)"):
        m.model_fn(jnp.asarray(d["x"]), 0.5, m.params)


def test_beta_tables_are_guided_diffusions(models):
    """linear and cosine: get_named_beta_schedule's alphas_cumprod, exactly (both float64 numpy)."""
    r = np.load(os.path.join(FIXTURES, "ddim_guided.npz"))
    np.testing.assert_array_equal(np.asarray(models["adm_new"].process.alphas_cumprod), r["alphas_cumprod_linear"])
    np.testing.assert_array_equal(np.asarray(models["adm_legacy"].process.alphas_cumprod), r["alphas_cumprod_cosine"])


def test_classifier_guided_ddim_equals_guided_diffusions(models):
    """Our ddim on the classifier-guided model equals guided-diffusion's ddim_sample_loop with cond_fn, state by
    state: its respaced steps n = 800, ..., 0 are our t = (n + 1) / 1000, then t = 0 (alpha_bar_prev = 1)."""
    m, c = models["adm_new"], models["classifier"]
    r = np.load(os.path.join(FIXTURES, "ddim_guided.npz"))
    np.testing.assert_array_equal(r["timesteps"], [800, 600, 400, 200, 0])
    ts = np.r_[(r["timesteps"] + 1.0) / 1000.0, 0.0].astype(np.float32)
    labels = jnp.asarray(r["labels"])
    with jax.enable_x64(False):
        guided = samplers.classifier_guided(m.model_fn, c.classifier_fn, float(r["scale"]), process=m.process)
        _, info = samplers.sample(guided, "ddim", m.process, jnp.asarray(r["x_init"]), ts, prediction=m.prediction,
                                  args=((m.params, labels), (c.params, labels)), save_trajectory=True)
    states = np.asarray(info["trajectory"])[1:]
    errors = [_rel_error(ours, theirs) for ours, theirs in zip(states, r["states"])]
    assert max(errors) <= TOLERANCE, errors
    assert _rel_error(r["unguided_final"], r["states"][-1]) > 1e3 * TOLERANCE  # the guidance is felt


def test_learned_log_variance_is_guided_diffusions(models):
    """The ddpm solver's learned log variance (from variance_model_fn's v channels, on the step's respaced beta and
    beta_tilde) equals p_mean_variance's on the ddim5 respacing (step 400 -> 200). guided-diffusion's last step
    (0 -> data, its posterior variance clipped to the next step's) is a point mass at x0_hat in its loop, the
    driver's denoise_to_zero here."""
    m = models["adm_new"]
    r = np.load(os.path.join(FIXTURES, "ddim_guided.npz"))
    t = (r["timesteps"] + 1.0) / 1000.0
    with jax.enable_x64(False):
        out = jax.jit(m.variance_model_fn)(jnp.asarray(r["x_init"]), t[2], (m.params, r["labels"]))
        coef = samplers.get_solver("ddpm", variance="learned").coefficients(m.process, jnp.asarray(t[2:4]))
        frac = (out[..., 3:] + 1.0) / 2.0
        ours = frac * coef.log_large[0] + (1.0 - frac) * coef.log_small[0]
        assert _rel_error(ours, r["log_variance_i2"]) <= TOLERANCE


class _Replayed:
    """A noise source replaying the reference's recorded draws: step i gets draws[i]."""

    def __init__(self, draws):
        self.draws = draws

    def normal(self, i, s, t, like, stream=0):
        return self.draws[i].astype(like.dtype)


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_ddpm_with_the_learned_variance_is_guided_diffusions_p_sample_loop(models, clip):
    """The ddpm solver (variance "learned", the respaced steps 999, 749, 500, 250, 0, then the step to data) on
    adm_new's variance_model_fn, fed p_sample's recorded noise, equals p_sample_loop_progressive's states, with and
    without clip_denoised. float32 on both sides as in the DDIM case above (tolerance 1e-5 of the trajectory's
    largest value; measured 4e-6)."""
    m = models["adm_new"]
    r = np.load(os.path.join(FIXTURES, "ddpm_learned.npz"))
    ts = np.r_[(r["timesteps"] + 1.0) / 1000.0, 0.0].astype(np.float32)
    solver = samplers.get_solver("ddpm", variance="learned", clip_x0=clip)
    labels = jnp.asarray(r["labels"])
    with jax.enable_x64(False):
        def model(x, t):
            return m.variance_model_fn(x, t, (m.params, labels))

        run = jax.jit(lambda x, draws: solver.integrate(model, m.process, x, jnp.asarray(ts), save_trajectory=True,
                                                        noise=_Replayed(draws))[2])
        states = np.asarray(run(jnp.asarray(r["x_init"]), jnp.asarray(r["noises"])))[1:]
    recorded = r["states_clipped" if clip else "states"]
    # against the trajectory's scale: the clipped last state (|x| <= 1) inherits the absolute error of the state
    # before it, up to ~5 in magnitude
    errors = np.abs(states - recorded).max(axis=(1, 2, 3, 4)) / np.abs(recorded).max()
    assert errors.max() <= TOLERANCE, errors


# ---- the converter's presets and the folder's checks ----------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(CONVERTER.GUIDED_DIFFUSION_PRESETS))
def test_every_preset_makes_a_config_the_loader_accepts(preset):
    config = CONVERTER.guided_diffusion_config(preset, None)
    process, prediction = gd.diffusion_process(config["diffusion_flags"], preset)
    assert (process.name, len(process.alphas_cumprod), prediction) == ("vp_discrete", 1000, "eps")
    if "classifier_flags" in config:
        arch = gd.classifier_config(config["classifier_flags"], preset)
        assert (arch.model_channels, arch.num_head_channels, arch.pool, arch.out_channels) == (128, 64, "attention",
                                                                                               1000)
        assert arch.num_res_blocks == (4 if preset == "64x64_classifier" else 2)
    else:
        arch = gd.model_config(config["model_flags"], preset)
        assert arch.out_channels == 6 and arch.resblock_updown and arch.use_scale_shift_norm
        assert arch.attention_resolutions == tuple(arch.image_size // r for r in (32, 16, 8))


@pytest.mark.slow  # 12 s of CPU (every released architecture built), over CI's budget
def test_released_architectures_have_guided_diffusions_parameters():
    """For every released checkpoint's preset, the parameter names and shapes the loader expects are those of the
    network guided-diffusion's script_util builds from the same flags (released_shapes.json: their count and hash),
    so a converted release file loads (64x64_diffusion: 295.9M parameters, 512x512_diffusion: 559.0M)."""
    recorded = json.load(open(os.path.join(FIXTURES, "released_shapes.json")))
    assert sorted(recorded) == sorted(CONVERTER.GUIDED_DIFFUSION_PRESETS)
    for preset, facts in recorded.items():
        config = CONVERTER.guided_diffusion_config(preset, None)
        if "classifier_flags" in config:
            arch, network = gd.classifier_config(config["classifier_flags"], preset), ADMEncoder
        else:
            arch, network = gd.model_config(config["model_flags"], preset), ADMUNet
        expected = expected_params(network(arch), (arch.image_size, arch.image_size, 3))
        shapes = {gd.torch_name(p): torch_shape(p, s) for p, s in expected.items()}
        assert sum(int(np.prod(s)) for s in shapes.values()) == facts["parameters"], preset
        assert SCRIPT.shape_digest(shapes) == facts["sha256"], preset


def test_released_architectures():
    """The REFERENCES table: widths, heads, attention order, channel_mult (0.5 at 512), schedules."""
    def arch(preset):
        config = CONVERTER.guided_diffusion_config(preset, None)
        return gd.model_config(config["model_flags"], preset), config["diffusion_flags"]["noise_schedule"]

    a64, schedule = arch("64x64_diffusion")
    assert (a64.model_channels, a64.num_res_blocks, a64.heads(192, a64.num_heads), a64.use_new_attention_order,
            a64.num_classes, schedule) == (192, 3, 3, True, 1000, "cosine")
    a128, schedule = arch("128x128_diffusion")
    assert (a128.model_channels, a128.heads(768, a128.num_heads), a128.use_new_attention_order, schedule) == (
        256, 4, False, "linear")
    a512, _ = arch("512x512_diffusion")
    assert a512.channel_mult == (0.5, 1, 1, 2, 2, 4, 4) and a512.channel(0.5) == 128
    assert arch("256x256_diffusion_uncond")[0].num_classes is None


def test_detect_layout_reads_config_json(tmp_path):
    assert pretrained.detect_layout(os.path.join(FIXTURES, "classifier")) == "guided_diffusion"
    folder = tmp_path / "x"
    shutil.copytree(os.path.join(FIXTURES, "adm_legacy"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, layout="onnx")))
    with pytest.raises(ValueError, match=r"config.json: unknown layout 'onnx'; valid layouts: \[.*'guided_diffusion'"):
        pretrained.load(str(folder))


def _edited(tmp_path, name, **changes):
    """A copy of fixture `name` with config.json's sections updated (a None value deletes the key)."""
    folder = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), folder)
    config = json.loads((folder / "config.json").read_text())
    for section, values in changes.items():
        if values is None:
            config.pop(section)
        elif isinstance(values, dict):
            config[section] = {k: v for k, v in {**config.get(section, {}), **values}.items() if v is not None}
        else:
            config[section] = values
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("name, changes, error, words", [
    ("adm_legacy", dict(model_flags=dict(num_chanels=32)), ValueError,
     r"unknown model flag 'num_chanels'; valid: \['image_size', 'num_channels'"),
    ("adm_legacy", dict(model_flags=dict(num_res_blocks=None)), ValueError, "model_flags lacks num_res_blocks"),
    ("adm_legacy", dict(model_flags=dict(channel_mult="1,x")), ValueError, "comma-separated integers"),
    ("adm_legacy", dict(model_flags=dict(channel_mult="", image_size=32)), ValueError, "no default for image_size 32"),
    ("adm_legacy", dict(model_flags=dict(num_heads=3)), ValueError, "do not split into attention heads"),
    ("adm_legacy", dict(model_flags=dict(num_channels=16)), ValueError, "GroupNorm32"),
    ("adm_legacy", dict(diffusion_flags=dict(noise_schedule="sqrt")), ValueError,
     r"unknown noise_schedule 'sqrt'; valid: \['linear', 'cosine'\]"),
    ("adm_legacy", dict(diffusion_flags=dict(steps=500, rescale_timesteps=True)), NotImplementedError,
     "rescale_timesteps"),
    ("adm_new", dict(diffusion_flags=dict(learn_sigma=False)), ValueError, "learn_sigma differs"),
    ("adm_new", dict(model_flags=dict(class_cond=False)), ValueError, r"unexpected key\(s\).*'label_emb.weight'"),
    ("adm_new", dict(model_flags=dict(learn_sigma=False), diffusion_flags=dict(learn_sigma=False)), ValueError,
     r"'out.2.bias' has shape \(6,\), expected \(3,\)"),
    ("adm_new", dict(diffusion_flags=None), ValueError, "holds \"diffusion_flags\" and exactly one of"),
    ("adm_new", dict(classifier_flags={}), ValueError, "exactly one of"),
    ("classifier", dict(classifier_flags=dict(classifier_pool="spatial")), NotImplementedError,
     r"pool='spatial' is not built here .* supported: \['attention', 'adaptive'\]"),
    ("classifier", dict(classifier_flags=dict(classifier_pool="max")), ValueError,
     r"unknown classifier pool 'max'; valid: \['attention', 'adaptive'\]"),
    ("classifier", dict(classifier_flags=dict(classifier_width=None)), ValueError,
     "classifier_flags lacks classifier_width"),
])
def test_bad_folders_are_one_sentence(name, changes, error, words, tmp_path):
    with pytest.raises(error, match=words) as info:
        pretrained.load(_edited(tmp_path, name, **changes))
    message = str(info.value)
    assert "\n" not in message and ("config.json" in message or "model.safetensors" in message)


def test_diffusion_steps_is_the_scripts_name_for_steps():
    """diffusion_defaults()'s key (what script_util's callers pass) works as create_gaussian_diffusion's `steps`."""
    flags = dict(SCRIPT.SPECS["adm_legacy"]["diffusion_flags"])
    flags["diffusion_steps"] = flags.pop("steps")
    process, _ = gd.diffusion_process(flags, "config.json")
    assert len(process.alphas_cumprod) == 1000
    with pytest.raises(ValueError, match="steps=500 and diffusion_steps=1000; give one"):
        gd.diffusion_process(dict(flags, steps=500), "config.json")


def test_missing_weights_and_foreign_config(tmp_path):
    folder = _edited(tmp_path, "adm_legacy")
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="missing weights file .*model.safetensors"):
        pretrained.load(folder)
    with pytest.raises(ValueError, match="layout None is not 'guided_diffusion'; convert the .pt"):
        gd.load(os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm", "unet"))


def test_config_errors_before_compute():
    with pytest.raises(ValueError, match="needs num_head_channels"):
        ADMConfig(image_size=8, model_channels=32, out_channels=10, num_res_blocks=1, attention_resolutions=(),
                  channel_mult=(1,), pool="attention")
    with pytest.raises(ValueError, match="takes no class labels"):
        ADMConfig(image_size=8, model_channels=32, out_channels=10, num_res_blocks=1, attention_resolutions=(),
                  channel_mult=(1,), pool="adaptive", num_classes=10)


def test_converter_refuses_bad_options():
    with pytest.raises(SystemExit, match="valid presets: .*'64x64_classifier'"):
        CONVERTER.guided_diffusion_config("64x64", None)
    with pytest.raises(SystemExit, match="--preset .* or --flags"):
        CONVERTER.guided_diffusion_config(None, None)
    with pytest.raises(SystemExit, match="keys among"):
        CONVERTER.guided_diffusion_config(None, json.dumps({"flags": {}}))
    config = CONVERTER.guided_diffusion_config("128x128_diffusion", json.dumps({"model_flags": {"use_fp16": False}}))
    assert config["model_flags"]["use_fp16"] is False and config["model_flags"]["num_heads"] == 4


# ---- live: fresh networks from guided-diffusion's code -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPT.SPECS))
def test_matches_guided_diffusion_live(name, tmp_path):
    repo = reference_checkout("GUIDED_DIFFUSION_REPO", "guided_diffusion")
    SCRIPT.write_network(name, repo, str(tmp_path), seed=11)
    _check_network(str(tmp_path / name), name)
