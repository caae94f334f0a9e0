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
