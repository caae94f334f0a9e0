"""The fused-qkv attention of `models.pretrained.attention` against the channel-index formulas of each layout."""

import numpy as np
import jax.numpy as jnp
import pytest

from fastsamplers.models.pretrained.attention import QKV_LAYOUTS, dot_product_attention, split_qkv

B, L, HEADS, D = 2, 5, 3, 4
C = HEADS * D
# (head h, feature c, q/k/v j) -> channel of the fused projection, as each reference network reshapes it.
INDEX = {"edm": lambda h, c, j: h * 3 * D + 3 * c + j,
         "adm_legacy": lambda h, c, j: h * 3 * D + j * D + c,
         "adm": lambda h, c, j: j * C + h * D + c}


def _reference(qkv, layout):
    q, k, v = (np.zeros((B, L, HEADS, D)) for _ in range(3))
    for h in range(HEADS):
        for c in range(D):
            for j, part in enumerate((q, k, v)):
                part[:, :, h, c] = qkv[:, :, INDEX[layout](h, c, j)]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, L, C)  # output channel h * D + c


@pytest.mark.parametrize("layout", list(QKV_LAYOUTS))
def test_layouts_match_their_index_formulas(layout):
    qkv = np.random.default_rng(0).normal(size=(B, L, 3 * C))
    out = dot_product_attention(*split_qkv(jnp.asarray(qkv, jnp.float32), HEADS, layout))
    np.testing.assert_allclose(np.asarray(out), _reference(qkv, layout), atol=1e-5)  # float32 of O(1) values


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="valid: \\['edm', 'adm_legacy', 'adm'\\]"):
        split_qkv(jnp.zeros((1, 2, 3 * C)), HEADS, "ldm")
    with pytest.raises(ValueError, match="does not split into q, k, v of 5 heads"):
        split_qkv(jnp.zeros((1, 2, 3 * C)), 5, "edm")
