"""The learn_sampler config end to end on the oracle (smoke): one learned file per NFE, scored against the reference;
a rerun resumes from the files without learning again; another config's files are refused; the evaluation table
reads the files as rows of their own grid."""

import json
import os
import shutil

import pytest

from fastsamplers import schedules
from fastsamplers.experiments.configs import evaluate, learn_sampler
from fastsamplers.experiments.runs import learned_samplers, sampler_tables


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("learned"))
    config = learn_sampler.get_config("model=oracle,method=olss,smoke")
    return workdir, config, learned_samplers.run(config, workdir)


def test_one_scored_file_per_nfe(learned):
    workdir, config, record = learned
    assert [r["nfe"] for r in record["rows"]] == [3, 4]
    for row in record["rows"]:
        saved = json.load(open(os.path.join(workdir, f"olss_nfe{row['nfe']}.json")))
        assert saved["method"] == "olss" and saved["nfe"] == row["nfe"] and saved["calibration"] == 16
        assert saved["fingerprint"] == record["fingerprint"] and saved["learn"]["model_calls"] > 0
        # On the oracle the learned sampler beats DEIS tAB2 on both grids at the same NFE (held out).
        assert row["rmse"] < min(row["rmse_quadratic"], row["rmse_logsnr"])
    assert json.load(open(os.path.join(workdir, f"learned_{config.method}.json")))["rows"] == record["rows"]


def test_a_rerun_resumes_from_the_files(learned, monkeypatch):
    workdir, config, record = learned

    def refuse(*args, **kwargs):
        raise AssertionError("learned again instead of loading the file")

    monkeypatch.setattr(schedules, "learn", refuse)
    again = learned_samplers.run(config, workdir)
    assert [r["rmse"] for r in again["rows"]] == [r["rmse"] for r in record["rows"]]
    fewer = learn_sampler.get_config("model=oracle,method=olss,smoke")  # the NFE list is not part of a file's config
    with fewer.unlocked():
        fewer.nfes = (4,)
    assert learned_samplers.run(fewer, workdir)["rows"][0]["rmse"] == record["rows"][1]["rmse"]


def test_another_configs_files_are_refused(learned):
    workdir, config, _ = learned
    other = learn_sampler.get_config("model=oracle,method=olss,smoke")
    with other.unlocked():
        other.calibration = 32
    with pytest.raises(ValueError, match="another config"):
        learned_samplers.run(other, workdir)


def test_the_table_reads_learned_files_as_rows(learned, tmp_path):
    workdir, _, _ = learned
    config = evaluate.get_config("model=oracle,smoke")
    with config.unlocked():
        config.nfes = (4,)
        config.only = ("DDIM",)
        config.grids = ("logsnr",)
        config.learned = (f"OLSS={workdir}/olss_nfe{{nfe}}.json",)
    rows = sampler_tables.run(config, str(tmp_path))["rows"]
    by_grid = {r["grid"]: r for r in rows}
    assert by_grid["learned"]["label"] == "OLSS" and by_grid["learned"]["nfe"] == 4
    assert by_grid["learned"]["value"] < by_grid["logsnr"]["value"]
    with config.unlocked():
        config.learned = (f"{workdir}/olss_nfe3.json",)
    with pytest.raises(ValueError, match="needs \\{nfe\\}"):
        sampler_tables.run(config, str(tmp_path))
    shutil.copy(os.path.join(workdir, "olss_nfe3.json"), str(tmp_path / "copy_4.json"))
    with config.unlocked():
        config.learned = (f"{tmp_path}/copy_{{nfe}}.json",)
    with pytest.raises(ValueError, match="a sampler of 3 model calls in the column of NFE 4"):
        sampler_tables.run(config, str(tmp_path))


def test_bad_config():
    with pytest.raises(ValueError, match="unknown method"):
        learn_sampler.get_config("method=nope")
    with pytest.raises(ValueError, match="unknown model"):
        learn_sampler.get_config("model=nope")
