"""Group-aware rollout sampling: each group's prefix prefilled once and held once.

Shapes: B prompts, G candidates per prompt (the group), R = B·G rows, prompt-major
(candidate j of prompt b is row b·G + j, as guidance.py lays them out); P prompt width, L
guidance width, W = P + L, C completion width, V vocab.

The row-wise Sampler (sampling.py) gives every candidate its own copy of the prompt and
every guided one its own copy of trace[:ℓ′] (ℓ′ = min(ℓ, trace length)): G prefills of the
same tokens per group, and every decode step reads G copies of that prefix. Here each
group's prefix prompt ⊕ trace[:ℓ′] is prefilled once, [B, W]; an unguided candidate's
prefix, the prompt, is its first part, whose keys and values causal attention leaves the
same. Decode runs on a GroupCache (models/group_cache.py): that prefix once per group plus each
row's generated tokens [R, C]; a row sees the part of the prefix that is its own (the
prompt, or prompt ⊕ trace[:ℓ′]) and its own tokens, the two partial attentions merged by
their log-sum-exp (group_cache.attend).

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
from jax.experimental import multihost_utils

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models.group_cache import GroupCache
from g2rpo_jax.models.kv_cache import init_cache
from g2rpo_jax.models.log_probs import token_log_probs
from g2rpo_jax.models.qwen import Qwen
from g2rpo_jax.rollout_decode import LoopState, decode
from g2rpo_jax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    SampleOutput,
    Sampler,
    SamplingConfig,
    assemble_prefix,
    bucket,
)


@flax.struct.dataclass
class RolloutOutput(SampleOutput):
    """SampleOutput, and decode_steps: [R] the decode steps that computed each row, its
    own tokens' and those run while it sat finished in a batch still decoding (the cost
    compaction cuts; the useful ones are its num_generated)."""

    decode_steps: jax.Array


@flax.struct.dataclass
class Groups:
    """One call's inputs, on device (GroupSampler.__call__ pads and places them).

    prompt_ids [B, P] and trace_ids [B, L], right-padded; prompt_len, trace_len [B];
    ell: ℓ, an int32 scalar; max_new_tokens [R]: each row's budget on top of the
    config's; row_ids [R] uint32: row r samples with fold_in(rng, row_ids[r]).
    """

    prompt_ids: jax.Array
    prompt_len: jax.Array
    trace_ids: jax.Array
    trace_len: jax.Array
    ell: jax.Array
    num_guided: jax.Array
    max_new_tokens: jax.Array
    row_ids: jax.Array


def _sample_groups(
    graphdef, config: SamplingConfig, tokens: TokenIds, G: int, params, groups: Groups, rng
):
    model: Qwen = nnx.merge(graphdef, params)
    s, prompt_ids_RP, prompt_mask_RP = _prefill(model, config, tokens, G, groups, rng)
    s = decode(model, config, tokens, G, s)
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


def _prefill(model: Qwen, config: SamplingConfig, tokens: TokenIds, G: int, groups: Groups, rng):
    """Each group's prefix prefilled once: the decode loop's first state (the rows'
    first logits, the guidance written into the completions) and the rows' prompts."""
    B, P = groups.prompt_ids.shape
    L = groups.trace_ids.shape[1]
    R, W = B * G, P + L
    # ℓ′ of each group (none when nothing is guided; the host sizes L ≥ every ℓ′)
    used_B = jnp.minimum(groups.ell, groups.trace_len) if L else jnp.zeros((B,), jnp.int32)
    tokens_BW, mask_BW, positions_BW = assemble_prefix(
        groups.prompt_ids, groups.prompt_len, groups.trace_ids, used_B, tokens.pad
    )
    # X = L + 1: the outputs that predict the guidance tokens and each kind of row's first.
    hidden_BXD, prefix = model.hidden_states(
        tokens_BW, positions_BW, mask_BW, init_cache(model.config, B, W), last=L + 1
    )
    rows = lambda x_B: jnp.repeat(x_B, G, axis=0)  # a group's value for each of its rows
    guided_G = jnp.arange(G) < groups.num_guided
    guided_R = jnp.tile(guided_G, B)
    guidance_len_R = jnp.where(guided_R, rows(used_B), 0)
    # An unguided row continues after the prompt (prefix column W − ℓ′ − 1, output L − ℓ′),
    # a guided one after the whole prefix (output L).
    after_B2 = jnp.stack([L - used_B, jnp.full((B,), L, jnp.int32)], axis=1)
    first_B2D = jnp.take_along_axis(hidden_BXD, after_B2[:, :, None], axis=1)
    logits_RV = model.logits(first_B2D)[:, guided_G.astype(jnp.int32)].reshape(R, -1)
    completion_RC, log_probs_RC = _guidance(
        model, config, tokens.pad, hidden_BXD, tokens_BW, used_B, guidance_len_R, G
    )
    # The prefix slots each row sees: its group's up to the end of its own prefix.
    prefix_end_R = W - jnp.where(guided_R, 0, rows(used_B))
    prefix_mask_RW = rows(mask_BW) & (jnp.arange(W)[None] < prefix_end_R[:, None])
    cache = GroupCache(prefix, prefix_mask_RW, init_cache(model.config, R, 0))
    positions_R = rows(groups.prompt_len) + guidance_len_R
    budget = config.max_completion_length
    budget_R = budget - guidance_len_R if config.guidance_in_budget else jnp.full((R,), budget)
    budget_R = jnp.minimum(budget_R, groups.max_new_tokens)
    zeros_R = jnp.zeros((R,), jnp.int32)
    state = LoopState(
        step=jnp.zeros((), jnp.int32),
        row=jnp.arange(R),
        keys=jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, groups.row_ids),
        budget=budget_R,
        guidance_len=guidance_len_R,
        logits_V=logits_RV,
        cache=cache,
        positions=positions_R,
        rotary=model.rotary(positions_R[:, None]),
        done=budget_R <= 0,
        eos=jnp.zeros((R,), bool),
        num_generated=zeros_R,
        decode_steps=zeros_R,
        completion_RC=completion_RC,
        log_probs_RC=log_probs_RC,
    )
    # The prompt sits just left of the group's ℓ′ guidance tokens.
    window_BP = jnp.arange(P)[None] + (L - used_B)[:, None]
    prompt_mask_BP = jnp.take_along_axis(mask_BW, window_BP, axis=1)
    prompt_ids_BP = jnp.take_along_axis(tokens_BW, window_BP, 1)
    prompt_ids_BP = jnp.where(prompt_mask_BP, prompt_ids_BP, tokens.pad)
    return state, rows(prompt_ids_BP), rows(prompt_mask_BP)


def _guidance(
    model: Qwen,
    config: SamplingConfig,
    pad: int,
    hidden_BXD,
    tokens_BW,
    used_B,
    guidance_len_R,
    G: int,
):
    """The completions [R, C] started with each guided row's ℓ′ trace tokens, and their
    log-probs from the prefill (sampling._prefill's, once per group)."""
    W, L = tokens_BW.shape[1], hidden_BXD.shape[1] - 1
    R = guidance_len_R.shape[0]
    C = config.max_completion_length + (0 if config.guidance_in_budget else L)
    completion_RC = jnp.full((R, C), pad, jnp.int32)
    if not L:
        return completion_RC, jnp.zeros((R, C), jnp.float32)
    cols_C = jnp.arange(C)[None, :]
    is_guidance_RC = cols_C < guidance_len_R[:, None]
    rows = lambda x_B: jnp.repeat(x_B, G, axis=0)
    # Guidance token i of a group with ℓ′ = L sits in prefix column W − L + i; a shorter
    # ℓ′ in the last ℓ′ columns.
    temperature = 1.0 if config.is_greedy else config.temperature
    lp_BL = token_log_probs(model, hidden_BXD[:, :L], tokens_BW[:, W - L :], temperature)
    src_BC = jnp.clip(L - used_B[:, None] + cols_C, 0, L - 1)
    guidance_BC = jnp.take_along_axis(tokens_BW[:, W - L :], src_BC, axis=1)
    completion_RC = jnp.where(is_guidance_RC, rows(guidance_BC), completion_RC)
    lp_BC = jnp.take_along_axis(lp_BL, src_BC, axis=1)
    return completion_RC, jnp.where(is_guidance_RC, rows(lp_BC), 0.0)


@functools.cache
def _compiled(graphdef, config: SamplingConfig, tokens: TokenIds, G: int, sharding):
    """The jitted sampler of these settings: every GroupSampler of them (any α) shares it."""
    sample = functools.partial(_sample_groups, graphdef, config, tokens, G)
    return jax.jit(sample, out_shardings=sharding)


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

    config.compact: run the live rows gathered into the smallest of a few power-of-two
    widths that holds them (rollout_decode.compact_widths), so finished rows stop costing;
    decode_steps counts the steps each row was computed.

    Bucket policy as Sampler's: P the next power of two ≥ the longest prompt, L the next ≥
    the largest ℓ′ (0 when nothing is guided); with a row `sharding`, B rounded up so that
    B·G is a multiple of batch_multiple and B of the devices the rows split over, with
    padding prompts whose rows generate nothing and are dropped (one process; several need
    B·G a multiple of batch_multiple on each).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        config: SamplingConfig,
        tokens: TokenIds,
        group_size: int,
        num_guided: int,
        sharding=None,
    ):
        if not 0 <= num_guided <= group_size:
            raise ValueError(f"num_guided={num_guided} must be in [0, G={group_size}]")
        self.config, self.tokens = config, tokens
        self.G, self.num_guided = group_size, num_guided
        self.sharding = sharding
        self._sample = _compiled(graphdef, config, tokens, group_size, sharding)

    @property
    def num_compiled(self) -> int:
        """How many programs this sampler has compiled (one per shape bucket seen)."""
        return self._sample._cache_size()

    def __call__(
        self,
        params,
        prompt_ids,
        prompt_lengths,
        trace_ids,
        trace_lengths,
        ell: int,
        rng,
        row_ids=None,
        max_new_tokens=None,
    ) -> RolloutOutput:
        prompt_lengths = np.asarray(prompt_lengths, np.int32)
        trace_lengths = np.asarray(trace_lengths, np.int32)
        if prompt_lengths.min() < 1:
            raise ValueError("every prompt needs at least one token")
        if ell < 0:
            raise ValueError(f"ℓ={ell} must be ≥ 0")
        groups = self._groups(
            prompt_ids, prompt_lengths, trace_ids, trace_lengths, int(ell), row_ids, max_new_tokens
        )
        padded = groups.row_ids.shape[0] != len(prompt_lengths) * self.G
        out = self._sample(params, self._place(groups), rng)
        return _first_rows(out, len(prompt_lengths) * self.G) if padded else out

    def _place(self, groups: Groups) -> Groups:
        """The host arrays on device: this process's groups split over its devices, or, when
        they do not divide over them (few prompts per process), every process's groups on
        every device; the output rows are split over the devices either way."""
        if self.sharding is None:
            return jax.device_put(groups)
        replicated = jax.sharding.NamedSharding(self.sharding.mesh, jax.sharding.PartitionSpec())
        split = groups.prompt_len.shape[0] % (_row_splits(self.sharding) // jax.process_count())
        if not split:
            place = lambda a: jax.make_array_from_process_local_data(
                replicated if np.ndim(a) == 0 else self.sharding, a
            )
            return jax.tree.map(place, groups)
        gather = lambda a: (
            a if np.ndim(a) == 0 else multihost_utils.process_allgather(a, tiled=True)
        )
        return jax.tree.map(lambda a: jax.device_put(gather(a), replicated), groups)

    def _groups(self, ids, lengths, trace_ids, trace_lengths, ell, row_ids, budgets) -> Groups:
        """The host arrays of one call (__call__'s, budgets its max_new_tokens), padded to
        their buckets (numpy)."""
        cfg, G = self.config, self.G
        prompts = len(lengths)
        # Rows split over devices: one process pads to a bucket of whole rows per device
        # (also fewer programs); several cannot pad, and need rows that split over their
        # devices (Sampler's rule). Alone, padding would only cost.
        multiple = 1
        if self.sharding is not None:
            rows_multiple = cfg.batch_multiple // math.gcd(cfg.batch_multiple, G)
            multiple = math.lcm(rows_multiple, _row_splits(self.sharding))
        if jax.process_count() > 1:
            multiple = 1
            if prompts * G % cfg.batch_multiple:
                raise ValueError(
                    f"{prompts * G} rows per process: a multi-process batch needs a "
                    f"multiple of batch_multiple={cfg.batch_multiple} on every process"
                )
        batch = -(-prompts // multiple) * multiple
        P = bucket(int(lengths.max()), cfg.min_bucket)
        used = min(ell, int(trace_lengths.max())) if self.num_guided else 0

        def rows_of(array, width):
            out = np.full((batch, width), self.tokens.pad, np.int32)
            array = np.asarray(array)[:, :width]
            out[:prompts, : array.shape[1]] = array
            return out

        pad = lambda x, fill, n: np.concatenate([np.asarray(x, np.int32), np.full(n, fill)])
        rows, extra = prompts * G, (batch - prompts) * G
        row_ids = np.arange(rows) if row_ids is None else np.asarray(row_ids)
        if budgets is None:
            budgets = np.full(rows, cfg.max_completion_length, np.int32)
        # Padding prompts: one token, no trace, no tokens to generate; their rows are dropped.
        return Groups(
            prompt_ids=rows_of(ids, P),
            prompt_len=pad(lengths, 1, batch - prompts).astype(np.int32),
            trace_ids=rows_of(trace_ids, bucket(used, cfg.min_bucket)),
            trace_len=pad(trace_lengths, 0, batch - prompts).astype(np.int32),
            ell=np.int32(ell),
            num_guided=np.int32(self.num_guided),
            max_new_tokens=pad(budgets, 0, extra).astype(np.int32),
            row_ids=np.concatenate([row_ids, np.arange(extra) + row_ids.max() + 1]).astype(
                np.uint32
            ),
        )


def _row_splits(sharding) -> int:
    """How many parts a row `sharding` splits the first dim into."""
    axes = sharding.spec[0] if len(sharding.spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(sharding.mesh.shape[a] for a in axes)


class RowWise:
    """The row-wise Sampler behind GroupSampler's call: each prompt repeated G times, its
    trace given to the planned candidates (guidance.guidance_lengths, on the host). The
    rollout of `sampling.share_prefix = compact = False`, kept so anyone can compare."""

    def __init__(self, sampler, group_size: int, num_guided: int):
        self.sampler, self.G, self.num_guided = sampler, group_size, num_guided
        self.config, self.tokens = sampler.config, sampler.tokens

    def __call__(
        self,
        params,
        prompt_ids,
        prompt_lengths,
        trace_ids,
        trace_lengths,
        ell: int,
        rng,
        row_ids=None,
        max_new_tokens=None,
    ) -> SampleOutput:
        per_prompt = np.minimum(ell, np.asarray(trace_lengths, np.int32))[:, None]
        planned = np.where(np.arange(self.G) < self.num_guided, per_prompt, 0).reshape(-1)
        repeat = lambda x: np.repeat(np.asarray(x), self.G, 0)
        rows = (repeat(prompt_ids), repeat(prompt_lengths), repeat(trace_ids), planned)
        return self._sample(params, *rows, ell, rng, row_ids, max_new_tokens)

    def _sample(self, params, ids, lengths, trace_ids, planned, ell, rng, row_ids, budgets):
        if budgets is not None:
            raise ValueError("per-row budgets need sampling.share_prefix or sampling.compact")
        return self.sampler(params, ids, lengths, trace_ids, planned, rng, row_ids=row_ids)


class OneRowGroups(RowWise):
    """Compaction without prefix sharing: GroupSampler on groups of one row (RowWise's
    rows), each row's planned guidance its trace length."""

    def _sample(self, params, ids, lengths, trace_ids, planned, ell, rng, row_ids, budgets):
        return self.sampler(params, ids, lengths, trace_ids, planned, ell, rng, row_ids, budgets)


# What sampler_for returns: all called as GroupSampler is.
RolloutSampler = GroupSampler | RowWise
# Samplers shared by every run in a process (tests, repeated evaluations): one compile each.
_SAMPLERS: dict = {}


def sampler_for(
    graphdef: nnx.GraphDef,
    config: SamplingConfig,
    tokens: TokenIds,
    group_size: int,
    num_guided: int,
    sharding=None,
) -> RolloutSampler:
    """The rollout sampler of these settings, built once per process, all called as
    GroupSampler is: `sampling.share_prefix` → GroupSampler (compacted when
    `sampling.compact`); compact alone → GroupSampler over groups of one row; neither →
    the row-wise Sampler (RowWise)."""
    key = (graphdef, config, tokens, group_size, num_guided, sharding)
    if key not in _SAMPLERS:
        if config.share_prefix:
            made = GroupSampler(graphdef, config, tokens, group_size, num_guided, sharding)
        elif config.compact:
            one = GroupSampler(graphdef, config, tokens, 1, 1, sharding)
            made = OneRowGroups(one, group_size, num_guided)
        else:
            row_wise = Sampler(graphdef, config, tokens, sharding)
            made = RowWise(row_wise, group_size, num_guided)
        _SAMPLERS[key] = made
    return _SAMPLERS[key]


@functools.partial(jax.jit, static_argnums=1)
def _first_rows(tree, rows: int):
    """Drops the padding rows on device (slicing outside jit would transfer the indices)."""
    return jax.tree.map(lambda x: x[:rows], tree)
