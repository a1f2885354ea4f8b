"""Group-aware sampling equals the row-wise Sampler on the prompts repeated G times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from g2rpo_jax import guidance
from g2rpo_jax.models import attention, from_pretrained
from g2rpo_jax.rollout import GroupSampler, compact_widths
from g2rpo_jax.sampling import FINISH_EOS, FINISH_LENGTH, Sampler, SamplingConfig
from tests import tiny_models

G = 3
PROMPT_LENGTHS = np.array([5, 11, 3, 8])  # left-padded to one width inside the samplers
TRACE_LENGTHS = np.array([24, 5, 0, 12])  # with ℓ = 10: one trace shorter than ℓ, one none
ELL = 10
# Tokens the tiny models emit at different steps in different rows (asserted below), so
# rows end at different steps, some by EOS and some by length.
EOS_IDS = (13, 26, 29, 122)
# 28 tokens: two decode phases, so the rows' own cache grows once.
CONFIGS = {
    "greedy": SamplingConfig(max_completion_length=28, greedy=True, eos_ids=EOS_IDS),
    "sampled": SamplingConfig(max_completion_length=28, temperature=0.8, eos_ids=EOS_IDS),
}
FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "is_guidance",
          "num_generated", "finish_reason")  # fmt: skip


@pytest.fixture(scope="module", params=["hf_qwen3_dir", "hf_qwen2_dir"])
def loaded(request):
    model, _ = from_pretrained(request.getfixturevalue(request.param))
    graphdef, params = nnx.split(model)
    return graphdef, params, {"model": request.param}  # and the samplers built, by settings


def inputs(seed=0):
    rng = np.random.RandomState(seed)
    prompts = np.zeros((len(PROMPT_LENGTHS), 12), np.int32)
    for row, n in enumerate(PROMPT_LENGTHS):
        prompts[row, :n] = rng.randint(2, tiny_models.VOCAB, n)
    traces = rng.randint(2, tiny_models.VOCAB, (len(PROMPT_LENGTHS), 24)).astype(np.int32)
    for row, n in enumerate(TRACE_LENGTHS):
        traces[row, n:] = 0
    return prompts, traces


def group_sampler(loaded, mode: str, num_guided: int, compact: bool = True) -> GroupSampler:
    graphdef, _, built = loaded
    if (mode, num_guided, compact) not in built:
        built[mode, num_guided, compact] = GroupSampler(
            graphdef, CONFIGS[mode], G, num_guided, compact=compact
        )
    return built[mode, num_guided, compact]


def both(loaded, mode: str, num_guided: int, compact: bool = True, max_new_tokens=None):
    """The GroupSampler's output and the row-wise Sampler's on the prompts repeated G times
    (guidance planned by guidance.guidance_lengths, keys by row as the trainer's)."""
    graphdef, params, built = loaded
    prompts, traces = inputs()
    key = jax.random.key(5)
    row_ids = np.arange(len(PROMPT_LENGTHS) * G) + 100
    shared = group_sampler(loaded, mode, num_guided, compact)(
        params, prompts, PROMPT_LENGTHS, traces, TRACE_LENGTHS, ELL, key, row_ids=row_ids,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    lengths = guidance.guidance_lengths(TRACE_LENGTHS, np.int32(ELL), G, num_guided)
    if mode not in built:
        built[mode] = Sampler(graphdef, CONFIGS[mode])
    row_wise = built[mode](
        params, np.repeat(prompts, G, 0), np.repeat(PROMPT_LENGTHS, G, 0),
        np.repeat(traces, G, 0), np.asarray(lengths), key, row_ids=row_ids,
    )  # fmt: skip
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


@pytest.mark.parametrize(
    "mode,num_guided",
    [("sampled", 0), ("sampled", 1), ("sampled", G), ("greedy", 1)],
    ids=["sampled-alpha0", "sampled-alpha1/3", "sampled-alpha1", "greedy-alpha1/3"],
)
def test_shared_prefix_equals_row_wise(loaded, mode, num_guided):
    shared, row_wise = both(loaded, mode, num_guided)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(shared, field), getattr(row_wise, field), field)
    bound = log_prob_bound(mode, row_wise)
    np.testing.assert_allclose(shared.log_probs, row_wise.log_probs, rtol=0, atol=bound)
    # The cases the equality is meant to cover.
    planned = guidance.guidance_lengths(TRACE_LENGTHS, np.int32(ELL), G, num_guided)
    np.testing.assert_array_equal(shared.is_guidance.sum(1), planned)
    if num_guided == 1:
        assert {FINISH_EOS, FINISH_LENGTH} <= set(shared.finish_reason.tolist())
        assert len(set(shared.num_generated.tolist())) >= 3
    # The second phase (of 2) ran compacted where at most 8 of the 12 rows were live then.
    assert (shared.decode_steps >= shared.num_generated - 1).all()


# Per-row budgets: 0 (no token: the budget can run out before the first), 1, and the rest
# spread, so the second decode phase starts with few rows live.
MAX_NEW_TOKENS = np.array([28, 1, 0, 20, 3, 28, 5, 2, 9, 4, 12, 6])


def test_per_row_budgets_and_compaction_keep_the_tokens(loaded):
    """Each row ends at its budget with the tokens the row-wise Sampler drew up to there;
    compaction changes which rows each step computes, never what they get."""
    if loaded[2]["model"] != "hf_qwen3_dir":
        pytest.skip("budgets and compaction are the loop's, not the model's: one model")
    plain, row_wise = both(loaded, "sampled", 1, compact=False, max_new_tokens=MAX_NEW_TOKENS)
    compacted, _ = both(loaded, "sampled", 1, max_new_tokens=MAX_NEW_TOKENS)
    bound = log_prob_bound("sampled", row_wise)
    for out in (plain, compacted):
        stop = np.minimum(row_wise.num_generated, MAX_NEW_TOKENS)
        np.testing.assert_array_equal(out.num_generated, stop)
        ended_by_eos = (row_wise.finish_reason == FINISH_EOS) & (row_wise.num_generated <= stop)
        np.testing.assert_array_equal(out.finish_reason == FINISH_EOS, ended_by_eos)
        ends = out.is_guidance.sum(1) + stop
        for r, end in enumerate(ends):
            np.testing.assert_array_equal(
                out.completion_ids[r, :end], row_wise.completion_ids[r, :end]
            )
            assert (out.completion_ids[r, end:] == 0).all() and out.completion_mask[r].sum() == end
            np.testing.assert_allclose(
                out.log_probs[r, :end], row_wise.log_probs[r, :end], rtol=0, atol=bound
            )
    # Row-steps: without compaction every row is computed until the last one ends; with
    # it, the second phase (from step 14) computes only the smallest width that holds the
    # rows live then (fillers are finished rows, counted too).
    total = plain.decode_steps[0]
    assert (plain.decode_steps == total).all() and total > 14
    live = compacted.num_generated > 14
    width = min([w for w in compact_widths(len(live)) if w >= live.sum()], default=len(live))
    assert width < len(live)  # the case compacts
    assert compacted.decode_steps.sum() == 14 * len(live) + width * (total - 14)
    assert (compacted.decode_steps[live] == total).all()


def test_no_host_syncs_and_one_program_per_bucket(loaded):
    """ℓ changes every step; within one guidance bucket the program is compiled once."""
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
        GroupSampler(None, CONFIGS["greedy"], 3, 4)


def test_grouped_decode_equals_one_softmax_over_the_rows_prefix_and_own_slots():
    """attention.decode_grouped against attention.decode over each row's own copy of the
    slots it sees (its group's prefix, masked to its part, then its own cache)."""
    B, M, K, Gq, H, S, C = 2, 3, 2, 2, 16, 12, 8
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (B, M, K, Gq, H))
    prefix_k, own_k = (
        jax.random.normal(keys[1], (B, K, H, S)),
        jax.random.normal(keys[2], (B, M, K, H, C)),
    )
    prefix_v, own_v = (
        jax.random.normal(keys[3], (B, K, S, H)),
        jax.random.normal(keys[4], (B, M, K, C, H)),
    )
    # Left padding 0 and 4; per row its prefix ends at S (guided) or earlier (the prompt).
    ends = jnp.array([[S, S, 9], [S, 7, 7]])
    prefix_mask = (jnp.arange(S) >= jnp.array([0, 4])[:, None, None]) & (
        jnp.arange(S) < ends[..., None]
    )
    own_mask = jnp.ones((B, M, C), bool)
    slot = jnp.int32(5)  # own slots 0 … 5 filled, 6 and 7 not yet
    grouped = jax.jit(attention.decode_grouped)(
        q, prefix_k, prefix_v, prefix_mask, own_k, own_v, own_mask, slot
    )
    rows = lambda x: x.reshape(B * M, *x.shape[2:])
    per_row = lambda x: jnp.repeat(x, M, axis=0)
    k = jnp.concatenate([per_row(prefix_k), rows(own_k)], axis=-1)
    v = jnp.concatenate([per_row(prefix_v), rows(own_v)], axis=-2)
    # The own slots after `slot` stay masked: decode's causal edge at S + slot.
    mask = jnp.concatenate([rows(prefix_mask), rows(own_mask) & (jnp.arange(C) <= slot)], -1)
    expected = attention.decode(rows(q), k, v, mask, jnp.int32(S + C - 1))
    # Weights summing to 1 over n ≤ S + C values, summed in another order (two parts, then
    # their mix: 4 more roundings): ≤ (n + 4)·eps·max|v|.
    bound = (S + C + 4) * np.finfo(np.float32).eps * float(jnp.abs(v).max())
    np.testing.assert_allclose(rows(grouped), expected, rtol=0, atol=bound)
