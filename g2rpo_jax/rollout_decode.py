"""The group sampler's decode loop: rows over a GroupCache, compacted as they finish.

Shapes as in rollout.py: R = B·G rows in group order (candidate j of prompt b is row
b·G + j), C completion width, V vocab. The loop chooses and runs tokens as
sampling._decode does (the same phases, keys and order of choices), on a GroupCache
(models/group_cache.py). With compaction, the live rows are gathered into the smallest of
a few power-of-two widths that holds them (`compact_widths`) and narrowed again as soon as
they fit a smaller one, so a finished row stops costing; the gathered rows read their
groups' prefixes by index.
"""

import flax.struct
import jax
import jax.numpy as jnp

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import group_cache
from g2rpo_jax.models.group_cache import GroupCache
from g2rpo_jax.models.kv_cache import extend_cache
from g2rpo_jax.models.qwen import Qwen
from g2rpo_jax.sampling import SamplingConfig, decode_phase_ends
from g2rpo_jax.token_choice import sample_tokens


@flax.struct.dataclass
class LoopState:
    """A decode loop's rows: all R of the batch in group order, or a compaction's n of them
    (any order); completion_RC and log_probs_RC are the whole batch's, written at `row`."""

    step: jax.Array  # tokens generated so far by every live row
    row: jax.Array  # [n] the batch row each loop row is
    keys: jax.Array  # [n] each row's sampling stream
    budget: jax.Array  # [n] tokens each row may generate
    guidance_len: jax.Array  # [n] ℓ′ or 0: where each row's generated tokens start
    logits_V: jax.Array  # [n, V] the next-token logits of each row
    cache: GroupCache
    positions: jax.Array  # [n]
    rotary: tuple[jax.Array, jax.Array]  # model.rotary(positions[:, None]), made a step early
    done: jax.Array  # [n]
    eos: jax.Array  # [n]
    num_generated: jax.Array  # [n]
    decode_steps: jax.Array  # [n]
    completion_RC: jax.Array
    log_probs_RC: jax.Array


# Fields each compaction gathers (and scatters back, the last line's: the others are fixed).
_CONSTANT_FIELDS = ("row", "keys", "budget", "guidance_len")
_CHANGING_FIELDS = (
    "logits_V",
    "positions",
    "rotary",
    "done",
    "eos",
    "num_generated",
    "decode_steps",
)
# Compacted decode runs the live rows in the smallest of the largest COMPACT_WIDTHS powers
# of two below R that holds them (R when none does): one loop per width and decode phase,
# and few idle rows (benchmarks/rollout.py's decoded_over_useful_row_steps).
COMPACT_WIDTHS = 4


def compact_widths(rows: int) -> list[int]:
    """The batch widths a compacted decode phase may run at, largest first."""
    widths = [1 << k for k in range(max(rows - 1, 0).bit_length() - 1, -1, -1)]
    return widths[:COMPACT_WIDTHS]


def _gather(s: LoopState, order: jax.Array, G: int) -> LoopState:
    """The loop rows `order` of s (a batch in group order), each reading its group's prefix
    by index."""
    take = lambda x: jax.tree.map(lambda a: a[order], x)
    own = s.cache.own
    cache = s.cache.replace(
        prefix_mask=s.cache.prefix_mask[order],
        own=own.replace(k=take(own.k), v=take(own.v), mask=own.mask[order]),
        group_of_row=order // G,
    )
    fields = {f: take(getattr(s, f)) for f in _CONSTANT_FIELDS + _CHANGING_FIELDS}
    return s.replace(cache=cache, **fields)


def _scatter(full: LoopState, sub: LoopState, order: jax.Array) -> LoopState:
    """full with sub's rows written back at `order` (sub ran them; full holds the rest)."""
    put = lambda x, y: jax.tree.map(lambda a, b: a.at[order].set(b), x, y)
    own, sub_own = full.cache.own, sub.cache.own
    own = own.replace(
        k=put(own.k, sub_own.k),
        v=put(own.v, sub_own.v),
        mask=put(own.mask, sub_own.mask),
        index=sub_own.index,
    )
    fields = {f: put(getattr(full, f), getattr(sub, f)) for f in _CHANGING_FIELDS}
    return full.replace(
        step=sub.step,
        cache=full.cache.replace(own=own),
        completion_RC=sub.completion_RC,
        log_probs_RC=sub.log_probs_RC,
        **fields,
    )


def decode(model: Qwen, config: SamplingConfig, tokens: TokenIds, G: int, s: LoopState):
    """The decode loop in the Sampler's phases (its cache grown at each boundary). With
    `config.compact`, the live rows run gathered into the smallest width that holds them
    (compact_widths), narrowed again as soon as they fit a smaller one: each width's loop is
    compiled once per phase, and a row costs steps while it is live or fills a bucket."""
    R = s.completion_RC.shape[0]
    step = _step(model, config, tokens)
    widths = [R] + (compact_widths(R) if config.compact else [])
    floors = widths[1:] + [0]  # a width's loop ends once the live rows fit the next

    def run(width: int, floor: int, end: int):
        def loop(s: LoopState) -> LoopState:
            live = lambda s: jnp.sum(~s.done) > floor
            return jax.lax.while_loop(lambda s: (s.step < end) & live(s), step, s)

        def narrowed(s: LoopState) -> LoopState:
            order = jnp.argsort(s.done, stable=True)[:width].astype(jnp.int32)  # live first
            return _scatter(s, loop(_gather(s, order, G)), order)

        return loop if width == R else narrowed

    filled = 0
    for end in decode_phase_ends(config.max_completion_length, config.decode_phases):
        s = s.replace(cache=s.cache.replace(own=extend_cache(s.cache.own, end - filled)))
        filled = end
        branches = [run(w, f, end) for w, f in zip(widths, floors, strict=True)]

        def narrowest(s: LoopState, branches=branches) -> LoopState:
            which = jnp.sum(jnp.sum(~s.done) <= jnp.asarray(widths[1:]))  # widths that hold it
            return jax.lax.switch(which, branches, s)

        s = jax.lax.while_loop(lambda s, end=end: (s.step < end) & ~jnp.all(s.done), narrowest, s)
    return _choose(config, tokens, s)[0]


def _choose(config: SamplingConfig, tokens: TokenIds, s: LoopState) -> tuple[LoopState, jax.Array]:
    """Each live row's next token, written into its completion (sampling._decode's)."""
    C = s.completion_RC.shape[1]
    token, lp = sample_tokens(s.logits_V, s.keys, s.step, config)
    live = ~s.done
    token = jnp.where(live, token, tokens.pad)
    column = jnp.where(live, s.guidance_len + s.num_generated, C)  # C: dropped
    num_generated = s.num_generated + live
    hit_eos = live & jnp.isin(token, jnp.asarray(tokens.eos or (-1,), jnp.int32))
    return s.replace(
        step=s.step + 1,
        done=s.done | hit_eos | (num_generated >= s.budget),
        eos=s.eos | hit_eos,
        num_generated=num_generated,
        completion_RC=s.completion_RC.at[s.row, column].set(token, mode="drop"),
        log_probs_RC=s.log_probs_RC.at[s.row, column].set(lp, mode="drop"),
    ), token


def _step(model: Qwen, config: SamplingConfig, tokens: TokenIds):
    """One decode step: choose each live row's token, then the logits after it (its keys
    and values into the rows' own cache)."""

    def step(s: LoopState) -> LoopState:
        s, token = _choose(config, tokens, s)
        logits_V, cache = group_cache.decode(model, token, s.positions, s.cache, s.rotary)
        return s.replace(
            logits_V=logits_V,
            cache=cache,
            positions=s.positions + 1,
            rotary=model.rotary(s.positions[:, None] + 1),
            decode_steps=s.decode_steps + 1,
        )

    return step
