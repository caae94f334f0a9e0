"""Datasets: deterministic (key, step) batches, epoch-wise shuffling, loaders, errors, procedural statistics."""

import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fastsamplers.experiments.train import data

KEY = jax.random.PRNGKey(0)
PROCEDURAL = ("moons", "8gaussians", "checkerboard", "swissroll")


@pytest.fixture(scope="module")
def digits():
    return data.get_dataset("digits")


@pytest.mark.parametrize("name", PROCEDURAL + ("digits",))
def test_batches_are_deterministic_in_key_and_step(name):
    ds = data.get_dataset(name)
    first = ds.batch(KEY, 3, 16)
    assert first.dtype == jnp.float32 and first.shape == (16,) + ds.shape
    np.testing.assert_array_equal(first, ds.batch(KEY, 3, 16))
    assert not np.array_equal(first, ds.batch(KEY, 4, 16))
    assert not np.array_equal(first, ds.batch(jax.random.PRNGKey(1), 3, 16))


@pytest.mark.parametrize("num_examples, batch_size", [(10, 3), (10, 4), (10, 10), (7, 1)])
def test_every_epoch_visits_every_example_once(num_examples, batch_size):
    ds = data.ArrayDataset.from_array(np.arange(num_examples, dtype=np.float32)[:, None], name="range")
    steps = 3 * num_examples  # 3 * batch_size epochs
    batch = jax.jit(lambda step: ds.batch(KEY, step, batch_size))
    stream = np.concatenate([np.asarray(batch(jnp.int32(step)))[:, 0] for step in range(steps)])
    epochs = stream.reshape(-1, num_examples)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(num_examples))
    if num_examples > 2:
        assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled each epoch


def test_batch_under_jit_with_traced_step_equals_eager(digits):
    batch = jax.jit(lambda ds, step: ds.batch(KEY, step, 100))
    for step in (0, 17, 123456):
        np.testing.assert_array_equal(batch(digits, jnp.int32(step)), digits.batch(KEY, step, 100))
    moons = data.get_dataset("moons")
    # Procedural draws: equal up to float32 rounding (XLA fuses the arithmetic differently under jit).
    jitted = jax.jit(lambda s: moons.batch(KEY, s, 8))(jnp.int32(5))
    np.testing.assert_allclose(jitted, moons.batch(KEY, 5, 8), atol=1e-6)


def test_stream_position_is_exact_for_long_runs():
    rng = random.Random(0)
    cases = [(2**31 - 1, 4096, 1_281_167), (2**31 - 1, 1, 1)]  # the second one hits the uint32 long multiplication
    cases += [(rng.randrange(2**31), rng.randrange(1, 4097), rng.randrange(4096, 2**24)) for _ in range(20)]
    for step, batch_size, n in cases:
        epoch, offset = data._stream_position(jnp.int32(step), batch_size, n)
        assert (int(epoch), int(offset)) == divmod(step * batch_size, n)
    for _ in range(20):
        n = rng.randrange(1, 2**31)
        b, m = rng.randrange(n), rng.randrange(n)
        q, r = data._mul_divmod(jnp.int32(b), m, n)
        assert (int(q), int(r)) == divmod(b * m, n)


def test_finite_sample_and_batch_size_checks():
    ds = data.ArrayDataset.from_array(np.arange(6, dtype=np.float32).reshape(6, 1))
    drawn = np.asarray(ds.sample(KEY, 6))[:, 0]
    np.testing.assert_array_equal(np.sort(drawn), np.arange(6))
    with pytest.raises(ValueError, match="distinct"):
        ds.sample(KEY, 7)
    with pytest.raises(ValueError, match="batch_size"):
        ds.batch(KEY, 0, 7)


@pytest.mark.parametrize("image_size", [8, 16])
def test_digits_range_and_shape(image_size):
    ds = data.get_dataset("digits", image_size=image_size)
    assert ds.shape == (image_size, image_size, 1) and ds.num_examples == 1797
    assert ds.data.dtype == jnp.float32
    assert float(ds.data.min()) == -1.0 and float(ds.data.max()) <= 1.0 and float(ds.data.max()) > 0.9


def _write_png(path, array):
    Image.fromarray(array).save(path)


def test_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 255, 0)
    for i, image in enumerate(images):
        _write_png(tmp_path / f"{i}.png", image)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = data.get_dataset("folder", path=str(tmp_path))
    assert ds.shape == (5, 4, 3) and ds.num_examples == 3
    np.testing.assert_allclose(ds.data, images / 127.5 - 1.0, atol=1e-6)
    gray = data.get_dataset("folder", path=str(tmp_path), channels=1, image_size=8)
    assert gray.shape == (8, 8, 1) and float(jnp.abs(gray.data).max()) <= 1.0

    _write_png(tmp_path / "other.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        data.get_dataset("folder", path=str(tmp_path))
    assert data.get_dataset("folder", path=str(tmp_path), image_size=(4, 6)).shape == (4, 6, 3)


def test_npz_loader(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    np.savez(tmp_path / "digits.npz", images=images, labels=np.arange(4))
    ds = data.get_dataset("npz", path=str(tmp_path / "digits.npz"))
    assert ds.shape == (6, 6, 1)
    np.testing.assert_allclose(ds.data[..., 0], images / 127.5 - 1.0, atol=1e-6)
    assert float(ds.data.min()) == -1.0 and float(ds.data.max()) == 1.0
    resized = data.get_dataset("npz", path=str(tmp_path / "digits.npz"), image_size=12)
    assert resized.shape == (12, 12, 1)

    np.savez(tmp_path / "only.npz", x=np.zeros((2, 3, 3, 3), np.float32))
    assert data.get_dataset("npz", path=str(tmp_path / "only.npz")).shape == (3, 3, 3)
    np.savez(tmp_path / "two.npz", a=images, b=images)
    assert data.get_dataset("npz", path=str(tmp_path / "two.npz"), key="b").num_examples == 4
    with pytest.raises(ValueError, match="key="):
        data.get_dataset("npz", path=str(tmp_path / "two.npz"))
    np.savez(tmp_path / "float.npz", images=np.full((2, 3, 3), 1.5, np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        data.get_dataset("npz", path=str(tmp_path / "float.npz"))


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="8gaussians.*digits.*folder.*moons.*npz"):
        data.get_dataset("mnist")
    with pytest.raises(ValueError, match=r"valid options: \['noise', 'scale', 'shift'\]"):
        data.get_dataset("moons", radius=1.0)
    with pytest.raises(ValueError, match="path"):
        data.get_dataset("folder")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.get_dataset("folder", path=missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.get_dataset("npz", path=missing + ".npz")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no image"):
        data.get_dataset("folder", path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="image_size"):
        data.get_dataset("digits", image_size=12)


def test_moons_match_sklearn_statistics():
    from sklearn.datasets import make_moons

    n = 20000
    ours = np.asarray(data.get_dataset("moons").sample(KEY, n), np.float64)
    reference = make_moons(n, noise=0.2, random_state=0)[0] * 3 - 1
    np.testing.assert_allclose(ours.mean(0), reference.mean(0), atol=0.06)
    np.testing.assert_allclose(ours.std(0), reference.std(0), atol=0.05)
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        np.testing.assert_allclose(np.quantile(ours, q, axis=0), np.quantile(reference, q, axis=0), atol=0.12)


def test_other_procedural_sets_statistics():
    n = 20000
    gaussians = np.asarray(data.get_dataset("8gaussians").sample(KEY, n), np.float64)
    angles = np.round(np.arctan2(gaussians[:, 1], gaussians[:, 0]) / (np.pi / 4)) % 8
    np.testing.assert_allclose(np.bincount(angles.astype(int), minlength=8) / n, 1 / 8, atol=0.01)
    assert abs(np.median(np.linalg.norm(gaussians, axis=1)) - 5.0) < 0.1

    board = np.asarray(data.get_dataset("checkerboard").sample(KEY, n), np.float64)
    assert np.all(np.abs(board) <= 4.0)
    assert np.all((np.floor(board[:, 0] / 2) + np.floor(board[:, 1] / 2)) % 2 == 0)  # only the dark squares
    np.testing.assert_allclose(board.mean(0), 0.0, atol=0.06)

    from sklearn.datasets import make_swiss_roll

    roll = np.asarray(data.get_dataset("swissroll").sample(KEY, n), np.float64)
    reference = make_swiss_roll(n, noise=1.0, random_state=0)[0][:, [0, 2]] / 5
    np.testing.assert_allclose(roll.mean(0), reference.mean(0), atol=0.05)
    np.testing.assert_allclose(roll.std(0), reference.std(0), atol=0.05)
    for name in PROCEDURAL:
        ds = data.get_dataset(name)
        assert ds.shape == (2,) and ds.num_examples is None and hash(ds) == hash(data.get_dataset(name))
