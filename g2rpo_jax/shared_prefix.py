"""Log-probs of a batch whose guided candidates share their guidance prefix (SPEC §1): each
group's prompt ⊕ trace[:ℓ′] runs through the model once, its KV cache serving the group's
guided rows' generated tokens, and its prompt part the unguided rows' completions.

The guidance tokens' log-probs are computed once per group and handed to each guided row, so
a loss over rows gives them each row's contribution: the gradient of that hand-out (a
repeat) sums the rows' cotangents, as the row-wise forward's gradient does.

Shapes: R rows, group-major (G consecutive rows per group, the first n of them its guided
slots: n = ceil(α·G), guidance.guidance_lengths), Q = R/G groups, P prompt width,
C completion width, W the guided rows' suffix width (static, `suffix_widths`), D model dim.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from g2rpo_jax.models.kv_cache import KVCache, extend_cache, init_cache
from g2rpo_jax.models.log_probs import Head, TokenStats
from g2rpo_jax.models.qwen import Qwen, positions_from_mask
from g2rpo_jax.sharding import constrain_rows

# A guided suffix narrower than this is not worth a compiled branch (the sampler's smallest
# bucket): at such widths the whole completion is cheap anyway.
MIN_SUFFIX = 16


def suffix_widths(completion_width: int, num_guided: int) -> tuple[int, ...]:
    """The guided rows' suffix widths W that get a forward of their own, widest first: C/2
    and C/4, when ≥ MIN_SUFFIX and when they save tokens: the n guided rows skip C − W
    columns each, and the group's prefix adds C guidance columns, so n·(C − W) > C."""
    C, n = completion_width, num_guided
    return tuple(W for W in (C // 2, C // 4) if W >= MIN_SUFFIX and n * (C - W) > C)


def groups_share_guidance(batch: dict, G: int, n: int, W: int) -> jax.Array:
    """bool scalar: every group's first n rows carry the same guidance tokens (ℓ′ of them,
    possibly none) at the start of their completions and at most W tokens after them, and
    its other rows carry none. The prompts are checked apart (`groups_share_prompt`)."""
    is_guidance = batch["is_guidance"].astype(bool)
    mask = batch["completion_mask"].astype(bool)
    length = is_guidance.sum(1)  # ℓ′ per row [R]
    cols = jnp.arange(is_guidance.shape[1])[None]
    # Guidance is the completion's first ℓ′ tokens, all real: the prefix's mask and
    # positions are then the row-wise forward's.
    leading = jnp.all(is_guidance == (cols < length[:, None])) & jnp.all(mask | ~is_guidance)
    per_group = lambda x: x.reshape(-1, G, *x.shape[1:])
    ids = per_group(jnp.where(is_guidance, batch["completion_ids"], 0))[:, :n]
    lengths = per_group(length)
    same = jnp.all(lengths[:, :n] == lengths[:, :1]) & jnp.all(ids == ids[:, :1])
    fits = ~mask | (cols < length[:, None] + W)  # [R, C]
    guided_fit = jnp.all(per_group(fits)[:, :n])
    return leading & same & guided_fit & jnp.all(lengths[:, n:] == 0)


def log_probs_shared_guidance(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None,
    head: Head,
    group_size: int,
    num_guided: int,
    width: int,
    remat: bool = False,
) -> jax.Array | TokenStats:
    """The row-wise forward's [R, C] outputs (`completion_forward.log_probs_per_row`), from
    one forward over each group's prefix [Q, P + C] (prompt ⊕ guidance, right-padded), its
    guided rows' next `width` tokens [Q·n, W] over the prefix's cache, and its unguided rows'
    completions [Q·(G − n), C] over the prompt's part of it. Needs the structure that
    `groups_share_prompt` and `groups_share_guidance` check, and 1 ≤ n ≤ G. remat: each
    forward recomputes its layers in the backward pass (`Qwen.hidden_states`)."""
    G, n, W = group_size, num_guided, width
    pin = lambda x: constrain_rows(x, rows)
    model = nnx.merge(graphdef, params)
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    guided = lambda x: _slots(x, G, slice(0, n))
    first = lambda x: _slots(x, G, slice(0, 1))  # [R, ...] → [Q, ...]
    # Positions as the row-wise forward counts them.
    positions = positions_from_mask(
        jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
    )
    length = jnp.sum(batch["is_guidance"], axis=1, dtype=jnp.int32)  # ℓ′ per row

    prefix_ids = first(jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], axis=1))
    prefix_mask = first(jnp.concatenate([batch["prompt_mask"], batch["is_guidance"]], axis=1))
    cache = init_cache(model.config, prefix_ids.shape[0], P + C)
    hidden_prefix, cache = model.hidden_states(
        pin(prefix_ids), pin(first(positions)), pin(prefix_mask), cache, remat=remat
    )
    # The guidance tokens, once per group: token t from the prefix's hidden state before it.
    guidance = head(model, pin(hidden_prefix[:, P - 1 : P + C - 1]), pin(prefix_ids[:, P:]))

    guided_length = guided(length)
    ids, suffix_positions, suffix_mask = _suffix_inputs(
        guided(batch["completion_ids"]),
        guided(positions[:, P:]),
        guided(batch["completion_mask"]),
        guided_length,
        W,
    )
    hidden, _ = model.hidden_states(
        pin(ids), pin(suffix_positions), pin(suffix_mask), _repeat(cache, n, W), remat=remat
    )
    # A guided row's first generated token comes from the prefix's last real position.
    last = jnp.take_along_axis(hidden_prefix, (P + first(length) - 1)[:, None, None], axis=1)
    before = jnp.repeat(last, n, axis=0)
    suffix = head(model, pin(jnp.concatenate([before, hidden[:, : W - 1]], axis=1)), pin(ids))

    def rows_of(guidance_QC, suffix_W, unguided_C=None):
        parts = [_guided_rows(guidance_QC, suffix_W, guided_length, n).reshape(-1, n, C)]
        if unguided_C is not None:
            parts.append(unguided_C.reshape(-1, G - n, C))
        return pin(jnp.concatenate(parts, axis=1).reshape(-1, C))

    if n == G:
        return jax.tree.map(rows_of, guidance, suffix)
    unguided = _unguided(model, batch, positions, hidden_prefix, cache, head, G, n, pin, remat)
    return jax.tree.map(rows_of, guidance, suffix, unguided)


def _slots(x: jax.Array, G: int, slots: slice) -> jax.Array:
    """The rows of each group's `slots`, in order: [R, ...] → [Q·len(slots), ...]."""
    return x.reshape(-1, G, *x.shape[1:])[:, slots].reshape(-1, *x.shape[1:])


def _repeat(cache: KVCache, times: int, extra: int) -> KVCache:
    """Each group's cache ([Q, ...]) for `times` consecutive rows ([Q·times, ...]), with
    `extra` empty slots after it."""
    rep = lambda x: jnp.repeat(x, times, axis=0)
    k, v, mask = tuple(map(rep, cache.k)), tuple(map(rep, cache.v)), rep(cache.mask)
    return extend_cache(KVCache(k=k, v=v, mask=mask, index=cache.index), extra)


def _suffix_inputs(
    ids_C: jax.Array, positions_C: jax.Array, mask_C: jax.Array, length: jax.Array, W: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ids, positions and mask [rows, W] of each guided row's completion columns
    ℓ′ … ℓ′ + W − 1 (masked past the completion), from its [rows, C] ones and ℓ′ [rows]."""
    C = ids_C.shape[1]
    columns = length[:, None] + jnp.arange(W)[None]
    take = lambda x: jnp.take_along_axis(x, jnp.minimum(columns, C - 1), axis=1)
    return take(ids_C), take(positions_C), take(mask_C.astype(bool)) & (columns < C)


def _unguided(
    model: Qwen,
    batch: dict,
    positions: jax.Array,
    hidden_prefix: jax.Array,
    cache: KVCache,
    head: Head,
    G: int,
    n: int,
    pin: Callable[[jax.Array], jax.Array],
    remat: bool,
) -> jax.Array | TokenStats:
    """The unguided rows' [Q·(G − n), C] outputs, over the prompt's slots of the prefix's
    `cache` (a group's unguided rows see its prompt only). positions: [R, P + C], the
    row-wise forward's; hidden_prefix: [Q, P + C, D]."""
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    prompt_cache = KVCache(
        k=tuple(k[..., :P] for k in cache.k),
        v=tuple(v[:, :, :P] for v in cache.v),
        mask=cache.mask[:, :P],
        index=jnp.asarray(P, jnp.int32),
    )
    rest = lambda x: _slots(x, G, slice(n, None))
    ids = pin(rest(batch["completion_ids"]))
    hidden, _ = model.hidden_states(
        ids,
        pin(rest(positions[:, P:])),
        pin(rest(batch["completion_mask"])),
        _repeat(prompt_cache, G - n, C),
        remat=remat,
    )
    # Token t from the hidden state before it: the prompt's last, then t − 1.
    before = jnp.repeat(hidden_prefix[:, P - 1 : P], G - n, axis=0)
    return head(model, pin(jnp.concatenate([before, hidden[:, : C - 1]], axis=1)), ids)


def _guided_rows(
    guidance_QC: jax.Array, suffix_W: jax.Array, guided_length: jax.Array, n: int
) -> jax.Array:
    """Each guided row's [C] outputs, [Q·n, C]: the group's guidance tokens' (guidance_QC
    [Q, C]) for columns < ℓ′ (guided_length [Q·n]), then its own suffix's (suffix_W
    [Q·n, W]); 0 past the suffix (padding, by `groups_share_guidance`)."""
    C, W = guidance_QC.shape[1], suffix_W.shape[1]
    both = jnp.concatenate([jnp.repeat(guidance_QC, n, axis=0), suffix_W], axis=1)  # [Q·n, C+W]
    cols = jnp.arange(C)[None]
    source = jnp.where(cols < guided_length[:, None], cols, C + cols - guided_length[:, None])
    picked = jnp.take_along_axis(both, jnp.minimum(source, C + W - 1), axis=1)
    return jnp.where(source < C + W, picked, 0.0)
