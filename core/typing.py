"""The type aliases of the project's signatures, written once: what a model function, a pytree, an array argument
are. Annotations only: nothing here is checked at run time (mypy checks the annotations against each other).

A schedule's `Process` and a sampler's `Solver` are classes of their own layers (`schedules.Process`,
`samplers.Solver`) and are annotated by those names; this module, the bottom layer, names only what jax and numpy
define. Modules of `core` import it only for type checking (`if TYPE_CHECKING:`), so `import fastsamplers.core`
still loads no jax.

Example:
    >>> import jax.numpy as jnp
    >>> def model_fn(x: jax.Array, t: ArrayLike) -> jax.Array:
    ...     return -x
    >>> def run(fn: ModelFn, x: jax.Array) -> jax.Array:
    ...     return fn(x, 0.5)
    >>> run(model_fn, jnp.ones(2)).tolist()
    [-1.0, -1.0]
"""

from __future__ import annotations

from typing import Any, Callable, TypeAlias, TypeVar

import jax
import numpy as np
import numpy.typing
# ArrayLike: what `jnp.asarray` takes (a jax or numpy array, a numpy scalar, a Python bool, int, float or complex;
# not a list): times `t`, a scalar or an array broadcastable to the batch, and the numeric inputs of jax code.
# DTypeLike: a dtype, a scalar type or a dtype's name, as `jnp.dtype` takes it.
from jax.typing import ArrayLike, DTypeLike

# What `np.asarray` takes: an ArrayLike, or (nested) lists and tuples of numbers. For host-side arithmetic, which
# converts its input with numpy (time grids, schedule files, tables).
HostArrayLike: TypeAlias = numpy.typing.ArrayLike

# An array of either kind, host (numpy) or jax, where a function returns the kind it was given.
ArrayT = TypeVar("ArrayT", np.ndarray, jax.Array)
# Any nest of tuples, lists, dicts and registered dataclasses with arrays at the leaves (parameters, a solver's
# state, the `args` of a model function). Its structure is not checked statically: `Any`.
PyTree: TypeAlias = Any
# A model: model_fn(x, t) -> prediction, or model_fn(x, t, args) -> prediction when the caller passes `args` (a
# pytree); x (batch, ...), t broadcastable to the batch, the prediction of x's shape (DESIGN.md, "Model predictions").
ModelFn: TypeAlias = Callable[..., jax.Array]
# An array's shape.
Shape: TypeAlias = tuple[int, ...]

__all__ = ["ArrayLike", "ArrayT", "DTypeLike", "HostArrayLike", "ModelFn", "PyTree", "Shape"]
