"""The FID protocol for published checkpoints (`experiments.runs.fid_protocol`): the smoke config end to end on the
committed ddpm fixture with the random-projection test feature, uint8 quantisation, resumption after a kill, the
reference formats, errors before compute, guidance on the conditional fixture, the Inception path (random weights),
and 4 simulated devices / 2 jax.distributed processes giving the one-device value."""

import copy
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers.models import pretrained
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.configs import fid_pretrained as fid_config
from fastsamplers.experiments.metrics import features, frechet
from fastsamplers.experiments.runs import fid_protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pretrained")
LEARNED_VP = os.path.join(ROOT, "experiments", "results", "learned_vp", "olss_nfe5.json")  # learned on vp_linear


def smoke_config(reference_path, **overrides):
    config = fid_config.get_config("smoke")
    config.reference = str(reference_path)
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def reference_images(tmp_path_factory):
    """32 uint8 8x8 RGB images (the model's shape) in an .npz under `images`."""
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("reference") / "images.npz"
    np.savez(path, images=images)
    return path, images


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, reference_images):
    workdir = str(tmp_path_factory.mktemp("smoke"))
    return fid_protocol.run(smoke_config(reference_images[0], keep_shards=True), workdir), workdir


def projection(images):
    """The random_projection feature in numpy float64 (the runner's matrix)."""
    size = int(np.prod(images.shape[1:]))
    matrix = np.random.default_rng(features.PROJECTION_SEED).standard_normal((size, 8)) / np.sqrt(size)
    return (images.reshape(images.shape[0], -1).astype(np.float64) / 127.5 - 1.0) @ matrix.astype(np.float32)


def test_quantise_is_round_clip():
    x = np.array([-1.5, -1.0, -0.9961, -0.9960, 0.0, 0.5, 0.9999, 1.0, 2.0, np.inf, -np.inf, np.nan])
    # (x + 1) * 127.5: 0, 0, 0.497 -> 0, 0.51 -> 1, 127.5 -> 128 (ties to even), 191.25 -> 191, 254.99 -> 255
    assert np.asarray(features.quantise(x)).tolist() == [0, 0, 0, 1, 128, 191, 255, 255, 255, 255, 0, 0]
    assert features.quantise(jnp.zeros((2, 3))).dtype == jnp.uint8


def test_smoke_run_records_its_provenance(smoke, reference_images):
    results, workdir = smoke
    assert results["metric"] == "fd_random_projection" and results["feature"]["kind"] == "random_projection"
    assert np.isfinite(results["value"]) and results["value"] > 0
    assert results["num_samples"] == 12 and results["num_nonfinite"] == 0
    assert results["nfe"] == {"budget": 2, "num_steps": 2, "per_sample": 2, "network_calls_per_sample": 2}
    assert results["solver"]["name"] == "ddim" and results["grid"]["name"] == "logsnr" and len(results["ts"]) == 3
    assert results["sharding"] == {"processes": 1, "devices_per_process": 1, "device_batch": 4, "shard_size": 4,
                                   "num_shards": 3}
    assert results["resumed_shards"] == 0 and results["sampled_this_run"] == 12 and results["samples_per_s"] > 0
    weights = os.path.join(FIXTURES, "ddpm", "unet", "diffusion_pytorch_model.safetensors")
    assert results["checkpoint"]["files"][weights] == hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert results["checkpoint"]["layout"] == "diffusers" and len(results["checkpoint"]["files"]) == 3
    assert results["reference"]["sha256"] == hashlib.sha256(open(reference_images[0], "rb").read()).hexdigest()
    assert results["reference"]["kind"] == "images" and results["reference"]["count"] == 32
    assert results["versions"]["jax"] == jax.__version__ and "seed" in results["seeds"]
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["value"] == results["value"] and on_disk["rows"][0]["metric"] == "fd_random_projection"
    assert sorted(os.listdir(os.path.join(workdir, "shards"))) == [f"shard_{i:06d}.npz" for i in range(3)]
    # The value is the Fréchet distance of the written statistics, and the reference's are numpy's of the images.
    samples = np.load(os.path.join(workdir, "sample_stats.npz"))
    ref = np.load(results["reference"]["cache"])
    np.testing.assert_allclose(ref["mu"], projection(reference_images[1]).mean(0), atol=1e-6)
    np.testing.assert_allclose(ref["sigma"], np.cov(projection(reference_images[1]), rowvar=False), atol=1e-6)
    assert results["value"] == pytest.approx(frechet.frechet_distance_from_moments(
        samples["mu"], samples["sigma"], ref["mu"], ref["sigma"]), rel=1e-12)


def test_shard_statistics_are_those_of_the_uint8_samples(smoke):
    """Shard 0's running statistics are those of the features of its saved uint8 samples (test_guidance_... checks
    that these are the quantised sampler outputs)."""
    results, workdir = smoke
    saved = np.load(os.path.join(workdir, "samples.npz"))["images"]
    assert saved.dtype == np.uint8 and saved.shape == (4, 8, 8, 3)
    assert 0 < np.mean((saved > 0) & (saved < 255))  # not only saturated pixels
    shard = np.load(os.path.join(workdir, "shards", "shard_000000.npz"))
    assert int(shard["count"]) == 4 and int(shard["num_nonfinite"]) == 0
    centred = projection(saved) - projection(saved).mean(0)
    np.testing.assert_allclose(shard["mean"], projection(saved).mean(0), atol=1e-5)
    np.testing.assert_allclose(shard["m2"], centred.T @ centred, atol=1e-5)


def test_killed_run_resumes_to_the_same_value(smoke, reference_images, tmp_path, monkeypatch):
    reference = reference_images[0]
    written = []
    original = fid_protocol.write_shard

    def write_then_die(*args):
        original(*args)
        written.append(args[1].index)
        if len(written) == 2:
            raise KeyboardInterrupt("killed after two shards")

    monkeypatch.setattr(fid_protocol, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        fid_protocol.run(smoke_config(reference, keep_shards=True), str(tmp_path))
    assert written == [0, 1] and not (tmp_path / "results.json").exists()
    monkeypatch.setattr(fid_protocol, "write_shard", original)
    results = fid_protocol.run(smoke_config(reference, keep_shards=True), str(tmp_path))
    assert results["resumed_shards"] == 2 and results["sampled_this_run"] == 4
    assert abs(results["value"] - smoke[0]["value"]) <= 1e-9
    # Fewer samples in the same workdir: the full shards are kept, the last one (8..10 now) is drawn again.
    fewer = fid_protocol.run(smoke_config(reference, keep_shards=True, num_samples=10), str(tmp_path))
    assert fewer["resumed_shards"] == 2 and fewer["sampled_this_run"] == 2
    fresh = fid_protocol.run(smoke_config(reference, num_samples=10), str(tmp_path / "fresh"))
    assert abs(fewer["value"] - fresh["value"]) <= 1e-9 and not os.listdir(tmp_path / "fresh" / "shards")
    # By default a finished run drops its shards; run again, it is scored from sample_stats.npz alone.
    back = fid_protocol.run(smoke_config(reference), str(tmp_path))
    assert back["sampled_this_run"] == 4 and abs(back["value"] - smoke[0]["value"]) <= 1e-9
    assert not os.listdir(tmp_path / "shards") and int(np.load(tmp_path / "sample_stats.npz")["count"]) == 12
    again = fid_protocol.run(smoke_config(reference), str(tmp_path))
    assert again["reused_final_statistics"] and again["resumed_shards"] == 3 and again["sampled_this_run"] == 0
    assert again["value"] == back["value"]


def test_reference_formats_give_the_same_value(smoke, reference_images, tmp_path):
    """mu/sigma (EDM / pytorch-fid), pool_3 activations (score_sde), images under another key, a folder of PNGs:
    the finished shards are reused, only the reference changes."""
    from PIL import Image

    results, workdir = smoke
    images = reference_images[1]
    features = projection(images)
    np.savez(tmp_path / "stats.npz", mu=features.mean(0), sigma=np.cov(features, rowvar=False))  # no count
    np.savez(tmp_path / "pool3.npz", pool_3=features, logits=np.zeros((32, 10)))
    np.savez_compressed(tmp_path / "first_array.npz", images)  # key arr_0, compressed
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    values = {}
    for name, kind in (("stats.npz", "stats"), ("pool3.npz", "activations"), ("first_array.npz", "images"),
                       ("pngs", "folder")):
        out = fid_protocol.run(smoke_config(tmp_path / name), workdir)
        assert out["sampled_this_run"] == 0 and out["reference"]["kind"] == kind
        values[kind] = out["value"]
    assert values["folder"] == pytest.approx(results["value"], abs=1e-9)  # PNG is lossless: the same images
    assert values["images"] == pytest.approx(results["value"], abs=1e-9)
    assert values["stats"] == pytest.approx(values["activations"], abs=1e-9)
    assert values["stats"] == pytest.approx(results["value"], rel=1e-5)  # numpy vs device float32 features


def _bad_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, overrides, error, match", [
    ("solver", dict(solver="nope"), ValueError, "unknown solver 'nope'; valid names"),
    ("grid", dict(grid="nope"), ValueError, "unknown time grid 'nope'; valid names"),
    ("nfe", dict(nfe=0), ValueError, "needs at least 1 model calls"),
    ("adaptive", dict(solver="adaptive"), ValueError, "adaptive"),
    ("checkpoint", dict(checkpoint="/no/such/ckpt"), FileNotFoundError, "checkpoint '/no/such/ckpt' not found"),
    ("weights", dict(feature="inception"), ValueError, "needs fid_weights"),
    ("weights_file", dict(feature="inception", fid_weights="/no/w.npz"), FileNotFoundError, "fid_weights"),
    ("reference", dict(reference="/no/ref.npz"), FileNotFoundError, "reference '/no/ref.npz' not found"),
    ("no_mu_sigma", "no_mu_sigma", ValueError, r"neither statistics \(mu and sigma\)"),
    ("mu_only", "mu_only", ValueError, "has mu but not sigma"),
    ("dim", "dim", ValueError, "do not match the random_projection feature of dimension 8"),
    ("guidance", dict(guidance_scale=2.0), ValueError, "is unconditional"),
    ("learned_variance", dict(solver="ddpm", solver_options={"variance": "learned"}), ValueError,
     "needs a checkpoint with a learned variance"),
    ("null_label", dict(guidance_scale=2.0, checkpoint=os.path.join(FIXTURES, "conditional")), ValueError,
     "no null label"),
    ("num_samples", dict(num_samples=0), ValueError, "num_samples must be an integer >= 2"),
    ("feature", dict(feature="clip"), ValueError, "unknown feature 'clip'"),
    ("layout_option", dict(model_config="vp/cifar10_ddpmpp_continuous"), ValueError, "are for another layout"),
    ("grid_option", dict(grid_options={"rho": 7.0}), ValueError, r"grid 'logsnr' has no option\(s\) \['rho'\]"),
    ("learned_nfe", dict(solver="olss", solver_options={"path": LEARNED_VP}), ValueError,
     "a learned sampler of 5 model calls, but nfe=2; set nfe=5"),
    ("learned_process", dict(solver="olss", solver_options={"path": LEARNED_VP}, nfe=5), ValueError,
     "was learned on process 'vp_linear'; .* is sampled on 'vp_discrete'"),
])
def test_bad_input_fails_before_compute(case, overrides, error, match, reference_images, tmp_path, monkeypatch):
    if isinstance(overrides, str):
        arrays = {"no_mu_sigma": dict(mean=np.zeros(8), cov=np.eye(8)), "mu_only": dict(mu=np.zeros(8)),
                  "dim": dict(mu=np.zeros(5), sigma=np.eye(5))}[overrides]
        overrides = dict(reference=_bad_npz(tmp_path / "bad.npz", **arrays))
    config = smoke_config(reference_images[0], **overrides)

    def no_compute(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(fid_protocol, "_sample_program", no_compute)
    monkeypatch.setattr(features, "_program", no_compute)
    with pytest.raises(error, match=match):
        fid_protocol.run(config, str(tmp_path / "w"))


def test_workdir_of_another_run_is_refused(smoke, reference_images):
    with pytest.raises(ValueError, match="statistics of another run .*differs in seed"):
        fid_protocol.run(smoke_config(reference_images[0], seed=1), smoke[1])
    with pytest.raises(ValueError, match="statistics of another run .*differs in grid, ts"):
        fid_protocol.run(smoke_config(reference_images[0], grid="uniform"), smoke[1])


def test_guidance_on_the_conditional_fixture(reference_images, tmp_path, guided_calls):
    """Balanced labels without the null label, the guided model built (and compiled) once for every batch, and the
    saved samples round(clip((x + 1) 127.5)) of samplers.sample on samplers.guided from fold_in(key, k)."""
    checkpoint = os.path.join(FIXTURES, "conditional")
    config = smoke_config(reference_images[0], checkpoint=checkpoint, null_label=9, guidance_scale=2.0,
                          num_samples=8, num_save=4)
    results = fid_protocol.run(config, str(tmp_path))
    assert [call["batch_axes"] for call in guided_calls] == [(None, 0)]  # 2 shards x 1 batch, one trace
    assert results["guidance"]["scale"] == 2.0 and results["guidance"]["classes"] == list(range(9))
    assert results["nfe"]["network_calls_per_sample"] == 4 and np.isfinite(results["value"])
    m = pretrained.load(checkpoint, null_label=9)
    key = jax.random.fold_in(jax.random.PRNGKey(0), fid_protocol.NOISE_STREAM)
    x = jnp.stack([m.process.prior(jax.random.fold_in(key, k), m.image_shape, dtype=jnp.float32) for k in range(4)])
    labels = jnp.arange(4) % 9
    model = samplers.guided(m.model_fn, 2.0, (m.params, jnp.full((4,), 9)), batch_axes=(None, 0))
    ts = schedules.get_timesteps("logsnr", m.process, 2)
    x, _ = samplers.sample(model, "ddim", m.process, x, ts, prediction=m.prediction, args=(m.params, labels))
    expected = np.round(np.clip((np.asarray(x, np.float64) + 1) * 127.5, 0, 255))
    diff = np.abs(np.load(tmp_path / "samples.npz")["images"] - expected)
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99  # equal but where float32 rounding meets a .5 tie


def test_classifier_guidance_on_the_adm_fixture(reference_images, tmp_path):
    """guided-diffusion's model and noisy classifier (random-weight fixtures): the saved samples are those of
    samplers.sample on samplers.classifier_guided with balanced labels, and the classifier is in the fingerprint."""
    checkpoint, classifier = (os.path.join(ROOT, "tests", "fixtures", "guided_diffusion", name)
                              for name in ("adm_new", "classifier"))
    config = smoke_config(reference_images[0], checkpoint=checkpoint, classifier=classifier, classifier_scale=3.0,
                          num_samples=4, num_save=4)
    results = fid_protocol.run(config, str(tmp_path / "guided"))
    assert results["guidance"]["classifier"]["scale"] == 3.0 and np.isfinite(results["value"])
    assert "classifier guidance 3" in results["description"]
    m, c = pretrained.load(checkpoint), pretrained.load(classifier)
    key = jax.random.fold_in(jax.random.PRNGKey(0), fid_protocol.NOISE_STREAM)
    x = jnp.stack([m.process.prior(jax.random.fold_in(key, k), m.image_shape, dtype=jnp.float32) for k in range(4)])
    labels = jnp.arange(4)  # classes[k % 1000]
    model = samplers.classifier_guided(m.model_fn, c.classifier_fn, 3.0, process=m.process)
    ts = schedules.get_timesteps("logsnr", m.process, 2)
    x, _ = samplers.sample(model, "ddim", m.process, x, ts, prediction=m.prediction,
                           args=((m.params, labels), (c.params, labels)))
    expected = np.round(np.clip((np.asarray(x, np.float64) + 1) * 127.5, 0, 255))
    diff = np.abs(np.load(tmp_path / "guided" / "samples.npz")["images"] - expected)
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99  # equal but where float32 rounding meets a .5 tie
    with pytest.raises(ValueError, match="statistics of another run .*differs in classifier_scale"):
        fid_protocol.run(smoke_config(reference_images[0], checkpoint=checkpoint, classifier=classifier,
                                      classifier_scale=1.0, num_samples=4, num_save=4), str(tmp_path / "guided"))
    with pytest.raises(ValueError, match="takes \\(8, 8, 3\\) images on process 'vp_discrete'; the model makes"):
        fid_protocol.run(smoke_config(reference_images[0], checkpoint=os.path.join(FIXTURES, "ncsnpp"),
                                      classifier=classifier), str(tmp_path / "other"))


def test_latent_dit_samples_latents_and_scores_decoded_images(tmp_path, guided_calls):
    """A latent DiT (the DiT-layout fixture with the pipeline fixture's VAE as its vae/): latents sampled with DiT's
    3-channel guidance, decoded in the program, scored on the images; the saved samples are the decoded ones."""
    import shutil

    dit = tmp_path / "dit"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "dit", "dit"), dit)
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "dit", "pipeline", "vae"), dit / "vae")
    m = pretrained.load(str(dit))
    images = np.random.default_rng(0).integers(0, 256, (16,) + tuple(m.image_shape), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=images)
    config = smoke_config(tmp_path / "ref.npz", checkpoint=str(dit), null_label=None, guidance_scale=1.5,
                          num_samples=4, num_save=4)
    results = fid_protocol.run(config, str(tmp_path / "w"))
    assert [call["channel_mask"] for call in guided_calls] == [(True, True, True, False)]  # DiT's: channels 0-2
    assert results["model"]["image_shape"] == list(m.image_shape)
    assert results["model"]["latent_shape"] == list(m.latent_shape)
    key = jax.random.fold_in(jax.random.PRNGKey(0), fid_protocol.NOISE_STREAM)
    x = jnp.stack([m.process.prior(jax.random.fold_in(key, k), m.latent_shape, dtype=jnp.float32) for k in range(4)])
    labels = jnp.arange(4) % m.num_classes
    model = samplers.guided(m.model_fn, 1.5, (m.params, jnp.full((4,), m.null_label)), batch_axes=(None, 0),
                            channel_mask=m.guidance_mask)
    ts = schedules.get_timesteps("logsnr", m.process, 2)
    x, _ = samplers.sample(model, "ddim", m.process, x, ts, prediction=m.prediction, args=(m.params, labels))
    expected = np.round(np.clip((np.asarray(m.decode(x), np.float64) + 1) * 127.5, 0, 255))
    diff = np.abs(np.load(tmp_path / "w" / "samples.npz")["images"] - expected)
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99  # equal but where float32 rounding meets a .5 tie
    # DiT's published sampler: DDPM with the learned variance, guidance on eps channels 0-2, v from the conditional
    ddpm = smoke_config(tmp_path / "ref.npz", checkpoint=str(dit), null_label=None, guidance_scale=1.5,
                        num_samples=4, solver="ddpm", grid="respaced", nfe=3, label="DDPM")
    ddpm.solver_options, ddpm.grid_options = {"variance": "learned"}, {"append_zero": True}
    results = fid_protocol.run(ddpm, str(tmp_path / "w_ddpm"))
    assert guided_calls[-1]["channel_mask"] == (True, True, True) + (False,) * 5
    assert results["nfe"]["per_sample"] == 3 and np.isfinite(results["value"]) and results["solver"]["stochastic"]
    shutil.rmtree(dit / "vae")
    with pytest.raises(ValueError, match="samples latents \\(8, 8, 4\\) and has no VAE to decode them"):
        fid_protocol.run(config, str(tmp_path / "w2"))


def test_two_guidance_scales_share_one_compiled_sampler(reference_images, tmp_path):
    """The runner's sampling program is keyed on the structures of the model and the solver
    (`samplers.pytrees.split`), the guidance scale traced: a second scale traces the model no more, and gives other
    samples."""
    config = smoke_config(reference_images[0], checkpoint=os.path.join(FIXTURES, "conditional"), null_label=9,
                          guidance_scale=2.0, num_samples=4)
    plan = fid_protocol.make_plan(config, str(tmp_path))
    traces = []
    target = copy.copy(plan.source.target)
    model_fn = target.model_fn
    target.model_fn = lambda *args: traces.append(1) or model_fn(*args)
    plan = dataclasses.replace(plan, source=dataclasses.replace(plan.source, target=target))
    indices = np.arange(plan.batch, dtype=np.int32)
    two = fid_protocol.sample_batch(plan, indices)
    traced = len(traces)
    three = fid_protocol.sample_batch(dataclasses.replace(plan, guidance_scale=3.0), indices)
    assert traced >= 1 and len(traces) == traced
    assert np.all(np.isfinite(three)) and float(jnp.max(jnp.abs(three - two))) > 1e-3


def test_inception_feature_path(reference_images, tmp_path, monkeypatch):
    """feature="inception" with random weights from an .npz: the moments compared are those of inception.features of
    the saved uint8 samples (as uint8 / 127.5 - 1) and of the reference images. The network resizes to 75 px here,
    not 299 (the smallest input of Inception-v3; the weights do not depend on it): 16x cheaper on a CPU. The 2048-d
    matrix square root of the distance itself (tens of seconds on a CPU) is replaced by a recorder: the distance is
    the smoke test's, on 8-d features."""
    from fastsamplers.experiments.metrics import inception

    monkeypatch.setattr(inception, "INPUT_SIZE", 75)
    compared = []
    monkeypatch.setattr(frechet, "frechet_distance_from_moments",
                        lambda *moments: compared.append(moments[:4]) or 1.0)
    params = inception.init_random_params(0)
    weights = tmp_path / "inception.npz"
    inception.save_params(params, weights)
    np.savez(tmp_path / "ref.npz", images=reference_images[1][:4])
    config = smoke_config(tmp_path / "ref.npz", feature="inception", fid_weights=str(weights), num_samples=4)
    results = fid_protocol.run(config, str(tmp_path / "w"))
    assert results["metric"] == "fid" and results["feature"]["kind"] == "inception" and results["value"] == 1.0
    assert results["feature"]["dim"] == 2048 and results["feature"]["weights_sha256"] == hashlib.sha256(
        weights.read_bytes()).hexdigest()
    saved = np.load(tmp_path / "w" / "samples.npz")["images"]
    both = inception.features(params, np.concatenate([saved, reference_images[1][:4]]) / 127.5 - 1.0, batch_size=8)
    (mu, sigma, ref_mu, ref_sigma), = compared
    scale = np.abs(both).max()
    for got, features in ((mu, both[:4]), (ref_mu, both[4:])):
        np.testing.assert_allclose(got, features.mean(0), atol=1e-5 * scale)
    for got, features in ((sigma, both[:4]), (ref_sigma, both[4:])):
        np.testing.assert_allclose(got, np.cov(features, rowvar=False), atol=1e-5 * scale ** 2)


def _python(args, env_extra, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, JAX_ENABLE_X64="1", **env_extra)
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 14 s of CPU, over CI's budget; tests/test_multidevice.py keeps two processes in the default suite
def test_four_devices_and_two_processes_match_one_device(smoke, reference_images, tmp_path, device_flags):
    """The script on 4 simulated devices, and 2 jax.distributed processes of 2 devices each, give the in-process
    one-device value (x64 on in all, as in this test session). Shards are split per process: s % 2."""
    script = os.path.join(ROOT, "scripts", "fid_pretrained.py")
    common = [script, "--config", os.path.join(ROOT, "experiments", "configs", "fid_pretrained.py") + ":smoke",
              f"--config.reference={reference_images[0]}"]
    port = _free_port()
    runs = [_python([*common, f"--workdir={tmp_path / 'four'}"],
                    {"XLA_FLAGS": device_flags(4)})]
    runs += [_python([*common, f"--workdir={tmp_path / 'two'}", "--distributed", f"--coordinator_address=localhost:"
                      f"{port}", "--num_processes=2", f"--process_id={i}"],
                     {"XLA_FLAGS": device_flags(2)}) for i in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    four, two = (json.load(open(tmp_path / name / "results.json")) for name in ("four", "two"))
    assert four["sharding"]["devices_per_process"] == 4 and four["sharding"]["device_batch"] == 4
    assert two["sharding"]["processes"] == 2 and two["sharding"]["devices_per_process"] == 2
    assert four["fingerprint"] == two["fingerprint"] == smoke[0]["fingerprint"]
    assert abs(four["value"] - smoke[0]["value"]) <= 1e-6
    assert abs(two["value"] - smoke[0]["value"]) <= 1e-6
