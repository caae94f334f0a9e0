"""Sampling a causal (autoregressive) flow by inverting its blocks: sequential, Jacobi and GS-Jacobi
(Liu & Qin 2025, "Accelerate TarFlow Sampling with GS-Jacobi Iteration"), for `models.tarflow.TarFlow`.

Block k maps x -> z with z_t = (x_t - b_t(x_<t)) exp(-a_t(x_<t)). Its inverse solves the triangular system

    x = F(x),   F(x)_t = z_t exp(a_t(x_<t)) + b_t(x_<t),

whose token t depends only on the tokens before it. Three ways to solve it, all one compiled loop:

  sequential  token by token, each step one network pass on one token against the key/value cache of the tokens
              before it (a `lax.scan`): T dependent passes per block (the first one reads only the start token).
  jacobi      x <- F(x) on all tokens at once, one full causal pass per iteration (a `lax.while_loop`), from an
              initial guess; after n iterations tokens 0..n are exact, so T-1 iterations give the exact inverse.
              It stops when max |x_new - x| <= tol or at max_iterations.
  gs_jacobi   the tokens cut into `segments` equal segments, solved in order (Gauss-Seidel across segments), Jacobi
              inside a segment, each iteration one pass over the segment's tokens against the frozen cache of the
              segments before it. One segment is Jacobi; T segments of one token each is sequential.

All three are the same segment loop (`_invert_block`): sequential is T segments of 1 token with one iteration.
Initial guess ("init"): "z" (x = z) or "z0" (x = [z_0, 0, ..., 0]). Optional clamping of the iterates to
[-clamp, clamp] (the reference implementation clamps to [-3, 3]). Classifier-free guidance of weight w combines the
conditional and unconditional outputs, a <- a + w (a - a_u) and b <- b + w (b - b_u), optionally annealed
linearly over the token position (w t / (T-1)).

A plan is a plain config value: one mode name for every block ("sequential"), one dict, or a list with one dict per
block, e.g. [{"mode": "gs_jacobi", "segments": 8, "max_iterations": 8}, {"mode": "jacobi", "max_iterations": 10,
"tol": 1e-4, "init": "z0"}, ...]. Blocks are listed in the model's order (block 0 is the first forward block, the
last one inverted).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence, TypeAlias, cast

import jax
import jax.numpy as jnp

from fastsamplers.core import Registry
from fastsamplers.core.typing import PyTree
from fastsamplers.models.tarflow import TarFlow, block_order, denoise, empty_cache

_UNKNOWN = "unknown {kind} {name!r}; valid: {valid}"
MODES = Registry.of_names("inversion mode", ("sequential", "jacobi", "gs_jacobi"), ordered=True, unknown=_UNKNOWN)
INITS = Registry.of_names("initial guess", ("z", "z0"), ordered=True, unknown=_UNKNOWN)
# Matrix-product precisions (`jax.default_matmul_precision`); None keeps the backend's default.
PRECISIONS = Registry.of_names("matmul precision", ("highest", "float32", "tensorfloat32", "bfloat16", "default", None),
                               ordered=True, unknown=_UNKNOWN)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How one block is inverted.

    mode: "sequential", "jacobi" or "gs_jacobi". segments: gs_jacobi's number of equal segments (it must divide
    the number of tokens). max_iterations: Jacobi iterations per segment (0 = the segment's length, which is
    always exact). tol: stop a segment when max |x_new - x| <= tol (0 = run max_iterations). init: "z" or "z0".
    """

    mode: str = "sequential"
    segments: int = 1
    max_iterations: int = 0
    tol: float = 0.0
    init: str = "z"

    def __post_init__(self) -> None:
        MODES.check(self.mode)
        INITS.check(self.init)
        if self.segments < 1 or self.max_iterations < 0 or self.tol < 0:
            raise ValueError(f"a block plan needs segments >= 1, max_iterations >= 0 and tol >= 0; got {self}")
        if self.mode == "jacobi" and self.segments != 1:
            raise ValueError(f"mode 'jacobi' has one segment (use 'gs_jacobi' for {self.segments})")

    def layout(self, num_tokens: int) -> tuple[int, int, int]:
        """(number of segments, tokens per segment, iterations cap per segment) for a block of num_tokens."""
        if self.mode == "sequential":
            return num_tokens, 1, 1
        if num_tokens % self.segments:
            raise ValueError(f"gs_jacobi: segments={self.segments} does not divide the {num_tokens} tokens")
        length = num_tokens // self.segments
        return self.segments, length, self.max_iterations or length


PLAN_FORMS = ("a plan is a mode name (" + ", ".join(MODES) + "), a JSON dict of BlockPlan's fields (e.g. "
              '{"mode": "gs_jacobi", "segments": 8, "tol": 1e-4}) or a JSON list of such dicts, one per block')
# A plan as a config gives it (module docstring): one block's plan (a mode name, a dict of `BlockPlan`'s fields, or a
# BlockPlan) for every block, or a sequence of them, one per block.
BlockSpec: TypeAlias = str | Mapping[str, Any] | BlockPlan
PlanSpec: TypeAlias = BlockSpec | Sequence[BlockSpec]


def parse_plan(text: str) -> PlanSpec:
    """A plan from a config string: a mode name, or JSON (a dict or a list of dicts); ValueError (one sentence, the
    valid forms listed) for text that is neither."""
    text = text.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"plan {text!r} is not valid JSON ({error.msg}); {PLAN_FORMS}") from None
    try:
        return MODES.check(text)
    except ValueError as error:
        raise ValueError(f"{error}: {PLAN_FORMS}") from None


def make_plan(spec: PlanSpec, num_blocks: int) -> tuple[BlockPlan, ...]:
    """A tuple of `BlockPlan`, one per block, from a mode name, a dict, a BlockPlan, or a list of those."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_blocks:
            raise ValueError(f"the plan lists {len(spec)} blocks but the flow has {num_blocks}")
        return tuple(_block_plan(item) for item in spec)
    return (_block_plan(spec),) * num_blocks


def _block_plan(item):
    if isinstance(item, BlockPlan):
        return item
    if isinstance(item, str):
        return BlockPlan(mode=item)
    if hasattr(item, "to_dict"):  # an ml_collections ConfigDict
        item = item.to_dict()
    if isinstance(item, dict):
        valid = [f.name for f in dataclasses.fields(BlockPlan)]
        unknown = sorted(set(item) - set(valid))
        if unknown:
            raise ValueError(f"a block plan has no key(s) {unknown}; valid keys: {valid}")
        return BlockPlan(**item)
    raise TypeError(f"a block plan is a mode name, a dict or a BlockPlan, not {type(item).__name__}")


def invert(flow: TarFlow, params: PyTree, z: jax.Array, y: jax.Array | None = None, plan: PlanSpec = "sequential",
           guidance: float = 0.0, annealed_guidance: bool = False, clamp: float | None = None,
           precision: str | None = "highest", attn_temperature: float = 1.0) -> tuple[jax.Array, dict[str, Any]]:
    """x with flow(x) = z: every block inverted as `plan` says, last block first.

    Args:
      flow, params: a `TarFlow` and its parameters. `invert` takes no model function (so no `args`): the parameters
        are an ordinary argument, traced wherever the caller's jit has them as an argument, e.g.
        `jax.jit(lambda params, z, y: invert(flow, params, z, y, plan))` (one program for any parameter values of
        the same shapes); a jit that closes over them compiles them in as constants.
      z: (B, H, W, C) latents.
      y: (B,) int labels, or None (unconditional: the "no label" embedding).
      plan: see the module docstring.
      guidance: classifier-free guidance weight w (0 = none; needs a class-conditional flow and labels).
      annealed_guidance: w grows linearly with the token position, w t / (T - 1).
      clamp: None, or c > 0 to clip every iterate to [-c, c].
      precision: the matrix-product precision of every pass (`PRECISIONS`; None = the backend's default). Full
        float32 by default: the GPU default (TF32 products) moves the fixed point by ~1e-3, so a Jacobi tolerance
        of 1e-4 is never met and the iterations run to their cap (measured on an H100 with the digits TarFlow:
        190 dependent passes instead of 58, max |x - x_seq| 6e-3 instead of 9e-5).
      attn_temperature: divides the attention logits of guidance's unconditional branch (the reference TarFlow's
        attn_temp, transformer_flow.py:54-56, 228; 1 = none).

    Returns:
      (x (B, H, W, C), info): info["passes"] (num_blocks,) dependent network passes per block (the sum of the
      iterations of its segments), info["iterations"] a tuple of (segments,) arrays per block, info["max_change"]
      a tuple of (segments,) arrays, the last iteration's max |x_new - x| (0 for sequential).
    """
    plans = make_plan(plan, flow.num_blocks)
    flow.check_images(z)
    if guidance and not flow.num_classes:
        raise ValueError("guidance needs a class-conditional flow (num_classes > 0)")
    if guidance and y is None:
        raise ValueError("guidance needs labels y: it contrasts the conditional and the unconditional outputs")
    if clamp is not None and not clamp > 0:
        raise ValueError(f"clamp must be None or > 0, got {clamp}")
    if not attn_temperature > 0 or (attn_temperature != 1 and not guidance):
        raise ValueError(f"attn_temperature must be > 0 and applies to guidance's unconditional branch only; got "
                         f"{attn_temperature} with guidance {guidance}")
    PRECISIONS.check(precision)
    for p in plans:
        p.layout(flow.num_tokens)  # divisibility errors before any compute
    # flax's apply returns (out, state) only when a collection is mutable: here, out alone (the casts say so)
    labels = flow.apply({}, y, z.shape[0], method=TarFlow.labels)
    if flow.prior_variance:  # the flow's last layer z / sqrt(var), inverted first
        z = z * cast(jax.Array, flow.apply(params, method=TarFlow.prior_std))[None].astype(z.dtype)
    tokens = cast(jax.Array, flow.apply({}, z, method=TarFlow.to_tokens))
    passes: list[Any] = [None] * flow.num_blocks
    iterations: list[Any] = [None] * flow.num_blocks
    changes: list[Any] = [None] * flow.num_blocks
    with jax.default_matmul_precision(precision):  # read when the passes are traced
        for k in reversed(range(flow.num_blocks)):
            x, iterations[k], changes[k] = _invert_block(flow, params, k, block_order(k, tokens), labels, plans[k],
                                                         guidance, annealed_guidance, clamp, attn_temperature)
            passes[k] = jnp.sum(iterations[k])
            tokens = block_order(k, x)
    x = cast(jax.Array, flow.apply({}, tokens, method=TarFlow.to_images))
    return x, {"passes": jnp.stack(passes), "iterations": tuple(iterations), "max_change": tuple(changes)}


def _invert_block(flow, params, k, z, labels, plan, guidance, annealed, clamp, attn_temperature=1.0):
    """Block k's inverse on tokens z (B, T, D) in the block's order: a scan over segments, each a Jacobi loop."""
    batch, num_tokens, _ = z.shape
    num_segments, length, max_iterations = plan.layout(num_tokens)
    guided = bool(guidance)
    temperature = None
    if guided:
        labels = jnp.concatenate([labels, jnp.full_like(labels, flow.num_classes)])
        if attn_temperature != 1:
            temperature = jnp.concatenate([jnp.ones(labels.shape[0] // 2), jnp.full(labels.shape[0] // 2,
                                                                                      attn_temperature)])
    cache = empty_cache(flow, labels.shape[0], z.dtype)
    x = z if plan.init == "z" else jnp.concatenate([z[:, :1], jnp.zeros_like(z[:, 1:])], axis=1)

    def outputs(u, start, cache):
        if guided:
            u = jnp.concatenate([u, u])
        a, b, cache = flow.apply(params, k, u, start, labels, cache, temperature, method=TarFlow.block_outputs)
        if guided:
            (a, a_u), (b, b_u) = jnp.split(a, 2), jnp.split(b, 2)
            w = guidance
            if annealed:
                w = guidance * ((start + jnp.arange(u.shape[1])) / max(num_tokens - 1, 1))[None, :, None]
            a, b = a + w * (a - a_u), b + w * (b - b_u)
        return a, b, cache

    def segment(carry, j):
        x, cache = carry
        start = j * length
        padded = jnp.concatenate([jnp.zeros_like(x[:, :1]), x], axis=1)  # padded[:, t] = x_{t-1}
        previous = jax.lax.dynamic_slice_in_dim(padded, start, 1, axis=1)  # final: segments before are solved
        z_seg = jax.lax.dynamic_slice_in_dim(z, start, length, axis=1)

        def update(x_seg, cache):
            u = jnp.concatenate([previous, x_seg[:, :-1]], axis=1)
            a, b, cache = outputs(u, start, cache)
            new = z_seg * jnp.exp(a) + b
            if clamp is not None:
                new = jnp.clip(new, -clamp, clamp)
            return new.astype(x_seg.dtype), cache

        x_seg = jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)
        if max_iterations == 1 and plan.tol == 0:
            new, cache = update(x_seg, cache)
            count, change = jnp.ones((), jnp.int32), jnp.max(jnp.abs(new - x_seg))
            if plan.mode == "sequential":
                change = jnp.zeros_like(change)
        else:
            def cond(state):
                count, _, _, change = state
                return (count < max_iterations) & (change > plan.tol)

            def body(state):
                count, x_seg, cache, _ = state
                new, cache = update(x_seg, cache)
                return count + 1, new, cache, jnp.max(jnp.abs(new - x_seg))

            init = (jnp.zeros((), jnp.int32), x_seg, cache, jnp.full((), jnp.inf, x_seg.dtype))
            count, new, cache, change = jax.lax.while_loop(cond, body, init)
        x = jax.lax.dynamic_update_slice_in_dim(x, new, start, axis=1)
        return (x, cache), (count, change)

    (x, _), (counts, changes) = jax.lax.scan(segment, (x, cache), jnp.arange(num_segments))
    return x, counts, changes


def sample(flow: TarFlow, params: PyTree, key: jax.Array, num_samples: int, y: jax.Array | None = None,
           plan: PlanSpec = "sequential", guidance: float = 0.0, annealed_guidance: bool = False,
           clamp: float | None = None, temperature: float = 1.0, denoise_sigma: float | None = None,
           precision: str | None = "highest") -> tuple[jax.Array, dict[str, Any]]:
    """Samples: z ~ N(0, temperature^2 I), inverted by `invert`, then (if denoise_sigma) the Tweedie step
    x + sigma^2 grad log p(x) with the flow's own likelihood. Returns (x, info) as `invert`, x in image layout."""
    shape = (num_samples, flow.image_size, flow.image_size, flow.channels)
    z = temperature * jax.random.normal(key, shape, jnp.float32)
    x, info = invert(flow, params, z, y, plan, guidance, annealed_guidance, clamp, precision)
    if denoise_sigma:
        x = denoise(flow, params, x, denoise_sigma, y)
    return x, info
