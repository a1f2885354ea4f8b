"""The sampler: exact guided prefixes, transformers-equal greedy decoding, right sampling.

Compiles dominate this file's time (each Sampler program is a prefill and a decode loop per
phase), so tests share compiled Samplers through `sampler()` and reuse a few settings: greedy
at budget 40 (GREEDY), sampling at budget 24 (SAMPLED). What touches the model inside the
sampler (transformers parity, log-probs, decode phases) runs on both tiny models; the
sampler's own control logic (EOS, budget, filters, buckets, ℓ clipping), where the model is
only a source of logits, runs on Qwen3.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    Sampler,
    SamplingConfig,
    decode_phase_ends,
    rollout_params,
    sample_tokens,
)
from tests import tiny_models

# One pytest-xdist worker runs the whole file, so its compiled Samplers are shared.
pytestmark = pytest.mark.xdist_group("sampling")
PROMPT_LENGTHS = np.array([5, 11, 3, 8])


GREEDY = SamplingConfig(max_completion_length=40, greedy=True)
SAMPLED = SamplingConfig(max_completion_length=24)


NO_EOS = TokenIds()  # every row runs to its budget


@functools.cache
def sampler(graphdef, config: SamplingConfig, tokens: TokenIds = NO_EOS) -> Sampler:
    """One Sampler (and so one compiled program per bucket) per model and settings."""
    return Sampler(graphdef, config, tokens)


@functools.cache
def _split(directory: str):
    model, _ = from_pretrained(directory)
    return nnx.split(model)


@pytest.fixture(scope="module", params=["hf_qwen3_dir", "hf_qwen2_dir"])
def loaded(request):
    directory = request.getfixturevalue(request.param)
    return directory, *_split(directory)


@pytest.fixture(scope="module")
def qwen3(hf_qwen3_dir):
    return hf_qwen3_dir, *_split(hf_qwen3_dir)


def prompts_and_traces(seed=0, trace_width=24):
    rng = np.random.RandomState(seed)
    prompts = np.zeros((len(PROMPT_LENGTHS), 12), np.int32)
    for row, n in enumerate(PROMPT_LENGTHS):
        prompts[row, :n] = rng.randint(2, tiny_models.VOCAB, n)
    traces = rng.randint(2, tiny_models.VOCAB, (len(PROMPT_LENGTHS), trace_width)).astype(np.int32)
    return prompts, traces


def hf_greedy(hf, prefix, new_tokens):
    out = hf.generate(
        torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
        do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return out[0, len(prefix) :].numpy()


def test_greedy_and_guided_rows_equal_transformers(loaded):
    directory, graphdef, params = loaded
    budget = GREEDY.max_completion_length
    prompts, traces = prompts_and_traces()
    ells = np.array([0, 7, 0, 24])  # unguided rows generate all 40 tokens, guided 40 - ℓ
    out = jax.device_get(
        sampler(graphdef, GREEDY)(params, prompts, PROMPT_LENGTHS, traces, ells, jax.random.key(0))
    )
    hf = tiny_models.load_hf(directory)
    for row, (n, ell) in enumerate(zip(PROMPT_LENGTHS, ells, strict=True)):
        expected = hf_greedy(hf, list(prompts[row, :n]) + list(traces[row, :ell]), budget - ell)
        completion = out.completion_ids[row]
        np.testing.assert_array_equal(completion[:ell], traces[row, :ell])
        np.testing.assert_array_equal(completion[ell:budget], expected)
        np.testing.assert_array_equal(out.is_guidance[row], np.arange(budget) < ell)
        assert out.num_generated[row] == budget - ell
        assert out.finish_reason[row] == FINISH_LENGTH
        np.testing.assert_array_equal(out.prompt_ids[row][out.prompt_mask[row]], prompts[row, :n])


def test_zero_guidance_equals_unguided_row(qwen3):
    _, graphdef, params = qwen3
    greedy = sampler(graphdef, GREEDY)
    prompts, traces = prompts_and_traces()
    guided = greedy(params, prompts, PROMPT_LENGTHS, traces, [0, 5, 0, 3], jax.random.key(0))
    unguided = greedy(params, prompts, PROMPT_LENGTHS, traces[:, :0], [0] * 4, jax.random.key(0))
    for row in (0, 2):
        np.testing.assert_array_equal(guided.completion_ids[row], unguided.completion_ids[row])


def full_forward_log_probs(graphdef, params, out, temperature):
    """log softmax(logits / temperature) of a full forward over [prompt ⊕ completion]."""
    model = nnx.merge(graphdef, params)
    ids = jnp.concatenate([out.prompt_ids, out.completion_ids], axis=1)
    mask = jnp.concatenate([out.prompt_mask, out.completion_mask], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits = model(ids, positions, mask) / temperature
    log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    return np.asarray(picked[:, out.prompt_ids.shape[1] - 1 :])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_equal_a_full_forward(loaded, temperature):
    _, graphdef, params = loaded
    config = dataclasses.replace(SAMPLED, temperature=temperature)
    prompts, traces = prompts_and_traces()
    out = sampler(graphdef, config)(
        params, prompts, PROMPT_LENGTHS, traces, [0, 6, 3, 0], jax.random.key(1)
    )
    expected = full_forward_log_probs(graphdef, params, out, temperature)
    mask = np.asarray(out.completion_mask)
    assert mask.sum() == 4 * 24
    np.testing.assert_allclose(np.asarray(out.log_probs)[mask], expected[mask], atol=1e-4)


def test_decode_phases_change_nothing_but_the_cache_read(loaded):
    """One loop over the whole cache, or phases over caches grown as they fill: the same
    sampled tokens and log-probs, guided rows included."""
    _, graphdef, params = loaded
    prompts, traces = prompts_and_traces()
    one, three = (
        jax.device_get(
            sampler(graphdef, SamplingConfig(max_completion_length=40, decode_phases=n))(
                params, prompts, PROMPT_LENGTHS, traces, [0, 6, 3, 0], jax.random.key(2)
            )
        )
        for n in (1, 3)
    )
    np.testing.assert_array_equal(three.completion_ids, one.completion_ids)
    # Phases change only how many empty slots (exact zeros after the mask) the softmax and
    # PV sums run over, i.e. their fp32 summation order. A sum of S terms reordered moves by
    # at most S·eps relative (S ≤ 80 slots here, 2 layers); seen: 1.4e-6, ~3 ulps of a
    # log-prob near 7. A phase that reads a wrong slot moves log-probs by ~1e-2 and more.
    bound = 2 * 80 * np.finfo(np.float32).eps * np.abs(one.log_probs).max()
    np.testing.assert_allclose(three.log_probs, one.log_probs, rtol=0, atol=bound)


def test_decode_phase_ends():
    # 64 tokens take 63 model calls: the prefill's logits choose the first.
    assert decode_phase_ends(64, 4) == [16, 32, 48, 63]
    assert decode_phase_ends(64, 1) == [63]
    assert decode_phase_ends(40, 4) == [13, 26, 39]  # phases of at least MIN_PHASE_STEPS
    assert decode_phase_ends(24, 4) == [23]
    assert decode_phase_ends(1, 4) == []
    with pytest.raises(ValueError, match="decode_phases=0"):
        SamplingConfig(max_completion_length=8, decode_phases=0)


def test_eos_stops_a_row_and_ends_its_mask(qwen3):
    _, graphdef, params = qwen3
    prompts, traces = prompts_and_traces()
    free = jax.device_get(
        sampler(graphdef, GREEDY)(
            params, prompts, PROMPT_LENGTHS, traces, [0, 4, 0, 0], jax.random.key(0)
        )
    )
    eos = int(free.completion_ids[0, 6])  # a token row 0 emits at step 6
    out = jax.device_get(
        sampler(graphdef, GREEDY, TokenIds(eos=(eos,), pad=0))(params, prompts, PROMPT_LENGTHS, traces, [0, 4, 0, 0],
                                  jax.random.key(0))
    )  # fmt: skip
    for row in range(4):
        generated = free.completion_ids[row, 4 if row == 1 else 0 :]
        hits = np.flatnonzero(generated == eos)
        if hits.size:
            stop = (4 if row == 1 else 0) + hits[0] + 1  # through the EOS
            assert out.finish_reason[row] == FINISH_EOS
            np.testing.assert_array_equal(
                out.completion_ids[row, :stop], free.completion_ids[row, :stop]
            )
            assert out.completion_mask[row].sum() == stop and out.completion_mask[row, :stop].all()
            assert (out.completion_ids[row, stop:] == 0).all()
        else:
            assert out.finish_reason[row] == FINISH_LENGTH
            assert out.completion_mask[row].all()
    assert out.finish_reason[0] == FINISH_EOS


def test_budget_can_exclude_guidance(qwen3):
    _, graphdef, params = qwen3
    prompts, traces = prompts_and_traces()
    config = SamplingConfig(max_completion_length=10, greedy=True, guidance_in_budget=False)
    out = Sampler(graphdef, config, TokenIds())(params, prompts, PROMPT_LENGTHS, traces, [0, 6, 0, 20],
                                    jax.random.key(0))  # fmt: skip
    np.testing.assert_array_equal(out.num_generated, [10, 10, 10, 10])
    np.testing.assert_array_equal(np.asarray(out.completion_mask).sum(1), [10, 16, 10, 30])


def test_top_k_one_and_low_temperature_equal_greedy(qwen3):
    _, graphdef, params = qwen3
    prompts, traces = prompts_and_traces()
    args = (params, prompts, PROMPT_LENGTHS, traces, [0, 3, 0, 0], jax.random.key(3))
    greedy = Sampler(graphdef, SamplingConfig(max_completion_length=12, greedy=True), TokenIds())(
        *args
    )
    for config in (SamplingConfig(max_completion_length=12, top_k=1),
                   SamplingConfig(max_completion_length=12, temperature=1e-4)):  # fmt: skip
        np.testing.assert_array_equal(Sampler(graphdef, config, TokenIds())(*args).completion_ids,
                                      greedy.completion_ids)  # fmt: skip


def first_step_frequencies(logits, config, n=40_000):
    keys = jax.random.split(jax.random.key(7), n)
    tokens, _ = jax.jit(sample_tokens, static_argnums=3)(jnp.tile(logits, (n, 1)), keys, 0, config)
    return np.bincount(np.asarray(tokens), minlength=logits.shape[-1]) / n


def test_sampled_frequencies_match_softmax():
    logits = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
    for temperature in (1.0, 0.6):
        freq = first_step_frequencies(logits, SamplingConfig(1, temperature=temperature))
        probs = np.asarray(jax.nn.softmax(logits / temperature))
        assert 0.5 * np.abs(freq - probs).sum() < 0.01  # total variation


def test_top_p_and_top_k_never_leave_their_set():
    logits = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
    probs = np.asarray(jax.nn.softmax(logits))
    order = np.argsort(-probs)
    nucleus = order[: np.searchsorted(np.cumsum(probs[order]), 0.8) + 1]
    freq = first_step_frequencies(logits, SamplingConfig(1, top_p=0.8))
    assert set(np.flatnonzero(freq)) == set(nucleus)
    renormalized = probs[nucleus] / probs[nucleus].sum()
    assert 0.5 * np.abs(freq[nucleus] - renormalized).sum() < 0.01
    freq = first_step_frequencies(logits, SamplingConfig(1, top_k=3))
    assert set(np.flatnonzero(freq)) == set(order[:3])


def test_no_host_syncs_and_one_program_per_bucket(qwen3):
    _, graphdef, params = qwen3
    sampled = Sampler(graphdef, SAMPLED, TokenIds())  # its own: the test counts its programs
    prompts, traces = prompts_and_traces(trace_width=60)
    params = jax.device_put(params)
    rng = np.random.RandomState(0)
    keys = list(jax.random.split(jax.random.key(0), 12))  # unstacked outside the guard
    with jax.transfer_guard("disallow"):
        for step in range(12):
            ell = int(rng.randint(0, 61))
            ells = np.array([ell, 0, ell, min(ell, 5)])
            sampled(params, prompts, PROMPT_LENGTHS, traces, ells, keys[step])
    # prompt width is one bucket (16); guidance widths 0, 16, 32, 64: at most 4 programs
    assert sampled.num_compiled <= 4


def test_length_beyond_the_trace_uses_the_whole_trace(qwen3):
    """The guidance plan clips ℓ to each trace; the sampler then prefixes exactly that."""
    from g2rpo_jax import guidance

    directory, graphdef, params = qwen3
    prompts, traces = prompts_and_traces()
    trace_lengths = np.array([24, 5, 12, 9])
    ell = 10  # longer than two of the traces
    plan = np.asarray(guidance.guidance_lengths(trace_lengths, np.int32(ell), 1, 1))
    np.testing.assert_array_equal(plan, [10, 5, 10, 9])
    budget = GREEDY.max_completion_length
    out = jax.device_get(
        sampler(graphdef, GREEDY)(params, prompts, PROMPT_LENGTHS, traces, plan, jax.random.key(0))
    )
    hf = tiny_models.load_hf(directory)
    for row in (1, 3):  # whole trace, then the model continues from its end
        n, used = PROMPT_LENGTHS[row], plan[row]
        np.testing.assert_array_equal(out.completion_ids[row, :used], traces[row, :used])
        expected = hf_greedy(hf, list(prompts[row, :n]) + list(traces[row, :used]), budget - used)
        np.testing.assert_array_equal(out.completion_ids[row, used:], expected)


def test_bf16_rollout_weights_are_a_copy_and_the_masters_stay(loaded):
    _, _, params = loaded
    masters = jax.device_get(params)
    config = SamplingConfig(max_completion_length=8, param_dtype="bfloat16")
    copy = jax.device_get(rollout_params(params, config))
    for master, now, rollout in zip(jax.tree.leaves(masters), jax.tree.leaves(params),
                                    jax.tree.leaves(copy), strict=True):  # fmt: skip
        assert master.dtype == now.dtype == np.float32 and rollout.dtype == jnp.bfloat16
        np.testing.assert_array_equal(now, master)
        np.testing.assert_array_equal(rollout, master.astype(jnp.bfloat16))
    assert rollout_params(params, SamplingConfig(max_completion_length=8)) is params
    with pytest.raises(ValueError, match="param_dtype"):
        SamplingConfig(max_completion_length=8, param_dtype="float16")
