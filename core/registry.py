"""One registry helper behind every `get_*(name, **options)` lookup (solvers, processes, grids, networks, datasets,
couplings), so that each kind checks names and options the same way and says the same thing when one is wrong."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterable


class Registry(dict):
    """A dict of name -> factory (a class or a function) for one kind of component.

    `build(name, **options)` checks the name (an unknown one lists the valid names) and the options (an unknown one
    lists the valid options, a missing required one is named) before calling the factory. A factory's options are its
    dataclass fields, or the parameters of its signature, less the `reserved` ones the caller passes itself.

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
    """

    def __init__(self, kind: str, entries: dict[str, Callable] | None = None, *, reserved: Iterable[str] = ()):
        super().__init__(entries or {})
        self.kind = kind
        self.reserved = frozenset(reserved) | {"self", "parent", "name"}  # flax modules' own fields

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """A decorator that registers its argument under `name` and returns it unchanged."""

        def add(factory):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = factory
            return factory

        return add

    def lookup(self, name: str) -> Callable:
        """The factory registered under `name`; ValueError listing the valid names otherwise."""
        if not isinstance(name, str) or name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {sorted(self)}")
        return self[name]

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
