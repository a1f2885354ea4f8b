"""Scoring sampled completions: decoding, rewards per row, pass@k, and the evaluation that
the trainer runs every eval_every steps and scripts/evaluate.py runs on a checkpoint."""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from g2rpo_jax.data import DataConfig, DataError, FieldMap, Order
from g2rpo_jax.data.load import TestsCheck, check_row_tests
from g2rpo_jax.data.schema import to_row
from g2rpo_jax.data.sources import read_records, resolve_format
from g2rpo_jax.data.tokenization import Tokenizer, encode_prompts
from g2rpo_jax.rewards import RewardConfig, RewardPool
from g2rpo_jax.rewards.code import check_tests
from g2rpo_jax.sampling import Sampler, SamplingConfig


def decode(tokenizer: Tokenizer, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Completion texts (guidance ⊕ generated, SPEC §6) without special tokens."""
    return tokenizer.batch_decode(
        [row[m] for row, m in zip(ids, mask.astype(bool), strict=True)], skip_special_tokens=True
    )


def row_fields(batch: dict, repeats: int) -> dict[str, list]:
    """answer/tests per completion. A code row's empty answer becomes None, which the
    accuracy reward scores 0 (an empty gold would be a parse error there)."""
    tests = list(batch.get("tests", [None] * len(batch["answer"])))
    answers = [
        None if t is not None and not a.strip() else a
        for a, t in zip(batch["answer"], tests, strict=True)
    ]
    return {"answer": repeat(answers, repeats), "tests": repeat(tests, repeats)}


def repeat(values: Sequence, repeats: int) -> list:
    return [v for v in values for _ in range(repeats)]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation decoding and scoring (SPEC §7): n samples per problem, pass@k."""

    path: str
    num_samples: int
    pass_k: tuple[int, ...]
    sampling: SamplingConfig  # eos/pad ids are filled in once the tokenizer is known
    batch_size: int
    max_rows: int
    split: str = "train"
    fields: FieldMap = FieldMap()


def load_eval_examples(
    config: EvalConfig, data: DataConfig, tokenizer: Tokenizer, answer_check=None, tests_check=None
):
    """Tokenized eval rows in file order (no curriculum), at most `config.max_rows`, with the
    training data's prompt settings (`data`: template, system prompt, lengths)."""
    data = dataclasses.replace(
        data,
        path=config.path,
        split=config.split,
        fields=config.fields,
        order=Order.NONE,
        format="auto",
        num_epochs=1,
        skip_bad_rows=False,
    )
    return eval_examples(data, tokenizer, answer_check, config.max_rows, tests_check)


def tests_check(rewards: RewardConfig) -> TestsCheck | None:
    """The load-time check of code rows' tests when the code reward is configured."""
    if "code" not in dict(rewards.weights):
        return None
    return functools.partial(check_tests, trust_test_code=rewards.trust_test_code)


def eval_examples(
    config: DataConfig,
    tokenizer: Tokenizer,
    answer_check=None,
    max_rows=0,
    tests_check: TestsCheck | None = None,
):
    """The problems of `config.path`, validated and tokenized, in file order. Evaluation
    rows need no reference trace: a placeholder fills a missing `guidance`."""
    fields = dataclasses.replace(config.fields, guidance_correctness=None)
    rows = []
    for record in read_records(
        config.path, resolve_format(config.path, config.format), config.split
    ):
        value = record.value
        if isinstance(value, DataError):
            raise value
        if isinstance(value, dict) and not isinstance(value.get(fields.guidance), str):
            value = value | {fields.guidance: "(none)"}
        row = to_row(
            value, index=record.index, where=record.where, fields=fields, answer_check=answer_check
        )
        warning = check_row_tests(row, record.where, fields.tests, tests_check)
        if warning is not None:
            logging.warning("%s: field 'tests': %s", record.where, warning)
        rows.append(row)
    examples, too_long = encode_prompts(rows, tokenizer, config)
    if too_long:
        logging.warning(
            "%s: %d eval rows with prompts over max_prompt_length=%d skipped",
            config.path,
            too_long,
            config.max_prompt_length,
        )
    return examples[:max_rows] if max_rows else examples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclasses.dataclass(frozen=True)
class Scored:
    """n unguided completions per example, scored; rows are example-major (E examples · n).

    texts: [E·n] decoded completions; scores: float [E·n] the accuracy reward;
    completion_tokens: int [E·n]; finished: bool [E·n] (ended with EOS, not the budget).
    """

    texts: list[str]
    scores: np.ndarray
    completion_tokens: np.ndarray
    finished: np.ndarray

    def correct(self, n: int) -> np.ndarray:
        """int [E]: completions per example whose accuracy reward is 1 (all tests passed)."""
        return (self.scores.reshape(-1, n) >= 1.0).sum(1)


def sample_and_score(
    params,
    sampler: Sampler,
    tokenizer: Tokenizer,
    examples,
    pool: RewardPool,
    n: int,
    accuracy_reward: str,
    rng,
    row_ids=None,
) -> Scored:
    """n unguided samples of each example with `sampler`, scored by the accuracy reward.

    Candidate i (example i // n) samples with the stream fold_in(rng, row_ids[i]) (default
    i), as `Sampler` does: give row_ids to make a row's samples independent of its batch.
    """
    width = max(len(e.prompt_ids) for e in examples)
    ids = np.full((len(examples), width), sampler.tokens.pad, np.int32)
    for i, e in enumerate(examples):
        ids[i, : len(e.prompt_ids)] = e.prompt_ids
    lengths = np.asarray([len(e.prompt_ids) for e in examples], np.int32)
    rows = len(examples) * n
    out = sampler(
        params,
        np.repeat(ids, n, 0),
        np.repeat(lengths, n, 0),
        np.zeros((rows, 0), np.int32),
        np.zeros(rows, np.int32),
        rng,
        row_ids=row_ids,
    )
    completion_ids, mask, finish = jax.device_get(
        (out.completion_ids, out.completion_mask, out.finish_reason)
    )
    texts = decode(tokenizer, completion_ids, mask)
    batch = {"answer": [e.row.answer for e in examples], "tests": [e.row.tests for e in examples]}
    rewards = pool.compute(
        repeat([e.prompt_text for e in examples], n), texts, **row_fields(batch, n)
    )
    scores = rewards.per_function[:, rewards.names.index(accuracy_reward)]
    return Scored(texts, np.asarray(scores, np.float64), mask.sum(1), finish == 1)


def evaluate(
    params,
    sampler: Sampler,
    tokenizer: Tokenizer,
    examples,
    pool: RewardPool,
    config: EvalConfig,
    accuracy_reward: str,
    *,
    seed: int = 0,
) -> dict:
    """pass@1 and pass@k over `examples`, n = config.num_samples completions each, with the
    evaluation decoding of `sampler`; a completion counts as correct when its accuracy
    reward is 1 (all tests passed for code). Returns the report with per-row results."""
    n, key = config.num_samples, jax.random.key(seed)
    results = []
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start : start + config.batch_size]
        scored = sample_and_score(
            params,
            sampler,
            tokenizer,
            chunk,
            pool,
            n,
            accuracy_reward,
            jax.random.fold_in(key, start),
        )
        correct = scored.correct(n)
        for i, e in enumerate(chunk):
            own = slice(i * n, (i + 1) * n)
            results.append(
                {
                    "index": e.row.index,
                    "prompt": e.prompt_text,
                    "answer": e.row.answer,
                    "completions": scored.texts[own],
                    "scores": scored.scores[own].tolist(),
                    "correct": int(correct[i]),
                    "completion_tokens": scored.completion_tokens[own].tolist(),
                    "finished": scored.finished[own].tolist(),
                }
            )
    report = {"num_rows": len(results), "num_samples": n}
    for k in config.pass_k:
        report[f"pass@{k}"] = float(np.mean([pass_at_k(n, r["correct"], k) for r in results]))
    report["mean_score"] = float(np.mean([np.mean(r["scores"]) for r in results]))
    report["mean_completion_tokens"] = float(
        np.mean([np.mean(r["completion_tokens"]) for r in results])
    )
    report["rows"] = results
    return report
