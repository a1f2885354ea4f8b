"""Decoding over a prefix held once per group of rows: the rollout's candidates of one prompt.

Shape legend as in qwen.py; M rows per group, R = B·M rows, S prefix slots, C slots of each
row's own tokens. A GroupCache holds each group's prefix (prompt ⊕ guidance, one prefill's
cache) once and every row's generated tokens in its own slots; a decode step attends over
both parts, each a softmax with its log-sum-exp, merged exactly (`attend`), so its logits
are those of a row-wise KVCache holding the same tokens. The two products run through the
attention boundary (attention.decode_scores / decode_values), so each platform gets its
decode kernels.
"""

import flax.struct
import jax
import jax.numpy as jnp

from g2rpo_jax.models import attention
from g2rpo_jax.models.kv_cache import KVCache, write


@flax.struct.dataclass
class GroupCache:
    """The decode cache of B·M rows in B groups of M that share a prefix.

    prefix: the groups' prefixes, [B, S] slots (a prefill's cache; decode only reads it).
    prefix_mask: [B·M, S], the prefix slots each row sees (a row's prefix may be a part of
    its group's: the prompt alone, or prompt ⊕ guidance).
    own: the rows' own tokens, [B·M, C] slots, written at own.index.
    group_of_row: None when the rows are the B groups' M rows in order; else [rows], each
    row's group (rows in any order and number, as after a gather of some of them).
    """

    prefix: KVCache
    prefix_mask: jax.Array
    own: KVCache
    group_of_row: jax.Array | None = None


def decode(model, token_R, positions_R, cache: GroupCache, rotary=None):
    """One token per row over a GroupCache: (logits [R, V] in float32, cache).

    model: a qwen.Qwen. token_R, positions_R: [R] (rows in group order, or as
    cache.group_of_row says); rotary: `model.rotary(positions_R[:, None])`, when the caller
    already has it.
    """
    own = cache.own
    x_R1D = model.embed[...][token_R[:, None]].astype(model.config.compute_dtype)
    cos_R1h, sin_R1h = model.rotary(positions_R[:, None]) if rotary is None else rotary
    mask_RC = jax.lax.dynamic_update_slice(
        own.mask, jnp.ones((own.mask.shape[0], 1), bool), (0, own.index)
    )
    rows = cache.group_of_row
    # Rows out of group order: each its own group of one, its prefix read by index.
    prefix = lambda x: x if rows is None else x[rows]
    new_k, new_v = [], []
    for i, block in enumerate(model.layers):
        h_R1D, (k, v) = _attention(
            block.attn,
            block.input_norm(x_R1D),
            (cos_R1h, sin_R1h),
            (prefix(cache.prefix.k[i]), prefix(cache.prefix.v[i])),
            cache.prefix_mask,
            (own.k[i], own.v[i]),
            mask_RC,
            own.index,
        )
        x_R1D = x_R1D + h_R1D
        x_R1D = x_R1D + block.mlp(block.post_attention_norm(x_R1D))
        new_k.append(k)
        new_v.append(v)
    own = KVCache(k=tuple(new_k), v=tuple(new_v), mask=mask_RC, index=own.index + 1)
    return model.logits(model.final_norm(x_R1D))[:, 0], cache.replace(own=own)


def _attention(attn, x_R1D, rotary, prefix_kv, prefix_mask_RS, kv_cache, mask_RC, index):
    """One layer's attention (a qwen.Attention) for one token per row: over the group's
    prefix (k, v per group, the slots each row sees in prefix_mask) and the row's own cache,
    into which this token's keys and values go at slot `index`."""
    q_R1NH, k_R1KH, v_R1KH = attn.qkv(x_R1D, *rotary, slice(None))
    k_RKHC, v_RKCH = kv_cache = write(kv_cache, k_R1KH, v_R1KH, index)
    prefix_k, prefix_v = prefix_kv
    groups = prefix_k.shape[0]
    R, _, N, H = q_R1NH.shape
    K = attn.config.num_kv_heads
    by_group = lambda x: x.reshape(groups, R // groups, *x.shape[1:])
    out_BMKGH = attend(
        by_group(q_R1NH.reshape(R, K, N // K, H)),
        prefix_k,
        prefix_v,
        by_group(prefix_mask_RS),
        by_group(k_RKHC),
        by_group(v_RKCH),
        by_group(mask_RC),
        index,
    )
    return attn.output(out_BMKGH.reshape(R, 1, N, H)), kv_cache


def attend(
    q_BMKGH, prefix_k_BKHS, prefix_v_BKSH, prefix_mask_BMS, k_BMKHC, v_BMKCH, mask_BMC, q_slot
) -> jax.Array:
    """One query per row, B groups of M rows: each row attends over the prefix slots it sees
    of its group's prefix (held once per group, S slots; prefix_mask) and over its own cache
    (C slots, the real ones at or before `q_slot`, an int32 scalar). [B, M, K, G, H] in q's
    dtype.

    The two parts are attended separately, each a softmax with its log-sum-exp λ; the whole
    softmax is their mix: out = Σ_i exp(λ_i − λ) · out_i with λ = log(exp λ_1 + exp λ_2).
    The prefix part is one decode of M·G query heads per kv head, so each group's prefix is
    read once for its M rows.
    """
    B, M, K, G, H = q_BMKGH.shape
    S, C = prefix_mask_BMS.shape[-1], mask_BMC.shape[-1]
    dt = q_BMKGH.dtype
    # The prefix: the group's rows as extra query heads, [B, K, M·G, H].
    q_BKXH = q_BMKGH.transpose(0, 2, 1, 3, 4).reshape(B, K, M * G, H)
    s_BKMGS = attention.decode_scores(q_BKXH, prefix_k_BKHS, q_slot).reshape(B, K, M, G, S)
    p_BKMGS, lse_BKMG1 = _partial(s_BKMGS, prefix_mask_BMS[:, None, :, None, :])
    prefix_BKXH = attention.decode_values(p_BKMGS.reshape(B, K, M * G, S).astype(dt), prefix_v_BKSH)
    prefix_BMKGH = prefix_BKXH.reshape(B, K, M, G, H).transpose(0, 2, 1, 3, 4)
    lse_prefix_BMKG1 = lse_BKMG1.transpose(0, 2, 1, 3, 4)
    # The rows' own tokens, R = B·M rows.
    rows = lambda x: x.reshape(B * M, *x.shape[2:])
    s_RKGC = attention.decode_scores(rows(q_BMKGH), rows(k_BMKHC), q_slot)
    visible_RC = rows(mask_BMC) & (jnp.arange(C) <= q_slot)[None]
    p_RKGC, lse_RKG1 = _partial(s_RKGC, visible_RC[:, None, None, :])
    own_BMKGH = attention.decode_values(p_RKGC.astype(dt), rows(v_BMKCH)).reshape(B, M, K, G, H)
    lse_own_BMKG1 = lse_RKG1.reshape(B, M, K, G, 1)
    lse = jnp.logaddexp(lse_prefix_BMKG1, lse_own_BMKG1)
    out = jnp.exp(lse_prefix_BMKG1 - lse) * prefix_BMKGH.astype(jnp.float32)
    out = out + jnp.exp(lse_own_BMKG1 - lse) * own_BMKGH.astype(jnp.float32)
    return out.astype(dt)


def _partial(s_XS, visible_XS):
    """Softmax over the visible keys of one part, and that part's log-sum-exp [X, 1]
    (attention.MASKED where the part has no visible key: its probabilities are then all 0)."""
    m_X1 = jnp.max(jnp.where(visible_XS, s_XS, attention.MASKED), axis=-1, keepdims=True)
    e_XS = jnp.where(visible_XS, jnp.exp(s_XS - m_X1), 0.0)
    l_X1 = jnp.sum(e_XS, axis=-1, keepdims=True)
    some = l_X1 > 0
    probs_XS = e_XS / jnp.where(some, l_X1, 1.0)
    return probs_XS, jnp.where(some, m_X1 + jnp.log(jnp.where(some, l_X1, 1.0)), attention.MASKED)
