"""The presets that rebuild published tables (`experiments/configs/fid_pretrained.py` PRESETS) and the published
numbers beside ours (`experiments.report.published_tables`): every preset row builds a solver and its grid at each NFE
column, the EDM rows' labels and NFEs are those of the published table, and the comparison table lines up by label
and actual NFE."""

import json
import os

import numpy as np
import pytest

from fastsamplers import samplers, schedules
from fastsamplers.samplers import causal
from fastsamplers.experiments.configs import fid_pretrained, grid_timesteps
from fastsamplers.experiments.report import published_tables as published

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [(preset, row) for preset, spec in fid_pretrained.PRESETS.items() for row in spec["rows"]]
PROCESS = {"edm": "edm", "score_sde_pytorch": "vp_linear", "guided_diffusion": "vp_discrete", "dit": "vp_discrete",
           "sit": "ot"}


@pytest.mark.parametrize("name", list(published.TABLES))
def test_published_tables_load_with_their_sources(name):
    table = published.load(name)
    assert table["name"] == name and table["metric"] == "fid" and (table["rows"] or table["note"])
    assert all(row["values"] for row in table["rows"])


@pytest.mark.parametrize("preset, row", CASES)
def test_every_preset_row_builds_its_solver_and_grid(preset, row):
    config = fid_pretrained.get_config(f"preset={preset},row={row}")
    spec = fid_pretrained.PRESETS[preset]
    assert config.layout == spec["layout"] and config.published == spec["published"]
    published.load(config.published)
    if spec.get("flow"):  # a flow's row is a plan of samplers.causal, here for AFHQ's 8 blocks of 32 x 32 tokens
        assert config.solver == "" and config.grid == ""
        for block in causal.make_plan(causal.parse_plan(config.flow_plan), 8):
            block.layout(32 * 32)
        return
    solver = samplers.get_solver(config.solver, **config.solver_options.to_dict())
    process = schedules.get_process(PROCESS[spec["layout"]])
    for nfe in spec["nfes"]:
        num_steps = solver.steps_for_nfe(nfe)
        ts = grid_timesteps(config.grid, process, num_steps, nfe, config.t_min, config.t_max,
                            config.grid_options.to_dict())
        assert ts.shape == (num_steps + 1,) and np.all(np.diff(ts) < 0)
        if config.t_min is not None:  # EDM: sigma from 80 down to 0.002, no final step to 0
            assert ts[0] == pytest.approx(80.0, rel=1e-12) and ts[-1] == pytest.approx(0.002, rel=1e-12)


@pytest.mark.parametrize("preset", ["edm_cifar10_uncond_vp", "edm_ffhq64_uncond_vp", "edm_imagenet64_cond_adm"])
def test_edm_rows_are_the_published_rows_at_the_published_nfe(preset):
    """Each row's label is in the published table, and where the table has a number at an NFE column our solver
    makes exactly that many model calls (Heun: only even NFE, as published)."""
    spec = fid_pretrained.PRESETS[preset]
    table = {row["label"]: row["values"] for row in published.load(spec["published"])["rows"]}
    for key, (label, solver_name, options, _, _) in spec["rows"].items():
        assert label in table, f"{preset} row {key}: {label!r} not in the published table"
        solver = samplers.get_solver(solver_name, **options)
        for nfe in spec["nfes"]:
            made = solver.nfe(solver.steps_for_nfe(nfe))
            assert (made == nfe) == (str(nfe) in table[label]), (key, nfe, made)


def test_bad_preset_and_row_are_named():
    with pytest.raises(ValueError, match="unknown preset 'edm'; valid presets: .*edm_cifar10_uncond_vp"):
        fid_pretrained.get_config("preset=edm,row=euler")
    with pytest.raises(ValueError, match="unknown row 'dpm' of preset edm_cifar10_uncond_vp; valid rows: .*ipndm4"):
        fid_pretrained.get_config("preset=edm_cifar10_uncond_vp,row=dpm")
    with pytest.raises(ValueError, match="takes row=NAME"):
        fid_pretrained.get_config("preset=edm_cifar10_uncond_vp,solver=ddim")
    with pytest.raises(ValueError, match="row= needs preset=NAME"):
        fid_pretrained.get_config("row=euler")
    with pytest.raises(ValueError, match="unknown published table 'nope'; valid: .*edm_cifar10_uncond_vp"):
        published.load("nope")


def test_a_malformed_table_is_named(tmp_path):
    table = published.load("edm_cifar10_uncond_vp")
    table["rows"][0]["source"] = "elsewhere"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="bad.json: row 0 needs label, values and a source among"):
        published.load(str(path))


def test_ours_beside_theirs_by_label_and_actual_nfe(tmp_path):
    """A Heun row run at budget 5 made 4 calls: it lands in the NFE 4 column. make_table writes published.md."""
    rows = [{"label": "iPNDM-4", "grid": "edm", "nfe_budget": 5, "nfe": 5, "value": 13.0, "metric": "fid",
             "num_nonfinite": 0},
            {"label": "Heun", "grid": "edm", "nfe_budget": 5, "nfe": 4, "value": 300.0, "metric": "fid",
             "num_nonfinite": 0}]
    text = published.beside(rows, published.load("edm_cifar10_uncond_vp"), nfes=[4, 5])
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert lines["iPNDM-4"] == "| iPNDM-4 | — / 24.82 | 13.00 / 13.59 (-0.59) |"
    assert lines["Heun"] == "| Heun | 300.00 / 319.87 (-19.87) | — |"
    assert lines["iPNDM + AMED-Plugin"] == "| iPNDM + AMED-Plugin | — | — / 6.61 |"

    import sys
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import make_table
    rows_file = tmp_path / "results.json"
    rows_file.write_text(json.dumps({"description": "test", "rows": rows}))
    make_table.main(["--rows", str(rows_file), "--out", str(tmp_path / "out"), "--published",
                     "edm_cifar10_uncond_vp"])
    text = (tmp_path / "out" / "published.md").read_text()
    assert "13.00 / 13.59 (-0.59)" in text and "diff-sampler" in text
