"""The rollout sampler: guided prefixes, one prefill, then a jitted decode loop.

Each row (one candidate) starts from `prompt ⊕ guidance[:ℓ]` (SPEC §1), assembled inside
jit from right-padded prompt and guidance ids: left-padded to a common width, positions
counted per row, no padding inside a sequence. The model continues from the end of the
prefix; the completion is `guidance[:ℓ] ⊕ generated` with an `is_guidance` mask.

Bucket policy (to keep compiled programs few while ℓ changes every step):
- prompt width: the next power of two ≥ the longest prompt (at least 16);
- guidance width: 0 when no row is guided, else the next power of two ≥ the largest ℓ
  (at least 16);
- batch: rounded up to a multiple of `batch_multiple` with padding rows that are dropped.
One program is compiled per (batch, prompt width, guidance width); `num_compiled` counts
them. With a fixed batch and prompt bucket, ℓ ∈ [1, 4096] compiles at most 9 programs.

Decode phases: a step attends over every slot of the cache it is given, filled or not, and
on CPU that read is a large share of the step. So the loop runs in `decode_phases` parts,
the cache grown (one copy) at each boundary to just the slots the next part fills: with 4
phases a 32-token prefix and 64 new tokens read 71 slots per step on average instead of 96.
Each phase is its own loop in the program, so more phases mean more code to compile, and
none is shorter than MIN_PHASE_STEPS steps.

Log-probs are log softmax(logits / temperature) at the chosen tokens, taken before top-k /
top-p truncation (the distribution the policy defines at that temperature); greedy
decoding reports temperature-1 log-probs. Guidance tokens get theirs from the prefill.
"""

import dataclasses
import functools
import logging

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models.kv_cache import extend_cache, init_cache
from g2rpo_jax.models.log_probs import token_log_probs
from g2rpo_jax.models.qwen import Qwen
from g2rpo_jax.token_choice import sample_tokens

log = logging.getLogger(__name__)

FINISH_LENGTH, FINISH_EOS = 0, 1
ROLLOUT_PARAM_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; frozen and hashable so they are static under jit.

    max_completion_length: the completion budget; it counts guidance tokens too unless
    guidance_in_budget is False, then guided rows may generate that many on top (SPEC §1).
    temperature 0 or greedy=True decode greedily; top_k 0 and top_p 1 turn those filters off.
    decode_phases: the decode loop runs in up to this many phases (each ≥ MIN_PHASE_STEPS
    steps), each over a KV cache just long enough for the tokens it adds, so early steps read
    fewer slots (module docstring).
    param_dtype: the dtype of the weights the trainer's rollouts read (`rollout_params`):
    float32, or bfloat16 for half the weight traffic of every decode step.
    share_prefix, compact: how the trainer's, evaluation's and pass-rate rollouts sample
    (rollout.sampler_for): each group's prompt ⊕ guidance prefilled and held once, and
    finished rows leaving the decode batch; both off, this module's row-wise Sampler.
    share_prefix also lets the train step run those prefixes once (`forward_index`).
    """

    max_completion_length: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    guidance_in_budget: bool = True
    batch_multiple: int = 8
    min_bucket: int = 16
    decode_phases: int = 4
    param_dtype: str = "float32"
    share_prefix: bool = True
    compact: bool = True

    def __post_init__(self):
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length} must be ≥ 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be ≥ 0 (0 turns it off)")
        if self.decode_phases < 1:
            raise ValueError(f"decode_phases={self.decode_phases} must be ≥ 1")
        if self.param_dtype not in ROLLOUT_PARAM_DTYPES:
            raise ValueError(
                f"param_dtype={self.param_dtype!r} must be one of {', '.join(ROLLOUT_PARAM_DTYPES)}"
            )

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


@flax.struct.dataclass
class SampleOutput:
    """Per candidate. C is the completion width (max_completion_length, or that plus the
    guidance width when guidance is outside the budget); P the prompt width.

    prompt_ids, prompt_mask: [B, P], left-padded (the prefix without its guidance).
    completion_ids: [B, C] guidance ⊕ generated, right-padded with `TokenIds.pad`.
    completion_mask: [B, C] 1 through the first EOS (guidance included).
    is_guidance: [B, C] 1 on the guidance tokens.
    log_probs: [B, C] float32 log-probs of the completion tokens (0 where masked).
    num_generated: [B] tokens the model generated (guidance excluded).
    finish_reason: [B] FINISH_EOS or FINISH_LENGTH.
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    completion_ids: jax.Array
    completion_mask: jax.Array
    is_guidance: jax.Array
    log_probs: jax.Array
    num_generated: jax.Array
    finish_reason: jax.Array


@flax.struct.dataclass
class _LoopState:
    step: jax.Array  # tokens generated so far by every live row
    logits_BV: jax.Array  # the next-token logits of each row
    cache: object
    positions_B: jax.Array
    rotary: tuple[jax.Array, jax.Array]  # model.rotary(positions_B[:, None]), made a step early
    done_B: jax.Array
    eos_B: jax.Array
    num_generated_B: jax.Array
    completion_BC: jax.Array
    log_probs_BC: jax.Array


# A shorter phase saves little cache reading and still costs a loop body to compile.
MIN_PHASE_STEPS = 12


def decode_phase_ends(budget: int, phases: int) -> list[int]:
    """The step each decode phase ends before: budget − 1 model calls in `phases` near-equal
    parts, fewer when a part would be under MIN_PHASE_STEPS calls."""
    calls = budget - 1
    phases = max(1, min(phases, calls // MIN_PHASE_STEPS))
    return sorted({-(-calls * (i + 1) // phases) for i in range(phases)} - {0})


def bucket(n: int, minimum: int) -> int:
    """The next power of two ≥ n (and ≥ minimum); 0 stays 0."""
    if n <= 0:
        return 0
    return max(minimum, 1 << (int(n) - 1).bit_length())


def assemble_prefix(prompt_ids_BP, prompt_len_B, guidance_ids_BL, guidance_len_B, pad_id):
    """`prompt ⊕ guidance[:ℓ]` per row, left-padded to width W = P + L.

    Returns tokens [B, W], mask [B, W] and positions [B, W] (0 at each row's first token).
    """
    B, P = prompt_ids_BP.shape
    L = guidance_ids_BL.shape[1]
    total_B = prompt_len_B + guidance_len_B
    k_BW = jnp.arange(P + L)[None, :] - (P + L - total_B)[:, None]  # index in the row
    in_prompt = (k_BW >= 0) & (k_BW < prompt_len_B[:, None])
    tokens = jnp.take_along_axis(prompt_ids_BP, jnp.clip(k_BW, 0, P - 1), axis=1)
    mask = in_prompt
    if L:
        g_BW = k_BW - prompt_len_B[:, None]
        in_guidance = (g_BW >= 0) & (k_BW < total_B[:, None])
        g_tokens = jnp.take_along_axis(guidance_ids_BL, jnp.clip(g_BW, 0, L - 1), axis=1)
        tokens = jnp.where(in_guidance, g_tokens, tokens)
        mask = in_prompt | in_guidance
    tokens = jnp.where(mask, tokens, pad_id)
    return tokens.astype(jnp.int32), mask, jnp.maximum(k_BW, 0).astype(jnp.int32)


def _sample(
    graphdef,
    config,
    tokens: TokenIds,
    params,
    prompt_ids_BP,
    prompt_len_B,
    guidance_ids_BL,
    guidance_len_B,
    row_ids_B,
    rng,
):
    model: Qwen = nnx.merge(graphdef, params)
    P, L = prompt_ids_BP.shape[1], guidance_ids_BL.shape[1]
    tokens_BW, mask_BW, positions_BW = assemble_prefix(
        prompt_ids_BP, prompt_len_B, guidance_ids_BL, guidance_len_B, tokens.pad
    )
    init = _prefill(model, config, tokens.pad, tokens_BW, mask_BW, positions_BW, guidance_len_B, L)
    budget_B = jnp.full_like(guidance_len_B, config.max_completion_length)
    if config.guidance_in_budget:
        budget_B = budget_B - guidance_len_B
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids_B)
    rows = _Rows(keys_B, guidance_len_B, budget_B)
    s = _decode(model, config, tokens, rows, init.replace(done_B=rows.budget_B <= 0))
    # The prompt sits just left of the guidance: shift each row's guidance out of the window.
    shift_BP = jnp.arange(P)[None] + (L - guidance_len_B)[:, None]
    prompt_ids_BP = jnp.take_along_axis(tokens_BW, shift_BP, axis=1)
    prompt_mask_BP = jnp.take_along_axis(mask_BW, shift_BP, axis=1)
    C = s.completion_BC.shape[1]
    completion_mask_BC = jnp.arange(C)[None, :] < (guidance_len_B + s.num_generated_B)[:, None]
    return SampleOutput(
        prompt_ids=jnp.where(prompt_mask_BP, prompt_ids_BP, tokens.pad),
        prompt_mask=prompt_mask_BP,
        completion_ids=s.completion_BC,
        completion_mask=completion_mask_BC,
        is_guidance=jnp.arange(C)[None, :] < guidance_len_B[:, None],
        log_probs=jnp.where(completion_mask_BC, s.log_probs_BC, 0.0),
        num_generated=s.num_generated_B,
        finish_reason=jnp.where(s.eos_B, FINISH_EOS, FINISH_LENGTH).astype(jnp.int32),
    )


@flax.struct.dataclass
class _Rows:
    """What stays fixed per row through the decode loop."""

    keys_B: jax.Array  # the row's sampling stream
    guidance_len_B: jax.Array  # ℓ_i: guidance tokens at the start of its completion
    budget_B: jax.Array  # tokens it may generate


def _prefill(
    model: Qwen,
    config: SamplingConfig,
    pad: int,
    tokens_BW,
    mask_BW,
    positions_BW,
    guidance_len_B,
    L: int,
) -> _LoopState:
    """One forward over the prefixes [B, W]: the cache, the first token's logits, and the
    completions started with each row's guidance tokens and their log-probs."""
    B, W = tokens_BW.shape
    C = config.max_completion_length + (0 if config.guidance_in_budget else L)
    cache = init_cache(model.config, B, W)
    # X = L + 1: only the outputs that predict the guidance tokens and the first new token.
    hidden_BXD, cache = model.hidden_states(tokens_BW, positions_BW, mask_BW, cache, last=L + 1)
    cols_C = jnp.arange(C)[None, :]
    is_guidance_BC = cols_C < guidance_len_B[:, None]
    completion_BC = jnp.full((B, C), pad, jnp.int32)
    log_probs_BC = jnp.zeros((B, C), jnp.float32)
    if L:
        # Column W-L+i of the prefix holds guidance token i of a row with ℓ = L; a row with
        # fewer guidance tokens has them in the last ℓ columns.
        temperature = 1.0 if config.is_greedy else config.temperature
        lp_BL = token_log_probs(model, hidden_BXD[:, :L], tokens_BW[:, W - L :], temperature)
        src_BC = jnp.clip(L - guidance_len_B[:, None] + cols_C, 0, L - 1)
        guidance_tokens_BC = jnp.take_along_axis(tokens_BW[:, W - L :], src_BC, axis=1)
        completion_BC = jnp.where(is_guidance_BC, guidance_tokens_BC, completion_BC)
        log_probs_BC = jnp.where(is_guidance_BC, jnp.take_along_axis(lp_BL, src_BC, 1), 0.0)
    return _LoopState(
        step=jnp.zeros((), jnp.int32),
        logits_BV=model.logits(hidden_BXD[:, -1:])[:, 0],
        cache=cache,
        positions_B=positions_BW[:, -1] + 1,
        rotary=model.rotary(positions_BW[:, -1:] + 1),
        done_B=jnp.zeros((B,), bool),
        eos_B=jnp.zeros((B,), bool),
        num_generated_B=jnp.zeros((B,), jnp.int32),
        completion_BC=completion_BC,
        log_probs_BC=log_probs_BC,
    )


def _decode(
    model: Qwen, config: SamplingConfig, tokens: TokenIds, rows: _Rows, s: _LoopState
) -> _LoopState:
    """Steps 0 … budget − 2 each choose a token and run the model on it, in phases whose cache
    has just the slots that phase fills; the last step only chooses."""
    B, C = s.completion_BC.shape
    rows_B = jnp.arange(B)
    eos_ids = jnp.asarray(tokens.eos or (-1,), jnp.int32)

    def choose(s: _LoopState) -> tuple[_LoopState, jax.Array]:
        """Each live row's next token, written into its completion."""
        token_B, lp_B = sample_tokens(s.logits_BV, rows.keys_B, s.step, config)
        live_B = ~s.done_B
        token_B = jnp.where(live_B, token_B, tokens.pad)
        column_B = jnp.where(live_B, rows.guidance_len_B + s.num_generated_B, C)  # C: dropped
        num_generated_B = s.num_generated_B + live_B
        hit_eos_B = live_B & jnp.isin(token_B, eos_ids)
        return s.replace(
            step=s.step + 1,
            done_B=s.done_B | hit_eos_B | (num_generated_B >= rows.budget_B),
            eos_B=s.eos_B | hit_eos_B,
            num_generated_B=num_generated_B,
            completion_BC=s.completion_BC.at[rows_B, column_B].set(token_B, mode="drop"),
            log_probs_BC=s.log_probs_BC.at[rows_B, column_B].set(lp_B, mode="drop"),
        ), token_B

    def advance(s: _LoopState, token_B: jax.Array) -> _LoopState:
        """The model's next-token logits after token_B (its keys and values into the cache)."""
        logits_B1V, cache = model(
            token_B[:, None], s.positions_B[:, None], jnp.ones((B, 1), bool), s.cache, s.rotary
        )
        return s.replace(
            logits_BV=logits_B1V[:, 0],
            cache=cache,
            positions_B=s.positions_B + 1,
            rotary=model.rotary(s.positions_B[:, None] + 1),
        )

    filled = 0
    for end in decode_phase_ends(config.max_completion_length, config.decode_phases):
        s = s.replace(cache=extend_cache(s.cache, end - filled))
        s = jax.lax.while_loop(
            lambda s, end=end: (s.step < end) & ~jnp.all(s.done_B),
            lambda s: advance(*choose(s)),
            s,
        )
        filled = end
    return choose(s)[0]


class Sampler:
    """Samples completions for a batch of candidates with the policy's current params.

    `sampler(params, prompt_ids, prompt_lengths, guidance_ids, guidance_lengths, rng,
    row_ids=None)`: prompt_ids [B, P'] and guidance_ids [B, L'] right-padded, lengths [B]
    (host arrays); guidance_lengths are ℓ_i per candidate (0 = unguided; at most the trace
    length). Row i samples with the stream fold_in(rng, row_ids[i]) (default: i), so a row
    draws the same tokens wherever it sits in the batch. Returns a SampleOutput on device.

    With a row `sharding` (over all processes' devices) the host arrays are this process's
    rows of one global batch, and the outputs are global arrays with rows split the same way.
    """

    def __init__(
        self, graphdef: nnx.GraphDef, config: SamplingConfig, tokens: TokenIds, sharding=None
    ):
        self.config, self.tokens, self.sharding = config, tokens, sharding
        self._sample = jax.jit(
            lambda *args: _sample(graphdef, config, tokens, *args), out_shardings=sharding
        )

    @property
    def num_compiled(self) -> int:
        """How many programs this sampler has compiled (one per shape bucket seen)."""
        return self._sample._cache_size()

    def __call__(
        self, params, prompt_ids, prompt_lengths, guidance_ids, guidance_lengths, rng, row_ids=None
    ):
        cfg = self.config
        prompt_lengths = np.asarray(prompt_lengths, np.int32)
        guidance_lengths = np.asarray(guidance_lengths, np.int32)
        if prompt_lengths.min() < 1:
            raise ValueError("every prompt needs at least one token")
        rows = len(prompt_lengths)
        batch = -(-rows // cfg.batch_multiple) * cfg.batch_multiple
        P = bucket(int(prompt_lengths.max()), cfg.min_bucket)
        L = bucket(int(guidance_lengths.max()), cfg.min_bucket)

        def rows_of(array, width, fill):
            out = np.full((batch, width), fill, np.int32)
            array = np.asarray(array)[:, :width]
            out[:rows, : array.shape[1]] = array
            return out

        def lengths_of(lengths, fill):
            return np.concatenate([lengths, np.full(batch - rows, fill, np.int32)])

        if batch != rows and jax.process_count() > 1:
            raise ValueError(
                f"{rows} rows per process: a multi-process batch needs a multiple "
                f"of batch_multiple={cfg.batch_multiple} on every process"
            )
        row_ids = np.arange(rows) if row_ids is None else np.asarray(row_ids)
        # Padding rows: a one-token prompt, no guidance; their outputs are dropped.
        args = (
            rows_of(prompt_ids, P, self.tokens.pad),
            lengths_of(prompt_lengths, 1),
            rows_of(guidance_ids, L, self.tokens.pad),
            lengths_of(guidance_lengths, 0),
            np.concatenate([row_ids, np.arange(batch - rows) + row_ids.max() + 1]).astype(
                np.uint32
            ),
        )
        if self.sharding is None:
            args = jax.device_put(args)
        else:
            args = [jax.make_array_from_process_local_data(self.sharding, a) for a in args]
        out = self._sample(params, *args, rng)
        return _first_rows(out, rows) if batch != rows else out


def rollout_params(params: nnx.State, config: SamplingConfig) -> nnx.State:
    """The weights a rollout reads: `params` themselves (float32), or a copy of their
    floating-point leaves in `config.param_dtype`, made once per step on the same devices;
    the float32 masters are left as they are."""
    if config.param_dtype == "float32":
        return params
    return _cast_floats(params, jnp.dtype(config.param_dtype))


@functools.partial(jax.jit, static_argnums=1)
def _cast_floats(tree, dtype):
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


@functools.partial(jax.jit, static_argnums=1)
def _first_rows(tree, rows: int):
    """Drops the padding rows on device (slicing outside jit would transfer the indices)."""
    return jax.tree.map(lambda x: x[:rows], tree)


# Samplers shared by every run in a process (tests, repeated evaluations): one compile each.
_SAMPLERS: dict = {}


def sampler_for(
    graphdef: nnx.GraphDef, config: SamplingConfig, tokens: TokenIds, sharding=None
) -> Sampler:
    """The Sampler of these settings, built once per process."""
    key = (graphdef, config, tokens, sharding)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = Sampler(graphdef, config, tokens, sharding)
    return _SAMPLERS[key]
