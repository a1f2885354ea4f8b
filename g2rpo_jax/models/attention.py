"""Attention, and every backend-specific choice of the decoder, behind one boundary.

Shape legend as in qwen.py: B batch, T queries, S keys, N query heads, K kv heads,
G = N / K, H head dim.

- `attend`: T queries at key slots [q_offset, q_offset + T) over S keys: the training forward
  (q_offset 0), a prefill, the completions after a cached prompt. The model runs the
  `Kernel` it was built with: `kernel_for` resolves the config's implementation
  (`IMPLEMENTATIONS`; "auto" by the target platform, which the builder passes in rather
  than reads from `jax.default_backend()`, so a program exported for "tpu" or "cuda" from
  this CPU machine is that platform's program).
- `decode`: one query per row over a KV cache.
- `decode_scores`, `decode_values`: a decode's two products, for decodes built from parts
  (models/group_cache.py).
- `computed_once`: values a program must compute once and read many times.
The XLA:CPU forms of the decodes and `computed_once` live in xla_cpu.py; `jax.lax.
platform_dependent` picks them only in programs lowered for CPU.

Which keys a query sees: key s is visible to query i when s ≤ q_offset + i and the key is a
real token (`kv_mask`). A padding query (left padding, never read) sees: under "xla", every
key, uniformly (today's reference); under the blockwise kernels, the padding keys up to its
own slot. Both are finite and neither reaches a real token's output or gradient.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from g2rpo_jax.models import xla_cpu

IMPLEMENTATIONS = ("auto", "xla", "chunked", "splash", "cudnn")

# Finite, so a query row with no visible key (a padding row) gives a uniform softmax, not NaN.
MASKED = -0.7 * float(np.finfo(np.float32).max)

# On CPU "auto" keeps the einsum path below this many queries, where the [T, S] scores fit in
# cache and the blockwise loop's bookkeeping costs more than it saves (benchmarks/README.md).
CPU_CHUNKED_FROM = 2048
# Query × key block of "chunked": scores of one block pair are B·N·512·512 floats.
BLOCK = 512
# Splash's tiles: 128 is the TPU lane width; 512 where the sequence allows.
_SPLASH_BLOCK = 512
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def check(implementation: str) -> str:
    """`implementation`, or a ValueError naming the ones there are."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention={implementation!r}: use one of {IMPLEMENTATIONS}")
    return implementation


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The attention a model runs, resolved once for the platform it is built for.

    name: xla | chunked | splash | cudnn, or "by_length" (XLA:CPU's "auto": xla below
    `CPU_CHUNKED_FROM` queries, chunked from there).
    platform: where "auto" was resolved; a program that uses the kernel and is lowered for
    another platform fails to lower (build the model for that target). None for a name the
    config gave, which is the same program anywhere — except splash, a TPU kernel that
    lowers for TPU, and in interpret mode for CPU tests, and for nothing else.
    """

    name: str
    platform: str | None = None


def platform_name(platform: str) -> str:
    """A backend name as `jax.lax.platform_dependent` spells it ("gpu" is "cuda")."""
    return "cuda" if platform == "gpu" else platform


def kernel_for(implementation: str, platform: str, dtype, head_dim: int) -> Kernel:
    """The Kernel of a config's implementation on `platform`. "auto": splash on TPU; cuDNN on
    NVIDIA GPUs for the dtypes and head sizes its flash kernel takes (bf16/fp16, H ≤ 128,
    H % 8 == 0), else chunked; on CPU "by_length"."""
    if check(implementation) != "auto":
        return Kernel(implementation)
    platform = platform_name(platform)
    if platform == "tpu":
        return Kernel("splash", platform)
    if platform == "cuda":
        cudnn_takes = jnp.dtype(dtype) in _CUDNN_DTYPES and head_dim <= 128 and head_dim % 8 == 0
        return Kernel("cudnn" if cudnn_takes else "chunked", platform)
    return Kernel("by_length", platform)


def attend(q_BTNH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS, q_offset, kernel: Kernel) -> jax.Array:
    """softmax(q·kᵀ / √H) · v over the visible keys: [B, T, N, H] in q's dtype.

    q_offset: the key slot of the first query; a Python int when it is known at trace time
    (the training forward, a prefill that fills its whole cache), else an int32 scalar.
    Splash and cuDNN take only the former; with a traced offset they run chunked.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    name = kernel.name
    if name == "by_length":
        name = "xla" if T < CPU_CHUNKED_FROM else "chunked"
    if name in ("splash", "cudnn") and not isinstance(q_offset, int):
        name = "chunked"

    def run(q_BTNH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS):
        q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
        if name == "xla":
            return _xla(q_BTKGH, k_BSKH, v_BSKH, kv_mask_BS, q_offset)
        if name == "chunked":
            q_seg, kv_seg = q_mask_BT.astype(jnp.int32), kv_mask_BS.astype(jnp.int32)
            offset = jnp.asarray(q_offset, jnp.int32)
            return chunked(q_BTKGH, k_BSKH, v_BSKH, q_seg, kv_seg, offset, BLOCK, BLOCK)
        if name == "splash":
            splash = functools.partial(_splash, q_offset=q_offset)
            return jax.lax.platform_dependent(
                q_BTKGH,
                k_BSKH,
                v_BSKH,
                q_mask_BT,
                kv_mask_BS,
                tpu=functools.partial(splash, interpret=False),
                cpu=functools.partial(splash, interpret=True),
            )
        return _cudnn(q_BTNH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS, q_offset)

    args = (q_BTNH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS)
    if kernel.platform is None:
        return run(*args).reshape(B, T, N, H)
    # Only the platform "auto" was resolved for: lowering for another one fails here.
    return jax.lax.platform_dependent(*args, **{kernel.platform: run}).reshape(B, T, N, H)


def _causal(q_slot_T, S: int, q_offset) -> jax.Array:
    """bool [T, S]: the keys at or before each query's slot."""
    return jnp.arange(S)[None, :] <= (q_offset + q_slot_T)[:, None]


def _visible(q_slot_T, kv_mask_BS, q_offset) -> jax.Array:
    """bool [B, T, S]: real keys at or before each query's slot."""
    return kv_mask_BS[:, None, :] & _causal(q_slot_T, kv_mask_BS.shape[1], q_offset)[None]


def _xla(q_BTKGH, k_BSKH, v_BSKH, kv_mask_BS, q_offset) -> jax.Array:
    """The reference: the full [T, S] scores, einsums XLA lays out itself."""
    dt, H = q_BTKGH.dtype, q_BTKGH.shape[-1]
    mask_BTS = _visible(jnp.arange(q_BTKGH.shape[1]), kv_mask_BS, q_offset)
    k_BKHS, v_BKSH = k_BSKH.transpose(0, 2, 3, 1), v_BSKH.transpose(0, 2, 1, 3)
    scores = jnp.einsum("BTKGH,BKHS->BKGTS", q_BTKGH, k_BKHS.astype(dt))
    scores = scores.astype(jnp.float32) / math.sqrt(H)
    scores = jnp.where(mask_BTS[:, None, None], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return jnp.einsum("BKGTS,BKSH->BTKGH", probs, v_BKSH.astype(dt))


# --- chunked: blockwise attention in pure JAX ----------------------------------------------
#
# Layout: q as [B, K, nq, R, H] with R = bq·G rows per query block (each query's G heads
# adjacent, so one block is one [R, H] @ [H, bk] matmul per kv head, K/V never repeated);
# k, v as [B, K, nk, bk, H]. Query block i reads key blocks 0 … last(i) only: the blocks past
# its causal edge are never computed, forward or backward. Memory is linear in T: the
# residuals are q, k, v (kept in the block layout, so the backward does not lay them out
# again), the output and one log-sum-exp per row.


def _pad_to(x, axis: int, multiple: int, value=0):
    pad = -x.shape[axis] % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def chunked(
    q_BTKGH, k_BSKH, v_BSKH, q_seg_BT, kv_seg_BS, q_offset, block_q: int, block_k: int
) -> jax.Array:
    """Blockwise attention with an online softmax: [B, T, K, G, H] in q's dtype.

    q_seg, kv_seg: int32 segment ids (1 real, 0 padding); a key is visible to a query of the
    same segment at or before its slot. q_offset: int32 scalar, the first query's slot.
    """
    return _chunked_forward(
        q_BTKGH, k_BSKH, v_BSKH, q_seg_BT, kv_seg_BS, q_offset, block_q, block_k
    )[0]


def _blocked(q_BTKGH, k_BSKH, v_BSKH, block_q, block_k):
    """q, k, v padded to whole blocks and laid out per block."""
    B, T, K, G, H = q_BTKGH.shape
    S = k_BSKH.shape[1]
    nq, nk = -(-T // block_q), -(-S // block_k)
    q = _pad_to(q_BTKGH.transpose(0, 2, 1, 3, 4), 2, block_q)  # [B, K, T', G, H]
    kv = lambda x: _pad_to(x.transpose(0, 2, 1, 3), 2, block_k).reshape(B, K, nk, block_k, H)
    return q.reshape(B, K, nq, block_q * G, H), kv(k_BSKH), kv(v_BSKH)


def _blocked_segments(q_seg_BT, kv_seg_BS, G: int, block_q, block_k):
    """Segment ids per block row; pads get segments of their own (3 for queries, 4 for keys)
    so they see only each other."""
    B = q_seg_BT.shape[0]
    q_seg_BnR = jnp.repeat(_pad_to(q_seg_BT, 1, block_q, 3).reshape(B, -1, block_q), G, axis=2)
    return q_seg_BnR, _pad_to(kv_seg_BS, 1, block_k, 4).reshape(B, -1, block_k)


def _block_scores(q_BKRH, k_BKkH, q_seg_BR, kv_seg_Bk, q_slot_R, k_slot_k):
    """Scaled scores [B, K, R, bk] (float32) and which of them are visible."""
    H = q_BKRH.shape[-1]
    s = jnp.einsum("BKRH,BKkH->BKRk", q_BKRH, k_BKkH, preferred_element_type=jnp.float32)
    s = s / math.sqrt(H)
    visible = (k_slot_k[None, None, :] <= q_slot_R[None, :, None]) & (
        kv_seg_Bk[:, None, :] == q_seg_BR[:, :, None]
    )
    return jnp.where(visible[:, None], s, MASKED), visible[:, None]


def _last_key_block(i, q_offset, block_q, block_k, nk):
    """1 + the last key block query block i can see."""
    return jnp.minimum(nk, (q_offset + (i + 1) * block_q - 1) // block_k + 1)


def _chunked_forward(q_BTKGH, k_BSKH, v_BSKH, q_seg_BT, kv_seg_BS, q_offset, block_q, block_k):
    B, T, K, G, H = q_BTKGH.shape
    dt = q_BTKGH.dtype
    q, k, v = _blocked(q_BTKGH, k_BSKH, v_BSKH, block_q, block_k)
    q_seg, kv_seg = _blocked_segments(q_seg_BT, kv_seg_BS, G, block_q, block_k)
    nq, R, nk = q.shape[2], q.shape[3], k.shape[2]
    row_q = jnp.arange(R) // G  # each row's query within its block

    def query_block(i):
        q_i, seg_i = q[:, :, i], q_seg[:, i]
        q_slot = q_offset + i * block_q + row_q

        def key_block(j, carry):
            o, m, denom = carry
            s, _ = _block_scores(
                q_i, k[:, :, j], seg_i, kv_seg[:, j], q_slot, j * block_k + jnp.arange(block_k)
            )
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "BKRk,BKkH->BKRH", p.astype(dt), v[:, :, j], preferred_element_type=jnp.float32
            )
            return o * corr[..., None] + pv, m_new, denom * corr + p.sum(-1)

        init = (
            jnp.zeros((B, K, R, H), jnp.float32),
            jnp.full((B, K, R), MASKED, jnp.float32),
            jnp.zeros((B, K, R), jnp.float32),
        )
        last = _last_key_block(i, q_offset, block_q, block_k, nk)
        o, m, denom = jax.lax.fori_loop(0, last, key_block, init)
        return (o / denom[..., None]).astype(dt), m + jnp.log(denom)

    o_nBKRH, lse_nBKR = jax.lax.map(query_block, jnp.arange(nq))
    o_BKnRH = o_nBKRH.transpose(1, 2, 0, 3, 4)
    out = o_BKnRH.reshape(B, K, nq * block_q, G, H)[:, :, :T].transpose(0, 2, 1, 3, 4)
    residuals = (q, k, v, q_seg_BT, kv_seg_BS, q_offset, o_BKnRH, lse_nBKR.transpose(1, 2, 0, 3))
    return out, residuals


def _chunked_bwd(block_q, block_k, residuals, d_out_BTKGH):
    q, k, v, q_seg_BT, kv_seg_BS, q_offset, o, lse = residuals
    B, T, K, G, H = d_out_BTKGH.shape
    S = kv_seg_BS.shape[1]
    dt = q.dtype
    q_seg, kv_seg = _blocked_segments(q_seg_BT, kv_seg_BS, G, block_q, block_k)
    nq, R, nk = q.shape[2], q.shape[3], k.shape[2]
    do = _pad_to(d_out_BTKGH.transpose(0, 2, 1, 3, 4), 2, block_q).reshape(q.shape)
    # D_r = Σ_h dO·O: the softmax's Jacobian applied to dP, one number per row.
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, K, nq, R]
    row_q = jnp.arange(R) // G
    scale = 1.0 / math.sqrt(H)

    def key_block(dq, j):
        k_j, v_j, seg_j = k[:, :, j], v[:, :, j], kv_seg[:, j]
        k_slot = j * block_k + jnp.arange(block_k)

        def query_block(i, carry):
            dq, dk_j, dv_j = carry
            q_i, do_i = q[:, :, i], do[:, :, i]
            s, visible = _block_scores(
                q_i, k_j, q_seg[:, i], seg_j, q_offset + i * block_q + row_q, k_slot
            )
            p = jnp.exp(s - lse[:, :, i][..., None])
            dv_j = dv_j + jnp.einsum(
                "BKRk,BKRH->BKkH", p.astype(dt), do_i, preferred_element_type=jnp.float32
            )
            dp = jnp.einsum("BKRH,BKkH->BKRk", do_i, v_j, preferred_element_type=jnp.float32)
            ds = jnp.where(visible, p * (dp - delta[:, :, i][..., None]), 0.0) * scale
            dk_j = dk_j + jnp.einsum(
                "BKRk,BKRH->BKkH", ds.astype(dt), q_i, preferred_element_type=jnp.float32
            )
            dq_i = jnp.einsum(
                "BKRk,BKkH->BKRH", ds.astype(dt), k_j, preferred_element_type=jnp.float32
            )
            return dq.at[:, :, i].add(dq_i), dk_j, dv_j

        # The first query block whose last row reaches key block j.
        first = jnp.clip((j * block_k - q_offset) // block_q, 0, nq)
        zeros = jnp.zeros((B, K, block_k, H), jnp.float32)
        dq, dk_j, dv_j = jax.lax.fori_loop(first, nq, query_block, (dq, zeros, zeros))
        return dq, (dk_j, dv_j)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(nk))
    dq = dq.reshape(B, K, nq * block_q, G, H)[:, :, :T].transpose(0, 2, 1, 3, 4)
    unblock = lambda x: x.transpose(1, 2, 0, 3, 4).reshape(B, K, nk * block_k, H)[:, :, :S]
    dk, dv = unblock(dk).transpose(0, 2, 1, 3), unblock(dv).transpose(0, 2, 1, 3)
    return (dq.astype(dt), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None)


chunked.defvjp(
    lambda q, k, v, qs, ks, off, bq, bk: _chunked_forward(q, k, v, qs, ks, off, bq, bk),
    _chunked_bwd,
)


# --- splash (TPU) and cuDNN (NVIDIA) ---------------------------------------------------------


def _splash(
    q_BTKGH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS, q_offset: int, interpret: bool
) -> jax.Array:
    """The Pallas TPU splash kernel (in interpret mode on CPU, for tests): GQA native,
    causal by a static mask, left padding by segment ids; sequences padded to whole tiles."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    B, T, K, G, H = q_BTKGH.shape
    S = k_BSKH.shape[1]
    bq = _SPLASH_BLOCK if T >= _SPLASH_BLOCK else 128
    bk = _SPLASH_BLOCK if S >= _SPLASH_BLOCK else 128
    # Splash does not scale the scores.
    q_BNTH = _pad_to(
        (q_BTKGH * (1.0 / math.sqrt(H))).reshape(B, T, K * G, H).transpose(0, 2, 1, 3), 2, bq
    )
    k_BKSH = _pad_to(k_BSKH.transpose(0, 2, 1, 3), 2, bk)
    v_BKSH = _pad_to(v_BSKH.transpose(0, 2, 1, 3), 2, bk)
    Tp, Sp = q_BNTH.shape[2], k_BKSH.shape[2]
    # The causal edge stays where the unpadded queries put it: query i at slot q_offset + i.
    causal = splash.CausalMask((Tp, Sp), offset=q_offset)
    blocks = splash.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    kernel = splash.make_splash_mha_single_device(
        splash.MultiHeadMask([causal] * (K * G)), block_sizes=blocks, interpret=interpret
    )
    segments = splash.SegmentIds(
        q=_pad_to(q_mask_BT.astype(jnp.int32), 1, bq, 3),
        kv=_pad_to(kv_mask_BS.astype(jnp.int32), 1, bk, 4),
    )
    out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKSH, v_BKSH, segment_ids=segments)
    return out_BNTH[:, :, :T].transpose(0, 2, 1, 3).reshape(B, T, K, G, H)


def _cudnn(q_BTNH, k_BSKH, v_BSKH, q_mask_BT, kv_mask_BS, q_offset: int) -> jax.Array:
    """cuDNN's fused flash attention: causal in the kernel, padding as a [B, 1, T, S] mask
    (queries see keys of their own kind, so no row is empty)."""
    T, S = q_BTNH.shape[1], k_BSKH.shape[1]
    same_BTS = q_mask_BT[:, :, None] == kv_mask_BS[:, None, :]
    causal_TS = _causal(jnp.arange(T), S, q_offset)
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mask=(same_BTS & causal_TS)[:, None],
        is_causal=q_offset == 0 and T == S,
        implementation="cudnn",
    )


# --- decode: one query over the cache ----------------------------------------------------------


def decode(q_BKGH, k_BKHS, v_BKSH, kv_mask_BS, q_slot: jax.Array) -> jax.Array:
    """One query per row at cache slot `q_slot` (int32 scalar) over the keys at or before it
    (k transposed [B, K, H, S], v [B, K, S, H]): [B, K, G, H] in q's dtype."""
    S = kv_mask_BS.shape[1]
    mask_BS = kv_mask_BS & (jnp.arange(S) <= q_slot)[None]
    s_BKGS = decode_scores(q_BKGH, k_BKHS, q_slot)
    probs_BKGS = jax.nn.softmax(jnp.where(mask_BS[:, None, None], s_BKGS, MASKED), axis=-1)
    return decode_values(probs_BKGS.astype(q_BKGH.dtype), v_BKSH)


def decode_scores(q_BKGH, k_BKHS, q_slot) -> jax.Array:
    """q·k / √H, float32 [B, K, G, S] (the XLA:CPU multiply-reduce on CPU)."""
    dt = q_BKGH.dtype

    def einsum(q_BKGH, k_BKHS, q_slot):
        return jnp.einsum("BKGH,BKHS->BKGS", q_BKGH, k_BKHS.astype(dt)).astype(jnp.float32)

    s_BKGS = jax.lax.platform_dependent(
        q_BKGH, k_BKHS, q_slot, cpu=xla_cpu.decode_scores, default=einsum
    )
    return s_BKGS / math.sqrt(q_BKGH.shape[-1])


def decode_values(probs_BKGS, v_BKSH) -> jax.Array:
    """probs · v: [B, K, G, H] in probs' dtype."""

    def einsum(probs_BKGS, v_BKSH):
        return jnp.einsum("BKGS,BKSH->BKGH", probs_BKGS, v_BKSH.astype(probs_BKGS.dtype))

    return jax.lax.platform_dependent(probs_BKGS, v_BKSH, cpu=xla_cpu.decode_values, default=einsum)


def computed_once(x, anchor: jax.Array):
    """x (an array or a tuple of them), computed once where its readers would recompute it:
    on XLA:CPU, in buffers of its own (xla_cpu.computed_once; `anchor`, int32 data ≥ 0 such
    as positions); elsewhere x as is — a GPU cond waits on the host for its predicate, and
    their fusions do not redo the work."""
    return jax.lax.platform_dependent(x, anchor, cpu=xla_cpu.computed_once, default=lambda x, _: x)
