"""Training the FD-digits classifier (`digits_classifier`), and getting a trained one: read from the cache, or
trained from the seed and cached on first use.

The recipe of `VERSION`: AdamW (learning rate 3e-3, cosine decay, weight decay 1e-4), batch 64, 30 epochs on the
training split, random shifts of up to max(1, size/8) pixels (background-filled), from `SEED`; float32 whatever
`jax_enable_x64` says. Measured for v1 (jax 0.10.2, CPU, two cores shared with other jobs):

    size   held-out accuracy   training
    8 px   98.6% (5 errors)    ~16 s
    16 px  98.9% (4 errors)    ~15 s
    32 px  99.4% (2 errors)    ~14 s

(training times include compilation; the weights came out bit-identical in repeated runs and with
`jax_enable_x64` on or off.) `scripts/train_fd_digits.py --size 8,16,32` trains them ahead of time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastsamplers.experiments.metrics.digits_classifier import (SEED, VERSION, FEATURE_DIM, Classifier,
                                                                DigitsClassifier, check_size, digits,
                                                                read_classifier, save_classifier, weights_path)

# Training recipe of VERSION (changing any of these, the architecture or the split needs a new VERSION).
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4


def _shift(key, images, max_shift):
    """Random integer translations of up to max_shift pixels per axis, filling with the background (-1)."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1, dtype=jnp.int32)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], jnp.int32(0)), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def train_classifier(size, seed=SEED, epochs=EPOCHS, verbose=False):
    """Trains the size-px classifier on the training split from `seed` and scores it on the held-out split.

    Deterministic given (size, seed, epochs) on one platform; runs in float32 whatever `jax_enable_x64` says.

    Returns:
      A `Classifier` (path None) whose info holds test_accuracy, train_accuracy, seed, version, epochs, timings.
    """
    size = check_size(size)
    start = time.perf_counter()
    with jax.enable_x64(False):
        params, info = _train(size, seed, epochs, verbose)
    info["train_seconds"] = round(time.perf_counter() - start, 2)
    if verbose:
        print(f"fd_digits {size}px: held-out accuracy {info['test_accuracy']:.4f} "
              f"({info['test_errors']} errors of {info['num_test']}), train accuracy {info['train_accuracy']:.4f}, "
              f"{info['train_seconds']:.1f} s")
    return Classifier(size, DigitsClassifier(size), params, info)


def _train(size, seed, epochs, verbose):
    model = DigitsClassifier(size)
    train_x, train_y = digits(size, "train")
    test_x, test_y = digits(size, "test")
    n = train_x.shape[0]
    steps_per_epoch = n // BATCH_SIZE  # each epoch drops the last partial batch (a different one each epoch)
    total = steps_per_epoch * epochs
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, max(total, 1))
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    key = jax.random.PRNGKey(seed)
    init_key, data_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1, size, size, 1), jnp.float32))["params"]
    opt_state = optimizer.init(params)
    max_shift = max(1, size // 8)
    x_all, y_all = jnp.asarray(train_x), jnp.asarray(train_y)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, state, x_all, y_all, idx, k):
        # A Python loop over jitted steps: on CPU, convolutions inside lax.scan run many times slower.
        x = _shift(k, x_all[idx], max_shift)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y_all[idx])
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    for epoch in range(epochs):
        perm_key, shift_key = jax.random.split(jax.random.fold_in(data_key, epoch))
        order = np.asarray(jax.random.permutation(perm_key, n))
        shift_keys = jax.random.split(shift_key, steps_per_epoch)
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE].astype(np.int32)
            params, opt_state, loss = step(params, opt_state, x_all, y_all, idx, shift_keys[i])
            losses.append(loss)
        if verbose and (epoch + 1) % 10 == 0:
            print(f"  {size}px epoch {epoch + 1}/{epochs}: loss {float(np.mean(jax.device_get(losses))):.4f}")

    test_pred = _predict(model, params, test_x)
    train_pred = _predict(model, params, train_x)
    errors = int(np.sum(test_pred != test_y))
    info = {
        "version": VERSION,
        "size": size,
        "seed": int(seed),
        "epochs": int(epochs),
        "feature_dim": FEATURE_DIM,
        "num_train": int(train_x.shape[0]),
        "num_test": int(test_x.shape[0]),
        "test_accuracy": float(np.mean(test_pred == test_y)),
        "test_errors": errors,
        "train_accuracy": float(np.mean(train_pred == train_y)),
        "jax_version": jax.__version__,
        "platform": jax.default_backend(),
    }
    return jax.device_get(params), info


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
    return model.apply({"params": params}, images.astype(jnp.float32))


def _predict(model, params, images):
    return np.asarray(jnp.argmax(_logits(model, params, jnp.asarray(images, jnp.float32)), axis=-1))


def load_classifier(size, cache_dir=None, train_if_missing=True, verbose=False):
    """The size-px classifier of `VERSION`, read from the cache, or trained from `SEED` and cached when missing.

    Args:
      size: 8, 16 or 32.
      cache_dir: the cache directory; None: `digits_classifier.default_cache_dir()`.
      train_if_missing: train and save when the weights file is absent (else FileNotFoundError).
      verbose: print training progress.

    Returns:
      A `Classifier`.

    Raises:
      ValueError: the weights file does not hold this classifier's parameters (wrong size, version or a damaged
        file); the message names the file to delete.
    """
    size = check_size(size)
    path = weights_path(size, cache_dir)
    if os.path.exists(path):
        return read_classifier(size, cache_dir)
    if not train_if_missing:
        raise FileNotFoundError(f"no FD-digits {size}px classifier ({VERSION}) at {path}; run "
                                f"scripts/train_fd_digits.py --size {size} or pass train_if_missing=True")
    classifier = train_classifier(size, verbose=verbose)
    return dataclasses.replace(classifier, path=save_classifier(classifier, cache_dir))


_LOADED = {}


def classifier(size, cache_dir=None):
    """`load_classifier` memoised per weights file (and its modification time) in this process."""
    path = weights_path(size, cache_dir)
    stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    cached = _LOADED.get(path)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    loaded = load_classifier(size, cache_dir)
    _LOADED[path] = (os.stat(loaded.path).st_mtime_ns, loaded)
    return loaded
