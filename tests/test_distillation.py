"""Schedule distillation: the dynamic programs against brute-force enumeration, options, files, bad input."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.schedules.optimal import distillation

N, M = 10, 3


@pytest.fixture(scope="module")
def small():
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3)
    x0 = gm.marginal_sample(jax.random.PRNGKey(10), 64, p.t_max, p)
    ts = schedules.get_timesteps("logsnr", p, N)
    teacher = distillation.teacher_trajectory(gm.model_fn(p), p, x0, ts, samplers.get_solver("deis_tab", order=3))
    return p, gm, x0, ts, teacher


def _paths(n, m):
    return [(0,) + mid + (n,) for mid in itertools.combinations(range(1, n), m - 1)]


def _path_cost(cost, path, coeff):
    return sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:])))


@pytest.mark.parametrize("coeff", [1.0, 1.15, 0.8])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_bellman_dp_is_the_brute_force_optimum(coeff, m):
    rng = np.random.default_rng(m)
    cost = rng.exponential(size=(N + 1, N + 1))
    values, pointers = distillation.bellman_tables(jnp.asarray(cost), m, coeff)
    path = distillation.backtrack_forward(pointers, 0, m)
    brute = min(_paths(N, m), key=lambda q: _path_cost(cost, q, coeff))
    assert tuple(path) == brute
    assert float(values[m - 1, 0]) == pytest.approx(_path_cost(cost, brute, coeff), rel=1e-12)


@pytest.mark.parametrize("method", ["bellman", "gits"])
def test_boss_and_gits_on_a_teacher_match_brute_force(method, small):
    p, gm, x0, ts, teacher = small
    # C[i, j] by brute force: one DDIM step from the teacher state i to t_j, through samplers.sample.
    cost = np.full((N + 1, N + 1), np.inf)
    model = gm.model_fn(p)  # one function object: one compiled sampler for all pairs
    for i, j in itertools.combinations(range(N + 1), 2):
        y, _ = samplers.sample(model, "ddim", p, teacher[i], jnp.stack([ts[i], ts[j]]))
        cost[i, j] = float(jnp.mean((y - teacher[j]) ** 2))
    out, info = schedules.distill(method, model, "ddim", p, x0, M, teacher_steps=N, return_info=True)
    coeff = info["coeff"]
    brute = min(_paths(N, M), key=lambda q: _path_cost(cost, q, coeff))
    assert tuple(info["indices"]) == brute
    assert info["cost"] == pytest.approx(_path_cost(cost, brute, coeff), rel=1e-9)
    np.testing.assert_allclose(out, np.asarray(ts)[list(brute)])


@pytest.mark.parametrize("seed, components", [(0, 3), (1, 1)])
def test_oss_finds_the_best_carried_state_path(seed, components):
    """Enumerate every 3-step DDIM student on a 10-step teacher, carrying its own state: OSS picks the best."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(seed), dim=4, num_components=components)
    x0 = gm.marginal_sample(jax.random.PRNGKey(seed + 10), 64, p.t_max, p)
    model = gm.model_fn(p)
    out, info = schedules.distill("oss", model, "ddim", p, x0, M, teacher_steps=N, return_info=True)
    ts = info["teacher_ts"]
    teacher_end = distillation.teacher_trajectory(model, p, x0, ts, samplers.get_solver("deis_tab", order=3))[-1]
    costs = {}
    for path in _paths(N, M):
        x, _ = samplers.sample(model, "ddim", p, x0, ts[list(path)])
        costs[path] = float(jnp.mean((x - teacher_end) ** 2))
    best = min(costs, key=costs.get)
    assert tuple(info["indices"]) == best
    assert info["cost"] == pytest.approx(costs[best], rel=1e-9)
    assert info["model_calls"] == N * 1 + M * (N + 1)


def test_oss_options(small):
    p, gm, x0, ts, teacher = small
    model = gm.model_fn(p)
    exact, info_exact = schedules.distill("oss", model, "ddim", p, x0, 4, teacher_steps=N, return_info=True)
    at_most, info_most = schedules.distill("oss", model, "ddim", p, x0, 4, teacher_steps=N, exact_steps=False,
                                           return_info=True)
    assert info_most["cost"] <= info_exact["cost"] + 1e-15 and len(at_most) == info_most["num_steps"] + 1
    free, info_free = schedules.distill("oss", model, "ddim", p, x0, 4, teacher_steps=N, start_at_t_max=False,
                                        return_info=True)
    assert float(free[0]) <= float(ts[0]) and float(free[-1]) == float(ts[-1])
    median = schedules.distill("oss", model, "ddim", p, x0, 4, teacher_steps=N, aggregate="median")
    for grid in (exact, at_most, free, median):
        assert np.all(np.diff(np.asarray(grid)) < 0)
    assert median.shape == (5,) and float(median[0]) == float(ts[0]) and float(median[-1]) == float(ts[-1])


def test_median_of_index_lists_is_strictly_increasing_with_fixed_ends():
    paths = np.array([[0, 3, 4, 10], [0, 3, 3 + 1, 10], [0, 5, 5 + 1, 10], [0, 2, 9, 10]])
    med = distillation.median_path(paths, 10)
    assert med[0] == 0 and med[-1] == 10 and np.all(np.diff(med) > 0)
    crowded = distillation.median_path(np.array([[0, 9, 9, 10], [0, 9, 9, 10]]), 10)
    assert crowded.tolist() == [0, 8, 9, 10]


def test_euler_and_first_order_deis_students(small):
    p, gm, x0, ts, teacher = small
    for student in ("euler", samplers.get_solver("deis_tab", order=1)):
        out = schedules.distill("bellman", gm.model_fn(p), student, p, x0, M, teacher_steps=N)
        assert out.shape == (M + 1,) and np.all(np.diff(np.asarray(out)) < 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="bogus"), "valid names"),
        (dict(num_steps=11), "more than the teacher"),
        (dict(num_steps=0), "num_steps"),
        (dict(teacher_steps=0), "non-empty teacher"),
        (dict(student="dpmpp_2m"), "single-step"),
        (dict(student="heun"), "single-step"),
        (dict(aggregate="mode"), "aggregate"),
        (dict(method="bellman", aggregate="median"), "for 'oss'"),
        (dict(method="bellman", metric="l3"), "metric"),
        (dict(x_init=jnp.zeros(())), "batch axis"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, match, small):
    p, gm, x0, ts, teacher = small
    args = dict(method="oss", model_fn=gm.model_fn(p), solver="ddim", process=p, x_init=x0, num_steps=M,
                teacher_steps=N)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        schedules.distill(args.pop("method"), args.pop("model_fn"), args.pop("solver"), args.pop("process"),
                          args.pop("x_init"), args.pop("num_steps"), **args)


def test_other_solvers_are_priced_by_their_first_order_step(small):
    """As in DESIGN's example, distill takes the solver the schedule is for: its DP prices DDIM (or Euler) steps."""
    p, gm, x0, ts, teacher = small
    model = gm.model_fn(p)
    for solver, student in ((samplers.get_solver("deis_tab", order=3), "ddim"), ("dpmpp_2m", "ddim"),
                            ("heun", "euler")):
        out, info = schedules.distill("oss", model, solver, p, x0, M, teacher_steps=N, return_info=True)
        assert info["student"] == student and out.shape == (M + 1,)
    explicit = schedules.distill("oss", model, "dpmpp_2m", p, x0, M, teacher_steps=N, student="ddim")
    plain = schedules.distill("oss", model, "ddim", p, x0, M, teacher_steps=N)
    np.testing.assert_array_equal(explicit, plain)


def test_schedule_file_round_trip(tmp_path, small):
    p, gm, x0, ts, teacher = small
    out, info = schedules.distill("oss", gm.model_fn(p), "ddim", p, x0, M, teacher_steps=N, return_info=True)
    path = str(tmp_path / "sched" / "oss.json")
    schedules.save_schedule(path, out, process=p, solver="ddim", nfe=M, method="oss", cost=info["cost"],
                            teacher={"steps": N, "solver": info["teacher_solver"]}, indices=info["indices"])
    loaded, record = schedules.load_schedule(path)
    np.testing.assert_array_equal(loaded, np.asarray(out))
    assert record["process"] == "vp_linear" and record["method"] == "oss" and record["nfe"] == M
    assert record["indices"] == info["indices"].tolist() and "date" in record
    np.testing.assert_array_equal(schedules.get_timesteps("file", p, M, path=path), out)
    resampled = schedules.get_timesteps("file", p, 2 * M, path=path)
    np.testing.assert_allclose(resampled[::2], out, rtol=1e-10)  # log-linear in gamma: old points kept
    with pytest.raises(ValueError, match="made for process 'vp_linear'"):
        schedules.get_timesteps("file", "edm", M, path=path)
    (tmp_path / "bad.json").write_text(json.dumps({"ts": [0.5, 0.7]}))
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedules.load_schedule(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("method, options", [("oss", {}), ("oss", dict(aggregate="median", start_at_t_max=False)),
                                             ("bellman", {}), ("gits", {})])
def test_distill_many_is_distill_for_every_count(method, options, small):
    """One DP of max(counts) stages holds every smaller count's optimum: the same indices as separate runs (on a
    30-step teacher from the small problem's noise)."""
    p, gm, x0, _, _ = small
    model = gm.model_fn(p)
    many = schedules.distill_many(method, model, "ddim", p, x0, (6, 2), teacher_steps=30, return_info=True,
                                  **options)
    assert list(many) == [2, 6]
    for k, (ts, info) in many.items():
        alone, info_alone = schedules.distill(method, model, "ddim", p, x0, k, teacher_steps=30, return_info=True,
                                              **options)
        np.testing.assert_array_equal(info["indices"], info_alone["indices"])
        np.testing.assert_array_equal(np.asarray(ts), np.asarray(alone))
        assert ts.shape == (k + 1,) and info["num_steps"] == k
        assert info["cost"] == pytest.approx(info_alone["cost"], rel=1e-12, abs=1e-300)
    if method == "bellman":  # (cheap to run again) repeats merged; without return_info just the times
        plain = schedules.distill_many(method, model, "ddim", p, x0, [6, 1, 6], teacher_steps=30)
        assert list(plain) == [1, 6] and plain[1].shape == (2,)
        np.testing.assert_array_equal(np.asarray(plain[6]), np.asarray(many[6][0]))


def test_distill_many_with_one_count_keeps_the_at_most_option(small):
    p, gm, x0, _, _ = small
    model = gm.model_fn(p)
    ts, info = schedules.distill_many("oss", model, "ddim", p, x0, (6,), teacher_steps=30, exact_steps=False,
                                      return_info=True)[6]
    alone, info_alone = schedules.distill("oss", model, "ddim", p, x0, 6, teacher_steps=30, exact_steps=False,
                                          return_info=True)
    np.testing.assert_array_equal(info["indices"], info_alone["indices"])
    assert info["num_steps"] == info_alone["num_steps"] <= 6


@pytest.mark.parametrize("step_counts, kwargs, match", [
    ((), {}, "step_counts is empty"),
    (4, {}, "sequence of integers"),
    ("34", {}, "sequence of integers"),
    ((2, 0), {}, r"step_counts\[1\] must be an integer >= 1, got 0"),
    ((2, 2.5), {}, r"step_counts\[1\] must be an integer >= 1, got 2.5"),
    ((True,), {}, r"step_counts\[0\] must be an integer"),
    ((3, 11), {}, r"step_counts\[1\] = 11 is more than the teacher's 10 steps"),
    ((2, 3), dict(exact_steps=False), "exact_steps=False .* single k"),
    ((2, 3), dict(method="gits", aggregate="median"), "for 'oss'"),
    ((2, 3), dict(method="boss"), "valid names"),
    ((2, 3), dict(teacher_steps=0), "non-empty teacher"),
])
def test_distill_many_bad_step_counts_are_clear_errors(step_counts, kwargs, match, small, monkeypatch):
    p, gm, x0, ts, teacher = small
    monkeypatch.setattr(distillation, "teacher_trajectory", lambda *a, **k: pytest.fail("the teacher was computed"))
    args = dict(method="oss", teacher_steps=N)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        schedules.distill_many(args.pop("method"), gm.model_fn(p), "ddim", p, x0, step_counts, **args)


@pytest.mark.parametrize("method", ["oss", "bellman"])
def test_args_are_traced_the_same_result_and_one_trace_for_new_parameter_values(method, small):
    """model_fn(x, t, args) with args=oracle gives the closure's schedule and costs; new parameter values of the same
    shapes reuse the compiled teacher and DP (the model is traced once per program, not once per call)."""
    p, gm, x0, _, _ = small
    traces = []

    def model_fn(x, t, oracle):
        traces.append(1)
        return oracle.predict(x, t, p)

    other = gm.replace(means=gm.means + 0.25)
    outs = []
    for oracle in (gm, other):
        ts, info = schedules.distill(method, model_fn, "ddim", p, x0, 3, teacher_steps=12, args=oracle,
                                     return_info=True)
        closed, info_closed = schedules.distill(method, lambda x, t: oracle.predict(x, t, p), "ddim", p, x0, 3,
                                                teacher_steps=12, return_info=True)
        np.testing.assert_array_equal(np.asarray(ts), np.asarray(closed))
        np.testing.assert_array_equal(info["indices"], info_closed["indices"])
        assert info["cost"] == pytest.approx(info_closed["cost"], rel=1e-12, abs=1e-300)
        outs.append(info["cost"])
        if oracle is gm:
            first = len(traces)
    assert len(traces) == first and outs[0] != outs[1]
    many = schedules.distill_many(method, model_fn, "ddim", p, x0, (2, 3), teacher_steps=12, args=other)
    np.testing.assert_array_equal(np.asarray(many[3]), np.asarray(ts))
    assert len(traces) == first  # distill_many of the largest count 3 reuses distill's programs
