"""guidance.when = unguided_failed: the plan from the unguided rewards, the two sampler calls
of BatchRollout and how their rows are put back (g2rpo_jax.guidance_on_failure).

The rollout runs on a stand-in sampler that follows GroupSampler's plan (the first n slots
of a group get min(ℓ, trace length) trace tokens, a row with budget 0 generates nothing),
so no model compiles here; the real sampler's budgets and zero-length traces are
tests/test_rollout.py's, and an end-to-end run with resume is test_trainer's filtered run.
"""

import dataclasses

import jax
import numpy as np
import pytest

from g2rpo_jax import config as config_lib
from g2rpo_jax import experiment, guidance, sharding, train_step, trainer
from g2rpo_jax import guidance_on_failure as on_failure
from g2rpo_jax.batch_rollout import BatchRollout
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.rewards.pool import Rewards
from g2rpo_jax.sampling import FINISH_EOS, FINISH_LENGTH, SampleOutput

G, N = 4, 2  # α = ½: slots 0 and 1 of each group are guided
ELL = 10
# Group 0: an unguided candidate (slot 3) is correct. Groups 1–3: every unguided one fails;
# group 1's trace is shorter than ℓ, group 2 has none, group 3's is longer.
TRACES = np.array([8, 5, 0, 30])
CORRECT_UNGUIDED = {3}  # row ids i·G + j that answer correctly without guidance
GUIDE, RIGHT, WRONG = ord("g"), ord("Y"), ord("N")


def test_the_plan_guides_only_groups_whose_unguided_candidates_all_failed():
    accuracy = np.zeros(len(TRACES) * G, np.float32)
    accuracy[3] = 1.0  # group 0, an unguided slot
    accuracy[4 + 0] = 1.0  # group 1, a guided slot: not read
    accuracy[12 + 2] = 0.5  # group 3, unguided, partly right (code: a fraction of tests)
    planned = on_failure.plan_trace_lengths(TRACES, accuracy, G, N)
    np.testing.assert_array_equal(planned, [0, 5, 0, 0])
    # The guidance plan on those lengths: min(ℓ, trace) on the guided slots of group 1 only.
    lengths = guidance.guidance_lengths(planned, np.int32(ELL), G, N)
    np.testing.assert_array_equal(
        np.asarray(lengths).reshape(-1, G)[:, :N], [[0, 0], [5, 5], [0, 0], [0, 0]]
    )
    # No unguided slot (α = 1) reads as every unguided candidate failed: all guided.
    np.testing.assert_array_equal(on_failure.plan_trace_lengths(TRACES, accuracy, G, G), TRACES)


def test_merged_rows_take_the_guided_slots_from_the_second_call_and_pad_the_narrower():
    R = 2 * G

    def output(value: int, width: int) -> SampleOutput:
        ones = np.ones((R, width), np.int32)
        return SampleOutput(
            prompt_ids=np.full((R, 3), value, np.int32),
            prompt_mask=np.ones((R, 3), bool),
            completion_ids=ones * value,
            completion_mask=ones.astype(bool),
            is_guidance=ones.astype(bool),
            log_probs=-ones.astype(np.float32),
            num_generated=np.full(R, value, np.int32),
            finish_reason=np.zeros(R, np.int32),
        )

    merged = jax.device_get(on_failure.merge_rows(output(2, 6), output(1, 4), G, N, 9))
    guided = np.arange(R) % G < N
    np.testing.assert_array_equal(merged.num_generated, np.where(guided, 2, 1))
    np.testing.assert_array_equal(merged.prompt_ids[:, 0], np.where(guided, 2, 1))
    assert merged.completion_ids.shape == (R, 6)
    np.testing.assert_array_equal(merged.completion_ids[~guided], [[1, 1, 1, 1, 9, 9]] * 4)
    np.testing.assert_array_equal(merged.completion_mask[~guided, 4:], False)
    np.testing.assert_array_equal(merged.log_probs[~guided, 4:], 0.0)


class PlanSampler:
    """GroupSampler's plan without a model: a guided slot's completion is its ℓ′ = min(ℓ,
    trace length) trace tokens and then 'Y' (the trace leads to the answer); an unguided
    one generates 'Y' when its row id is in CORRECT_UNGUIDED, else 'N'; budget 0: nothing."""

    def __init__(self, rows_sharding):
        self.tokens, self.sharding, self.calls = TokenIds(eos=(1,), pad=0), rows_sharding, []

    def __call__(
        self,
        params,
        prompt_ids,
        prompt_lengths,
        trace_ids,
        trace_lengths,
        ell,
        rng,
        row_ids=None,
        max_new_tokens=None,
    ):
        self.calls.append((np.asarray(trace_lengths), max_new_tokens, np.asarray(row_ids)))
        R = len(row_ids)
        used = np.where(np.arange(R) % G < N, np.repeat(np.minimum(ell, trace_lengths), G), 0)
        budgets = np.full(R, 1) if max_new_tokens is None else np.asarray(max_new_tokens)
        right = (used > 0) | np.isin(row_ids, list(CORRECT_UNGUIDED))
        completion = np.zeros((R, 32), np.int32)
        for r in range(R):
            completion[r, : used[r]] = GUIDE
            completion[r, used[r]] = (RIGHT if right[r] else WRONG) if budgets[r] else 0
        generated = (budgets > 0).astype(np.int32)
        mask = np.arange(32)[None] < (used + generated)[:, None]
        put = lambda x: jax.device_put(x, self.sharding)
        return SampleOutput(
            prompt_ids=put(np.repeat(prompt_ids, G, 0)),
            prompt_mask=put(np.repeat(prompt_ids, G, 0) > 0),
            completion_ids=put(completion),
            completion_mask=put(mask),
            is_guidance=put(np.arange(32)[None] < used[:, None]),
            log_probs=put(np.zeros((R, 32), np.float32)),
            num_generated=put(generated),
            finish_reason=put(np.where(generated > 0, FINISH_EOS, FINISH_LENGTH)),
        )


class Characters:
    def batch_decode(self, rows, skip_special_tokens):
        return ["".join(map(chr, row)) for row in rows]


@dataclasses.dataclass
class EndsRight:
    """Accuracy 1 for a completion ending in 'Y'; no format reward."""

    scored: list = dataclasses.field(default_factory=list)

    def compute(self, prompts, completions, answer, tests):
        self.scored.append(list(completions))
        accuracy = np.array([float(c.endswith("Y")) for c in completions], np.float32)
        per_function = np.stack([accuracy, np.zeros_like(accuracy)], axis=1)
        return Rewards(("accuracy", "format"), per_function, accuracy, 0.0)


def rollout(when: str):
    """BatchRollout of a smoke experiment (B = 4, G = 4, α = ½) on PlanSampler, one step."""
    c = config_lib.smoke(config_lib.default_config())
    c.data.path = "train.jsonl"
    c.guidance.ratio, c.guidance.when = 0.5, when
    exp = experiment.build(c, num_devices=jax.device_count())
    mesh = sharding.make_mesh(exp.mesh_shape)
    sampler, pool = PlanSampler(train_step.batch_sharding(mesh)), EndsRight()
    batch = {
        "index": np.arange(4),
        "prompt_ids": np.full((4, 2), 5, np.int32),
        "prompt_length": np.full(4, 2),
        "guidance_ids": np.full((4, 30), GUIDE, np.int32),
        "guidance_length": TRACES,
        "prompt_text": ["p"] * 4,
        "answer": ["1"] * 4,
    }
    rows, host, _ = BatchRollout(exp, Characters(), sampler, pool, mesh)(None, batch, ELL, 0)
    return jax.device_get(rows), host, sampler.calls, pool.scored


def test_a_group_with_a_correct_unguided_candidate_gets_no_trace_tokens():
    rows, host, calls, scored = rollout("unguided_failed")
    guided = np.tile(np.arange(G) < N, 4)
    # Call 1: prompts only, the unguided slots generate. Call 2: the traces of the groups
    # that failed, the guided slots generate. Both key row j of prompt i on i·G + j.
    (traces_1, budgets_1, ids_1), (traces_2, budgets_2, ids_2) = calls
    np.testing.assert_array_equal(traces_1, 0)
    np.testing.assert_array_equal(traces_2, [0, 5, 0, 30])
    np.testing.assert_array_equal(budgets_1 > 0, ~guided)
    np.testing.assert_array_equal(budgets_2 > 0, guided)
    np.testing.assert_array_equal(ids_1, np.arange(16))
    np.testing.assert_array_equal(ids_2, np.arange(16))
    assert [len(s) for s in scored] == [8, 8]  # each row scored once, in its own call
    # Group 0: none; groups 1 and 3: min(ℓ, trace) on the guided slots; group 2 has no trace.
    tokens = rows["is_guidance"].sum(1).reshape(-1, G)
    np.testing.assert_array_equal(
        tokens, [[0, 0, 0, 0], [5, 5, 0, 0], [0, 0, 0, 0], [10, 10, 0, 0]]
    )
    # Each row from the call that generated it, with its own reward.
    completions = rows["completion_ids"][np.arange(16), rows["completion_mask"].sum(1) - 1]
    expected = np.where(guided & np.repeat([False, True, False, True], G), RIGHT, WRONG)
    expected[3] = RIGHT
    np.testing.assert_array_equal(completions, expected)
    np.testing.assert_array_equal(rows["accuracy"], expected == RIGHT)
    assert host["guidance/groups_guided"] == 0.5 and host["guidance/trace_tokens"] == 30.0


def test_always_guides_every_group_in_one_call():
    rows, host, calls, _ = rollout("always")
    assert len(calls) == 1 and calls[0][1] is None  # no per-row budgets: today's call
    tokens = rows["is_guidance"].sum(1).reshape(-1, G)
    np.testing.assert_array_equal(tokens[:, :N], [[8, 8], [5, 5], [0, 0], [10, 10]])
    assert host["guidance/groups_guided"] == 0.75 and host["guidance/trace_tokens"] == 46.0


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"when": "sometimes"}, r"config\.guidance\.when must be one of always, unguided_failed"),
        (
            {"when": "unguided_failed", "share_prefix": False, "compact": False},
            r"config\.guidance\.when: unguided_failed needs per-row budgets",
        ),
    ],
)
def test_bad_when_is_a_config_error_naming_the_field(changes, match):
    c = config_lib.smoke(config_lib.default_config())
    c.data.path = "train.jsonl"
    c.guidance.when = changes.pop("when")
    c.sampling.update(changes)
    with pytest.raises(config_lib.ConfigError, match=match):
        experiment.build(c, num_devices=jax.device_count())


def test_multi_process_runs_are_refused(monkeypatch):
    c = config_lib.smoke(config_lib.default_config())
    c.data.path, c.guidance.when = "train.jsonl", "unguided_failed"
    exp = experiment.build(c, num_devices=jax.device_count())
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(config_lib.ConfigError, match=r"config\.guidance\.when: .* single-process"):
        trainer._check_processes(exp)
