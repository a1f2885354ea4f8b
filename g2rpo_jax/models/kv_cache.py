"""The KV cache of cached forwards: every row its own S slots (shape legend as in qwen.py).
A cache that holds a prefix once per group of rows is models/group_cache.py's."""

import flax.struct
import jax
import jax.numpy as jnp

from g2rpo_jax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer in S fixed slots, shared by all rows.

    k: per layer [B, K, H, S], keys transposed: a decode step's q·k sums over H with the S
    slots contiguous, which XLA:CPU runs ~1.5x faster than B·K tiny [G, H] @ [H, S] dots.
    v: per layer [B, K, S, H], each slot's values contiguous for the sum over S.
    mask: [B, S], which slots hold a real token.
    index: the slot where the next call writes its first token (int32 scalar).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array


def init_cache(config: ModelConfig, batch: int, max_length: int) -> KVCache:
    k_shape = (batch, config.num_kv_heads, config.head_dim, max_length)
    v_shape = (batch, config.num_kv_heads, max_length, config.head_dim)
    zeros = lambda shape: tuple(
        jnp.zeros(shape, config.compute_dtype) for _ in range(config.num_layers)
    )
    return KVCache(
        k=zeros(k_shape),
        v=zeros(v_shape),
        mask=jnp.zeros((batch, max_length), bool),
        index=jnp.zeros((), jnp.int32),
    )


def extend_cache(cache: KVCache, extra: int) -> KVCache:
    """The same cache with `extra` empty slots appended, so a call attends over only the
    slots it can use (a prefill over its own width, each decode phase over what it fills)."""
    pad_k = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    pad_v = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))
    return KVCache(
        k=tuple(map(pad_k, cache.k)),
        v=tuple(map(pad_v, cache.v)),
        mask=jnp.pad(cache.mask, ((0, 0), (0, extra))),
        index=cache.index,
    )


def write(kv_cache, k_BTKH, v_BTKH, index):
    """The cache (k [B, K, H, S], v [B, K, S, H]) with T new keys and values at `index`."""
    k_cache, v_cache = kv_cache
    k_BKHS = jax.lax.dynamic_update_slice(
        k_cache, k_BTKH.transpose(0, 2, 3, 1).astype(k_cache.dtype), (0, 0, 0, index)
    )
    v_BKSH = jax.lax.dynamic_update_slice(
        v_cache, v_BTKH.transpose(0, 2, 1, 3).astype(v_cache.dtype), (0, 0, index, 0)
    )
    return k_BKHS, v_BKSH
