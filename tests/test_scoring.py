"""The evaluation layer (`experiments.metrics.features`, `references`, `frechet`): the sampler tables
(scripts/evaluate.py) and the FID protocol (scripts/fid_pretrained.py) are two plans over one scoring call, so the
same samples give the same Fréchet distance through both, with their non-finite samples counted and left out alike.

Both runners sample a model registered as a source for this test: a class-conditional "x0" model that returns, for
sample k (label k in both runners), a fixed image; DDIM on a grid ending at t = 0 lands on it (to float32 rounding,
whatever the starting noise). The images sit 0.3 of a level off the uint8 grid, so they score differently quantised
(the FID protocol) and not, and two of them are NaN."""

import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import schedules
from fastsamplers.experiments.configs import evaluate, fid_pretrained
from fastsamplers.experiments.metrics import features, frechet, references
from fastsamplers.experiments.runs import fid_protocol, sampler_tables, sources
from fastsamplers.experiments.train import Target

NUM = 12
NAN_SAMPLES = (3, 7)
SHAPE = (8, 8, 3)


def lookup_model(x, t, args):
    """The x0 prediction of sample k: image k of the table (args = (table, labels))."""
    table, labels = args
    return jnp.broadcast_to(table[labels], x.shape)


def lookup_images():
    levels = np.random.default_rng(0).integers(1, 255, (NUM, *SHAPE))
    images = (levels + 0.3) / 127.5 - 1.0  # 0.3 of a level above uint8 `levels`: quantised back to them
    images[list(NAN_SAMPLES)] = np.nan
    return levels.astype(np.uint8), images.astype(np.float32)


def lookup_source(config):
    target = Target(schedules.get_process("vp_linear"), "x0", SHAPE, lookup_model, args=jnp.asarray(lookup_images()[1]),
                    num_classes=NUM, description="lookup table")
    return sources.Source(target, tuple(range(NUM)), NUM, {"source": "lookup"}, {"source": "lookup"})


lookup_source.config_keys = ("seed",)


@pytest.fixture()
def lookup(monkeypatch, tmp_path):
    monkeypatch.setitem(sources.SOURCES, "lookup", lookup_source)
    reference = np.random.default_rng(1).integers(0, 256, (32, *SHAPE), dtype=np.uint8)
    np.savez(tmp_path / "reference.npz", images=reference)
    return str(tmp_path / "reference.npz"), reference


def table_config(reference):
    config = evaluate.get_config("model=oracle,smoke")
    with config.unlocked():
        config.update(source="lookup", metric="fd_random_projection", fid_reference=reference, reference=False,
                      solvers=[dict(label="DDIM", name="ddim", options={})], grids=("uniform",), nfes=(2,), t_min=0.0,
                      num_samples=NUM, batch_size=4)
    return config


def fid_config(reference, **overrides):
    config = fid_pretrained.get_config("smoke")
    config.update(dict(source="lookup", grid="uniform", nfe=2, t_min=0.0, num_samples=NUM, batch_size=4,
                       shard_size=4, reference=reference, allow_nonfinite=True), **overrides)
    return config


def projection(images_uint8):
    """The random_projection feature in numpy float64."""
    size = int(np.prod(images_uint8.shape[1:]))
    matrix = np.random.default_rng(features.PROJECTION_SEED).standard_normal((size, 8)) / np.sqrt(size)
    return (images_uint8.reshape(len(images_uint8), -1) / 127.5 - 1.0) @ matrix.astype(np.float32)


def test_the_same_samples_give_the_same_distance_through_both_runners(lookup, tmp_path):
    reference_path, reference = lookup
    row, = sampler_tables.run(table_config(reference_path), str(tmp_path / "table"))["rows"]
    fid = fid_protocol.run(fid_config(reference_path), str(tmp_path / "fid"))
    assert row["metric"] == fid["metric"] == "fd_random_projection"
    assert row["num_samples"] == fid["num_samples"] == NUM
    assert row["num_nonfinite"] == fid["num_nonfinite"] == len(NAN_SAMPLES)
    # One feature program on the same uint8 images in batches of 4: only the float64 merge order differs.
    assert row["value"] == pytest.approx(fid["value"], rel=1e-9)
    # And that number is the distance of the quantised finite images to the reference, computed here in numpy
    # (float32 features: 1e-5).
    levels, images = lookup_images()
    finite = np.setdiff1d(np.arange(NUM), NAN_SAMPLES)
    ours, theirs = projection(levels[finite]), projection(reference)
    expected = frechet.frechet_distance_from_moments(ours.mean(0), np.cov(ours, rowvar=False), theirs.mean(0),
                                                     np.cov(theirs, rowvar=False))
    assert fid["value"] == pytest.approx(expected, rel=1e-5)
    unquantised = projection((images[finite] + 1.0) * 127.5)  # what the tables scored before: the floats as they are
    assert frechet.frechet_distance_from_moments(unquantised.mean(0), np.cov(unquantised, rowvar=False),
                                                 theirs.mean(0), np.cov(theirs, rowvar=False)) != pytest.approx(
        expected, rel=1e-4)


def test_non_finite_samples_stop_the_fid_run_unless_allowed(lookup, tmp_path):
    with pytest.raises(FloatingPointError, match=r"shard 0: 1 of samples 0..4 are not finite"):
        fid_protocol.run(fid_config(lookup[0], allow_nonfinite=False), str(tmp_path))


def test_the_policy_is_one_count(lookup):
    """stream_stats marks and counts; FeatureStats leaves out; the same images as uint8 score alike."""
    levels, images = lookup_images()
    feature = features.FEATURES.build("random_projection", feature_dim=8).build(SHAPE)
    floats = features.stream_stats(feature, images, batch_size=5)
    assert (floats.count, floats.num_nonfinite, floats.num_samples) == (NUM - 2, 2, NUM)
    finite = features.finite_rows(images)
    whole = features.stream_stats(feature, levels[finite], batch_size=NUM)
    np.testing.assert_allclose(floats.mean, whole.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(floats.covariance, whole.covariance, rtol=1e-10, atol=1e-12)
    merged = floats.merge(floats)
    assert (merged.count, merged.num_nonfinite) == (2 * (NUM - 2), 4)
    assert np.isnan(frechet.frechet_score(features.stream_stats(feature, images[[3, 7, 0]], 4), whole))


def test_features_and_references_fail_with_a_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"unknown feature 'clip'; valid names: \['fd_digits', 'inception', "
                                         r"'random_projection'\]"):
        features.FEATURES.build("clip")
    with pytest.raises(ValueError, match="feature_dim must be >= 1"):
        features.FEATURES.build("random_projection", feature_dim=0)
    with pytest.raises(ValueError, match=r"scores images \(H, W, 1 or 3\); the samples have shape \(16,\)"):
        features.FEATURES.build("random_projection").build((16,))
    feature = features.FEATURES.build("random_projection").build(SHAPE)
    np.savez(tmp_path / "small.npz", images=np.zeros((4, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="the random_projection feature takes the model's images"):
        references.check(str(tmp_path / "small.npz"), feature, SHAPE)
    assert features.metrics() == {"fid": "inception", "fd_random_projection": "random_projection",
                                  "fd_digits": "fd_digits"}
