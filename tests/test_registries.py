"""One registry per kind of name a user chooses: each unknown name is refused by its `core.Registry`, with an error
that lists every valid name, before any model call; and no module writes its own "unknown X; valid ..." check."""

import ast
import os
import tempfile

import jax
import numpy as np
import pytest

from fastsamplers import core, samplers, schedules
from fastsamplers.experiments.configs import boss_straighten, distill_checkpoint, evaluate, fid_pretrained
from fastsamplers.experiments.configs import digits_bottleneck, distill_oracle, learn_sampler, quickstart, toy2d_fm
from fastsamplers.experiments.metrics import digits_classifier, fd_digits
from fastsamplers.experiments.report import tables
from fastsamplers.experiments.runs import (bottleneck_benchmark, oracle_quickstart, sampler_tables, schedule_distillation,
                                           sources)
from fastsamplers.experiments.train import couplings, data, experiment, losses, straighten
from fastsamplers.models import GaussianMixture, conditioning, mlp, predictions, pretrained
from fastsamplers.models.pretrained import model as pretrained_model
from fastsamplers.models.pretrained import edm_networks, score_sde
from fastsamplers.samplers import adaptive, bottleneck, causal, multistep, noise, runge_kutta, sa_solver, unipc
from fastsamplers.schedules import grids, published
from fastsamplers.schedules.optimal import distillation, learned, olss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESS = schedules.get_process("vp_linear")


class CountingModel:
    """The oracle's eps model, counting its calls: a name check must fail with zero calls."""

    def __init__(self):
        gm = GaussianMixture.random(jax.random.PRNGKey(0), dim=2, num_components=2)
        self.fn, self.calls = gm.model_fn(PROCESS), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


X_INIT = np.zeros((4, 2))
TS = np.array([0.9, 0.5, 0.1])


def _labels(config):
    """The labels of a config's solver entries: the names its `only` or `baseline` may give."""
    return [entry["label"] for entry in config.solvers]

# (registry, a call that passes it an unknown name). Each call would compute (sample, distil, load, train) if the
# name were accepted.
CASES = {
    "published schedule": (published.LISTS, lambda m: schedules.get_timesteps("published", PROCESS, 5,
                                                                               schedule="nope")),
    "grid space": (grids.SPACES, lambda m: schedules.get_timesteps("list", PROCESS, 5, values=[0.9, 0.1],
                                                                   space="sigma")),
    "distillation method": (distillation.METHODS, lambda m: schedules.distill("nope", m, "ddim", PROCESS, X_INIT, 2)),
    "aggregate": (distillation.AGGREGATES, lambda m: schedules.distill("oss", m, "ddim", PROCESS, X_INIT, 2,
                                                                       aggregate="mode")),
    "metric": (distillation.METRICS, lambda m: schedules.distill("bellman", m, "ddim", PROCESS, X_INIT, 2,
                                                                 metric="l3")),
    "learning method": (learned.METHODS, lambda m: schedules.learn("nope", m, PROCESS, X_INIT, 2)),
    "OLSS fit": (olss.FITS, lambda m: schedules.learn("olss", m, PROCESS, X_INIT, 2, teacher_steps=8, fit="both")),
    "prediction": (predictions.KINDS, lambda m: schedules.learn("olss", m, PROCESS, X_INIT, 2, prediction="flow")),
    "mlp time_input": (mlp.TIME_INPUTS, lambda m: mlp.MLP(time_input="fourier")),
    "input_scaling": (conditioning.INPUT_SCALINGS, lambda m: conditioning.network_fn(mlp.MLP(), PROCESS,
                                                                                      input_scaling="karras")),
    "layout": (pretrained.LAYOUTS, lambda m: pretrained.load(ROOT, layout="ckpt")),
    "EDM preconditioner": (pretrained.edm.PRECONDITIONERS, lambda m: pretrained.edm.edm_config("Precond", {})),
    "EDM model_type": (edm_networks.MODEL_TYPES, lambda m: pretrained.edm.edm_config(
        "EDMPrecond", dict(img_resolution=8, img_channels=3, model_type="UNet"))),
    "EDM network option": (edm_networks.MODEL_OPTIONS["SongUNet"], lambda m: edm_networks.network_config(
        "SongUNet", img_resolution=8, in_channels=3, out_channels=3, channels=8)),
    "EDM encoder_type": (edm_networks.CHOICES["encoder_type"], lambda m: edm_networks.network_config(
        "SongUNet", img_resolution=8, in_channels=3, out_channels=3, encoder_type="fir")),
    "pretrained time_input": (pretrained_model.TIME_INPUTS, lambda m: pretrained_model.make_functions(
        None, PROCESS, "seconds", None, None)),
    "score_sde preset": (score_sde.PRESETS, lambda m: score_sde.load(ROOT, config="vp/mnist")),
    "score_sde config key": (score_sde.DEFAULTS, lambda m: score_sde.load(ROOT, config="vp/cifar10_ddpmpp",
                                                                          widths=3)),
    "score_sde params": (score_sde.PARAMS_KEYS, lambda m: score_sde.load(ROOT, config="vp/cifar10_ddpmpp",
                                                                         params="ema")),
    "time sampling": (losses.TIME_SAMPLINGS, lambda m: losses.make_loss(m, PROCESS, "eps", time_sampling="beta")),
    "data resize_method": (data.RESIZE_METHODS, lambda m: data.load_digits(16, resize_method="area")),
    "ot solver": (couplings.OT_SOLVERS, lambda m: couplings.get_coupling("ot", solver="lp")),
    "sinkhorn sampling": (couplings.SINKHORN_SAMPLING, lambda m: couplings.get_coupling("sinkhorn",
                                                                                        sampling="greedy")),
    "sinkhorn relative_epsilon": (couplings.RELATIVE_EPSILON, lambda m: couplings.get_coupling(
        "sinkhorn", relative_epsilon="max")),
    "lr schedule": (experiment.LR_SCHEDULES, lambda m: experiment.build(_config(toy2d_fm, "smoke", **{
        "train.lr_schedule": "linear"}))),
    "table style": (tables.STYLES, lambda m: tables.render_table(["a"], [[1]], style="html")),
    "config arg": (None, lambda m: evaluate.get_config("modle=digits_vp")),
    "evaluate model": (evaluate.MODELS, lambda m: evaluate.get_config("model=cifar10")),
    "evaluate solvers": (evaluate.SOLVER_SETS, lambda m: evaluate.get_config("solvers=all")),
    "learn_sampler method": (learned.METHODS, lambda m: learn_sampler.get_config("method=ddim")),
    "distill_checkpoint model": (distill_checkpoint.CHECKPOINT_MODELS,
                                 lambda m: distill_checkpoint.get_config("model=oracle")),
    "distill_checkpoint method": (distillation.METHODS, lambda m: distill_checkpoint.get_config("method=dp")),
    "fid_pretrained solver": (fid_pretrained.TABLE_SOLVERS, lambda m: fid_pretrained.get_config("solver=euler")),
    "boss teacher": (boss_straighten.TEACHERS, lambda m: boss_straighten.get_config("teacher=digits_vp")),
    "distillation source": (sources.SOURCES, lambda m: schedule_distillation._validate(
        _config(distill_oracle, "smoke", source="data"))),
    "checkpoint distillation source": (sources.SOURCES, lambda m: schedule_distillation._validate(
        _config(distill_checkpoint, "smoke", source="data"))),
    "table metric": (sampler_tables.metrics(), lambda m: sampler_tables.run(
        _config(evaluate, "model=oracle,smoke", metric="psnr"), tempfile.mkdtemp())),
    "table only": (core.Registry.of_names("solver label", _labels(evaluate.get_config("model=oracle,smoke"))),
                   lambda m: sampler_tables.plan_cells(_config(evaluate, "model=oracle,smoke", only=("DDIM", "ddpm")),
                                                       PROCESS)),
    "quickstart baseline": (core.Registry.of_names("baseline", _labels(quickstart.get_config("smoke"))),
                            lambda m: oracle_quickstart._validate(_config(quickstart, "smoke", baseline="ddim"))),
    "boss teacher_grid": (schedules.GRIDS, lambda m: straighten.check_boss_config(
        _config(boss_straighten, "smoke", **{"boss.teacher_grid": "cosine"}))),
    "fd_digits split": (digits_classifier.SPLITS, lambda m: fd_digits.reference_stats(8, split="val")),
    "fd_digits reference": (digits_classifier.SPLITS, lambda m: fd_digits.fd_digits(np.zeros((4, 8, 8, 1)),
                                                                                   reference="val")),
    "fd_digits score reference": (digits_classifier.SPLITS, lambda m: fd_digits.score_samples(
        np.zeros((4, 8, 8, 1)), reference="val")),
    "bottleneck metric": (bottleneck_benchmark.METRICS, lambda m: bottleneck_benchmark.check_config(
        _config(digits_bottleneck, "smoke", metric="fid"))),
    "bottleneck resize_method": (bottleneck.RESIZE_METHODS, lambda m: bottleneck_benchmark.check_config(
        _config(digits_bottleneck, "smoke", resize_method="area"))),
    "bottleneck plan": (bottleneck_benchmark.plans(digits_bottleneck.get_config("smoke")),
                        lambda m: bottleneck_benchmark.plan_stages(digits_bottleneck.get_config("smoke"), "9x")),
    "diffusers config key": (pretrained.diffusers.CONFIG_KEYS, lambda m: pretrained.diffusers.unet_config(
        {"sample_size": 8, "widths": 3}, "config.json")),
    "solver": (samplers.SOLVERS, lambda m: samplers.sample(m, "dddim", PROCESS, X_INIT, TS)),
    "noise": (noise.KINDS, lambda m: samplers.sample(m, "ddim", PROCESS, X_INIT, TS, noise="sobol")),
    "adaptive method": (adaptive.METHODS, lambda m: samplers.sample(m, samplers.get_solver("adaptive", method="rk45"),
                                                                    PROCESS, X_INIT, TS)),
    "deis_rhork method": (runge_kutta.DEISRhoRK.methods, lambda m: samplers.get_solver("deis_rhork", method="rk45")),
    "dpmpp solver_type": (multistep.SECOND_ORDER_RULES, lambda m: samplers.get_solver("dpmpp_2m_sde",
                                                                                      solver_type="rk4")),
    "dpmpp variant": (multistep.DPM_VARIANTS, lambda m: samplers.get_solver("dpmpp_3m", variant="paper")),
    "sa_solver variant": (sa_solver.VARIANTS, lambda m: samplers.get_solver("sa_solver", variant="paper")),
    "unipc variant": (unipc.VARIANTS, lambda m: samplers.get_solver("unipc", variant="bh3")),
    "unic variant": (unipc.VARIANTS, lambda m: samplers.unic(samplers.get_solver("dpmpp_2m"), variant="bh3")),
    "resize method": (bottleneck.RESIZE_METHODS, lambda m: bottleneck.bottleneck_sample(
        m, [bottleneck.Stage(2, 2)], PROCESS, X_INIT, None, resize_method="area")),
    "renoise mode": (bottleneck.RENOISE, lambda m: bottleneck.bottleneck_sample(
        m, [bottleneck.Stage(2, 2)], PROCESS, X_INIT, None, renoise_mode="keep")),
    "inversion mode": (causal.MODES, lambda m: causal.make_plan("newton", 2)),
    "initial guess": (causal.INITS, lambda m: causal.make_plan({"mode": "jacobi", "init": "zeros"}, 2)),
    "bottleneck renoise_mode": (bottleneck.RENOISE, lambda m: bottleneck_benchmark.check_config(
        _config(digits_bottleneck, "smoke", renoise_mode="keep"))),
}


def _config(module, arg, **values):
    """`module.get_config(arg)` with `values` set (dotted keys name nested ones; new keys are added)."""
    config = module.get_config(arg)
    with config.unlocked():
        for key, value in values.items():
            *parents, leaf = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value
    return config


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unknown_name_lists_every_valid_name_before_any_model_call(case):
    registry, call = CASES[case]
    model = CountingModel()
    with pytest.raises(ValueError) as error:
        call(model)
    message = str(error.value)
    if registry is None:  # the config args: listed by the config's parse_arg
        assert "valid args: ['model', 'smoke', 'solvers']" in message
    else:
        assert isinstance(registry, core.Registry)
        assert all(str(name) in message for name in registry.valid()), message
    assert model.calls == 0


def test_a_registry_of_names_fills_its_sentence_from_the_caller():
    modes = core.Registry.of_names("mode", ("fast", "exact"), ordered=True,
                                   unknown="{where}: {kind} must be {alternatives}, got {name!r}")
    assert modes.check("fast", where="x") == "fast" and modes.valid() == ["fast", "exact"]
    with pytest.raises(ValueError, match=r"^run: mode must be 'fast' or 'exact', got 'slow'$"):
        modes.check("slow", where="run")
    with pytest.raises(ValueError, match=r"^run: solver.mode must be 'fast' or 'exact', got \['fast'\]$"):
        modes.check(["fast"], where="run", kind="solver.mode")  # unhashable: refused, not a TypeError
    plain = core.Registry.of_names("style", ("b", "a", None))
    with pytest.raises(ValueError, match=r"^unknown style 'c'; valid names: \[None, 'a', 'b'\]$"):
        plain.check("c")
    assert plain.check(None) is None


# Where names are still checked by hand (none left).
NOT_YET = ()


def _handwritten_unknown_name_checks():
    """(file, line) of every `raise ...Error(f"unknown ...; valid ...")` (or "must be one of", "must be 'a' or 'b'")
    outside core/registry.py."""
    found = []
    for top in ("core", "schedules", "models", "samplers", "experiments", "scripts"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                rel = os.path.relpath(path, ROOT)
                if rel == os.path.join("core", "registry.py") or rel.replace(os.sep, "/").startswith(NOT_YET):
                    continue
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Raise) and node.exc is not None:
                        text = ast.unparse(node.exc)
                        if ("unknown " in text and ("valid" in text or "known" in text or "one of" in text)
                                or "must be one of" in text or ("must be '" in text and "' or '" in text)):
                            found.append(f"{rel}:{node.lineno}")
    return found


def test_no_module_writes_its_own_unknown_name_check():
    assert _handwritten_unknown_name_checks() == []
