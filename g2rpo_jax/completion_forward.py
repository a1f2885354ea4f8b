"""Log-probs of sampled completions under a policy, from one forward over
`[prompt ⊕ completion]` per row, each group's prompt once with its KV cache serving the
group's G completions, or each group's prompt ⊕ guidance once (shared_prefix.py). The train
step's forwards (train_step.py) and the benchmarks use them; `forward_choice` picks one.

Shapes: R rows, P prompt width, C completion width, D model dim.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from g2rpo_jax.models.kv_cache import KVCache, init_cache
from g2rpo_jax.models.log_probs import Head, TokenStats, token_log_probs
from g2rpo_jax.models.qwen import positions_from_mask
from g2rpo_jax.sharding import constrain_rows
from g2rpo_jax.shared_prefix import (
    groups_share_guidance,
    log_probs_shared_guidance,
    suffix_widths,
)

# forward(graphdef, params, batch, rows, head, remat=False) → the head's [R, C] outputs.
Forward = Callable[..., jax.Array | TokenStats]


def completion_log_probs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None = None,
    group_size: int = 1,
    head: Head = token_log_probs,
    num_guided: int = 0,
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
    num_guided: n, the guided slots of each group (the plan's ceil(α·G)); when their guidance
    tokens are shared as well, each group's prompt ⊕ guidance runs once (`forward_choice`).
    (Differentiating through this holds every branch's residuals; the train step branches
    outside its gradient instead.)
    remat: recompute each layer in the backward pass (`Qwen.hidden_states`).
    """
    index, forwards = forward_choice(batch, group_size, num_guided)
    branches = [lambda p, b, f=f: f(graphdef, p, b, rows, head, remat=remat) for f in forwards]
    return jax.lax.switch(index, branches, params, batch)


def forward_choice(
    batch: dict, group_size: int, num_guided: int = 0
) -> tuple[jax.Array, tuple[Forward, ...]]:
    """The forwards that give this batch's log-probs, and the index (int32 scalar, decided
    on device) of the one to run: the cheapest whose structure the batch has. In order:
    row-wise (always right); each group's prompt once (its G rows share the prompt); each
    group's prompt ⊕ guidance once, its first `num_guided` (n) rows guided, at each suffix
    width W of `suffix_widths`, widest first (the guided rows' tokens after the guidance fit
    in W). group_size 1, or R not a multiple of it: row-wise only. The one place this choice
    is made: `completion_log_probs` and the train step's gradient (branching outside it, so
    only the branch taken keeps residuals) both switch on it."""
    R, C = batch["completion_ids"].shape
    G = group_size
    if G <= 1 or R % G:
        return jnp.zeros((), jnp.int32), (log_probs_per_row,)
    shared_prompt = groups_share_prompt(batch, G)
    forwards = [log_probs_per_row, functools.partial(log_probs_shared_prompt, group_size=G)]
    index = jnp.where(shared_prompt, 1, 0)
    for W in suffix_widths(C, num_guided) if num_guided else ():
        fits = shared_prompt & groups_share_guidance(batch, G, num_guided, W)
        index = jnp.where(fits, len(forwards), index)
        forwards.append(
            functools.partial(
                log_probs_shared_guidance, group_size=G, num_guided=num_guided, width=W
            )
        )
    return index.astype(jnp.int32), tuple(forwards)


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
