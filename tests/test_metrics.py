"""Metrics: exact empirical W2 against closed forms; straightness on straight and bent trajectories."""

import numpy as np
import pytest

from fastsamplers.experiments.metrics import transport


def test_w2_between_gaussian_samples_matches_the_closed_form():
    # W2^2(N(m1, diag s1^2), N(m2, diag s2^2)) = |m1 - m2|^2 + |s1 - s2|^2 (commuting covariances).
    rng = np.random.default_rng(0)
    m1, s1 = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    m2, s2 = np.array([3.0, -1.0]), np.array([0.5, 1.0])
    n = 1000  # scipy's assignment takes about a second at this size
    x = m1 + s1 * rng.standard_normal((n, 2))
    y = m2 + s2 * rng.standard_normal((n, 2))
    exact = np.sqrt(np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2))
    assert transport.w2_exact(x, y) == pytest.approx(exact, rel=0.03)
    # 1D: the optimal matching is the sorted one, and the empirical estimate converges fast.
    a, b = rng.standard_normal(n), 2.0 + 3.0 * rng.standard_normal(n)
    w2 = transport.w2_exact(a[:, None], b[:, None])
    assert w2 == pytest.approx(np.sqrt(4.0 + 4.0), rel=0.05)
    assert w2 == pytest.approx(np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)), rel=1e-12)


def test_w2_of_a_set_with_itself_and_with_a_shift():
    x = np.random.default_rng(1).standard_normal((200, 3, 2))  # any per-example shape: flattened
    assert transport.w2_exact(x, x) == 0.0
    assert transport.w2_exact(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)  # the order does not matter
    shift = np.array([[0.3, -1.2], [2.0, 0.0], [0.5, 0.5]])
    assert transport.w2_exact(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-12)


def test_w2_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal size"):
        transport.w2_exact(np.zeros((5, 2)), np.zeros((6, 2)))


def test_straightness_is_zero_for_straight_constant_speed_lines():
    rng = np.random.default_rng(2)
    start, end = rng.standard_normal((16, 4)), rng.standard_normal((16, 4))
    ts = np.array([1.0, 0.7, 0.45, 0.1, 0.0])  # decreasing, uneven, like a sampler's grid
    s = (ts - ts[0]) / (ts[-1] - ts[0])
    trajectory = start[None] + s[:, None, None] * (end - start)[None]
    assert transport.straightness(trajectory, ts) == pytest.approx(0.0, abs=1e-20)


def test_straightness_of_a_bent_trajectory_by_hand():
    # One sample, t = 0, 0.25, 1: velocities (4, 4) and (4/3, -4/3), overall (2, 0).
    # |(2, 4)|^2 = 20 over 0.25 and |(-2/3, -4/3)|^2 = 20/9 over 0.75: S = 0.25 * 20 + 0.75 * 20/9 = 20/3.
    trajectory = np.array([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]])
    assert transport.straightness(trajectory, np.array([0.0, 0.25, 1.0])) == pytest.approx(20.0 / 3.0)
    # The same path run backwards in time (t from 1 to 0) is just as bent.
    assert transport.straightness(trajectory[::-1], np.array([1.0, 0.75, 0.0])) == pytest.approx(20.0 / 3.0)
    # Mean over samples: a straight sample beside the bent one halves S.
    pair = np.concatenate([trajectory, np.array([[[0.0, 0.0]], [[0.5, 0.0]], [[2.0, 0.0]]])], axis=1)
    assert transport.straightness(pair, np.array([0.0, 0.25, 1.0])) == pytest.approx(10.0 / 3.0)


def test_straightness_checks_its_inputs():
    with pytest.raises(ValueError, match="monotone"):
        transport.straightness(np.zeros((3, 2, 1)), np.array([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="N\\+1"):
        transport.straightness(np.zeros((3, 2, 1)), np.array([0.0, 1.0]))
