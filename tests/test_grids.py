import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsamplers import schedules

PROCESSES = ["vp_linear", "vp_cosine", "vp_discrete", "ve", "edm", "ot"]
STANDARD = ["uniform", "quadratic", "power", "logsnr", "edm", "flow_shift"]  # vp_time: only on wide ranges


@settings(max_examples=150, deadline=None)
@given(
    grid=st.sampled_from(STANDARD),
    process_name=st.sampled_from(PROCESSES),
    num_steps=st.integers(1, 200),
    lo=st.floats(0.0, 0.45),
    hi=st.floats(0.55, 1.0),
)
def test_every_grid_is_strictly_decreasing_with_exact_endpoints(grid, process_name, num_steps, lo, hi):
    p = schedules.get_process(process_name)
    span = p.t_max - p.t_min
    t_min, t_max = p.t_min + lo * span, p.t_min + hi * span
    ts = np.asarray(schedules.get_timesteps(grid, p, num_steps, t_min=t_min, t_max=t_max))
    assert ts.shape == (num_steps + 1,)
    assert np.all(np.diff(ts) < 0)
    assert ts[0] == t_max and ts[-1] == t_min


def test_logsnr_grid_is_uniform_in_log_snr():
    p = schedules.get_process("vp_linear")
    lam = np.asarray(p.log_snr(schedules.get_timesteps("logsnr", p, 12)))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)


def test_power_grid_formula():
    p = schedules.get_process("vp_linear")
    n, k, t0, T = 7, 3.0, 1e-3, 1.0
    expected = [(T ** (1 / k) + i / n * (t0 ** (1 / k) - T ** (1 / k))) ** k for i in range(n + 1)]
    np.testing.assert_allclose(schedules.get_timesteps("power", p, n, exponent=k), expected, rtol=1e-12)
    np.testing.assert_allclose(schedules.get_timesteps("quadratic", p, n),
                               schedules.get_timesteps("power", p, n, exponent=2.0), rtol=1e-14)


def test_edm_grid_matches_karras_with_final_zero():
    p = schedules.get_process("edm")
    n, rho, smin, smax = 18, 7.0, 0.002, 80.0
    ts = np.asarray(schedules.get_timesteps("edm", p, n, append_zero=True))
    # Karras et al. eq. 5 with N = n points, then sigma_N = 0.
    i = np.arange(n)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(ts[:-1], expected, rtol=1e-12)
    assert ts[-1] == 0.0 and ts.shape == (n + 1,)


def test_edm_grid_on_vp_is_the_rho_grid_in_gamma():
    p = schedules.get_process("vp_linear")
    g = np.asarray(p.gamma(schedules.get_timesteps("edm", p, 10)))
    gmax, gmin = g[0], g[-1]
    expected = np.linspace(gmax ** (1 / 7), gmin ** (1 / 7), 11) ** 7
    np.testing.assert_allclose(g, expected, rtol=1e-9)


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_vp_time_grid_is_the_power_grid_of_the_fitted_vp_sde(exponent):
    """On EDM's sigma in [0.002, 80] (diff-sampler's DEIS rows: exponent 2), the grid is the power grid in s from 1
    to eps = 1e-3 of the linear-beta VP SDE through both ends, mapped by gamma = sigma / alpha: built here from the
    framework's own vp_linear process with beta_d and beta_min solved from gamma(1) = 80, gamma(1e-3) = 0.002."""
    edm, eps, n = schedules.get_process("edm"), 1e-3, 9
    big, small = np.log1p(80.0**2), np.log1p(0.002**2)  # = beta_d / 2 + beta_min, and (beta_d eps / 2 + beta_min) eps
    beta_d = (big - small / eps) / (0.5 - 0.5 * eps)
    vp = schedules.get_process("vp_linear", beta_min=big - 0.5 * beta_d, beta_max=big + 0.5 * beta_d)
    s = schedules.get_timesteps("power", vp, n, exponent=exponent, t_min=eps, t_max=1.0)
    ts = schedules.get_timesteps("vp_time", edm, n, exponent=exponent, t_min=0.002, t_max=80.0)
    np.testing.assert_allclose(np.asarray(ts), np.asarray(vp.gamma(s)), rtol=1e-10)  # float64 exp / log1p rounding
    with pytest.raises(ValueError, match="no increasing linear-beta VP SDE"):
        schedules.get_timesteps("vp_time", "vp_linear", 2, t_min=0.25, t_max=1.0)


def test_flow_shift_on_rectified_flow_is_the_sd3_formula():
    p = schedules.get_process("ot")
    s, n = 3.0, 8
    ts = np.asarray(schedules.get_timesteps("flow_shift", p, n, t_min=0.0, t_max=1.0, shift=s))
    u = np.linspace(1, 0, n + 1)
    np.testing.assert_allclose(ts, s * u / (1 + (s - 1) * u), rtol=1e-12, atol=1e-15)


def test_list_grid_resamples_log_linearly_in_gamma():
    p = schedules.get_process("edm")
    values = [80.0, 10.0, 1.0, 0.1]
    same = schedules.get_timesteps("list", p, 3, values=values)
    np.testing.assert_allclose(same, values)
    finer = np.asarray(schedules.get_timesteps("list", p, 6, values=values))
    np.testing.assert_allclose(finer[::2], values, rtol=1e-12)
    np.testing.assert_allclose(finer[1], np.sqrt(80.0 * 10.0), rtol=1e-12)


def test_published_lists_round_trip_and_resample():
    vp = schedules.get_process("vp_discrete")
    for name in ("ays_sd15", "ays_sdxl"):  # Stable Diffusion's discrete VP table
        ays = schedules.get_timesteps("published", vp, 10, schedule=name)
        np.testing.assert_allclose(vp.gamma(ays), schedules.grids.published.LISTS[name]["values"], rtol=1e-9)
    edm = schedules.get_process("edm", t_max=700.0)  # SVD's sigmas reach 700
    ays = schedules.get_timesteps("published", edm, 10, schedule="ays_svd")
    np.testing.assert_allclose(edm.gamma(ays), schedules.grids.published.LISTS["ays_svd"]["values"], rtol=1e-9)
    ot = schedules.get_process("ot")
    oss = np.asarray(schedules.get_timesteps("published", ot, 10, schedule="oss_flux"))
    np.testing.assert_allclose(oss, schedules.grids.published.LISTS["oss_flux"]["values"], rtol=1e-9)
    assert np.all(np.diff(np.asarray(schedules.get_timesteps("published", ot, 25, schedule="oss_flux"))) < 0)


def test_file_grid_round_trip(tmp_path):
    p = schedules.get_process("vp_linear")
    ts = schedules.get_timesteps("logsnr", p, 7)
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"ts": np.asarray(ts).tolist(), "process": "vp_linear", "solver": "ddim"}))
    np.testing.assert_allclose(schedules.get_timesteps("file", p, 7, path=str(path)), ts, rtol=1e-15)
    assert schedules.get_timesteps("file", p, 14, path=str(path)).shape == (15,)
    (tmp_path / "bad.json").write_text(json.dumps({"t": [1.0, 0.5]}))
    with pytest.raises(ValueError, match="no 'ts'"):
        schedules.get_timesteps("file", p, 3, path=str(tmp_path / "bad.json"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cosine_grid"), "valid names"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(t_min=0.5, t_max=0.5), "t_min < t_max"),
        (dict(process="ve", t_min=0.0), "never reaches sigma = 0"),
        (dict(name="list", values=[0.1, 0.5]), "strictly decreasing"),
        (dict(name="published", schedule="nope"), "valid names"),
        (dict(name="power", exponent=-1.0), "positive"),
    ],
)
def test_bad_grid_input_is_a_clear_error(kwargs, match):
    args = dict(name="logsnr", process="vp_linear", num_steps=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        schedules.get_timesteps(args.pop("name"), args.pop("process"), args.pop("num_steps"), **args)


def test_float32_grid_that_cannot_be_separated_is_an_error():
    import jax

    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="not strictly decreasing"):
            schedules.get_timesteps("uniform", "vp_linear", 10, t_min=0.5, t_max=0.5 + 1e-7)


def test_get_timesteps_inside_jit():
    """A grid built inside an outer jit is a constant (the bottleneck sampler builds its stages' grids there)."""
    process = schedules.get_process("ot")
    ts = schedules.get_timesteps("flow_shift", process, 5, shift=2.0, t_min=0.0, t_max=1.0)
    inside = jax.jit(lambda: schedules.get_timesteps("flow_shift", process, 5, shift=2.0, t_min=0.0, t_max=1.0))()
    np.testing.assert_array_equal(inside, ts)


def test_respaced_grid_is_guided_diffusions_space_timesteps():
    """guided-diffusion's space_timesteps(1000, "K") (respace.py), recorded from its code for K = 10 and 25."""
    recorded = {10: [0, 111, 222, 333, 444, 555, 666, 777, 888, 999],
                25: [0, 42, 83, 125, 166, 208, 250, 291, 333, 375, 416, 458, 500, 541, 583, 624, 666, 708, 749, 791,
                     832, 874, 916, 957, 999]}
    p = schedules.get_process("vp_discrete")
    for k, index in recorded.items():
        ts = np.asarray(schedules.get_timesteps("respaced", p, k - 1), np.float64)
        np.testing.assert_array_equal(np.rint(ts * 1000 - 1)[::-1], index)
        np.testing.assert_allclose(ts * 1000 - 1, np.rint(ts * 1000 - 1), atol=1e-3)  # on the integer steps
    with pytest.raises(ValueError, match="discrete-time process"):
        schedules.get_timesteps("respaced", schedules.get_process("vp_linear"), 10)
    with pytest.raises(ValueError, match="fewer than"):
        schedules.get_timesteps("respaced", p, 10, t_min=0.5, t_max=0.505)
