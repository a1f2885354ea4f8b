"""Group-aware rollout sampling: each group's prefix prefilled once and held once.

Shapes: B prompts, G candidates per prompt (the group), R = B·G rows, prompt-major
(candidate j of prompt b is row b·G + j, as guidance.py lays them out); P prompt width, L
guidance width, W = P + L, C completion width, V vocab.

The row-wise Sampler (sampling.py) gives every candidate its own copy of the prompt and
every guided one its own copy of trace[:ℓ′] (ℓ′ = min(ℓ, trace length)): G prefills of the
same tokens per group, and every decode step reads G copies of that prefix. Here each
group's prefix prompt ⊕ trace[:ℓ′] is prefilled once, [B, W]; an unguided candidate's
prefix, the prompt, is its first part, whose keys and values causal attention leaves the
same. Decode runs on a GroupCache (models/qwen.py): that prefix once per group plus each
row's generated tokens [R, C]; a row sees the part of the prefix that is its own (the
prompt, or prompt ⊕ trace[:ℓ′]) and its own tokens, the two partial attentions merged by
their log-sum-exp (attention.decode_grouped).

Positions (0 at a row's first prompt token), the sampling keys (row r draws from
fold_in(rng, row_ids[r]), then the step), the decode phases and the order of choices are
the Sampler's, so the tokens equal its for the same keys; the log-probs differ from its by
fp32 summation order only (tests/test_rollout.py states the bound).
"""

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g2rpo_jax.models.log_probs import token_log_probs
from g2rpo_jax.models.qwen import GroupCache, Qwen, extend_cache, init_cache
from g2rpo_jax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    SampleOutput,
    SamplingConfig,
    assemble_prefix,
    bucket,
    decode_phase_ends,
)
from g2rpo_jax.token_choice import sample_tokens


@flax.struct.dataclass
class RolloutOutput(SampleOutput):
    """SampleOutput, and decode_steps: [R] the decode steps that computed each row, its
    own tokens' and those run while it sat finished in a batch still decoding (the cost
    compaction cuts; the useful ones are its num_generated)."""

    decode_steps: jax.Array


@flax.struct.dataclass
class _LoopState:
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
_CHANGING_FIELDS = ("logits_V", "positions", "rotary", "done", "eos", "num_generated",
                    "decode_steps")  # fmt: skip
# A compacted phase runs the live rows in the smallest of the largest COMPACT_WIDTHS powers
# of two below R that holds them (R when none does): few programs, few idle rows.
COMPACT_WIDTHS = 3


def compact_widths(rows: int) -> list[int]:
    """The batch widths a compacted decode phase may run at, largest first."""
    widths = [1 << k for k in range(max(rows - 1, 0).bit_length() - 1, -1, -1)]
    return widths[:COMPACT_WIDTHS]


def _gather(s: _LoopState, order: jax.Array, G: int) -> _LoopState:
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


def _scatter(full: _LoopState, sub: _LoopState, order: jax.Array) -> _LoopState:
    """full with sub's rows written back at `order` (sub ran them; full holds the rest)."""
    put = lambda x, y: jax.tree.map(lambda a, b: a.at[order].set(b), x, y)
    own, sub_own = full.cache.own, sub.cache.own
    own = own.replace(k=put(own.k, sub_own.k), v=put(own.v, sub_own.v),
                      mask=put(own.mask, sub_own.mask), index=sub_own.index)  # fmt: skip
    fields = {f: put(getattr(full, f), getattr(sub, f)) for f in _CHANGING_FIELDS}
    return full.replace(
        step=sub.step, cache=full.cache.replace(own=own), completion_RC=sub.completion_RC,
        log_probs_RC=sub.log_probs_RC, **fields,
    )  # fmt: skip


def _sample_groups(graphdef, config: SamplingConfig, G: int, num_guided: int, compact: bool,
                   params, prompt_ids_BP, prompt_len_B, trace_ids_BL, trace_len_B, ell,
                   max_new_tokens_R, row_ids_R, rng) -> RolloutOutput:  # fmt: skip
    model: Qwen = nnx.merge(graphdef, params)
    model.config = model.config.replace(remat=False)  # as in sampling._sample
    s, prompt_ids_RP, prompt_mask_RP = _prefill(
        model, config, G, num_guided, prompt_ids_BP, prompt_len_B, trace_ids_BL, trace_len_B,
        ell, max_new_tokens_R, row_ids_R, rng,
    )  # fmt: skip
    s = _decode(model, config, G, compact, s)
    C = s.completion_RC.shape[1]
    completion_mask_RC = jnp.arange(C)[None] < (s.guidance_len + s.num_generated)[:, None]
    return RolloutOutput(
        prompt_ids=prompt_ids_RP,
        prompt_mask=prompt_mask_RP,
        completion_ids=s.completion_RC,
        completion_mask=completion_mask_RC,
        is_guidance=jnp.arange(C)[None] < s.guidance_len[:, None],
        log_probs=jnp.where(completion_mask_RC, s.log_probs_RC, 0.0),
        num_generated=s.num_generated,
        finish_reason=jnp.where(s.eos, FINISH_EOS, FINISH_LENGTH).astype(jnp.int32),
        decode_steps=s.decode_steps,
    )


def _prefill(model: Qwen, config: SamplingConfig, G: int, num_guided: int, prompt_ids_BP,
             prompt_len_B, trace_ids_BL, trace_len_B, ell, max_new_tokens_R, row_ids_R,
             rng):  # fmt: skip
    """Each group's prefix prefilled once: the decode loop's first state (the rows'
    first logits, the guidance written into the completions) and the rows' prompts."""
    B, P = prompt_ids_BP.shape
    L = trace_ids_BL.shape[1]
    R, W = B * G, P + L
    budget = config.max_completion_length
    C = budget if config.guidance_in_budget else budget + L
    # ℓ′ of each group (none when nothing is guided; the host sizes L ≥ every ℓ′)
    used_B = jnp.minimum(ell, trace_len_B) if L else jnp.zeros((B,), jnp.int32)
    tokens_BW, mask_BW, positions_BW = assemble_prefix(
        prompt_ids_BP, prompt_len_B, trace_ids_BL, used_B, config.pad_id
    )
    # X = L + 1: the outputs that predict the guidance tokens and each kind of row's first.
    hidden_BXD, prefix = model.hidden_states(
        tokens_BW, positions_BW, mask_BW, init_cache(model.config, B, W), last=L + 1
    )
    rows = lambda x_B: jnp.repeat(x_B, G, axis=0)  # a group's value for each of its rows
    guided_G = np.arange(G) < num_guided
    guided_R = jnp.asarray(np.tile(guided_G, B))
    guidance_len_R = jnp.where(guided_R, rows(used_B), 0)

    # An unguided row continues after the prompt (prefix column W − ℓ′ − 1, output L − ℓ′),
    # a guided one after the whole prefix (output L).
    after_B2 = jnp.stack([L - used_B, jnp.full((B,), L, jnp.int32)], axis=1)
    first_B2D = jnp.take_along_axis(hidden_BXD, after_B2[:, :, None], axis=1)
    logits_RV = model.logits(first_B2D)[:, guided_G.astype(np.int32)].reshape(R, -1)

    cols_C = jnp.arange(C)[None, :]
    is_guidance_RC = cols_C < guidance_len_R[:, None]
    completion_RC = jnp.full((R, C), config.pad_id, jnp.int32)
    log_probs_RC = jnp.zeros((R, C), jnp.float32)
    if L:
        # As in sampling._sample: guidance token i of a group with ℓ′ = L sits in prefix
        # column W − L + i; a shorter ℓ′ in the last ℓ′ columns.
        temperature = 1.0 if config.is_greedy else config.temperature
        lp_BL = token_log_probs(model, hidden_BXD[:, :L], tokens_BW[:, W - L :], temperature)
        src_BC = jnp.clip(L - used_B[:, None] + cols_C, 0, L - 1)
        guidance_BC = jnp.take_along_axis(tokens_BW[:, W - L :], src_BC, axis=1)
        completion_RC = jnp.where(is_guidance_RC, rows(guidance_BC), completion_RC)
        lp_BC = jnp.take_along_axis(lp_BL, src_BC, axis=1)
        log_probs_RC = jnp.where(is_guidance_RC, rows(lp_BC), 0.0)

    # The prefix slots each row sees: its group's up to the end of its own prefix.
    prefix_end_R = W - jnp.where(guided_R, 0, rows(used_B))
    prefix_mask_RW = rows(mask_BW) & (jnp.arange(W)[None] < prefix_end_R[:, None])
    cache = GroupCache(prefix=prefix, prefix_mask=prefix_mask_RW,
                       own=init_cache(model.config, R, 0))  # fmt: skip
    positions_R = rows(prompt_len_B) + guidance_len_R

    budget_R = budget - guidance_len_R if config.guidance_in_budget else jnp.full((R,), budget)
    budget_R = jnp.minimum(budget_R, max_new_tokens_R)
    state = _LoopState(
        step=jnp.zeros((), jnp.int32),
        row=jnp.arange(R),
        keys=jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids_R),
        budget=budget_R,
        guidance_len=guidance_len_R,
        logits_V=logits_RV,
        cache=cache,
        positions=positions_R,
        rotary=model.rotary(positions_R[:, None]),
        done=budget_R <= 0,
        eos=jnp.zeros((R,), bool),
        num_generated=jnp.zeros((R,), jnp.int32),
        decode_steps=jnp.zeros((R,), jnp.int32),
        completion_RC=completion_RC,
        log_probs_RC=log_probs_RC,
    )
    # The prompt sits just left of the group's ℓ′ guidance tokens.
    window_BP = jnp.arange(P)[None] + (L - used_B)[:, None]
    prompt_mask_BP = jnp.take_along_axis(mask_BW, window_BP, axis=1)
    prompt_ids_BP = jnp.where(prompt_mask_BP, jnp.take_along_axis(tokens_BW, window_BP, 1),
                              config.pad_id)  # fmt: skip
    return state, rows(prompt_ids_BP), rows(prompt_mask_BP)


def _decode(model: Qwen, config: SamplingConfig, G: int, compact: bool, s: _LoopState):
    """The decode loop in phases (sampling._sample's); from the second on, a compacted
    phase gathers the live rows into the smallest width that holds them."""
    R, C = s.completion_RC.shape
    eos_ids = jnp.asarray(config.eos_ids or (-1,), jnp.int32)

    def choose(s: _LoopState) -> tuple[_LoopState, jax.Array]:
        """Each live row's next token, written into its completion (sampling._sample)."""
        token, lp = sample_tokens(s.logits_V, s.keys, s.step, config)
        live = ~s.done
        token = jnp.where(live, token, config.pad_id)
        column = jnp.where(live, s.guidance_len + s.num_generated, C)  # C: dropped
        num_generated = s.num_generated + live
        hit_eos = live & jnp.isin(token, eos_ids)
        return s.replace(
            step=s.step + 1,
            done=s.done | hit_eos | (num_generated >= s.budget),
            eos=s.eos | hit_eos,
            num_generated=num_generated,
            completion_RC=s.completion_RC.at[s.row, column].set(token, mode="drop"),
            log_probs_RC=s.log_probs_RC.at[s.row, column].set(lp, mode="drop"),
        ), token

    def advance(s: _LoopState, token: jax.Array) -> _LoopState:
        """The next-token logits after `token` (its keys and values into the own cache)."""
        logits_V, cache = model.decode_grouped(token, s.positions, s.cache, s.rotary)
        return s.replace(
            logits_V=logits_V,
            cache=cache,
            positions=s.positions + 1,
            rotary=model.rotary(s.positions[:, None] + 1),
            decode_steps=s.decode_steps + 1,
        )

    def decode(s: _LoopState, end: int) -> _LoopState:
        return jax.lax.while_loop(
            lambda s: (s.step < end) & ~jnp.all(s.done), lambda s: advance(*choose(s)), s
        )

    def compacted(width: int, end: int):
        def run(s: _LoopState) -> _LoopState:
            order = jnp.argsort(s.done, stable=True)[:width].astype(jnp.int32)  # live first
            return _scatter(s, decode(_gather(s, order, G), end), order)

        return run

    widths = compact_widths(R) if compact else []
    ends = decode_phase_ends(config.max_completion_length, config.decode_phases)
    filled = 0
    for phase, end in enumerate(ends):
        s = s.replace(cache=s.cache.replace(own=extend_cache(s.cache.own, end - filled)))
        filled = end
        if phase == 0 or not widths:
            s = decode(s, end)
            continue
        live = jnp.sum(~s.done)
        which = jnp.sum(live <= jnp.asarray(widths))  # 0: none holds them, the full batch
        phases = [functools.partial(decode, end=end)] + [compacted(w, end) for w in widths]
        s = jax.lax.switch(which, phases, s)
    s, _ = choose(s)
    return s


class GroupSampler:
    """Samples G candidates for each of B prompts, the first `num_guided` = ceil(α·G) of
    each group guided by its trace (SPEC §1); the same SampleOutput as Sampler's for the
    prompts repeated G times with guidance.guidance_lengths, rows prompt-major.

    `sampler(params, prompt_ids, prompt_lengths, trace_ids, trace_lengths, ell, rng,
    row_ids=None, max_new_tokens=None)`: prompt_ids [B, P'] and trace_ids [B, L']
    right-padded, lengths [B], ℓ a host int (host arrays: batch["prompt_ids"],
    batch["prompt_length"], batch["guidance_ids"], batch["guidance_length"] and the
    controller's length). Row r of the output (candidate r mod G of prompt r // G) samples
    with the stream fold_in(rng, row_ids[r]) (default: r), as Sampler's row r does.
    max_new_tokens: [B·G], the most tokens each row may generate, on top of the budget
    (which, with guidance_in_budget, leaves a guided row budget − ℓ′). Returns a
    RolloutOutput on device.

    compact: from the second decode phase on, run the live rows gathered into the smallest
    of a few power-of-two widths that holds them (compact_widths), so finished rows stop
    costing; decode_steps counts the steps each row was computed.

    Bucket policy as Sampler's: P the next power of two ≥ the longest prompt, L the next ≥
    the largest ℓ′ (0 when nothing is guided); with a row `sharding`, B rounded up so that
    B·G is a multiple of batch_multiple, with padding prompts whose rows generate nothing
    and are dropped.
    """

    def __init__(self, graphdef: nnx.GraphDef, config: SamplingConfig, group_size: int,
                 num_guided: int, compact: bool = True, sharding=None):  # fmt: skip
        if not 0 <= num_guided <= group_size:
            raise ValueError(f"num_guided={num_guided} must be in [0, G={group_size}]")
        self.config, self.G, self.num_guided = config, group_size, num_guided
        self.sharding = sharding
        self._sample = jax.jit(
            lambda *args: _sample_groups(graphdef, config, group_size, num_guided, compact,
                                         *args),
            out_shardings=sharding,
        )  # fmt: skip

    @property
    def num_compiled(self) -> int:
        """How many programs this sampler has compiled (one per shape bucket seen)."""
        return self._sample._cache_size()

    def __call__(self, params, prompt_ids, prompt_lengths, trace_ids, trace_lengths, ell: int,
                 rng, row_ids=None, max_new_tokens=None) -> RolloutOutput:  # fmt: skip
        cfg, G = self.config, self.G
        prompt_lengths = np.asarray(prompt_lengths, np.int32)
        trace_lengths = np.asarray(trace_lengths, np.int32)
        if prompt_lengths.min() < 1:
            raise ValueError("every prompt needs at least one token")
        if ell < 0:
            raise ValueError(f"ℓ={ell} must be ≥ 0")
        prompts = len(prompt_lengths)
        # Rows split over devices need whole multiples; alone, padding would only cost.
        multiple = cfg.batch_multiple // math.gcd(cfg.batch_multiple, G) if self.sharding else 1
        batch = -(-prompts // multiple) * multiple
        if batch != prompts and jax.process_count() > 1:
            raise ValueError(f"{prompts} prompts per process: a multi-process batch needs a "
                             f"multiple of {multiple} on every process")  # fmt: skip
        P = bucket(int(prompt_lengths.max()), cfg.min_bucket)
        used = min(ell, int(trace_lengths.max())) if self.num_guided else 0
        L = bucket(used, cfg.min_bucket)

        def rows_of(array, width, fill):
            out = np.full((batch, width), fill, np.int32)
            array = np.asarray(array)[:, :width]
            out[:prompts, : array.shape[1]] = array
            return out

        def lengths_of(lengths, fill):
            return np.concatenate([lengths, np.full(batch - prompts, fill, np.int32)])

        rows = prompts * G
        row_ids = np.arange(rows) if row_ids is None else np.asarray(row_ids)
        padding = np.zeros((batch - prompts) * G, np.int32)  # no tokens: done from the start
        if max_new_tokens is None:
            max_new_tokens = np.full(rows, cfg.max_completion_length, np.int32)
        # Padding prompts: one token, no trace; their rows are dropped.
        args = (
            rows_of(prompt_ids, P, cfg.pad_id),
            lengths_of(prompt_lengths, 1),
            rows_of(trace_ids, L, cfg.pad_id),
            lengths_of(trace_lengths, 0),
            np.int32(ell),
            np.concatenate([np.asarray(max_new_tokens, np.int32), padding]),
            np.concatenate([row_ids, np.arange((batch - prompts) * G) + row_ids.max() + 1]).astype(
                np.uint32
            ),  # fmt: skip
        )
        if self.sharding is None:
            args = jax.device_put(args)
        else:
            replicated = jax.sharding.NamedSharding(self.sharding.mesh,
                                                    jax.sharding.PartitionSpec())  # fmt: skip
            args = [
                jax.make_array_from_process_local_data(
                    replicated if np.ndim(a) == 0 else self.sharding, a
                )
                for a in args
            ]
        out = self._sample(params, *args, rng)
        return _first_rows(out, rows) if batch != prompts else out


@functools.partial(jax.jit, static_argnums=1)
def _first_rows(tree, rows: int):
    """Drops the padding rows on device (slicing outside jit would transfer the indices)."""
    return jax.tree.map(lambda x: x[:rows], tree)
