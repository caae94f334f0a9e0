"""UniPC (Zhao et al. 2023): its coefficient table against the paper's formulas written out here, its special cases
(UniP-1 is DDIM in data prediction, a step to sigma = 0 returns x0_hat), the corrector's gain at NFE 10, its
asymptotic order, bad options, and parity with diffusers' `UniPCMultistepScheduler` (a recorded fixture, and live
where diffusers imports)."""

import decimal
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.models import GaussianMixture
from fastsamplers.samplers.base import step_inputs
from fastsamplers.samplers.unipc import g_functions
from sweep import slow_unless
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "unipc_diffusers.npz")

# The option sets of the hand-formula checks: orders 1-3, bh1 and bh2, corrector on and off, lower_order_final on/off.
CONFIGS = [dict(order=o, variant=v, corrector=c, lower_order_final=f)
           for o in (1, 2, 3) for v in ("bh1", "bh2") for c in (True, False) for f in (True, False)
           if not (o == 1 and not f)]  # lower_order_final changes nothing at order 1


def _id(opts):
    return f"o{opts['order']}-{opts['variant']}" + ("" if opts["corrector"] else "-P") + \
        ("" if opts["lower_order_final"] else "-nolof")


# ---- the paper's formulas, by hand -----------------------------------------------------------------------------

def _g(z, k):
    """g_k = k! z phi_{k+1}(z), closed forms."""
    e = np.exp(z)
    return {1: (e - 1 - z) / z, 2: 2 * (e - 1 - z - z**2 / 2) / z**2,
            3: 6 * (e - 1 - z - z**2 / 2 - z**3 / 6) / z**3}[k]


def _hand_orders(num_steps, order, lower_order_final):
    """Warm-up min(i + 1, p); with lower_order_final also min(., num_steps - i), at every step count."""
    return [min(order, i + 1, num_steps - i if lower_order_final else order) for i in range(num_steps)]


def _hand_terms(lam, i, k, variant):
    """h, r_m, B(h), rho^p, rho^c of the step from t_i (UniP-K and UniC-K): the Vandermonde systems solved by
    Cramer's rule / Lagrange coefficients, with the paper's rho^p = 1/2 (K = 2) and rho^c = 1/2 (K = 1)."""
    h = lam[i + 1] - lam[i]
    z = -h
    big_b = z if variant == "bh1" else np.expm1(z)
    r = [(lam[i - m] - lam[i]) / h for m in range(1, k)]
    b = [_g(z, n) / big_b for n in range(1, k + 1)]
    if k == 1:
        rho_p, rho_c = [], [0.5]
    elif k == 2:  # UniC nodes (r1, 1): rho1 + rho2 = b1, r1 rho1 + rho2 = b2
        rho_p = [0.5]
        rho_c = [(b[1] - b[0]) / (r[0] - 1), (b[1] - r[0] * b[0]) / (1 - r[0])]
    else:  # UniP nodes (r1, r2); UniC nodes (r1, r2, 1)
        r1, r2 = r
        rho_p = [(b[1] - r2 * b[0]) / (r1 - r2), (b[1] - r1 * b[0]) / (r2 - r1)]
        nodes = [r1, r2, 1.0]
        rho_c = []
        for m, x_m in enumerate(nodes):
            xa, xb = (x for j, x in enumerate(nodes) if j != m)
            rho_c.append((b[2] - (xa + xb) * b[1] + xa * xb * b[0]) / ((x_m - xa) * (x_m - xb)))
    return h, r, big_b, rho_p, rho_c


def _hand_unipc(model, process, ts, x, opts):
    """UniPC as the paper (and diffusers) write it: UniP from the corrected point; UniC of x_i from the corrected
    x_{i-1}, the past predictions and the prediction at the uncorrected x_i; no corrector after the last step."""
    ts = np.asarray(ts)
    lam, alpha, sigma = (np.asarray(f(ts)) for f in (process.log_snr, process.alpha, process.sigma))
    n = ts.shape[0] - 1
    orders = _hand_orders(n, opts["order"], opts["lower_order_final"])
    ms, x_c = [], None
    for i in range(n):
        ms.append(np.asarray(model(jnp.asarray(x), ts[i])))
        if opts["corrector"] and i > 0:
            k = orders[i - 1]
            h, r, big_b, _, rho_c = _hand_terms(lam, i - 1, k, opts["variant"])
            res = sum(rho_c[m - 1] * (ms[i - 1 - m] - ms[i - 1]) / r[m - 1] for m in range(1, k))
            x = (sigma[i] / sigma[i - 1] * x_c - alpha[i] * np.expm1(-h) * ms[i - 1]
                 - alpha[i] * big_b * (res + rho_c[k - 1] * (ms[i] - ms[i - 1])))
        x_c = x
        k = orders[i]
        h, r, big_b, rho_p, _ = _hand_terms(lam, i, k, opts["variant"])
        res = sum(rho_p[m - 1] * (ms[i - m] - ms[i]) / r[m - 1] for m in range(1, k))
        x = sigma[i + 1] / sigma[i] * x_c - alpha[i + 1] * np.expm1(-h) * ms[i] - alpha[i + 1] * big_b * res
    return x


@pytest.fixture(scope="module")
def small_problem():
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(3), dim=3, num_components=2, std_range=(0.3, 0.8))
    ts = schedules.get_timesteps("quadratic", p, 7)  # non-uniform in log-SNR: h from 0.75 to 2.3
    x_init = gm.marginal_sample(jax.random.PRNGKey(4), 5, ts[0], p)
    return p, gm, ts, x_init


@pytest.mark.parametrize("opts", CONFIGS, ids=_id)
def test_terms_are_the_paper_formulas(opts, small_problem):
    p, _, ts, _ = small_problem
    solver = samplers.get_solver("unipc", **opts)
    terms = solver.terms(p, ts)
    lam = np.asarray(p.log_snr(ts))
    orders = _hand_orders(7, opts["order"], opts["lower_order_final"])
    np.testing.assert_array_equal(terms.order, orders)
    for i, k in enumerate(orders):
        h, r, big_b, rho_p, rho_c = _hand_terms(lam, i, k, opts["variant"])
        assert float(terms.h[i]) == pytest.approx(h, rel=1e-14)
        assert float(terms.B[i]) == pytest.approx(big_b, rel=1e-14)
        np.testing.assert_allclose(terms.r[i, : k - 1], r, rtol=1e-13)
        np.testing.assert_allclose(terms.rho_p[i, : k - 1], rho_p, rtol=1e-11)
        np.testing.assert_allclose(terms.rho_c[i, :k], rho_c, rtol=1e-11)
        assert not np.any(np.asarray(terms.rho_p[i, k - 1:])) and not np.any(np.asarray(terms.rho_c[i, k:]))


# Order 3 with its final steps lowered (every order of step in one run), with and without the corrector, in the
# default suite; every option set in the slow set.
@pytest.mark.parametrize("opts", slow_unless(CONFIGS, lambda o: o["order"] == 3 and o["lower_order_final"],
                                             unpack=False), ids=_id)
def test_the_step_table_reproduces_the_paper_recursion(opts, small_problem):
    """The composed table (a, b, keep, prev, c) driven through `sample` equals the paper's two-track recursion."""
    p, gm, ts, x_init = small_problem
    model = gm.model_fn(p, "x0")
    x, info = samplers.sample(model, samplers.get_solver("unipc", **opts), p, x_init, ts, prediction="x0")
    expected = _hand_unipc(model, p, ts, np.asarray(x_init), opts)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)
    assert info["nfe"] == 7


def _g_exact(z, k):
    """g_k(z) = k! sum_{j>=1} z^j / (j + k)!, summed in 60-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        zd = decimal.Decimal(float(z))
        total = sum(zd**j / math.factorial(j + k) for j in range(1, 200))
        return float(total * math.factorial(k))


def test_g_functions_match_the_exact_series():
    """Both branches (series for |z| < 1, the recursion elsewhere) to float64 precision, from z = -1e-3 to -30."""
    z = -np.concatenate([np.geomspace(1e-3, 0.999, 25), np.geomspace(1.001, 30.0, 25)])
    out = g_functions(jnp.asarray(z), 3)
    for k in (1, 2, 3):
        np.testing.assert_allclose(out[k - 1], [_g_exact(v, k) for v in z], rtol=1e-12)
    tiny = jnp.full(1, -1e-9)
    for k, g_k in enumerate(g_functions(tiny, 3), start=1):  # g_k(z) / z -> k! phi_{k+1}(0) = 1 / (k + 1)
        assert float(g_k[0] / tiny[0]) == pytest.approx(1.0 / (k + 1), rel=1e-8)


def test_order_one_without_corrector_is_ddim_in_data_prediction(small_problem):
    """UniP-1: x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) x0_hat(x_i), DPM-Solver++(1)."""
    p, gm, ts, x_init = small_problem
    model = gm.model_fn(p, "x0")
    x, _ = samplers.sample(model, samplers.get_solver("unipc", order=1, corrector=False), p, x_init, ts,
                           prediction="x0")
    lam, alpha, sigma = (np.asarray(f(ts)) for f in (p.log_snr, p.alpha, p.sigma))
    y = np.asarray(x_init)
    for i in range(7):
        y = sigma[i + 1] / sigma[i] * y + alpha[i + 1] * -np.expm1(-(lam[i + 1] - lam[i])) * np.asarray(model(y, ts[i]))
    np.testing.assert_allclose(x, y, rtol=1e-14, atol=1e-14)
    ddim, _ = samplers.sample(gm.model_fn(p), "ddim", p, x_init, ts)  # the same method in eps space
    np.testing.assert_allclose(x, ddim, rtol=1e-10, atol=1e-10)


def test_unip_2_with_bh2_is_dpm_solver_pp_2m(small_problem):
    """UniP-2's rho^p = 1/2 with B(h) = e^{-h} - 1 is DPM-Solver++(2M)'s update (both with lower-order final steps)."""
    p, gm, ts, x_init = small_problem
    model = gm.model_fn(p, "x0")
    x, _ = samplers.sample(model, samplers.get_solver("unipc", order=2, corrector=False), p, x_init, ts,
                           prediction="x0")
    reference, _ = samplers.sample(model, "dpmpp_2m", p, x_init, ts, prediction="x0")
    np.testing.assert_allclose(x, reference, rtol=1e-13, atol=1e-13)


def test_the_corrector_reduces_the_error_at_nfe_10():
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3, std_range=(0.5, 1.0))
    x_init = gm.marginal_sample(jax.random.PRNGKey(1), 256, p.t_max, p)
    ts = schedules.get_timesteps("logsnr", p, 10)
    exact = samplers.exact_flow_map(gm, p, x_init, ts[0], ts[-1])
    rmse = {}
    for order in (1, 2, 3):
        for corrector in (True, False):
            solver = samplers.get_solver("unipc", order=order, corrector=corrector)
            x, info = samplers.sample(gm.model_fn(p), solver, p, x_init, ts)
            assert info["nfe"] == 10
            rmse[order, corrector] = float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2)))
    for order in (1, 2, 3):  # measured: 0.168 / 0.258, 0.059 / 0.067, 0.061 / 0.092
        assert rmse[order, True] < rmse[order, False], rmse


@pytest.mark.slow  # tests/test_order.py checks UniPC-3's fitted order in the default suite
def test_unipc_3_is_fourth_order_asymptotically():
    """UniPC-3 with exact starting values: the local slope of log error against log N, at N = 256 -> 512, on
    tests/test_order.py's problem. Its fit over N = 32..256 there is only about 3.2 (the error falls faster than h^4
    on the coarse grids), so `convergence_order` says 3; here it reaches 3.9 (3.94 at 512 -> 1024)."""
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=4, num_components=3, std_range=(0.5, 1.0))
    p = schedules.get_process("vp_linear")
    x_init = gm.marginal_sample(jax.random.PRNGKey(1), 32, 0.8, p)
    exact = samplers.exact_flow_map(gm, p, x_init, 0.8, 0.05)
    solver = samplers.get_solver("unipc", order=3, lower_order_final=False)
    model = gm.model_fn(p, "x0")
    errors = []
    for n in (256, 512):
        ts = schedules.get_timesteps("logsnr", p, n, t_min=0.05, t_max=0.8)
        past = [jnp.asarray(samplers.exact_flow_map(gm, p, x_init, ts[0], ts[j])) for j in range(3)]
        state = solver.past_state(past, [model(past[j], ts[j]) for j in range(2)])
        inputs = jax.tree.map(lambda a: a[2:], step_inputs(solver, p, ts))
        step = lambda carry, inp: (solver.step(model, p, *carry, inp), None)
        (x, _), _ = jax.lax.scan(step, (past[2], state), inputs)
        errors.append(np.max(np.abs(np.asarray(x) - exact)))
    assert np.log2(errors[0] / errors[1]) > 3.7, errors


@pytest.mark.parametrize("opts", slow_unless([{}, dict(lower_order_final=False),
                                              dict(variant="bh1", lower_order_final=False), dict(order=1),
                                              dict(corrector=False)], lambda o: o in ({}, dict(corrector=False)),
                                             unpack=False), ids=str)
def test_a_final_step_to_sigma_zero(opts):
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    x_init = gm.marginal_sample(jax.random.PRNGKey(1), 64, p.t_max, p)
    ts = schedules.get_timesteps("logsnr", p, 12, append_zero=True)
    solver = samplers.get_solver("unipc", **opts)
    coef = solver.coefficients(p, ts)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(coef))
    assert int(solver.terms(p, ts).order[-1]) == 1  # whatever lower_order_final says
    assert float(coef.a[-1]) == 0.0
    np.testing.assert_allclose(coef.b[-1], np.eye(solver.order + 1)[0], atol=1e-15)  # returns x0_hat
    x, info = samplers.sample(gm.model_fn(p, "x0"), solver, p, x_init, ts, prediction="x0")
    exact = samplers.exact_flow_map(gm, p, x_init, ts[0], 0.0)
    assert info["nfe"] == 12
    assert np.sqrt(np.mean((np.asarray(x) - exact) ** 2)) < 0.1


def test_coefficients_are_differentiable_in_the_grid():
    p = schedules.get_process("vp_linear")
    for ts in (schedules.get_timesteps("logsnr", p, 6), schedules.get_timesteps("quadratic", p, 9)):
        for opts in ({}, dict(order=2, variant="bh1", lower_order_final=False)):
            solver = samplers.get_solver("unipc", **opts)
            loss = lambda t: sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(solver.coefficients(p, t)))
            grad = jax.jit(jax.grad(loss))(ts)
            assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0


@pytest.mark.parametrize("opts, match", [
    (dict(order=4), r"order in \[1, 2, 3\]"),
    (dict(order=0), r"order in \[1, 2, 3\]"),
    (dict(order=True), r"order in \[1, 2, 3\]"),
    (dict(variant="bh3"), "'bh1'.*'bh2'"),
    (dict(corrector="yes"), "corrector must be True or False"),
    (dict(lower_order_final=1), "lower_order_final must be True or False"),
    (dict(solver_type="bh2"), "valid options"),
    (dict(predict_x0=False), "valid options"),
])
def test_bad_options_are_clear_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        samplers.get_solver("unipc", **opts)


@pytest.mark.parametrize("num_steps", slow_unless([3, 7, 16], lambda n: n == 7, unpack=False))
def test_dpmpp_2m_with_the_unic_corrector_is_unipc_2_bh2(num_steps):
    """UniC as an option of DPM-Solver++: the 2M update is UniP-2 bh2, so with the corrector (and one
    lower_order_final rule) dpmpp_2m is UniPC-2 bh2, to rounding, also on a grid ending at sigma = 0."""
    p = schedules.get_process("vp_linear")
    gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=3, num_components=2)
    x_init = p.prior(jax.random.PRNGKey(1), (8, 3))
    ts = schedules.get_timesteps("logsnr", p, num_steps, append_zero=num_steps == 7)
    model = gm.model_fn(p, "x0")
    ours, info = samplers.sample(model, samplers.get_solver("dpmpp_2m", corrector=True, lower_order_final=False), p,
                                 x_init, ts, prediction="x0")
    theirs, _ = samplers.sample(model, samplers.get_solver("unipc", order=2, variant="bh2", lower_order_final=False),
                                p, x_init, ts, prediction="x0")
    plain, _ = samplers.sample(model, samplers.get_solver("dpmpp_2m", lower_order_final=False), p, x_init, ts,
                               prediction="x0")
    assert info["nfe"] == num_steps
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13)
    assert np.max(np.abs(np.asarray(ours) - np.asarray(plain))) > 1e-4  # the corrector does change the sample


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_the_unic_corrector_is_refused_on_the_sdes(name):
    with pytest.raises(ValueError, match="probability-flow ODE"):
        samplers.get_solver(name, corrector=True)


@pytest.mark.parametrize("name, options", [
    ("dpmpp_2m", dict(corrector=True)), ("dpmpp_3m", dict(corrector=True, variant="third_order")),
    ("unipc", dict(order=2, variant="bh1", denoise_to_zero=True)), ("unipc", dict(corrector=False))])
def test_a_learned_file_stores_a_unic_solver_by_its_registry_spec(name, options, tmp_path):
    """A learned-sampler file holds a UniC wrapper as its predictor's name and options with corrector=True, what
    get_solver builds it from; a UniC of another variant than that build's is refused with the reason."""
    p = schedules.get_process("vp_linear")
    solver = samplers.get_solver(name, **options)
    path = str(tmp_path / "learned.json")
    schedules.save_learned(path, solver, schedules.get_timesteps("logsnr", p, 4), process=p, method="search")
    loaded = samplers.get_solver("file", path=path)
    assert loaded == solver and type(loaded) is type(solver)
    with pytest.raises(ValueError, match=r"UniC of variant 'bh1' around dpmpp_2m has no registry spec: "
                                         r"get_solver\('dpmpp_2m', corrector=True\) builds the variant 'bh2'"):
        schedules.save_learned(path, samplers.unic(samplers.get_solver("dpmpp_2m"), variant="bh1"),
                               schedules.get_timesteps("logsnr", p, 4), process=p, method="search")


def test_a_grid_shorter_than_the_order_is_refused_before_any_compute():
    p = schedules.get_process("vp_linear")
    calls = []
    model = lambda x, t: calls.append(1) or x
    with pytest.raises(ValueError, match="at least 3 steps"):
        samplers.sample(model, "unipc", p, jnp.ones((2, 3)), schedules.get_timesteps("logsnr", p, 2),
                        prediction="x0")
    assert not calls


# ---- parity with diffusers ---------------------------------------------------------------------------------------

# Fixture case name -> our options (scripts/make_unipc_fixture.py's CASES).
DIFFUSERS_CASES = {
    "o1_bh2_zero": dict(order=1), "o2_bh2_zero": dict(order=2), "o3_bh2_zero": dict(order=3),
    "o2_bh1_min": dict(order=2, variant="bh1"), "o3_bh1_min": dict(order=3, variant="bh1"),
    "o3_bh2_min_nolof": dict(order=3, lower_order_final=False),
    "o3_bh2_zero_nocorr": dict(order=3, corrector=False),
}


def _fixture():
    return np.load(FIXTURE)


def _toy_eps(process, params):
    """scripts/make_unipc_fixture.py's `toy_eps`, the same formula in jnp: Gaussian data's exact noise prediction
    plus a small nonlinear term."""
    mu, std, w = (jnp.asarray(params[k]) for k in ("mu", "std", "w"))

    def eps(x, t):
        alpha, sigma = process.alpha(t), process.sigma(t)
        return sigma * (x - alpha * mu[None]) / (alpha**2 * std[None] ** 2 + sigma**2) + 0.1 * sigma * jnp.tanh(x @ w)

    return eps


def _ours(alphas_cumprod, timesteps, final_sigma, params, opts):
    """Our unipc on diffusers' grid: the process is `vp_discrete` on the same alphas_cumprod, where discrete
    timestep n sits at t = (n + 1) / 1000 exactly (alpha(t)^2 = alphas_cumprod[n]); diffusers' final sigma 0 is
    t = 0, its "sigma_min" (the sigma of timestep 0) is t = 1/1000. diffusers takes sigma at the (integer) timesteps
    from the same table and alpha = 1 / sqrt(1 + sigma^2), so the two grids are the same numbers."""
    p = schedules.get_process("vp_discrete", alphas_cumprod=tuple(float(a) for a in alphas_cumprod))
    n = len(alphas_cumprod)
    ts = np.concatenate([(np.asarray(timesteps) + 1.0) / n, [0.0 if final_sigma == 0 else 1.0 / n]])
    _, info = samplers.sample(_toy_eps(p, params), samplers.get_solver("unipc", **opts), p, params["x_init"], ts,
                              prediction="eps", save_trajectory=True)
    return np.asarray(info["trajectory"])


def _rel(ours, ref):
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CASES))
def test_matches_the_recorded_diffusers_trajectory(name):
    """Every state of the 10-step trajectory equals diffusers' (0.42.1, recorded by scripts/make_unipc_fixture.py):
    to float64 precision where diffusers ran on float64 sigmas (measured <= 4e-15 relative), and to the rounding of
    its stock float32 sigma table otherwise (measured <= 1.1e-6 relative)."""
    d = _fixture()
    params = {k[len("param_"):]: d[k] for k in d.files if k.startswith("param_")}
    ours = _ours(d["alphas_cumprod"], d[f"{name}_timesteps"], float(d[f"{name}_final_sigma"]), params,
                 DIFFUSERS_CASES[name])
    assert _rel(ours, d[f"{name}_f64_states"]) < 1e-12
    assert _rel(ours, d[f"{name}_stock_states"]) < 5e-6


def test_the_fixture_is_small_and_covers_every_case():
    assert os.path.getsize(FIXTURE) < 200_000
    d = _fixture()
    assert {k[: -len("_f64_states")] for k in d.files if k.endswith("_f64_states")} == set(DIFFUSERS_CASES)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CASES))
def test_matches_diffusers_live(name):
    pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    script = load_script("make_unipc_fixture")
    case = next(c for c in script.CASES if c[0] == name)
    params = script.toy_params()
    timesteps, final_sigma, alphas_cumprod, states = script.run_case(case, params, float64_sigmas=True)
    ours = _ours(alphas_cumprod, timesteps, final_sigma, params, DIFFUSERS_CASES[name])
    assert _rel(ours, states) < 1e-12
