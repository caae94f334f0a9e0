"""scripts/cli.py: a misspelt `--config.key=` override is one line naming the key and the closest valid one."""

import doctest
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "scripts") not in sys.path:  # as `python scripts/...` runs it
    sys.path.insert(0, os.path.join(ROOT, "scripts"))

import cli  # noqa: E402

from fastsamplers.experiments.configs import toy2d_fm  # noqa: E402


def test_docstring_examples():
    assert doctest.testmod(cli).failed == 0


@pytest.mark.parametrize("path,message", [
    ("train.num_stepz", "config.train has no key 'num_stepz'; did you mean 'num_steps'?"),
    ("trian.num_steps", "config has no key 'trian'; did you mean 'train'?"),
    ("train.num_steps.x", "config.train.num_steps is a value (int), not a section: it has no key 'x'"),
])
def test_a_misspelt_override_names_the_key_and_the_closest_one(path, message):
    assert cli.override_error(toy2d_fm.get_config("smoke"), path) == message


def test_far_from_every_key_lists_the_keys():
    message = cli.override_error(toy2d_fm.get_config("smoke"), "sample.zzzzzzzz")
    assert message.startswith("config.sample has no key 'zzzzzzzz'; its keys: ") and "num_samples" in message


@pytest.mark.parametrize("path", ["train.num_steps", "sample.order", "model.mlp.hidden", "data"])
def test_valid_overrides_pass(path):
    assert cli.override_error(toy2d_fm.get_config("smoke"), path) is None  # sample.order is a None placeholder


def test_overrides_are_read_from_both_flag_forms():
    argv = ["--config=x.py:smoke", "--config.train.lr=0.1", "--workdir", "w", "-config.seed", "3", "--config.a"]
    assert cli.overrides(argv) == ["train.lr", "seed", "a"]
    assert cli._config_spec(argv) == "x.py:smoke" and cli._config_spec(["--config", "y.py"]) == "y.py"
