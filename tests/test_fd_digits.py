"""FD-digits (`fd_digits`, `digits_classifier`, `digits_training`): the classifier (accuracy, split, cache), the
features (batch invariance, input checks) and the metric (zero on itself, small between halves of the data, growing
with corruption). The 8 px classifier is trained once
into a temporary cache (a module fixture), so these tests never touch the user's cache."""

import json
import os

import jax
import numpy as np
import pytest

from fastsamplers.experiments.metrics import digits_classifier, digits_training, fd_digits
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_distance
from script_loader import load_script


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache directory holding the 8 px classifier, trained (from the seed) by `load_classifier` itself."""
    directory = str(tmp_path_factory.mktemp("fd_digits_cache"))
    classifier = digits_training.load_classifier(8, cache_dir=directory)
    assert classifier.path == digits_classifier.weights_path(8, directory) and os.path.exists(classifier.path)
    return directory


@pytest.fixture(scope="module")
def halves():
    images, _ = digits_classifier.digits(8)
    first, second = digits_classifier.half_indices()
    return images[first], images[second]


def _fd(cache, a, b):
    return frechet_distance(fd_digits.feature_stats(a, cache_dir=cache), fd_digits.feature_stats(b, cache_dir=cache))


def test_split_is_stratified_disjoint_and_fixed():
    train, test = digits_classifier.split_indices()
    _, labels = digits_classifier.digits(8)
    assert (train.size, test.size) == (1438, 359)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    for c in range(10):
        count = np.sum(labels == c)
        assert np.sum(labels[test] == c) == round(0.2 * count)
    train_again, test_again = digits_classifier.split_indices.__wrapped__()  # recomputed, not the memo
    np.testing.assert_array_equal(test, test_again)
    np.testing.assert_array_equal(train, train_again)
    first, second = digits_classifier.half_indices()
    assert (first.size, second.size) == (898, 899) and np.intersect1d(first, second).size == 0


def test_heldout_accuracy_above_97_percent(cache):
    classifier = digits_training.load_classifier(8, cache_dir=cache, train_if_missing=False)
    assert classifier.accuracy > 0.97
    # Recomputed from the saved weights, independently of the recorded number.
    images, labels = digits_classifier.digits(8, "test")
    with jax.enable_x64(False):
        logits = np.asarray(classifier.model.apply({"params": classifier.params}, images))
    accuracy = np.mean(np.argmax(logits, axis=-1) == labels)
    assert accuracy > 0.97
    assert accuracy == pytest.approx(classifier.accuracy, abs=1e-12)
    with open(os.path.splitext(classifier.path)[0] + ".json") as f:
        info = json.load(f)
    assert info["version"] == digits_classifier.VERSION and info["seed"] == digits_classifier.SEED and info["size"] == 8
    assert info["test_accuracy"] == pytest.approx(accuracy)
    assert digits_classifier.VERSION in os.path.basename(classifier.path)


def test_features_shape_dtype_and_batch_invariance(cache):
    images, _ = digits_classifier.digits(8)
    one = fd_digits.features(8, images, batch_size=2000, cache_dir=cache)
    many = fd_digits.features(8, images, batch_size=100, cache_dir=cache)  # 18 batches, the last one padded
    assert one.shape == (1797, digits_classifier.FEATURE_DIM) and one.dtype == np.float64
    assert np.all(np.isfinite(one)) and np.min(np.std(one, axis=0)) > 0  # no dead feature
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fd_digits.features(None, images[:5], cache_dir=cache), one[:5], rtol=1e-5, atol=1e-5)

    # Statistics of one batch and of a stream of uneven batches (arrays, from a generator) agree.
    whole = fd_digits.feature_stats(images, cache_dir=cache)
    streamed = fd_digits.feature_stats((images[i:i + 250] for i in range(0, 1797, 250)), batch_size=64,
                                       cache_dir=cache)
    assert whole.count == streamed.count == 1797
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed.covariance, whole.covariance, rtol=1e-5, atol=1e-5)
    reference = fd_digits.reference_stats(8, cache_dir=cache)
    np.testing.assert_allclose(reference.mean, whole.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reference.covariance, whole.covariance, rtol=1e-5, atol=1e-5)
    # The float64 accumulation itself is exact up to rounding: same features, fed whole or in pieces.
    pieces = FeatureStats.empty(one.shape[1])
    for i in range(0, 1797, 300):
        pieces = pieces.update(one[i:i + 300])
    exact = FeatureStats.from_features(one)
    np.testing.assert_allclose(pieces.mean, exact.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pieces.covariance, exact.covariance, rtol=1e-10, atol=1e-10)


def test_fd_of_the_digits_against_themselves_is_zero(cache):
    images, _ = digits_classifier.digits(8)
    assert abs(fd_digits.fd_digits(images, cache_dir=cache)) < 1e-6
    assert abs(fd_digits.fd_digits(images[..., 0], size=8, cache_dir=cache)) < 1e-6  # (n, H, W) accepted
    test_images, _ = digits_classifier.digits(8, "test")
    assert abs(fd_digits.fd_digits(test_images, reference="test", cache_dir=cache)) < 1e-6


def test_disjoint_halves_are_close_and_corruptions_are_far(cache, halves):
    first, second = halves
    floors = fd_digits.data_floor(8, cache)  # FD(first, second) and FD(train split, test split)
    floor = floors["half_vs_half"]
    images, labels = digits_classifier.digits(8)
    other_classes = _fd(cache, images[labels < 5], images[labels >= 5])
    assert 0 < floor < 0.05 * other_classes
    assert 0 < floors["train_vs_test"] < 0.05 * other_classes

    rng = np.random.default_rng(0)
    noisy = [_fd(cache, first, second + std * rng.standard_normal(second.shape)) for std in (0.3, 1.0)]
    padded = np.pad(second, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0
    flat = second.reshape((second.shape[0], 64))
    shuffled = np.stack([row[rng.permutation(64)] for row in flat]).reshape(second.shape)
    assert floor < noisy[0] < noisy[1]
    assert _fd(cache, first, blurred) > 5 * floor
    assert _fd(cache, first, shuffled) > 5 * floor


def test_fd_grows_with_noise_strength(cache):
    images, _ = digits_classifier.digits(8)
    noise = np.random.default_rng(1).standard_normal(images.shape)
    scores = [fd_digits.fd_digits(images + std * noise, cache_dir=cache) for std in (0.1, 0.3, 1.0)]
    assert 0.1 < scores[0] < scores[1] < scores[2]
    assert scores[2] > 10 * scores[0]


def test_non_finite_samples_are_rejected_with_their_count(cache):
    images = np.array(digits_classifier.digits(8)[0])
    images[[3, 10, 500], 2, 2, 0] = np.nan
    images[[7, 8], 0, 0, 0] = np.inf
    images[10, 1, 1, 0] = -np.inf  # a sample counts once
    with pytest.raises(ValueError, match=r"5 of 1797 samples hold NaN or Inf"):
        fd_digits.fd_digits(images, cache_dir=cache)
    with pytest.raises(ValueError, match=r"5 of 1797 samples"):
        fd_digits.features(8, images, cache_dir=cache)
    with pytest.raises(ValueError, match=r"5 of 1797 samples"):  # counted over all batches of a stream
        fd_digits.feature_stats([images[:6], images[6:9], images[9:]], cache_dir=cache)
    with pytest.raises(ValueError, match=r"5 of 1797 samples"):
        fd_digits.fd_digits(images, cache_dir=cache, clip=False)


def test_unsupported_sizes_and_shapes_give_clear_errors(tmp_path):
    empty = str(tmp_path)  # nothing is trained: the checks come first
    with pytest.raises(ValueError, match=r"8, 16 and 32"):
        fd_digits.fd_digits(np.zeros((10, 12, 12, 1)), cache_dir=empty)
    with pytest.raises(ValueError, match=r"8, 16 and 32"):
        fd_digits.fd_digits(np.zeros((10, 28, 28, 1)), cache_dir=empty)
    with pytest.raises(ValueError, match=r"8, 16 and 32"):
        fd_digits.reference_stats(12, cache_dir=empty)
    with pytest.raises(ValueError, match=r"8, 16 and 32"):
        digits_training.load_classifier(64, cache_dir=empty)
    with pytest.raises(ValueError, match=r"size=16 but the images are 8x8"):
        fd_digits.fd_digits(np.zeros((10, 8, 8, 1)), size=16, cache_dir=empty)
    with pytest.raises(ValueError, match=r"one-channel"):
        fd_digits.fd_digits(np.zeros((10, 8, 8, 3)), cache_dir=empty)
    with pytest.raises(ValueError, match=r"one-channel"):
        fd_digits.fd_digits(np.zeros((10, 8, 16, 1)), cache_dir=empty)
    with pytest.raises(ValueError, match=r"floats in \[-1, 1\]"):
        fd_digits.fd_digits(np.zeros((10, 8, 8, 1), np.uint8), cache_dir=empty)
    with pytest.raises(ValueError, match=r"reference must be one of all, train, test"):
        fd_digits.fd_digits(np.zeros((10, 8, 8, 1)), reference="val", cache_dir=empty)
    assert os.listdir(empty) == []


def test_cached_classifier_is_reused_not_retrained(cache, monkeypatch):
    path = digits_classifier.weights_path(8, cache)
    stamp = os.stat(path).st_mtime_ns
    first = digits_training.load_classifier(8, cache_dir=cache)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(digits_training, "train_classifier", no_training)
    digits_training._LOADED.clear()  # force a read from disk
    second = digits_training.load_classifier(8, cache_dir=cache)
    fd_digits.features(8, np.zeros((4, 8, 8, 1)), cache_dir=cache)
    assert os.stat(path).st_mtime_ns == stamp
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    assert second.info == first.info
    assert not [name for name in os.listdir(cache) if name.endswith(".tmp")]  # atomic writes left nothing behind


def test_bad_or_missing_weights_files_give_clear_errors(cache, tmp_path):
    other = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"scripts/train_fd_digits.py --size 16"):
        digits_training.load_classifier(16, cache_dir=other, train_if_missing=False)
    # The 8 px weights where the 16 px ones belong: wrong shapes, named in the error.
    with open(digits_classifier.weights_path(8, cache), "rb") as f:
        data = f.read()
    os.makedirs(other, exist_ok=True)
    with open(digits_classifier.weights_path(16, other), "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match=r"does not hold the 16px FD-digits classifier.*delete it"):
        digits_training.load_classifier(16, cache_dir=other, train_if_missing=False)
    with pytest.raises(ValueError, match=r"does not hold the 16px"):  # and is not silently retrained
        digits_training.load_classifier(16, cache_dir=other)
    with open(digits_classifier.weights_path(32, other), "wb") as f:
        f.write(b"not a weights file")
    with pytest.raises(ValueError, match=r"not a readable FD-digits weights file"):
        digits_training.load_classifier(32, cache_dir=other)


def test_training_is_deterministic_from_the_seed():
    first = digits_training.train_classifier(8, epochs=1)
    second = digits_training.train_classifier(8, epochs=1)
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(first.params))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSAMPLERS_CACHE", str(tmp_path))
    assert digits_classifier.default_cache_dir() == os.path.join(str(tmp_path), "fd_digits")
    assert digits_classifier.weights_path(16) == os.path.join(str(tmp_path), "fd_digits",
                                                      f"classifier_16px_{digits_classifier.VERSION}.msgpack")
    monkeypatch.delenv("FASTSAMPLERS_CACHE")
    assert digits_classifier.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "fastsamplers",
                                                         "fd_digits")


def test_script_reports_the_cached_classifier(cache, capsys):

    script = load_script("train_fd_digits")
    results = script.main(["--size", "8", "--cache", cache, "--no-floor"])
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "cached" in out and digits_classifier.VERSION in out
    assert results[8]["accuracy"] > 0.97
    with pytest.raises(SystemExit):
        script.main(["--size", "8,12", "--cache", cache])
