"""What a network sees: its inputs scaled for the process, so that one network class serves every process.

`network_fn(net, process)` returns `fn(params, x, t) -> prediction`, the function that training differentiates and
that samplers call (with params bound). Two choices, both from EDM (Karras et al. 2022, Table 1):
  input_scaling "none": the network gets x_t as is (right for VP and OT paths, whose marginals have unit-order scale);
                "edm":  it gets c_in(t) x_t, c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2), the inverse of x_t's
                        standard deviation for data of standard deviation sigma_data (needed for VE / EDM, sigma to 80).
  time input: t itself for processes on [0, 1]; 0.25 log sigma(t) (EDM's c_noise) for processes whose t runs past 1,
              so that the embedding sees a unit-order number.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.core.typing import ArrayLike, PyTree

if TYPE_CHECKING:
    from fastsamplers.schedules.processes import Process

INPUT_SCALINGS = Registry.of_names("input_scaling", ("none", "edm"), ordered=True,
                                   unknown="unknown {kind} {name!r}; valid: {valid}")


def class_labels(labels: ArrayLike | None, num_classes: int, batch: int) -> jax.Array:
    """The labels a class-conditional network sees, (batch,) int32: `labels` (0..num_classes-1, or num_classes,
    the null label that label dropout trains and guidance's unconditional branch uses), or all null when None.
    The conventions of `models.tarflow`."""
    if labels is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))


def split_conditional_args(args: PyTree,
                           num_classes: int | None = None) -> tuple[PyTree, ArrayLike | None]:
    """(params, labels) from the `args` of a class-conditional model function, model_fn(x, t, (params, labels));
    anything else, most often the parameters alone, is a ValueError of one sentence (not the parameter tree), which
    names the label range when `num_classes` is given.

    Example:
        >>> split_conditional_args(({"w": 1.0}, [3, 7]), 10)
        ({'w': 1.0}, [3, 7])
        >>> split_conditional_args({"w": 1.0}, 10)
        Traceback (most recent call last):
        ...
        ValueError: the model is class-conditional (10 classes): pass args=(params, labels), labels of shape (batch,) in 0..9, not a dict
    """
    if isinstance(args, (tuple, list)) and len(args) == 2:
        return args[0], args[1]
    given = f"a {type(args).__name__}" + (f" of {len(args)}" if isinstance(args, (tuple, list)) else "")
    classes, labels = "", "labels of shape (batch,)"
    if num_classes is not None:
        classes, labels = f" ({num_classes} classes)", f"{labels} in 0..{num_classes - 1}"
    raise ValueError(f"the model is class-conditional{classes}: pass args=(params, labels), {labels}, not {given}")


def add_label_embedding(module: nn.Module, emb: jax.Array, labels: ArrayLike | None, num_classes: int,
                        embedding_init: jax.nn.initializers.Initializer = nn.initializers.normal(0.02)) -> jax.Array:
    """`emb` (B, D) plus a learned embedding of the labels (num_classes + 1 rows, the last the null label), for a
    network with `num_classes` > 0; `emb` unchanged (and no parameter) for num_classes = 0, which takes no labels.
    `module` is the calling compact module, whose parameter "label_embed" this creates."""
    if not num_classes:
        if labels is not None:
            raise ValueError(f"{type(module).__name__}: labels given to an unconditional network (num_classes=0)")
        return emb
    y = class_labels(labels, num_classes, emb.shape[0])
    table = nn.Embed(num_classes + 1, emb.shape[-1], embedding_init=embedding_init, parent=module,
                     name="label_embed")
    return emb + table(y).astype(emb.dtype)


@dataclasses.dataclass(frozen=True)
class NetworkFn:
    """`fn(params, x, t, labels=None, s=None)`: the network's prediction (see `network_fn`); `s` only for a
    two-time network (`second_time=True`: a flow map's F(x, t, s), `models.flow_map`). A frozen dataclass, equal and
    hashable by value (the module definition, the process and the scaling), so that two builds of one architecture
    (two checkpoints, two runs) are the same function to the samplers' compile cache: one compiled program for both.
    """

    net: nn.Module
    process: Process
    input_scaling: str = "none"
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        INPUT_SCALINGS.check(self.input_scaling)

    def __call__(self, params: PyTree, x: jax.Array, t: ArrayLike, labels: ArrayLike | None = None,
                 s: ArrayLike | None = None) -> jax.Array:
        process = self.process
        t = jnp.asarray(t, jnp.float32)
        t_batch = jnp.broadcast_to(t, x.shape[:1])
        t_x = jnp.reshape(t_batch, x.shape[:1] + (1,) * (x.ndim - 1))
        if self.input_scaling == "edm":
            alpha, sigma = process.alpha(t_x), process.sigma(t_x)
            x = x * (1.0 / jnp.sqrt((alpha * self.sigma_data) ** 2 + sigma**2)).astype(x.dtype)
        t_in = self._time_input(t_batch)
        extra = () if labels is None else (labels,)
        # a two-time network (a flow map's F(x, t, s), `models.flow_map`) sees s as it sees t
        second = {} if s is None else {"s": self._time_input(jnp.broadcast_to(jnp.asarray(s, jnp.float32),
                                                                            x.shape[:1]))}
        out = self.net.apply(params, x, t_in.astype(jnp.float32), *extra, **second)
        return out.astype(x.dtype)  # type: ignore[union-attr]  # apply returns (out, state) only when mutable

    def _time_input(self, t: jax.Array) -> jax.Array:
        return (0.25 * jnp.log(self.process.sigma(t)) if self.process.t_max > 1.0 else t).astype(jnp.float32)


def network_fn(net: nn.Module, process: Process, input_scaling: str = "none", sigma_data: float = 0.5) -> NetworkFn:
    """The prediction function `fn(params, x, t[, labels])` of a Flax module `net` called as
    `net.apply(params, x, t[, labels])` (labels: for a class-conditional network, `num_classes` > 0).

    Args:
      net: a Flax Linen module taking (x, t) with x (batch, ...) and t a scalar or (batch,).
      process: the `schedules.Process` the model is trained for.
      input_scaling: "none" or "edm" (see the module docstring).
      sigma_data: the data's standard deviation, for "edm" scaling.

    Returns:
      fn(params, x, t, labels=None), a `NetworkFn`: t a scalar or a (batch,) array; the output has x's shape and
      dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fastsamplers import schedules
        >>> from fastsamplers.models import MLP
        >>> net = MLP(hidden=8, depth=1)
        >>> fn = network_fn(net, schedules.get_process("ot"))
        >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), 0.5)
        >>> fn(params, jnp.ones((4, 2)), 0.5).shape
        (4, 2)
        >>> fn == network_fn(MLP(hidden=8, depth=1), schedules.get_process("ot"))
        True
    """
    return NetworkFn(net, process, input_scaling, sigma_data)
