"""XLA:CPU forms of a few ops: every backend trick of the decoder and sampler, in one room.

Each function here computes exactly what its generic form does, in a form one XLA:CPU pass
handles better (benchmarks/README.md, "What made the sampler faster"). Nothing calls them
directly: `backend.py` picks them with `jax.lax.platform_dependent`, which lowers only the
branch of the platform a program is compiled or exported for, so no TPU or GPU program
contains them.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def computed_once(x, anchor: jax.Array):
    """x (an array or a tuple of them) in buffers of its own.

    XLA:CPU fuses cheap elementwise producers into consumers that read each element many
    times and recomputes them there; an optimization_barrier does not survive its passes, a
    cond on a value it cannot fold does. `anchor`: int32 data known to be ≥ 0 (positions, a
    cache slot): the predicate `anchor ≥ 0` always holds, so the other branch never runs.
    """
    always = jnp.reshape(anchor, (-1,))[0] >= 0
    return jax.lax.cond(always, lambda: x, lambda: jax.tree.map(jnp.negative, x))


def decode_scores(q_BKGH, k_BKHS, q_slot) -> jax.Array:
    """q·k for one query per row over the cache (keys [B, K, H, S]): float32 [B, K, G, S].

    A multiply-reduce over H, vectorized along the contiguous S slots, instead of B·K tiny
    [G, H] @ [H, S] matmuls; q's norm and RoPE done once, not again inside the reduce.
    """
    q32 = computed_once(q_BKGH.astype(jnp.float32), q_slot)
    return _sum_over_cores(q32[:, :, :, :, None] * k_BKHS.astype(jnp.float32)[:, :, None], 3)


def decode_values(probs_BKGS, v_BKSH) -> jax.Array:
    """probs · v as a multiply-reduce over S (~4× faster than [G, S] @ [S, H] matmuls)."""
    dt = probs_BKGS.dtype
    out = jnp.sum(probs_BKGS[..., None] * v_BKSH[:, :, None].astype(dt), axis=3, dtype=jnp.float32)
    return out.astype(dt)


def _sum_over_cores(x_X: jax.Array, axis: int) -> jax.Array:
    """jnp.sum(x, axis), run by XLA's own loop emitter on every core.

    XLA:CPU gives a plain sum to YNNPACK, which reads a decode step's key cache on one
    thread at ~10 GB/s. Summing in chunks of 16 with a reducer YNNPACK does not take
    (a − (−b): the same IEEE sum) makes the multiply-reduce a loop fusion split over the
    cores, ~2× faster over a cache that does not fit in L3; the chunks also keep XLA from
    rewriting the reduce into a windowed one that writes out the product first.
    """
    n = x_X.shape[axis]
    w = math.gcd(n, 16)
    x_X = x_X.reshape(x_X.shape[:axis] + (n // w, w) + x_X.shape[axis + 1 :])
    partial = jax.lax.reduce(x_X, np.zeros((), x_X.dtype), lambda a, b: a - (-b), (axis + 1,))
    # The chunks' sums added as slices: elementwise, so they fuse into the consumer.
    return functools.reduce(jnp.add, [jnp.take(partial, i, axis) for i in range(n // w)])


def argmax(x_BV: jax.Array) -> jax.Array:
    """jnp.argmax(x, -1) (the first index of each row's maximum) as two plain reductions:
    XLA:CPU runs argmax's paired value-index reduction unvectorized, ~5× slower."""
    V = x_BV.shape[-1]
    is_max = x_BV == jnp.max(x_BV, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max, jnp.arange(V), V - 1), axis=-1).astype(jnp.int32)


def categorical(keys_B, weights_BV, chunk: int = 128) -> jax.Array:
    """One token per row drawn with probability ∝ its weight (≥ 0), by inverting the CDF in
    two levels: a chunk of `chunk` tokens ∝ its mass, then a token in it ∝ its weight.

    Two uniforms per row instead of Gumbel noise for every one of the V logits (threefry
    over B·V values dominated the decode step on CPU). A zero-weight token is never drawn.
    The same distribution as `jax.random.categorical`, not the same draws.
    """
    B, V = weights_BV.shape
    n = -(-V // chunk)
    weights_BnC = jnp.pad(weights_BV, ((0, 0), (0, n * chunk - V))).reshape(B, n, chunk)
    u_B2 = jax.vmap(lambda key: jax.random.uniform(key, (2,)))(keys_B)

    def invert(cdf_BX, u_B):
        """The index where u · total falls in each row's CDF (kept below the total)."""
        total_B = cdf_BX[:, -1]
        x_B = jnp.minimum(u_B * total_B, jnp.nextafter(total_B, 0))
        return jnp.sum(cdf_BX <= x_B[:, None], axis=-1)

    chunk_B = invert(jnp.cumsum(jnp.sum(weights_BnC, axis=-1), axis=-1), u_B2[:, 0])
    in_chunk_BC = jnp.take_along_axis(weights_BnC, chunk_B[:, None, None], axis=1)[:, 0]
    token_B = chunk_B * chunk + invert(jnp.cumsum(in_chunk_BC, axis=-1), u_B2[:, 1])
    return token_B.astype(jnp.int32)
