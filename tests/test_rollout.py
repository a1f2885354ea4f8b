"""Group-aware sampling equals the row-wise Sampler on the prompts repeated G times."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from g2rpo_jax import guidance, rollout
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import attention, from_pretrained, group_cache
from g2rpo_jax.rollout import GroupSampler
from g2rpo_jax.rollout_decode import compact_widths
from g2rpo_jax.sampling import FINISH_EOS, FINISH_LENGTH, Sampler, SamplingConfig
from tests import tiny_models

G = 3
PROMPT_LENGTHS = np.array([5, 11, 3, 8])  # left-padded to one width inside the samplers
TRACE_LENGTHS = np.array([24, 5, 0, 12])  # with ℓ = 10: one trace shorter than ℓ, one none
ELL = 10
# Tokens the tiny models emit at different steps in different rows (asserted below), so
# rows end at different steps, some by EOS and some by length.
TOKENS = TokenIds(eos=(13, 26, 29, 122))
# 28 tokens: two decode phases when sampled, so the rows' own cache grows once under
# compaction; one when greedy (less to compile).
CONFIGS = {
    "greedy": SamplingConfig(max_completion_length=28, greedy=True, decode_phases=1),
    "sampled": SamplingConfig(max_completion_length=28, temperature=0.8),
}
FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "is_guidance",
    "num_generated",
    "finish_reason",
)


pytestmark = pytest.mark.xdist_group("rollout")


@pytest.fixture(scope="module")
def models(request):
    """name → (graphdef, params, samplers built so far), each model loaded once."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            model, _ = from_pretrained(request.getfixturevalue(name))
            loaded[name] = (*nnx.split(model), {})
        return loaded[name]

    return get


def inputs(seed=0):
    rng = np.random.RandomState(seed)
    prompts = np.zeros((len(PROMPT_LENGTHS), 12), np.int32)
    for row, n in enumerate(PROMPT_LENGTHS):
        prompts[row, :n] = rng.randint(2, tiny_models.VOCAB, n)
    traces = rng.randint(2, tiny_models.VOCAB, (len(PROMPT_LENGTHS), 24)).astype(np.int32)
    for row, n in enumerate(TRACE_LENGTHS):
        traces[row, n:] = 0
    return prompts, traces


def group_sampler(loaded, mode: str, num_guided: int) -> GroupSampler:
    """GroupSamplers of one config share their compiled programs (any α)."""
    graphdef, _, built = loaded
    if (mode, num_guided) not in built:
        built[mode, num_guided] = GroupSampler(graphdef, CONFIGS[mode], TOKENS, G, num_guided)
    return built[mode, num_guided]


def both(loaded, mode: str, num_guided: int, max_new_tokens=None):
    """The GroupSampler's output and the row-wise Sampler's on the prompts repeated G times
    (guidance planned by guidance.guidance_lengths, keys by row as the trainer's)."""
    graphdef, params, built = loaded
    prompts, traces = inputs()
    key = jax.random.key(5)
    row_ids = np.arange(len(PROMPT_LENGTHS) * G) + 100
    shared = group_sampler(loaded, mode, num_guided)(
        params,
        prompts,
        PROMPT_LENGTHS,
        traces,
        TRACE_LENGTHS,
        ELL,
        key,
        row_ids=row_ids,
        max_new_tokens=max_new_tokens,
    )
    lengths = guidance.guidance_lengths(TRACE_LENGTHS, np.int32(ELL), G, num_guided)
    if mode not in built:
        built[mode] = Sampler(graphdef, CONFIGS[mode], TOKENS)
    row_wise = built[mode](
        params,
        np.repeat(prompts, G, 0),
        np.repeat(PROMPT_LENGTHS, G, 0),
        np.repeat(traces, G, 0),
        np.asarray(lengths),
        key,
        row_ids=row_ids,
    )
    return jax.device_get(shared), jax.device_get(row_wise)


def log_prob_bound(mode: str, row_wise) -> float:
    """The two differ only in fp32 summation order: which exact-zero weights of masked slots
    a softmax sum runs over (the prefill), and one softmax over S = W + C slots against two
    over W and C merged by their log-sum-exp (the decode; a compacted phase reads the same
    slots). A sum of S terms in another order moves by at most S·eps relative; with 2
    layers and log-probs the difference of two such sums, ≤ 2·S·eps·max|log-prob|,
    S = 32 + 28 slots: ~9e-5. Seen: ≤ 2.2e-6. A row that reads a wrong slot or the wrong
    part of the prefix moves them by ~1e-2."""
    slots = 32 + CONFIGS[mode].max_completion_length
    return 2 * slots * np.finfo(np.float32).eps * np.abs(row_wise.log_probs).max()


# Qwen3 (q/k norm) sampled at α = ⅓ and 1 (one program: α is data); Qwen2 (bias) greedy
# at α = 0 (no guidance bucket). Four compiles in all, two per side.
@pytest.mark.parametrize(
    "model,mode,num_guided",
    [("hf_qwen3_dir", "sampled", 1), ("hf_qwen3_dir", "sampled", G), ("hf_qwen2_dir", "greedy", 0)],
    ids=["qwen3-sampled-alpha1/3", "qwen3-sampled-alpha1", "qwen2-greedy-alpha0"],
)
def test_shared_prefix_equals_row_wise(models, model, mode, num_guided):
    shared, row_wise = both(models(model), mode, num_guided)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(shared, field), getattr(row_wise, field), field)
    bound = log_prob_bound(mode, row_wise)
    np.testing.assert_allclose(shared.log_probs, row_wise.log_probs, rtol=0, atol=bound)
    # The cases the equality is meant to cover.
    planned = guidance.guidance_lengths(TRACE_LENGTHS, np.int32(ELL), G, num_guided)
    np.testing.assert_array_equal(shared.is_guidance.sum(1), planned)
    assert {FINISH_EOS, FINISH_LENGTH} <= set(shared.finish_reason.tolist())
    # Rows end at different steps (a greedy group's unguided rows are one row G times).
    assert len(set(shared.num_generated.tolist())) >= (3 if mode == "sampled" else 2)
    # Compaction: a row is computed at least while it is live.
    assert (shared.decode_steps >= shared.num_generated - 1).all()


# Per-row budgets: 0 (no token: the budget can run out before the first), 1, and the rest
# spread, so the second decode phase starts with few rows live.
MAX_NEW_TOKENS = np.array([28, 1, 0, 20, 3, 28, 5, 2, 9, 4, 12, 6])


def test_per_row_budgets_and_compaction_keep_the_tokens(models):
    """Each row ends at its budget with the tokens the row-wise Sampler drew up to there;
    compaction changes which rows each step computes, never what they get."""
    out, row_wise = both(models("hf_qwen3_dir"), "sampled", 1, max_new_tokens=MAX_NEW_TOKENS)
    bound = log_prob_bound("sampled", row_wise)
    stop = np.minimum(row_wise.num_generated, MAX_NEW_TOKENS)
    np.testing.assert_array_equal(out.num_generated, stop)
    ended_by_eos = (row_wise.finish_reason == FINISH_EOS) & (row_wise.num_generated <= stop)
    np.testing.assert_array_equal(out.finish_reason == FINISH_EOS, ended_by_eos)
    ends = out.is_guidance.sum(1) + stop
    for r, end in enumerate(ends):
        np.testing.assert_array_equal(out.completion_ids[r, :end], row_wise.completion_ids[r, :end])
        assert (out.completion_ids[r, end:] == 0).all() and out.completion_mask[r].sum() == end
        np.testing.assert_allclose(
            out.log_probs[r, :end], row_wise.log_probs[r, :end], rtol=0, atol=bound
        )
    # Row-steps: the loop runs T steps (the last token is only chosen); step t computes the
    # smallest width that holds the rows live then (fillers are finished rows, counted
    # too), where a static batch computes all R. A row generating n tokens is live at t < n.
    R = len(MAX_NEW_TOKENS)
    T = min(out.num_generated.max(), CONFIGS["sampled"].max_completion_length - 1)
    live_t = (out.num_generated[None] > np.arange(T)[:, None]).sum(1)
    width_t = [min([w for w in compact_widths(R) if w >= n], default=R) for n in live_t]
    assert out.decode_steps.sum() == sum(width_t) < R * T / 2


def test_no_host_syncs_and_one_program_per_bucket(models):
    """ℓ changes every step; within one guidance bucket the program is compiled once."""
    loaded = models("hf_qwen3_dir")
    _, params, _ = loaded
    sampler = group_sampler(loaded, "sampled", 1)
    prompts, traces = inputs()
    params = jax.device_put(params)
    keys = list(jax.random.split(jax.random.key(0), 3))  # unstacked outside the guard
    before = sampler.num_compiled
    with jax.transfer_guard("disallow"):
        for ell, key in zip((9, 16, 12), keys, strict=True):  # ℓ′ ≤ 16: the bucket L = 16
            sampler(params, prompts, PROMPT_LENGTHS, traces, TRACE_LENGTHS, ell, key)
    assert sampler.num_compiled <= max(before, 1)


def test_num_guided_is_checked():
    with pytest.raises(ValueError, match="num_guided=4"):
        GroupSampler(None, CONFIGS["greedy"], TOKENS, 3, 4)


def test_grouped_decode_equals_one_softmax_over_the_rows_prefix_and_own_slots():
    """group_cache.attend against attention.decode over each row's own copy of the
    slots it sees (its group's prefix, masked to its part, then its own cache)."""
    B, M, K, Gq, H, S, C = 2, 3, 2, 2, 16, 12, 8
    rng = np.random.default_rng(0)  # numpy: eager jax ops would each compile
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    q, prefix_k, own_k = normal(B, M, K, Gq, H), normal(B, K, H, S), normal(B, M, K, H, C)
    prefix_v, own_v = normal(B, K, S, H), normal(B, M, K, C, H)
    # Left padding 0 and 4; per row its prefix ends at S (guided) or earlier (the prompt).
    ends = np.array([[S, S, 9], [S, 7, 7]])
    prefix_mask = (np.arange(S) >= np.array([0, 4])[:, None, None]) & (
        np.arange(S) < ends[..., None]
    )
    own_mask = np.ones((B, M, C), bool)
    slot = 5  # own slots 0 … 5 filled, 6 and 7 not yet
    grouped = jax.jit(group_cache.attend)(
        q, prefix_k, prefix_v, prefix_mask, own_k, own_v, own_mask, np.int32(slot)
    )
    rows = lambda x: x.reshape(B * M, *x.shape[2:])
    per_row = lambda x: np.repeat(x, M, axis=0)
    k = np.concatenate([per_row(prefix_k), rows(own_k)], axis=-1)
    v = np.concatenate([per_row(prefix_v), rows(own_v)], axis=-2)
    # The own slots after `slot` stay masked: decode's causal edge at S + slot.
    mask = np.concatenate([rows(prefix_mask), rows(own_mask) & (np.arange(C) <= slot)], -1)
    expected = jax.jit(attention.decode)(rows(q), k, v, mask, np.int32(S + C - 1))
    # Weights summing to 1 over n ≤ S + C values, summed in another order (two parts, then
    # their mix: 4 more roundings): ≤ (n + 4)·eps·max|v|.
    bound = (S + C + 4) * np.finfo(np.float32).eps * float(np.abs(v).max())
    np.testing.assert_allclose(rows(np.asarray(grouped)), expected, rtol=0, atol=bound)


def test_sampler_for_picks_by_the_switches_and_row_wise_gets_the_plan():
    """share_prefix → GroupSampler; compact alone → groups of one row; neither → the
    row-wise Sampler on the prompts repeated G times with guidance.guidance_lengths."""
    config = CONFIGS["sampled"]
    pick = lambda **switches: rollout.sampler_for(
        None, dataclasses.replace(config, **switches), TOKENS, G, 1
    )
    assert isinstance(pick(), GroupSampler) and pick().G == G
    one_row = pick(share_prefix=False)
    assert isinstance(one_row, rollout.OneRowGroups) and one_row.sampler.G == 1
    row_wise = pick(share_prefix=False, compact=False)
    assert isinstance(row_wise, rollout.RowWise)
    seen = []
    row_wise.sampler = lambda *args, **kw: seen.append((args, kw))
    prompts, traces = inputs()
    row_wise("params", prompts, PROMPT_LENGTHS, traces, TRACE_LENGTHS, ELL, "rng", row_ids=[7])
    (params, ids, lengths, trace_ids, planned, rng), kw = seen[0]
    np.testing.assert_array_equal(ids, np.repeat(prompts, G, 0))
    np.testing.assert_array_equal(lengths, np.repeat(PROMPT_LENGTHS, G))
    np.testing.assert_array_equal(trace_ids, np.repeat(traces, G, 0))
    np.testing.assert_array_equal(
        planned, guidance.guidance_lengths(TRACE_LENGTHS, np.int32(ELL), G, 1)
    )
    assert (params, rng, kw) == ("params", "rng", {"row_ids": [7]})
