"""The layers import one way. Every module's imports (inside functions too) are parsed from the source; the test
fails on an import cycle between modules, on a module importing a higher layer, on a module of no known layer, and
on two modules of the project that share a file name.

The layer order, written once, here (bottom first; a module may import its own layer and those below it):

  0 core                      the registry, atomic writes, the shard store, batches: no numerics, imports
                              no other package
  1 processes, grids, conversions
                              schedules.{processes, grids, files, published}, models.predictions
  2 networks and the oracle   models.*
  3 solvers and `sample`      samplers.*
  4 schedule optimisation     schedules.optimal.* (distill, distill_many, refine)
  5 experiment libraries      experiments.{configs, train, metrics, report}
  6 runners                   experiments.runs.* (the `run(config, workdir)` behind each script)
  7 scripts                   scripts/*.py, thin entry points

Installed, the folders are one package, `fastsamplers` (`fastsamplers.samplers`, ...): every import of the project
names it so, and a bare `import samplers` (which would claim a generic top-level name) fails the test.

One upward import is allowed and documented where it is made: `schedules/__init__.py` resolves `schedules.distill`,
`distill_many` and `refine` lazily from `schedules.optimal` (so `from fastsamplers import schedules` gives the whole public API).
"""

import ast
import collections
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "fastsamplers"
PACKAGES = ("core", "schedules", "models", "samplers", "experiments")

# (module prefix, layer); the longest matching prefix decides.
LAYERS = {
    "core": 0,
    "schedules": 1,
    "schedules.processes": 1,
    "schedules.grids": 1,
    "schedules.files": 1,
    "schedules.published": 1,
    "models.predictions": 1,
    "models": 2,
    "samplers": 3,
    "schedules.optimal": 4,
    "experiments.configs": 5,
    "experiments.train": 5,
    "experiments.metrics": 5,
    "experiments.report": 5,
    "experiments": 6,
    "experiments.runs": 6,
    "scripts": 7,
}
ALLOWED_UPWARD = {("schedules", "schedules.optimal")}


def _modules():
    """{module name: path} of every project module (the packages and the scripts)."""
    found = {}
    for top in PACKAGES + ("scripts",):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name):
    """The project module an imported dotted name (`fastsamplers.x.y`) refers to (its longest prefix that is a
    module, without the package prefix), or None."""
    if not name.startswith(PACKAGE + "."):
        return None
    parts = name.removeprefix(PACKAGE + ".").split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return None


def _imports(module, path):
    """The project modules `module` imports, anywhere in its source (function bodies included)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, level - 1 folders up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from a import b` imports the submodule a.b when there is one, else a name defined in a.
            names += [f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}") == f"{base}.{alias.name}"
                      .removeprefix(PACKAGE + ".") else base for alias in node.names]
    if module.startswith("scripts."):  # a script imports its sibling helpers by their bare names
        names += [f"{PACKAGE}.scripts.{name}" for name in names if "scripts." + name.split(".")[0] in MODULES]
    return {target for target in map(_resolve, names) if target is not None and target != module}


def _bare_imports(path):
    """The imports in a file that name one of the project's packages without the `fastsamplers.` prefix."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level
              and node.module]
    return sorted(name for name in names if name.split(".")[0] in PACKAGES)


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def layer(module):
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len,
               default=None)
    return None if best is None else LAYERS[best]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer(m) is None] == []


def test_every_import_names_the_one_package():
    """Tests and scripts included: `from fastsamplers import samplers`, never `import samplers`."""
    files = list(MODULES.values()) + [os.path.join(ROOT, "tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
                                      if f.endswith(".py")]
    bare = {os.path.relpath(path, ROOT): found for path in files if (found := _bare_imports(path))}
    assert bare == {}


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in GRAPH.items() for t in targets
                    if layer(t) > layer(m) and (m, t) not in ALLOWED_UPWARD)
    assert upward == []


def test_the_allowed_upward_import_is_the_lazy_one():
    """schedules/__init__.py imports schedules.optimal only inside its module `__getattr__`."""
    tree = ast.parse(open(MODULES["schedules"], encoding="utf-8").read())
    top_level = {alias.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names}
    assert "optimal" not in top_level and all("optimal" not in (getattr(n, "module", "") or "") for n in tree.body
                                                if isinstance(n, ast.ImportFrom))
    assert ("schedules", "schedules.optimal") in {(m, t) for m, ts in GRAPH.items() for t in ts}


def test_no_import_cycle():
    """Tarjan's strongly connected components of the module graph (the allowed lazy edge left out)."""
    graph = {m: {t for t in ts if (m, t) not in ALLOWED_UPWARD} for m, ts in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_two_modules_share_a_file_name():
    """Within the importable packages (configs included): one name, one idea. Scripts are commands, named for what
    the user types, and are left out."""
    by_name = collections.defaultdict(list)
    for module, path in MODULES.items():
        if not module.startswith("scripts.") and not path.endswith("__init__.py"):
            by_name[os.path.basename(path)].append(module)
    assert {name: mods for name, mods in by_name.items() if len(mods) > 1} == {}


@pytest.mark.parametrize("source, expected", [
    ("import fastsamplers.samplers.driver\n", {"samplers.driver"}),
    ("from fastsamplers.samplers import driver\n", {"samplers.driver"}),
    ("from fastsamplers import samplers, schedules\n", {"samplers", "schedules"}),
    ("from fastsamplers.samplers.driver import sample\n", {"samplers.driver"}),
    ("def f():\n    from fastsamplers.schedules.optimal import refinement\n", {"schedules.optimal.refinement"}),
    ("from fastsamplers.models import GaussianMixture\n", {"models"}),
    ("import samplers\n", set()),
])
def test_the_parser_sees_every_form_of_import(source, expected, tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports("experiments.probe", str(path)) == expected


# Files run by a torch-only python (no JAX, no fastsamplers): what each may import, anywhere in the file.
TORCH_SIDE = {"scripts/convert_checkpoint.py": {"torch", "safetensors", "numpy", "dnnlib", "torch_utils"},
              "experiments/runs/checkpoint_benchmark_torch.py": {"torch", "safetensors", "numpy",
                                                                  "pretrained_benchmark_torch", "training",
                                                                  "guided_diffusion", "diffusion"}}


@pytest.mark.parametrize("path", sorted(TORCH_SIDE))
def test_torch_side_files_import_no_jax(path):
    """The converter and the reference benchmark worker run where torch is and JAX need not be: at module level
    they import the standard library only, and inside functions the torch stack (and the reference code's
    packages: EDM's dnnlib and torch_utils, which unpickling its networks needs) only."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    everywhere = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for alias in node.names}
    everywhere |= {node.module.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert top <= stdlib | {"pretrained_benchmark_torch"}, top - stdlib
    assert everywhere <= stdlib | TORCH_SIDE[path], everywhere - stdlib - TORCH_SIDE[path]
