"""DAPO's dynamic sampling: which groups a filtered batch keeps, and how draws combine."""

import numpy as np
import pytest

from g2rpo_jax import dynamic_sampling

G = 2


def draw(rewards, prompt_width: int, first_id: int) -> dict:
    """Host rows of one sampler call: len(rewards) // G groups, prompts left-padded."""
    rows = len(rewards)
    prompt_mask = np.zeros((rows, prompt_width), bool)
    prompt_mask[:, -1] = True
    return {
        "prompt_ids": np.where(prompt_mask, first_id + np.arange(rows)[:, None], 7),  # pad_id 7
        "prompt_mask": prompt_mask,
        "completion_ids": np.full((rows, 3), first_id, np.int32),
        "completion_mask": np.ones((rows, 3), bool),
        "rewards": np.asarray(rewards, np.float32),
        "is_filler": np.zeros(rows, bool),
    }


def test_untied_groups_first_then_tied_filler_with_widths_padded():
    first = draw([1.0, 1.0, 0.0, 1.0], prompt_width=2, first_id=10)  # tied, untied
    second = draw([0.0, 0.0, 0.5, 0.5], prompt_width=4, first_id=20)  # tied, tied
    rows, counts = dynamic_sampling.take_groups([first, second], 3, G, pad_id=7)
    # The one untied group, then tied groups in draw order as filler.
    np.testing.assert_array_equal(rows["rewards"], [0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(rows["is_filler"], [0, 0, 1, 1, 1, 1])
    assert rows["prompt_ids"].shape == (6, 4)  # the widest draw's; padding on the left
    np.testing.assert_array_equal(rows["prompt_ids"][0], [7, 7, 7, 12])
    np.testing.assert_array_equal(rows["prompt_mask"][0], [0, 0, 0, 1])
    assert counts == {"filter/extra_sampler_calls": 1.0, "filter/sampled_zero_std": 0.75,
                      "filter/dropped_groups": 1.0, "filter/unused_groups": 0.0,
                      "filter/filler_groups": 2.0}  # fmt: skip


def test_enough_untied_groups_leave_no_filler_and_drop_the_surplus():
    first = draw([0.0, 1.0, 2.0, 2.0], prompt_width=2, first_id=10)
    second = draw([0.0, 1.0, 1.0, 0.0], prompt_width=2, first_id=20)
    rows, counts = dynamic_sampling.take_groups([first, second], 2, G, pad_id=7)
    np.testing.assert_array_equal(rows["prompt_ids"][:, -1], [10, 11, 20, 21])
    assert not rows["is_filler"].any()
    assert counts["filter/unused_groups"] == 1.0 and counts["filter/dropped_groups"] == 1.0


def test_host_numbers_add_up_over_draws_and_means_average():
    hosts = [
        {
            "time/sample_s": 1.0,
            "generated_tokens": 5.0,
            "rows": [0, 1],
            "reward/format": 0.2,
            "guidance/groups_guided": 0.5,
            "guidance/trace_tokens": 10.0,
        },
        {
            "time/sample_s": 2.0,
            "generated_tokens": 7.0,
            "rows": [2, 3],
            "reward/format": 0.4,
            "guidance/groups_guided": 1.0,
            "guidance/trace_tokens": 20.0,
        },
    ]
    merged = dynamic_sampling.merge_host(hosts)
    assert merged.pop("reward/format") == pytest.approx(0.3)
    assert merged == {
        "time/sample_s": 3.0,
        "generated_tokens": 12.0,
        "rows": [0, 1, 2, 3],
        "guidance/groups_guided": 0.75,
        "guidance/trace_tokens": 30.0,
    }
