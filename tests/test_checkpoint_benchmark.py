"""The checkpoint benchmark (`experiments.runs.checkpoint_benchmark`): its settings fail in one sentence before any
work, and its table reads a record. The measurement itself needs torch and the reference checkouts
(scripts/benchmark_checkpoints.py; the committed record is experiments/results/checkpoint_benchmark_cpu.json)."""

import json
import os
import sys

import pytest

from fastsamplers.experiments.runs import checkpoint_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "experiments", "results", "checkpoint_benchmark_cpu.json")


@pytest.mark.parametrize("overrides, match", [
    (dict(architectures=("edm_cifar",)), "unknown architecture 'edm_cifar'; valid: .*'edm_cifar10'"),
    (dict(torch_python=None), "the reference side needs a python with torch"),
    (dict(edm_repo="/no/edm"), "edm_cifar10 needs a checkout of the reference code \\(--edm-repo\\)"),
    (dict(architectures=("dit_b2",)), "dit_b2 needs a checkout of the reference code \\(--dit-repo\\)"),
    (dict(repeats=0), "batches, sampler_batch and repeats must be >= 1"),
])
def test_bad_settings_are_one_sentence(overrides, match, tmp_path, monkeypatch):
    monkeypatch.delenv("FASTSAMPLERS_TORCH_PYTHON", raising=False)
    settings = dict(json=str(tmp_path / "b.json"), torch_python=sys.executable, edm_repo=str(tmp_path),
                    guided_diffusion_repo=str(tmp_path), architectures=("edm_cifar10",))
    with pytest.raises(ValueError, match=match):
        checkpoint_benchmark.Settings(**{**settings, **overrides}).check()


def test_the_committed_record_renders_with_its_ratios():
    record = json.load(open(RECORD))
    text = checkpoint_benchmark.table(record)
    for name in ("edm_cifar10", "adm_imagenet64", "dit_b2"):
        assert f"### {name} (" in text
        for row in record["results"][name]["rows"]:  # reference time / ours, as printed
            assert row["network_ratio"] == pytest.approx(min(row["torch"]["network_s"]) / min(row["jax"]["network_s"]))
