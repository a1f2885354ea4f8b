"""Part 2 of the toy study: corrupted and missing reference traces, the 5-digit held-out set."""

import os
import re

import numpy as np
import pytest

from g2rpo_jax import rewards
from g2rpo_jax.toy import data, demo, study, study_part3, task, traces
from g2rpo_jax.toy.data import Encoder, write_jsonl
from g2rpo_jax.toy.tokenizer import load_tokenizer

STEP = re.compile(r"(\d)\+(\d)\+(\d)=(\d)(\d);")


def _rows(n: int, digits: int = 4) -> list[dict]:
    return [p.row() for p in task.make_problems(7, n, digits)]


def _steps(trace: str) -> list[tuple[int, ...]]:
    thought = trace[trace.index(task.THINK) + len(task.THINK) : trace.index(task.END_THINK)]
    steps = [tuple(int(g) for g in m.groups()) for m in STEP.finditer(thought)]
    assert "".join(f"{a}+{b}+{c}={k}{d};" for a, b, c, k, d in steps) == thought
    return steps


@pytest.mark.parametrize("n, fraction", [(400, 0.3), (37, 0.3), (10, 0.0), (10, 1.0)])
def test_noisy_rows_corrupt_exactly_the_fraction(n, fraction):
    rows = _rows(n)
    noisy = traces.noisy_rows(rows, fraction, seed=3)
    changed = [i for i, (r, s) in enumerate(zip(rows, noisy, strict=True)) if r != s]
    assert len(changed) == round(fraction * n)
    for i in changed:  # only the trace changes; the gold answer stays right
        assert {k for k in rows[i] if rows[i][k] != noisy[i][k]} == {"guidance"}
    assert traces.noisy_rows(rows, fraction, seed=3) == noisy  # seeded
    if 0 < fraction < 1:
        assert traces.noisy_rows(rows, fraction, seed=4) != noisy


def test_a_corrupted_trace_is_one_wrong_carry_and_the_answer_that_follows():
    rows = _rows(200, digits=4) + _rows(50, digits=1) + [task.Problem(9999, 1, 4).row()]
    for clean, noisy in zip(rows, traces.noisy_rows(rows, 1.0, seed=0), strict=True):
        problem = task.parse_prompt(clean["prompt"])
        steps = _steps(noisy["guidance"])
        assert [(a, b) for a, b, *_ in steps] == [(a, b) for a, b, *_ in _steps(clean["guidance"])]
        wrong = [i for i, (a, b, c, k, _) in enumerate(steps) if k != (a + b + c) // 10]
        assert len(wrong) == 1  # one step writes the wrong carry ...
        carry = 0
        for a, b, c, k, d in steps:  # ... and every step adds the carry it was handed
            assert c == carry and d == (a + b + c) % 10
            carry = k
        answer = "".join(str(d) for *_, d in steps) + ("1" if carry else "")
        assert task.extract_answer(noisy["guidance"]) == answer != problem.answer
        assert not task.is_correct(problem, noisy["guidance"])  # the verifier rejects it
        assert task.is_correct(problem, clean["guidance"])


def test_corrupted_trace_rejects_a_step_out_of_range():
    with pytest.raises(ValueError, match="not one of the 4 steps"):
        traces.corrupted_trace(task.Problem(1234, 5678, 4), 4)


@pytest.mark.parametrize("n, fraction", [(400, 0.25), (9, 0.25)])
def test_covered_rows_keep_exactly_the_fraction(tmp_path, n, fraction):
    rows = _rows(n)
    covered = traces.covered_rows(rows, fraction, seed=0)
    kept = [i for i, r in enumerate(covered) if "guidance" in r]
    assert len(kept) == round(fraction * n)
    for i, (r, c) in enumerate(zip(rows, covered, strict=True)):
        assert c == (r if i in kept else {k: v for k, v in r.items() if k != "guidance"})
    assert len(data.traced_rows(write_jsonl(str(tmp_path / "covered.jsonl"), covered))) == len(kept)


def test_harder_set_is_disjoint_five_digit_and_exactly_verified():
    harder = study.harder_problems()
    assert len(harder) == 500 and {p.digits for p in harder} == {demo.RL_DIGITS + 1}
    assert all(10**4 <= x < 10**5 for p in harder for x in (p.a, p.b))
    sets = demo.problem_sets(demo.Recipe())
    assert not set(harder) & (set(sets["eval"]) | set(sets["calibration"]) | set(sets["train"]))
    assert study.harder_problems() == harder  # the same set for every run
    rng = np.random.default_rng(0)
    for p in harder:
        assert task.is_correct(p, p.trace)
        assert not task.is_correct(p, traces.corrupted_trace(p, int(rng.integers(p.digits))))
    # The exact verifier: a leading-zero or dropped-carry variant of the answer is wrong.
    p = next(p for p in harder if p.answer.endswith("1") and len(p.answer) == 6)
    assert not task.is_correct(p, f"<answer>{p.answer[:-1]}</answer>")
    assert task.is_correct(p, f"<answer>{p.answer}</answer>")
    # Every reference completion fits the harder evaluation's length, EOS included.
    encoder = Encoder(load_tokenizer(os.path.join(demo.DEMO_DIR, demo.MODEL_DIR)))
    longest = max(len(ids) for ids in encoder.ids([p.trace for p in harder]))
    assert longest + 1 <= study.HARDER_MAX_COMPLETION_LENGTH


HARD_STEP = re.compile(
    r"(\d)\+(\d)=(\d\d);(\d\d)\+(\d)=(\d)(\d);(\d)\+(\d)\+(\d)=(\d)(\d);(\d)(\d)=(\d)\+(\d)0;"
)


def test_a_hard_trace_is_the_same_sum_the_long_way_in_about_three_times_the_tokens():
    problems = [*task.make_problems(7, 60, 4), *task.make_problems(8, 10, 1)]
    problems += [task.Problem(9999, 1, 4), *study.harder_problems()[:10]]
    encoder = Encoder(load_tokenizer(os.path.join(demo.DEMO_DIR, demo.MODEL_DIR)))
    for p in problems:
        hard = traces.hard_trace(p)
        thought = hard[hard.index(task.THINK) + len(task.THINK) : hard.index(task.END_THINK)]
        steps = [tuple(int(g) for g in m.groups()) for m in HARD_STEP.finditer(thought)]
        assert len(steps) == p.digits and sum(
            len(m[0]) for m in HARD_STEP.finditer(thought)
        ) == len(thought)
        # The clean trace's steps, each by the longer route, every check consistent.
        for clean, (x, y, s, s2, c, k, d, c2, y2, x2, k2, d2, k3, d3, d4, k4) in zip(
            _steps(p.trace), steps, strict=True
        ):
            assert clean == (x, y, c, k, d) and s == s2 == x + y
            assert (c2, y2, x2, k2, d2, k3, d3, d4, k4) == (c, y, x, k, d, k, d, d, k)
        # Only the answer block is scored: it is the clean trace's, so both score alike.
        assert hard.endswith(p.trace[p.trace.index(task.END_THINK) :])
        assert task.is_correct(p, hard)
        clean_tokens, hard_tokens = (len(ids) for ids in encoder.ids([p.trace, hard]))
        assert hard_tokens - clean_tokens == 23 * p.digits  # 32 tokens a digit instead of 9
        if p.digits == demo.RL_DIGITS:
            assert 2.9 < hard_tokens / clean_tokens < 3.1
    prompts = [p.prompt for p in problems[:8]]
    hard = [traces.hard_trace(p) for p in problems[:8]]
    answers = [p.answer for p in problems[:8]]
    assert rewards.format_reward(prompts, hard) == [1.0] * 8
    assert rewards.accuracy_reward(prompts, hard, answer=answers) == [1.0] * 8


def test_hard_rows_change_only_the_traces_and_size_the_budgets(tmp_path):
    rows = _rows(400)
    hard = traces.hard_rows(rows)
    for r, h in zip(rows, hard, strict=True):
        assert {k for k in r if r[k] != h[k]} == {"guidance"}
        assert h["guidance"] == traces.hard_trace(task.parse_prompt(r["prompt"]))
    encoder = Encoder(load_tokenizer(os.path.join(demo.DEMO_DIR, demo.MODEL_DIR)))
    held_out = study.HeldOut(encoder, task.make_problems(9, 50, 4), study.harder_problems()[:50])
    lengths = study_part3.hard_lengths(
        encoder, write_jsonl(str(tmp_path / "hard.jsonl"), hard), held_out
    )
    longest = max(len(ids) for ids in encoder.ids([h["guidance"] for h in hard]))
    assert lengths.full == longest == 10 + 32 * 4  # a final carry: 5 answer digits
    tested = encoder.ids([traces.hard_trace(p) for p in held_out.problems])
    assert lengths.completion == max(longest, *map(len, tested)) + 1
