"""Log-probs of sampled completions under a policy, from one forward over
`[prompt ⊕ completion]` per row, or each group's prompt once with its KV cache serving the
group's G completions. The train step's forwards (train_step.py) and the benchmarks use them.

Shapes: R rows, P prompt width, C completion width, D model dim.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from g2rpo_jax.models.log_probs import TokenStats, token_log_probs
from g2rpo_jax.models.qwen import KVCache, Qwen, init_cache, positions_from_mask

# What a forward takes of each completion token from the hidden state that predicts it:
# head(model, hidden [R, C, D], ids [R, C]) → [R, C] arrays (token_log_probs, token_stats).
Head = Callable[[Qwen, jax.Array, jax.Array], jax.Array | TokenStats]


def completion_log_probs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None = None,
    group_size: int = 1,
    head: Head = token_log_probs,
    remat: bool = False,
) -> jax.Array | TokenStats:
    """log π(completion token) under `params`, float32 [R, C], from a forward over
    `[prompt ⊕ completion]` (guidance tokens stay in attention under either loss mode); with
    `head=token_stats` (a partial naming τ) the `TokenStats` of each token instead.

    rows: how the rows are split over devices (`batch_sharding`). The activations are
    pinned to it at the model's input and before the LM head, so that XLA gathers the
    fsdp-sharded weights (FSDP) instead of replicating the rows and splitting the model dim.
    group_size: G. When every G consecutive rows share their prompt (a group, as the sampler
    returns it; checked on device), each prompt runs through the model once and its KV cache
    serves the group's G completions: the same log-probs for (G−1)/G fewer prompt FLOPs.
    (Differentiating through this holds both branches' residuals; the train step branches
    outside its gradient instead.)
    remat: recompute each layer in the backward pass (`Qwen.hidden_states`).
    """
    R = batch["prompt_ids"].shape[0]
    if group_size <= 1 or R % group_size:
        return log_probs_per_row(graphdef, params, batch, rows, head, remat)
    shared = lambda p, b: log_probs_shared_prompt(graphdef, p, b, rows, head, group_size, remat)
    full = lambda p, b: log_probs_per_row(graphdef, p, b, rows, head, remat)
    return jax.lax.cond(groups_share_prompt(batch, group_size), shared, full, params, batch)


def log_probs_per_row(graphdef, params, batch, rows, head: Head, remat: bool = False):
    """Every row's `[prompt ⊕ completion]` through the model."""
    pin = lambda x: x if rows is None else _constrain_rows(x, rows)
    model = nnx.merge(graphdef, params)
    ids = pin(jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], axis=1))
    mask = pin(jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1))
    hidden = pin(model.hidden_states(ids, positions_from_mask(mask), mask, remat=remat)[0])
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    out = head(model, hidden[:, P - 1 : P + C - 1], pin(batch["completion_ids"]))
    return jax.tree.map(pin, out)


def log_probs_shared_prompt(
    graphdef, params, batch, rows, head: Head, group_size: int, remat: bool = False
):
    """Each group's prompt once (a prefill into a KV cache), the cache repeated to the G rows,
    then the completions: positions and masks exactly as in `log_probs_per_row`."""
    G = group_size
    pin = lambda x: x if rows is None else _constrain_rows(x, rows)
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


def _constrain_rows(x: jax.Array, rows: jax.sharding.NamedSharding) -> jax.Array:
    """x with its leading (row) dim split as `rows`; unchanged when the devices don't divide it."""
    ways = math.prod(rows.mesh.shape[a] for a in jax.tree.leaves(rows.spec[0]))
    if x.shape[0] % ways:
        return x
    return jax.lax.with_sharding_constraint(x, rows)
