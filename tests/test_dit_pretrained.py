"""Latent DiT / SiT on published-layout weights (`models.pretrained.latent`, `models.pretrained.vae`) against the
reference code, on the tiny random-weight fixtures of scripts/make_dit_fixtures.py (tests/fixtures/dit):

- the "dit" and "sit" layouts (converted from DiT's and SiT's own networks' state dicts by
  scripts/convert_checkpoint.py) equal DiT.forward and SiT.forward, and the "diffusers_dit" layout (a DiTPipeline
  root) equals DiTTransformer2DModel, each to 1e-5 of the output's scale (max |ours - ref| / max |ref|) in float32;
- the VAE decoder equals AutoencoderKL.decode; our DDIM with `samplers.guided` on the pipeline's timesteps equals
  DiTPipeline's loop (guidance 4 on all four channels), its latents and its decoded images;
- SiT's velocity in the framework's time; DiT's channel-masked guidance; bad folders; and bottleneck sampling on the
  latent DiT: one stage is plain sampling, bitwise, and the network runs on a smaller latent grid.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.models import pretrained
from fastsamplers.models.dit import sincos_2d
from fastsamplers.samplers.bottleneck import Stage, bottleneck_sample

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dit")
TOLERANCE = 1e-5


def _relative(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def models():
    return {name: pretrained.load(os.path.join(FIXTURES, name)) for name in ("dit", "sit", "pipeline")}


def _outputs(name):
    return np.load(os.path.join(FIXTURES, name, "outputs.npz"))


@pytest.mark.parametrize("name, layout", [("dit", "dit"), ("sit", "sit"), ("pipeline", "diffusers_dit")])
def test_network_equals_the_reference(models, name, layout):
    m, d = models[name], _outputs(name)
    assert m.layout == layout and pretrained.detect_layout(os.path.join(FIXTURES, name)) == layout
    with jax.enable_x64(False):
        out = jax.jit(m.apply)(m.params, jnp.asarray(d["x"]), jnp.asarray(d["t"]), jnp.asarray(d["y"]))
    assert out.shape == d["out"].shape
    assert _relative(out, d["out"]) <= TOLERANCE


def test_loaded_attributes(models):
    dit, sit, pipe = models["dit"], models["sit"], models["pipeline"]
    assert (dit.latent_shape, dit.image_shape, dit.num_classes, dit.null_label) == ((8, 8, 4), (64, 64, 3), 5, 5)
    assert dit.decode is None and dit.prediction == "eps" and dit.process.name == "vp_discrete"
    assert dit.guidance_mask == sit.guidance_mask == (True, True, True, False) and pipe.guidance_mask is None
    assert (sit.prediction, sit.process.name, sit.process.t_max) == ("velocity", "ot", 1.0)
    assert (pipe.latent_shape, pipe.image_shape, pipe.null_label) == ((8, 8, 4), (16, 16, 3), 1000)


def test_model_fn_is_the_eps_half_at_the_step_index(models):
    m, d = models["dit"], _outputs("dit")
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    with jax.enable_x64(False):
        eps = m.model_fn(x, (jnp.asarray(d["t"]) + 1.0) / 1000.0, (m.params, y))  # step n sits at t = (n + 1) / N
    assert eps.shape == x.shape
    assert _relative(eps, d["out"][..., :4]) <= TOLERANCE
    with jax.enable_x64(False):  # all 8 channels, [eps | v], for the ancestral sampler with the learned variance
        full = m.variance_model_fn(x, (jnp.asarray(d["t"]) + 1.0) / 1000.0, (m.params, y))
    assert _relative(full, d["out"]) <= TOLERANCE
    assert models["sit"].variance_model_fn is None  # SiT samples its velocity


def test_sit_velocity_in_our_time(models):
    """SiT's time t_SiT (1 = data) is our 1 - t, and its velocity is -dx/dt: model_fn(x, 1 - t_SiT) = -SiT(x, t_SiT)."""
    m, d = models["sit"], _outputs("sit")
    with jax.enable_x64(False):
        v = m.model_fn(jnp.asarray(d["x"]), 1.0 - jnp.asarray(d["t"]), (m.params, jnp.asarray(d["y"])))
    assert _relative(-v, d["out"]) <= TOLERANCE


def test_positions_are_dits_on_another_grid():
    """Column half first, integer positions on any grid (DiT's get_2d_sincos_pos_embed(64, 4))."""
    np.testing.assert_allclose(sincos_2d(4, 4, 64, columns_first=True), _outputs("dit")["pos_embed_4"], rtol=0,
                               atol=1e-7)


def test_vae_decode(models):
    m, d = models["pipeline"], _outputs("pipeline")
    with jax.enable_x64(False):
        images = m.decode(jnp.asarray(d["vae_z"]) * 0.18215)  # decode divides diffusion latents by the factor
    assert images.shape == d["vae_out"].shape == (2, 16, 16, 3)
    assert _relative(images, d["vae_out"]) <= TOLERANCE


def test_ddim_with_guidance_equals_the_dit_pipeline(models):
    """DiTPipeline (DDIM, 4 "leading" steps 750, 500, 250, 0, set_alpha_to_one; guidance 4 on all channels, null
    label 1000): step n is t = (n + 1) / N, the last step goes to t = 0."""
    m, d = models["pipeline"], _outputs("pipeline")
    np.testing.assert_array_equal(d["run_timesteps"], [750, 500, 250, 0])
    ts = np.r_[(d["run_timesteps"] + 1) / 1000.0, 0.0]
    labels = jnp.asarray(d["run_labels"])
    fn = samplers.guided(m.model_fn, 4.0, (m.params, jnp.full_like(labels, m.null_label)), channel_mask=m.guidance_mask)
    with jax.enable_x64(False):
        x, info = samplers.sample(fn, "ddim", m.process, jnp.asarray(d["run_x_init"]), jnp.asarray(ts, jnp.float32),
                                  prediction=m.prediction, args=(m.params, labels))
        images = jnp.clip(m.decode(x) / 2 + 0.5, 0.0, 1.0)
    assert int(info["nfe"]) == 4
    assert _relative(x, d["run_latents"]) <= TOLERANCE
    assert float(jnp.max(jnp.abs(images - d["run_images"]))) <= TOLERANCE


def test_channel_mask_guides_only_the_masked_channels(models):
    m, d = models["dit"], _outputs("dit")
    x, labels = jnp.asarray(d["x"]), jnp.asarray([0, 3, 1])
    null = jnp.full_like(labels, m.null_label)
    with jax.enable_x64(False):
        cond, uncond = (m.model_fn(x, 0.5, (m.params, y)) for y in (labels, null))
        masked = samplers.guided(m.model_fn, 1.5, (m.params, null), channel_mask=m.guidance_mask)(x, 0.5,
                                                                                                  (m.params, labels))
    # DiT's forward_with_cfg: channels 0-2 guided, channel 3 the conditional prediction.
    np.testing.assert_allclose(masked[..., :3], (uncond + 1.5 * (cond - uncond))[..., :3], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(masked[..., 3], cond[..., 3])
    with pytest.raises(ValueError, match="tuple of bools"):
        samplers.guided(m.model_fn, 1.5, (m.params, null), channel_mask=(1, 0))
    with pytest.raises(ValueError, match="channel_mask has 2 entries"):
        samplers.guided(m.model_fn, 1.5, (m.params, null), channel_mask=(True, False))(x, 0.5, (m.params, labels))


def test_one_stage_bottleneck_is_plain_sampling_and_smaller_grids_run(models):
    m = models["dit"]
    labels = jnp.asarray([0, 3])
    with jax.enable_x64(False):
        x_init = m.process.prior(jax.random.PRNGKey(0), (2,) + m.latent_shape, dtype=jnp.float32)
        x, info = bottleneck_sample(m.model_fn, [Stage(8, 3)], m.process, x_init, jax.random.PRNGKey(1),
                                    prediction=m.prediction, args=(m.params, labels))
        ts = schedules.get_timesteps("uniform", m.process, num_steps=3)
        ref, _ = samplers.sample(m.model_fn, "ddim", m.process, x_init, ts, prediction=m.prediction,
                                 args=(m.params, labels))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
        assert info["nfe"] == 3
        # Low, then full resolution: the sin-cos positions are recomputed for the 2x2 token grid of 4x4 latents.
        low, info = bottleneck_sample(m.model_fn, [Stage(4, 2), Stage(8, 2, strength=0.7)], m.process,
                                      x_init[:, ::2, ::2], jax.random.PRNGKey(1), prediction=m.prediction,
                                      args=(m.params, labels))
    assert low.shape == x_init.shape and bool(jnp.all(jnp.isfinite(low)))


def _copy(tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), folder)
    return folder


def test_bad_folders(tmp_path):
    folder = _copy(tmp_path, "dit")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": "DiT-Q/2"}))
    with pytest.raises(ValueError, match="unknown model preset 'DiT-Q/2'; valid: .*DiT-XL/2"):
        pretrained.load(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "model": "DiT-S/2"}))
    with pytest.raises(ValueError, match="pos_embed .* is not the 2-D sin-cos embedding"):
        pretrained.load(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "num_classes": 7}))
    with pytest.raises(ValueError, match="model.safetensors: parameter 'label_embed/embedding' has shape"):
        pretrained.load(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "vae": "xl"}))
    with pytest.raises(ValueError, match="vae='xl'; valid"):
        pretrained.load(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no such VAE folder"):
        pretrained.load(str(folder), vae=str(tmp_path / "nowhere"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing weights file"):
        pretrained.load(str(folder))

    pipe = _copy(tmp_path, "pipeline")
    transformer = json.loads((pipe / "transformer" / "config.json").read_text())
    (pipe / "transformer" / "config.json").write_text(json.dumps({**transformer, "norm_type": "ada_norm"}))
    with pytest.raises(NotImplementedError, match="norm_type='ada_norm' is not DiT's"):
        pretrained.load(str(pipe))
    (pipe / "transformer" / "config.json").write_text(json.dumps(transformer))
    (pipe / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing scheduler config"):
        pretrained.load(str(pipe))
