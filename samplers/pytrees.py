"""Options as traced values: solvers and model wrappers are frozen dataclasses that are also pytrees, and every
compiled program is keyed on a pytree's structure, never on its numbers.

A `TracedOptions` dataclass names the fields that are pytree children (`traced`, e.g. a solver's `eta`, a guidance
`scale`); every other field is static metadata, part of the tree's structure. Under `jax.jit` or `jax.vmap` the
children become tracers, so a sweep over them is one trace and one compilation. The numbers a structure depends on
are the `switches` (a subset of `traced`): a switch given as a concrete zero is static (see `TracedOptions`).

`split(tree)` gives a pytree's static key (its structure and its static leaves, such as a plain model function or
a Python int) and its traced leaves (arrays and floats; the rule is on `split`); `merge` puts them back. The
compiled-program caches (`samplers.sample`, the schedule optimisers, `samplers.linear_table.table_of`, bottleneck
sampling, the FID runner) key on the first and pass the second as traced arguments: two solvers that differ only in
`eta` share one program, and a solver whose `eta` is an array (unhashable) works as well as one whose `eta` is a
number.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import numpy as np


def is_traced(tree: Any) -> bool:
    """Whether any leaf of `tree` is a tracer (its value is unknown while tracing)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def known(value: Any) -> np.ndarray | None:
    """`value` as a numpy array when it is known now (a number, a tuple of numbers, a concrete array), None when
    any part of it is traced: option checks look at known values only."""
    if is_traced(value):
        return None
    try:
        return np.asarray(value)
    except (TypeError, ValueError):  # ragged or odd input: an object array, which no numeric check accepts
        return np.asarray(None)


def is_real(values: np.ndarray) -> bool:
    """Whether a known option holds real numbers (ints or floats; a bool, a string or None is not one)."""
    return values.dtype.kind in "iuf"


def is_static_zero(value: Any) -> bool:
    """Whether `value` is a concrete scalar zero: a Python or NumPy number, or a concrete 0-d array, equal to 0."""
    if isinstance(value, (bool, np.bool_, jax.core.Tracer)):
        return False
    if isinstance(value, (int, float, np.number)) or (isinstance(value, (np.ndarray, jax.Array))
                                                        and value.ndim == 0 and value.dtype.kind in "iuf"):
        return bool(value == 0)
    return False


class TracedOptions:
    """Base of the frozen dataclasses whose numeric options are traced (solvers, `samplers.guided`'s wrapper).

    Subclasses list their pytree children in `traced` (field names); the other fields are static metadata and must
    be hashable. Unflattening sets the fields without calling `__init__`, so `__post_init__` checks never see a
    tracer from JAX's own tree operations; checks that can see one (a user building a solver inside a traced
    function) check known values only (`known`).

    The rule for switches (written once, here). A field in `switches` (a subset of `traced`: `eta`, `tau`,
    `S_churn`) decides the structure of the method, e.g. whether a solver draws noise, needs a key and carries noise
    in its state. Given as a concrete zero (`is_static_zero`), it is static metadata and the method is the
    deterministic one, bit for bit; any other value, a number, an array, or a tracer, is a traced leaf and the
    method is the stochastic one, even where a traced value happens to be 0 (then its noise has weight 0: the
    deterministic result to rounding, and it still needs a key). So `jax.vmap` over eta = [0, 0.5, 1] runs three
    stochastic solves in one program, and eta = 0.0 given as a number runs the deterministic one.
    """

    traced: ClassVar[tuple[str, ...]] = ()
    switches: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, functools.partial(_unflatten, cls))

    def is_static(self, field: str) -> bool:
        """Whether `field` is static metadata of this object (not traced, or a switch given as a concrete zero)."""
        return field not in self.traced or (field in self.switches and is_static_zero(getattr(self, field)))


@functools.cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _flatten(obj):
    children = tuple(name for name in _field_names(type(obj)) if not obj.is_static(name))
    # A static zero is stored as the float 0.0 (hashable, equal for 0, 0.0, np.float64(0) and a concrete 0-d array).
    meta = tuple((name, 0.0 if name in obj.traced else getattr(obj, name))
                 for name in _field_names(type(obj)) if name not in children)
    return tuple(getattr(obj, name) for name in children), (children, meta)


def _unflatten(cls, aux, values):
    children, meta = aux
    obj = object.__new__(cls)
    for name, value in meta + tuple(zip(children, values)):
        object.__setattr__(obj, name, value)
    return obj


class _Traced:
    """Marks, in a static key, the place of a leaf that is passed traced."""

    def __repr__(self):
        return "<traced>"


_TRACED = _Traced()


def _is_traced_leaf(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.number, float, complex))


def split(tree: Any) -> tuple[tuple, list]:
    """(static key, traced leaves) of a pytree: the key is hashable (the tree's structure and its leaves that are not
    traced, e.g. a plain function), the traced leaves are the arrays and numbers (None in the other places).
    `merge(key, leaves)` rebuilds the tree, from traced leaves too.

    Traced: jax and NumPy arrays, NumPy scalars, Python floats and complex numbers. Static: Python ints and bools
    (and everything else). A model wrapper may use a Python int as a shape, a count or an index (a number of
    classes, a repeat), which a tracer cannot be; and the numbers a sweep varies are floats: a solver holds its
    numeric options given as ints as floats (`samplers.Solver`), and `samplers.guided` its scale, so a sweep over
    eta or over the guidance scale is still one compilation. An int that should be traced is given as an array.

    Example:
        >>> from fastsamplers import samplers
        >>> key_a, leaves_a = split(samplers.get_solver("ddim", eta=0.5))
        >>> key_b, leaves_b = split(samplers.get_solver("ddim", eta=1.0))
        >>> key_a == key_b, leaves_a, leaves_b
        (True, [0.5], [1.0])
    """
    leaves, treedef = jax.tree.flatten(tree)
    return ((treedef, tuple(_TRACED if _is_traced_leaf(leaf) else leaf for leaf in leaves)),
            [leaf if _is_traced_leaf(leaf) else None for leaf in leaves])


def merge(key: tuple, leaves: list) -> Any:
    """The pytree of `split`'s key with these traced leaves."""
    treedef, static = key
    return treedef.unflatten([leaf if s is _TRACED else s for s, leaf in zip(static, leaves)])
