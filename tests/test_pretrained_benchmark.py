"""The pretrained benchmark (experiments/runs/pretrained_benchmark*.py, scripts/benchmark_pretrained.py): our worker
on the small diffusers fixture, in its own process and in this one; the table's arithmetic; the settings' checks; the
diffusers side importing nothing a torch-only python lacks. The whole benchmark against diffusers runs where
FASTSAMPLERS_TORCH_PYTHON names a python with torch and diffusers."""

import ast
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from fastsamplers.experiments.runs import pretrained_benchmark, pretrained_benchmark_jax, pretrained_benchmark_torch
from fastsamplers.models import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")
SPEC = dict(mode="measure", model_dir=FIXTURE, batch=1, repeats=1, warmup=False, loops=False, ops=False,
            memory=False)


def test_our_worker_runs_in_its_own_process(tmp_path):
    record = pretrained_benchmark.run_worker(None, SPEC, str(tmp_path), "jax")
    m = pretrained.load(FIXTURE)
    assert record["framework"] == "jax" and record["batch"] == 1
    assert record["num_params"] == sum(np.size(p) for p in jax.tree.leaves(m.params))
    assert len(record["network_s"]) == 1 and record["network_s"][0] > 0 and record["network_flops"] > 0
    assert record["peak_rss_mib"] > 0 and "sampler_s" not in record and "network_first_s" not in record


def test_our_worker_times_both_samplers_and_the_memory_plan():
    record = pretrained_benchmark_jax.measure(dict(SPEC, warmup=True, loops=True, memory=True))
    assert set(record["sampler_s"]) == set(pretrained_benchmark_torch.SOLVERS) == set(record["sampler_compile_s"])
    assert record["network_first_s"] > 0 and record["sampler_xla_memory_mib"]["argument"] > 0
    assert "ops_s" not in record


def test_the_convolution_profile_weights_each_distinct_convolution_by_its_count():
    def conv(h, w):
        return jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def apply(params, x, t):  # the same 3x3 convolution twice, then a 1x1 one
        return conv(conv(conv(x, params["a"]), params["a"]), params["b"]) * t

    params = {"a": np.ones((3, 3, 2, 2), np.float32), "b": np.ones((1, 1, 2, 4), np.float32)}
    model = types.SimpleNamespace(apply=apply, params=params)
    profile = pretrained_benchmark_jax.convolutions(model, np.ones((1, 4, 4, 2), np.float32), 1.0, 1)
    assert profile["num_calls"] == 3
    assert sorted((row["kernel"], row["count"]) for row in profile["distinct"]) == [([1, 1, 2, 4], 1),
                                                                                   ([3, 3, 2, 2], 2)]
    assert profile["total_s"] == pytest.approx(sum(row["count"] * row["seconds"] for row in profile["distinct"]))


def test_the_operators_are_those_of_the_diffusers_side_and_one_in_its_layout():
    ops = pretrained_benchmark_jax.operators(1, 1)
    assert set(ops) == set(pretrained_benchmark_torch.CONVOLUTIONS) | {
        "conv3x3_32x32x128_nchw", "groupnorm_32x32x128", "attention_16x16x256"}
    assert min(ops.values()) > 0


def test_our_grids_are_the_schedulers_timesteps():
    assert pretrained_benchmark_torch.diffusers_timesteps("ddim") == list(range(900, -1, -100))
    assert pretrained_benchmark_torch.diffusers_timesteps("dpmpp_2m") == [999, 899, 799, 699, 599, 500, 400, 300,
                                                                          200, 100]
    ts = pretrained_benchmark_jax.grids()["ddim"]
    np.testing.assert_array_equal(ts, np.concatenate([np.arange(901, 0, -100) / 1000, [0.0]]))


def _record(network, sampler=None, rss=100.0):
    record = {"network_s": [network, 2 * network], "peak_rss_mib": rss, "network_compile_s": 1.0}
    if sampler is not None:
        record.update(sampler_s={"ddim": [sampler], "dpmpp_2m": [sampler]},
                      sampler_compile_s={"ddim": 3.0, "dpmpp_2m": 4.0})
    return record


def test_the_summary_extrapolates_the_samplers_with_the_measured_loop_overhead():
    records = {("jax", 2, True): _record(0.01, sampler=0.2),  # loop overhead 0.2 / (10 x 0.01) = 2
               ("torch", 2, True): _record(0.02, sampler=0.1),  # 0.1 / (10 x 0.02) = 0.5, taken as 1
               ("jax", 8, False): _record(0.04, rss=200.0), ("torch", 8, False): _record(0.08)}
    rows, ratios = pretrained_benchmark.summarize(records, (8,), 2)
    assert ratios["network_b2"] == pytest.approx(2.0) and ratios["network_b8"] == pytest.approx(2.0)
    assert ratios["ddim_nfe10_b2"] == pytest.approx(0.5)
    assert ratios["loop_overhead_measured"]["torch"]["ddim"] == pytest.approx(0.5)
    assert ratios["loop_overhead_used"] == {"jax": {"ddim": pytest.approx(2.0), "dpmpp_2m": pytest.approx(2.0)},
                                            "torch": {"ddim": 1.0, "dpmpp_2m": 1.0}}
    # extrapolated at batch 8: ours 10 x 0.04 x 2 = 0.8 s, diffusers' 10 x 0.08 x 1 = 0.8 s
    assert ratios["ddim_nfe10_b8"] == pytest.approx(1.0) and ratios["peak_rss_b8"] == pytest.approx(0.5)
    assert ["DDIM NFE 10, batch 8", "0.80", "0.80", "1.00x"] == rows[3][:4]


def test_settings_are_checked_before_any_worker(monkeypatch, tmp_path):
    monkeypatch.delenv(pretrained_benchmark.TORCH_PYTHON_ENV, raising=False)
    settings = pretrained_benchmark.Settings(json=str(tmp_path / "b.json"))
    with pytest.raises(ValueError, match="pass --torch-python PATH or set FASTSAMPLERS_TORCH_PYTHON"):
        pretrained_benchmark.benchmark(settings)
    monkeypatch.setenv(pretrained_benchmark.TORCH_PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(ValueError, match="not an executable file"):
        settings.check()
    monkeypatch.setenv(pretrained_benchmark.TORCH_PYTHON_ENV, sys.executable)
    assert settings.check() == sys.executable
    with pytest.raises(ValueError, match="batches must be"):
        pretrained_benchmark.Settings(json="b.json", batches=()).check()
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        pretrained_benchmark.Settings(json="b.json", repeats=0).check()
    assert not os.listdir(tmp_path)


def test_the_diffusers_side_imports_only_the_standard_library_at_module_level():
    with open(pretrained_benchmark_torch.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


def test_the_script_refuses_a_missing_torch_python_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != pretrained_benchmark.TORCH_PYTHON_ENV}
    script = os.path.join(ROOT, "scripts", "benchmark_pretrained.py")
    assert "--torch-python" in subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                                              check=True, env=env).stdout
    proc = subprocess.run([sys.executable, script, "--json", str(tmp_path / "b.json")], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("pass --torch-python PATH or set FASTSAMPLERS_TORCH_PYTHON")


@pytest.mark.skipif(not os.environ.get("FASTSAMPLERS_TORCH_PYTHON"),
                    reason="FASTSAMPLERS_TORCH_PYTHON (a python with torch and diffusers) is not set")
def test_the_whole_benchmark_against_diffusers(tmp_path):
    settings = pretrained_benchmark.Settings(json=str(tmp_path / "b.json"), batches=(1, 2), sampler_batch=1,
                                             repeats=1, ops=False)
    record = pretrained_benchmark.benchmark(settings)
    assert record["model"]["num_params"] == pretrained_benchmark_torch.EXPECTED_PARAMS
    assert json.load(open(tmp_path / "b.json"))["ratios"]["network_b1"] > 0
