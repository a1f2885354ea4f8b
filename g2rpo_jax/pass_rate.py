"""The paper's difficulty: 1 − the base model's pass rate over n unguided samples (SPEC §5).

    with Estimator.from_config(config, journal_path, samples=8) as estimator:
        rows, too_long = estimator(rows, "train")  # pass_rate and difficulty = 1 − it set

Underneath, `estimate(examples, split, score, batch_size, journal)` counts the correct
completions (int [E], out of n) of the rows the journal lacks.

Each row's n samples use the streams fold_in(fold_in(key(seed), split), index·n + j): a
row draws the same completions in any batch, so a run killed half-way and started again
(the journal skips the rows it already holds) writes the same numbers as one that never
stopped. `score(examples, rng, row_ids)` is `evaluation.sample_and_score` with its model,
sampler and rewards bound.
"""

import dataclasses
import json
import math
import os
import zlib
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from g2rpo_jax import evaluation, experiment, sampling, sharding, train_step
from g2rpo_jax.config import ConfigError
from g2rpo_jax.data import difficulty, tokenization
from g2rpo_jax.data.schema import Row
from g2rpo_jax.data.tokenization import Example, encode_prompts, load_tokenizer
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.rewards import RewardPool

JOURNAL = "pass_rate_journal.jsonl"  # in the output folder

# (examples [E], rng, row_ids uint32 [E·n]) → correct completions per example, int [E].
Score = Callable[[Sequence[Example], jax.Array, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a pass rate depends on; a journal written under other settings is refused."""

    model: str
    samples: int  # n
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    accuracy_reward: str
    seed: int

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"--samples={self.samples} must be >= 1")


class Journal:
    """JSONL beside the output: a settings line, then {"split", "index", "correct"} per row.

    Appended and flushed after every batch; a last line cut short by a kill is dropped.
    """

    def __init__(self, path: str, settings: Settings):
        self.path, self.settings, self.done = path, settings, {}
        header = dataclasses.asdict(settings)
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().split("\n")
            if lines[-1]:  # no newline after it: a line the previous run did not finish
                lines[-1] = ""
            lines = [line for line in lines if line]
            if lines and json.loads(lines[0]) != header:
                raise ConfigError(
                    f"{path} holds pass rates from other settings ({lines[0]}); rerun with "
                    "those, or delete it to start over"
                )
            records = [json.loads(line) for line in lines[1:]]
            self.done = {(r["split"], r["index"]): r["correct"] for r in records}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:  # rewritten whole: without a cut line, with the header
            f.writelines(line + "\n" for line in lines or [json.dumps(header)])

    def add(self, split: str, indices: Sequence[int], correct: Sequence[int]) -> None:
        records = [
            {"split": split, "index": int(i), "correct": int(c)}
            for i, c in zip(indices, correct, strict=True)
        ]
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        self.done |= {(split, r["index"]): r["correct"] for r in records}


def row_ids(indices: Sequence[int], n: int) -> np.ndarray:
    """uint32 [E·n]: index·n + j for sample j of each row, the rows' own sampling streams."""
    return (np.asarray(indices, np.uint32)[:, None] * n + np.arange(n, dtype=np.uint32)).reshape(-1)


def split_key(seed: int, split: str) -> jax.Array:
    """The split's base key: rows of two splits may share an index, not a stream."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(split.encode()) & 0x7FFFFFFF)


def estimate(
    examples: Sequence[Example],
    split: str,
    score: Score,
    batch_size: int,
    journal: Journal,
    *,
    progress: bool = True,
) -> np.ndarray:
    """int [E]: correct completions out of n per example, sampling only the rows the
    journal lacks, batch_size rows (batch_size · n candidates) per sampler call."""
    n = journal.settings.samples
    todo = [e for e in examples if (split, e.row.index) not in journal.done]
    rng = split_key(journal.settings.seed, split)
    bar = tqdm.tqdm(
        total=len(examples),
        initial=len(examples) - len(todo),
        unit="row",
        desc=f"pass rate ({split})",
        dynamic_ncols=True,
        disable=not progress,
    )
    with bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            indices = [e.row.index for e in chunk]
            journal.add(split, indices, score(chunk, rng, row_ids(indices, n)))
            bar.update(len(chunk))
    return np.asarray([journal.done[split, e.row.index] for e in examples], np.int64)


class Estimator:
    """A model, its sampler (rows over every device) and the accuracy reward, set up once;
    `estimator(rows, split)` returns the rows that fit the prompt budget with `pass_rate`
    and difficulty = 1 − pass rate set, and how many did not fit."""

    def __init__(
        self,
        exp: experiment.Experiment,
        journal: Journal,
        batch_size: int,
        *,
        progress: bool = True,
    ):
        if batch_size < 1:
            raise ConfigError(f"--batch_size={batch_size} must be >= 1")
        settings = journal.settings
        self.exp, self.journal, self.batch_size, self.progress = exp, journal, batch_size, progress
        self.tokenizer = load_tokenizer(exp.tokenizer)
        mesh = sharding.make_mesh(exp.mesh_shape)
        model, model_config = from_pretrained(
            exp.model.path, dtype=exp.model.dtype, param_dtype=exp.model.param_dtype, mesh=mesh
        )
        graphdef, self.params = nnx.split(model)
        # Padding rows make every call's batch divide over the data-parallel devices.
        multiple = math.lcm(exp.sampling.batch_multiple, exp.mesh_shape[0] * exp.mesh_shape[1])
        decoding = dataclasses.replace(
            exp.sampling,
            max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature,
            batch_multiple=multiple,
        )
        tokens = tokenization.TokenIds.of(
            self.tokenizer, model_config, exp.model.path if os.path.isdir(exp.model.path) else ""
        )
        self.sampler = sampling.sampler_for(
            graphdef, decoding, tokens, train_step.batch_sharding(mesh)
        )
        # Only the accuracy reward decides a pass; the others would cost time for nothing.
        self.pool = RewardPool(dataclasses.replace(exp.rewards, weights={exp.accuracy_reward: 1.0}))

    @classmethod
    def from_config(
        cls,
        c: ml_collections.ConfigDict,
        journal_path: str,
        *,
        samples: int,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> "Estimator":
        """Prompt template, decoding, seed and accuracy reward from the training config `c`;
        temperature / max_new_tokens override its sampling ones."""
        exp = experiment.build(c, num_devices=jax.device_count())
        settings = Settings(
            model=exp.model.path,
            samples=samples,
            temperature=exp.sampling.temperature if temperature is None else temperature,
            top_p=exp.sampling.top_p,
            top_k=exp.sampling.top_k,
            max_new_tokens=max_new_tokens or exp.sampling.max_completion_length,
            accuracy_reward=exp.accuracy_reward,
            seed=exp.seed,
        )
        return cls(exp, Journal(journal_path, settings), batch_size, progress=progress)

    def score(self, examples: Sequence[Example], rng: jax.Array, row_ids: np.ndarray):
        n = self.journal.settings.samples
        return evaluation.sample_and_score(
            self.params,
            self.sampler,
            self.tokenizer,
            examples,
            self.pool,
            n,
            self.exp.accuracy_reward,
            rng,
            row_ids=row_ids,
        ).correct(n)

    def __call__(self, rows: Sequence[Row], split: str) -> tuple[list[Row], int]:
        examples, too_long = encode_prompts(rows, self.tokenizer, self.exp.data)
        correct = estimate(
            examples, split, self.score, self.batch_size, self.journal, progress=self.progress
        )
        rates = correct / self.journal.settings.samples
        return difficulty.with_pass_rates([e.row for e in examples], rates.tolist()), too_long

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Estimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
