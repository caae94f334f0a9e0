"""A script of scripts/ as a module, for the tests that call its functions (fixture writers, converters, entry
points)."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def load_script(name):
    """scripts/NAME.py as a module, found as `python scripts/NAME.py` finds its imports (scripts/ on sys.path, for
    cli)."""
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_checkout(variable, marker):
    """The checkout of a reference implementation named by the environment variable `variable` (it holds the file
    or folder `marker`), for a live check: the test is skipped where torch and safetensors do not import (the
    project's environment has neither) or the variable names no such checkout."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("safetensors.torch")
    repo = os.environ.get(variable)
    if not repo or not os.path.exists(os.path.join(repo, marker)):
        pytest.skip(f"set {variable} to a checkout holding {marker}")
    return repo
