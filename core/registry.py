"""One registry helper behind every name a user chooses: the `get_*(name, **options)` lookups (solvers, processes,
grids, networks, datasets, couplings) and the names that select a mode or a method (predictions, layouts,
distillation methods, time inputs, ...), so that each kind is listed once and checks names and options the same way,
before any compute, with one sentence when one is wrong."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterable

UNKNOWN = "unknown {kind} {name!r}; valid names: {valid}"  # the default sentence for an unknown name


class Registry(dict):
    """A dict of name -> factory (a class or a function) for one kind of component, or of name -> value for a kind
    of name that selects no factory (`Registry.of_names`: a mode, a method, a layout).

    `build(name, **options)` checks the name (an unknown one lists the valid names) and the options (an unknown one
    lists the valid options, a missing required one is named) before calling the factory. A factory's options are its
    dataclass fields, or the parameters of its signature, less the `reserved` ones the caller passes itself.
    `check(name)` is the name check alone, for a name the caller acts on itself.

    The sentence for an unknown name is the registry's `unknown` template (`str.format` fields: `kind`, `name`, the
    valid names as `valid` (a list), `choices` (joined by ", ") and `alternatives` (their reprs joined by " or "),
    and any keyword the caller passes to `lookup` or `check`, which may also override `kind`). The valid names are
    listed sorted, or in registration order with `ordered=True`.

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("square")
        ... def square(*, side=1.0):
        ...     return side * side
        >>> shapes.build("square", side=3.0)
        9.0
        >>> shapes.build("circle")
        Traceback (most recent call last):
        ...
        ValueError: unknown shape 'circle'; valid names: ['square']
        >>> modes = Registry.of_names("mode", ("fast", "exact"), ordered=True,
        ...                           unknown="{where}: {kind} must be {alternatives}, got {name!r}")
        >>> modes.check("exact", where="run")
        'exact'
        >>> modes.check("slow", where="run")
        Traceback (most recent call last):
        ...
        ValueError: run: mode must be 'fast' or 'exact', got 'slow'
    """

    def __init__(self, kind: str, entries: dict[Any, Any] | None = None, *, reserved: Iterable[str] = (),
                 unknown: str = UNKNOWN, ordered: bool = False) -> None:
        super().__init__(entries or {})
        self.kind = kind
        self.reserved = frozenset(reserved) | {"self", "parent", "name"}  # flax modules' own fields
        self.unknown = unknown
        self.ordered = ordered

    @classmethod
    def of_names(cls, kind: str, names: Iterable[Any], **kwargs: Any) -> "Registry":
        """A registry of names that select no factory: each name maps to itself. Keywords as for `Registry`."""
        return cls(kind, {name: name for name in names}, **kwargs)

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """A decorator that registers its argument under `name` and returns it unchanged."""

        def add(factory):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = factory
            return factory

        return add

    def valid(self) -> list:
        """The registered names, as the error lists them (sorted, or in registration order)."""
        return list(self) if self.ordered else sorted(self, key=str)

    def lookup(self, name: Any, **context: Any) -> Any:
        """The entry registered under `name`; otherwise ValueError, the `unknown` sentence listing the valid names
        (`context` fills the template's other fields)."""
        try:
            known = name in self
        except TypeError:  # an unhashable name (a list, a dict) is no name
            known = False
        if not known:
            valid = self.valid()
            fields = dict(kind=self.kind, valid=valid, choices=", ".join(map(str, valid)),
                          alternatives=" or ".join(map(repr, valid)))
            raise ValueError(self.unknown.format(**{**fields, **context, "name": name}))
        return self[name]

    def check(self, name: Any, **context: Any) -> Any:
        """`name` itself when it is registered; the ValueError of `lookup` otherwise."""
        self.lookup(name, **context)
        return name

    def options(self, name: str) -> dict[str, Any]:
        """{option: default} of the factory `name` (`inspect.Parameter.empty` for a required one)."""
        return _options(self.lookup(name), self.reserved)

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """Raise ValueError naming the unknown or missing options of `name`, before anything is built."""
        valid = self.options(name)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} has no option(s) {unknown}; valid options: {sorted(valid)}")
        missing = sorted(k for k, v in valid.items() if v is inspect.Parameter.empty and k not in options)
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs the option(s) {missing}")

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """`factory(*args, **options)` for the factory `name`, after the checks. `args` are the reserved inputs."""
        self.check_options(name, options)
        return self[name](*args, **options)


def _options(factory: Callable, reserved: frozenset) -> dict[str, Any]:
    if dataclasses.is_dataclass(factory):
        out = {}
        for field in dataclasses.fields(factory):
            if not field.init or field.name in reserved:
                continue
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            out[field.name] = field.default if has_default else inspect.Parameter.empty
        return out
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind in kinds and p.name not in reserved}
