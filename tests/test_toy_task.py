"""The toy task: trace generator, exact verifier, tokenizer, data rows and rewards."""

import json
import re

import numpy as np
import pytest

from g2rpo_jax.data import DataConfig, load_rows
from g2rpo_jax.rewards import accuracy_reward, format_reward, parse_gold
from g2rpo_jax.toy import sft, task
from g2rpo_jax.toy.data import Encoder, read_problems, write_jsonl
from g2rpo_jax.toy.tokenizer import load_tokenizer, save_tokenizer

_STEP = re.compile(r"(\d)\+(\d)\+(\d)=(\d)(\d);")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return save_tokenizer(str(tmp_path_factory.mktemp("toy_tokenizer")))


def _problems(seed=0, count=300, digits=(1, 2, 3, 4, 5, 6)):
    return task.make_problems(seed, count, digits)


def test_worked_example():
    p = task.Problem(365, 141, 3)
    assert p.prompt == "563+141="
    assert p.answer == "605"
    assert p.trace == "<think>5+1+0=06;6+4+0=10;3+1+1=05;</think>\n<answer>605</answer>"
    final_carry = task.Problem(99, 99, 2)
    assert final_carry.answer == "891"  # 198, units digit first
    assert final_carry.trace.startswith("<think>9+9+0=18;9+9+1=19;</think>")


def test_every_trace_is_correct_step_by_step():
    for p in _problems():
        assert task.is_correct(p, p.trace)
        assert int(p.answer[::-1]) == p.a + p.b
        steps = _STEP.findall(p.trace)
        assert len(steps) == p.digits
        carry = 0
        for i, (x, y, c, k, d) in enumerate(steps):
            assert (x, y) == (p.prompt[i], p.prompt[p.digits + 1 + i])
            assert int(c) == carry and int(x) + int(y) + carry == 10 * int(k) + int(d)
            carry = int(k)


def test_wrong_answers_fail():
    rng = np.random.default_rng(0)
    for p in _problems(count=100):
        i = int(rng.integers(len(p.answer)))
        wrong = p.answer[:i] + str((int(p.answer[i]) + 1) % 10) + p.answer[i + 1 :]
        assert not task.is_correct(p, f"<answer>{wrong}</answer>")
        assert not task.is_correct(p, f"<answer>{p.answer}0</answer>")
        assert not task.is_correct(p, p.trace.replace("<answer>", "<answr>"))
    # Exact, unlike math-verify: "15" is not "015" (a sum whose units digit is 0).
    p = task.Problem(255, 255, 3)
    assert p.answer == "015" and not task.is_correct(p, "<answer>15</answer>")
    assert task.is_correct(p, "junk <answer>9</answer> <answer> 015 </answer>")


def test_determinism_and_difficulty_knob():
    assert _problems(seed=3) == _problems(seed=3)
    assert _problems(seed=3) != _problems(seed=4)
    assert task.make_problems((1, 2), 50, 4) == task.make_problems((1, 2), 50, 4)
    for digits in (1, 2, 4, 7):
        for p in task.make_problems(digits, 50, digits):
            a, b = p.prompt[:-1].split("+")
            assert len(a) == len(b) == p.digits == digits
            if digits > 1:
                assert a[-1] != "0" and b[-1] != "0"  # the most significant digit
            assert task.parse_prompt(p.prompt) == p
            assert p.row()["difficulty"] == float(digits)
    mixed = task.make_problems(0, 400, (1, 4), weights=(0.9, 0.1))
    assert 10 < sum(p.digits == 4 for p in mixed) < 80
    held_out = set(task.make_problems(0, 50, 1))  # 1-digit: only 100 problems exist
    assert not held_out & set(task.make_problems(1, 200, 1, exclude=held_out))


def test_tokenizer_round_trip(tokenizer, tmp_path):
    reloaded = load_tokenizer(tokenizer.name_or_path)
    for p in _problems(count=50):
        text = p.prompt + p.trace
        ids = reloaded(text, add_special_tokens=False)["input_ids"]
        assert reloaded.unk_token_id not in ids
        assert reloaded.decode(ids) == text
        trace_ids = reloaded(p.trace, add_special_tokens=False)["input_ids"]
        assert len(trace_ids) == 10 * p.digits + 5 + (len(p.answer) > p.digits)
    eos = reloaded.eos_token_id
    assert reloaded.convert_ids_to_tokens(eos) == "<|im_end|>"
    tags = reloaded("<think></think><answer></answer>", add_special_tokens=False)["input_ids"]
    assert len(tags) == 4
    assert (
        reloaded.decode(tags + [eos], skip_special_tokens=True)
        == "<think></think><answer></answer>"
    )
    messages = [{"role": "user", "content": "563+141="}]
    rendered = reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "563+141="
    assert len(reloaded) == 23


def test_rewards_score_reference_completions_one():
    problems = _problems(count=100)
    prompts = [p.prompt for p in problems]
    traces = [p.trace for p in problems]
    assert accuracy_reward(prompts, traces, answer=[p.answer for p in problems]) == [1.0] * 100
    assert format_reward(prompts, traces) == [1.0] * 100
    wrong = [p.trace.replace(f"<answer>{p.answer}", f"<answer>{p.answer}9") for p in problems]
    assert accuracy_reward(prompts, wrong, answer=[p.answer for p in problems]) == [0.0] * 100


def test_jsonl_rows_load_through_the_data_pipeline(tmp_path):
    problems = _problems(count=20, digits=(4,))
    path = write_jsonl(str(tmp_path / "rows.jsonl"), problems)
    loaded = load_rows(DataConfig(path=path), parse_gold)
    assert [r.guidance for r in loaded.rows] == [p.trace for p in problems]
    assert [r.difficulty for r in loaded.rows] == [4.0] * 20
    assert read_problems(path) == problems
    with open(path) as f:
        assert set(json.loads(f.readline())) == {"prompt", "answer", "guidance", "difficulty"}


def test_sft_loss_mask_covers_trace_and_eos(tokenizer):
    encoder = Encoder(tokenizer)
    p = task.Problem(365, 141, 3)
    tokens, mask = encoder.sft_arrays([p], seq_len=48)
    n_prompt, n_trace = 8, 35
    assert mask[0].sum() == n_trace + 1
    targets = tokens[0, 1:][mask[0, :-1] == 1]
    assert tokenizer.decode(targets[:-1]) == p.trace and targets[-1] == encoder.eos_id
    assert (tokens[0, n_prompt + n_trace + 1 :] == encoder.pad_id).all()
    with pytest.raises(ValueError, match="does not fit"):
        sft.encode([1] * 10, [1] * 40, 2, 48, 0)
