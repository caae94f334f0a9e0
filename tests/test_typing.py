"""Every public function and method of the annotated packages says what it takes and what it returns: each
parameter (but a method's self or cls) and the return (an `__init__` may leave it out) carry an annotation. The
annotations are read from the source (`ast`), so the test costs no import; that they agree with each other is
mypy's to check (`mypy --ignore-missing-imports --follow-imports=silent` on these packages).

Public: a name without a leading underscore (or a dunder such as `__call__`), at module level or in a public class,
in a module whose path has no part with a leading underscore. Functions nested in functions are private.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packages whose public API is annotated, and the folders of them not annotated yet. Extend PACKAGES
# (experiments) and shrink NOT_YET as the annotations land.
PACKAGES = ("core", "schedules", "models", "samplers")
NOT_YET = ()


def _is_public(name):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _decorators(node):
    names = set()
    for decorator in node.decorator_list:
        while isinstance(decorator, ast.Call):
            decorator = decorator.func
        names.add(decorator.attr if isinstance(decorator, ast.Attribute) else getattr(decorator, "id", ""))
    return names


def missing_annotations(node, method):
    """The names of `node`'s parameters that carry no annotation, and "return" when its return carries none (a
    method's first parameter, self or cls, is exempt; so is the return of `__init__`)."""
    args = node.args
    params = args.posonlyargs + args.args
    if method and "staticmethod" not in _decorators(node):
        params = params[1:]
    params = params + ([args.vararg] if args.vararg else []) + args.kwonlyargs + ([args.kwarg] if args.kwarg else [])
    missing = [p.arg for p in params if p.annotation is None]
    if node.returns is None and node.name != "__init__":
        missing.append("return")
    return missing


def public_functions(tree):
    """(qualified name, node, is a method) of the public functions and methods of a module's syntax tree."""
    found = []

    def visit(body, prefix, in_class):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
                found.append((prefix + node.name, node, in_class))
            elif isinstance(node, ast.ClassDef) and _is_public(node.name):
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):  # definitions under `if TYPE_CHECKING:` and the like
                visit([n for field in ("body", "orelse", "finalbody") for n in getattr(node, field, [])]
                      + [n for h in getattr(node, "handlers", []) for n in h.body], prefix, in_class)

    visit(tree.body, "", False)
    return found


def _modules():
    paths = []
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            rel = os.path.relpath(folder, ROOT)
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            if any(rel == skip or rel.startswith(skip + os.sep) for skip in NOT_YET):
                continue
            for file in sorted(files):
                path = os.path.join(rel, file)
                if file.endswith(".py") and all(_is_public(part) for part in path[:-3].split(os.sep)):
                    paths.append(path)
    return paths


MODULES = _modules()


def test_the_packages_are_walked():
    assert {os.path.join("core", "registry.py"), os.path.join("schedules", "processes.py"),
            os.path.join("schedules", "optimal", "olss.py"), os.path.join("models", "pretrained", "unet2d.py"),
            os.path.join("samplers", "driver.py")} <= set(MODULES)


@pytest.mark.parametrize("path", MODULES)
def test_every_public_function_is_annotated(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    unannotated = [f"{name} ({', '.join(missing)})" for name, node, method in public_functions(tree)
                   if (missing := missing_annotations(node, method))]
    assert unannotated == [], f"{path}: public functions without annotations (and what lacks one)"


def test_the_check_sees_what_is_missing():
    tree = ast.parse(
        "def f(x: int, *args, key=None, **kw) -> int: ...\n"
        "def g(x: int): ...\n"
        "def _private(x): ...\n"
        "class A:\n"
        "    def __init__(self, n: int): ...\n"
        "    def __call__(self, x): ...\n"
        "    @staticmethod\n"
        "    def s(x: int) -> int: ...\n"
        "    @classmethod\n"
        "    def c(cls, y) -> 'A': ...\n"
        "    def _helper(self, x): ...\n"
        "class _Hidden:\n"
        "    def m(self, x): ...\n"
        "def outer() -> None:\n"
        "    def inner(x): ...\n")
    found = {name: missing_annotations(node, method) for name, node, method in public_functions(tree)}
    assert found == {"f": ["args", "key", "kw"], "g": ["return"], "A.__init__": [], "A.__call__": ["x", "return"],
                     "A.s": [], "A.c": ["y"], "outer": []}
