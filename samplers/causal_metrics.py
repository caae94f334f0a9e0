"""Which TarFlow blocks are hard to invert in parallel, and from which initial guess (Liu & Qin 2025, sec. 4):
the Convergence Ranking Metric (CRM) and the Initial Guessing Metric (IGM), both from one forward pass on data,
and the per-block GS-Jacobi plan they suggest.

For block k with data tokens x (its input), latents z and outputs (a, b) = block(x shifted right):

  CRM_k = ||mean_B(exp(-a) * x)||_2 * ||W_a||_2 + ||W_b||_2,

  where W_a, W_b are the columns of the block's output projection that produce a and b and ||.||_2 is the
  spectral norm (of the (T, D) batch mean, and of the weight matrices). It bounds how strongly a token's error
  moves the next tokens through the Jacobi map F(x) = z exp(a(x)) + b(x), so a block with a dominant share of the
  total CRM converges slowly and is solved segment by segment (GS-Jacobi); the others need a few Jacobi
  iterations.

  IGM_k(g) = ||mean_B(z exp(a(g)) + b(g) - x)||_2 for an initial guess g ("z": g = z; "z0": g = [z_0, 0, ..., 0]):
  how far one Jacobi iteration from g lands from the true inverse. The plan starts each block from the guess with
  the smaller IGM.

`recommend_plan` turns the metrics into a plan for `samplers.causal.invert` (a plain list of dicts).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import PyTree
from fastsamplers.models.tarflow import TarFlow


def _spectral_norm(matrix):
    return float(np.linalg.norm(np.asarray(matrix, np.float64), ord=2))


def _metric_arrays(flow, params, x, y):
    """Per block, the (T, D) batch means whose spectral norms are the metrics: exp(-a) x, and the residual of one
    Jacobi step from each initial guess."""
    labels = flow.apply({}, y, x.shape[0], method=TarFlow.labels)
    arrays = []
    for k, (inputs, z, a, _) in enumerate(flow.apply(params, x, labels, method=TarFlow.forward_trace)):
        residuals = []
        for guess in (z, jnp.concatenate([z[:, :1], jnp.zeros_like(z[:, 1:])], axis=1)):
            u = jnp.concatenate([jnp.zeros_like(guess[:, :1]), guess[:, :-1]], axis=1)
            a_g, b_g, _ = flow.apply(params, k, u, 0, labels, None, method=TarFlow.block_outputs)
            residuals.append(jnp.mean(z * jnp.exp(a_g) + b_g - inputs, axis=0))
        arrays.append((jnp.mean(jnp.exp(-a) * inputs, axis=0), *residuals))
    return arrays


def block_metrics(flow: TarFlow, params: PyTree, x: jax.Array, y: jax.Array | None = None) -> list[dict[str, Any]]:
    """CRM (and its share of the total) and IGM of both initial guesses, per block, from images x (B, H, W, C).

    Returns:
      A list with one dict per block (model order): crm, crm_share, crm_state (the data term), w_a, w_b (the
      weight norms), igm_z, igm_z0, init (the guess with the smaller IGM).
    """
    arrays = jax.jit(functools.partial(_metric_arrays, flow))(params, x, y)
    out = []
    for k, (state, igm_z, igm_z0) in enumerate(arrays):
        kernel = params["params"][f"block_{k}"]["proj_out"]["kernel"]
        entry = {"block": k, "crm_state": _spectral_norm(state), "w_a": _spectral_norm(kernel[:, :flow.token_dim]),
                 "w_b": _spectral_norm(kernel[:, flow.token_dim:]),
                 "igm_z": _spectral_norm(igm_z), "igm_z0": _spectral_norm(igm_z0)}
        entry["crm"] = entry["crm_state"] * entry["w_a"] + entry["w_b"]
        entry["init"] = "z" if entry["igm_z"] <= entry["igm_z0"] else "z0"
        out.append(entry)
    total = sum(entry["crm"] for entry in out)
    for entry in out:
        entry["crm_share"] = entry["crm"] / total if total > 0 else 1.0 / len(out)
    return out


def recommend_plan(metrics: list[dict[str, Any]], num_tokens: int, tough_share: float | None = None, segments: int = 8,
                   tough_iterations: int = 0, other_iterations: int = 0, tol: float = 1e-4) -> list[dict[str, Any]]:
    """A per-block plan from `block_metrics`: blocks whose CRM share is at least `tough_share` (default 1.5 / the
    number of blocks, i.e. half again the even share) get GS-Jacobi with `segments` segments and
    `tough_iterations` per segment (0 = the segment length: exact); the others get Jacobi with at most
    `other_iterations` (0 = the number of tokens: exact). Every block stops early at `tol` and starts from the
    guess with the smaller IGM.

    The caps are safeguards: the tolerance decides when a block is solved. A cap below what a block needs leaves
    its error in the sample (the paper's "Else" cap of 10 Jacobi iterations was set for its models; on
    digits_tarflow one block needs 21 at tol 1e-4), so the default is the exact bound.

    Returns:
      A list of dicts, one per block, accepted by `samplers.causal.invert(plan=...)`.
    """
    if num_tokens % segments:
        raise ValueError(f"segments={segments} does not divide the {num_tokens} tokens")
    threshold = 1.5 / len(metrics) if tough_share is None else tough_share
    plan = []
    for entry in metrics:
        if entry["crm_share"] >= threshold:
            plan.append({"mode": "gs_jacobi", "segments": segments, "max_iterations": tough_iterations, "tol": tol,
                         "init": entry["init"]})
        else:
            plan.append({"mode": "jacobi", "max_iterations": other_iterations, "tol": tol, "init": entry["init"]})
    return plan


def format_metrics(metrics: list[dict[str, Any]]) -> str:
    """A markdown table of `block_metrics`."""
    lines = ["| block | CRM | share | data term | norm W_a | norm W_b | IGM(z) | IGM(z0) | guess |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in metrics:
        lines.append(f"| {e['block']} | {e['crm']:.3f} | {100 * e['crm_share']:.1f}% | {e['crm_state']:.3f} | "
                     f"{e['w_a']:.3f} | {e['w_b']:.3f} | {e['igm_z']:.4f} | {e['igm_z0']:.4f} | {e['init']} |")
    return "\n".join(lines)

