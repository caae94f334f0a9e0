"""Every docstring example of the package runs as written (the examples are imported as `fastsamplers.*`, the names
a user types, so each module is collected under its installed name, not as a top-level `samplers` or `models`)."""

import doctest
import importlib
import pkgutil

import pytest

import fastsamplers


SUBPACKAGES = ("core", "schedules", "models", "samplers", "experiments")


def _modules():
    names = []
    for sub in SUBPACKAGES:
        package = importlib.import_module(f"fastsamplers.{sub}")
        names.append(package.__name__)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")]
    return sorted(names)


MODULES = _modules()


def _examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, name) if test.examples]


def test_the_package_is_walked():
    assert {"fastsamplers.samplers.driver", "fastsamplers.core.registry", "fastsamplers.experiments.configs"} <= set(
        MODULES)


@pytest.mark.parametrize("name", [name for name in MODULES if _examples(name)])
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"
