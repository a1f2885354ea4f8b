"""Log-probs of sampled completions under a policy, from one forward over
`[prompt ⊕ completion]` per row, each group's prompt once with its KV cache serving the
group's G completions, or each group's prompt ⊕ guidance once (shared_prefix.py). The train
step's forwards (train_step.py) and the benchmarks use them; `forward_index` picks one.

Shapes: R rows, P prompt width, C completion width, D model dim.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from g2rpo_jax.models.kv_cache import KVCache, init_cache
from g2rpo_jax.models.log_probs import Head, TokenStats
from g2rpo_jax.models.qwen import positions_from_mask
from g2rpo_jax.sharding import constrain_rows
from g2rpo_jax.shared_prefix import (
    groups_share_guidance,
    log_probs_shared_guidance,
    suffix_widths,
)

# forward(graphdef, params, batch, rows, head, remat=False) → the head's [R, C] outputs: log π
# of each completion token (float32; guidance tokens stay in attention under either loss
# mode), or with `head=token_stats` their TokenStats. rows: how the rows split over devices
# (`batch_sharding`); the activations are pinned to it at the model's input and before the
# LM head, so that XLA gathers the fsdp-sharded weights instead of replicating the rows and
# splitting the model dim. remat: recompute each layer in the backward pass.
Forward = Callable[..., jax.Array | TokenStats]


def shared_forwards(
    completion_width: int, group_size: int, num_guided: int = 0
) -> tuple[Forward, ...]:
    """The forwards that may give a batch's log-probs, cheapest last: row-wise (always
    right); each group's prompt once (its G rows share the prompt); each group's prompt ⊕
    guidance once, its first `num_guided` (n) rows guided, at each suffix width W of
    `suffix_widths`, widest first (the guided rows' tokens after the guidance fit in W).
    group_size 1: row-wise only. `forward_index` says which one a batch allows."""
    G, C = group_size, completion_width
    if G <= 1:
        return (log_probs_per_row,)
    widths = suffix_widths(C, num_guided) if num_guided else ()
    guided = [
        functools.partial(log_probs_shared_guidance, group_size=G, num_guided=num_guided, width=W)
        for W in widths
    ]
    return (log_probs_per_row, functools.partial(log_probs_shared_prompt, group_size=G), *guided)


def forward_index(batch: dict, group_size: int, num_guided: int = 0) -> jax.Array:
    """int32 scalar, decided on device: the index into `shared_forwards` of the cheapest
    forward whose structure this batch has (each holds only where the ones before it do).
    R not a multiple of G: 0, row-wise. The one place this choice is made: the train step
    reads it on the host and runs the step compiled for that forward, so a step compiles
    only the forwards its batches use (train_step.TrainStep)."""
    R, C = batch["completion_ids"].shape
    G = group_size
    if G <= 1 or R % G:
        return jnp.zeros((), jnp.int32)
    shared_prompt = groups_share_prompt(batch, G)
    index = jnp.where(shared_prompt, 1, 0)
    widths = suffix_widths(C, num_guided) if num_guided else ()
    for i, W in enumerate(widths):
        fits = shared_prompt & groups_share_guidance(batch, G, num_guided, W)
        index = jnp.where(fits, 2 + i, index)
    return index.astype(jnp.int32)


def log_probs_per_row(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None,
    head: Head,
    remat: bool = False,
) -> jax.Array | TokenStats:
    """Every row's `[prompt ⊕ completion]` [R, P + C] through the model: [R, C] outputs."""
    pin = lambda x: constrain_rows(x, rows)
    model = nnx.merge(graphdef, params)
    ids = pin(jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], axis=1))
    mask = pin(jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1))
    hidden = pin(model.hidden_states(ids, positions_from_mask(mask), mask, remat=remat)[0])
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    out = head(model, hidden[:, P - 1 : P + C - 1], pin(batch["completion_ids"]))
    return jax.tree.map(pin, out)


def log_probs_shared_prompt(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None,
    head: Head,
    group_size: int,
    remat: bool = False,
) -> jax.Array | TokenStats:
    """Each group's prompt once (a prefill into a KV cache), the cache repeated to the G rows,
    then the completions: positions and masks exactly as in `log_probs_per_row`."""
    G = group_size
    pin = lambda x: constrain_rows(x, rows)
    first = lambda x: x.reshape(-1, G, *x.shape[1:])[:, 0]  # [R, ...] → [R/G, ...]
    expand = lambda x: jnp.repeat(x, G, axis=0)  # [R/G, ...] → [R, ...]
    model = nnx.merge(graphdef, params)
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
    positions = positions_from_mask(mask)
    prompt_mask = pin(first(batch["prompt_mask"]))
    cache = init_cache(model.config, prompt_mask.shape[0], P + C)
    hidden_prompt, cache = model.hidden_states(
        pin(first(batch["prompt_ids"])),
        pin(first(positions[:, :P])),
        prompt_mask,
        cache,
        remat=remat,
    )
    cache = KVCache(
        k=tuple(map(expand, cache.k)),
        v=tuple(map(expand, cache.v)),
        mask=expand(cache.mask),
        index=cache.index,
    )
    completion_ids = pin(batch["completion_ids"])
    hidden, _ = model.hidden_states(
        completion_ids, pin(positions[:, P:]), pin(batch["completion_mask"]), cache, remat=remat
    )
    # Token t is predicted from the hidden state before it: the prompt's last, then t − 1.
    hidden = jnp.concatenate([expand(hidden_prompt[:, -1:]), hidden[:, : C - 1]], axis=1)
    return jax.tree.map(pin, head(model, pin(hidden), completion_ids))


def groups_share_prompt(batch: dict, G: int) -> jax.Array:
    """bool scalar: each G consecutive rows have the same prompt tokens and padding."""
    ids = batch["prompt_ids"].reshape(-1, G, batch["prompt_ids"].shape[1])
    mask = batch["prompt_mask"].reshape(ids.shape).astype(bool)
    same_mask = jnp.all(mask == mask[:, :1])
    return same_mask & jnp.all((ids == ids[:, :1]) | jnp.logical_not(mask))
