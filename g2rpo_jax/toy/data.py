"""Toy problems as data: JSONL rows in our schema, and token batches for supervised runs."""

import json
import os
from collections.abc import Sequence

import numpy as np

from g2rpo_jax.toy import sft, task


def write_jsonl(path: str, rows: Sequence[task.Problem | dict]) -> str:
    """One row per problem (`Problem.row()`: prompt, answer, guidance = the reference trace,
    difficulty = digits), or rows given as dicts."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row.row() if isinstance(row, task.Problem) else row) + "\n")
    return path


def read_rows(path: str) -> list[dict]:
    """The rows of a JSONL file, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def traced_rows(path: str) -> list[dict]:
    """The rows of a toy data file that have a reference trace, in file order."""
    return [r for r in read_rows(path) if "guidance" in r]


def train_subset(path: str, rows: int, out: str, seed: int = 0) -> str:
    """Writes `rows` rows of `path`, drawn at random (seeded), in file order, to `out`."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if rows > len(lines):
        raise ValueError(f"{path} has {len(lines)} rows, fewer than the {rows} asked for")
    keep = np.sort(np.random.default_rng(seed).choice(len(lines), rows, replace=False))
    with open(out, "w") as f:
        f.writelines(lines[i] for i in keep)
    return out


def read_problems(path: str) -> list[task.Problem]:
    """The problems of a JSONL file written by `write_jsonl` (from each row's prompt)."""
    with open(path) as f:
        return [task.parse_prompt(json.loads(line)["prompt"]) for line in f if line.strip()]


class Encoder:
    """Token ids of prompts and traces; traces without special tokens, as the trainer's."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def sft_arrays(
        self, problems: Sequence[task.Problem], seq_len: int, traces: Sequence[str] | None = None
    ):
        """tokens int32 [N, seq_len] and loss mask float32 [N, seq_len] (sft.encode) of each
        prompt and its trace (default: the problem's own, correct one)."""
        prompts = self.ids([p.prompt for p in problems])
        traces = self.ids([p.trace for p in problems] if traces is None else traces)
        pairs = [
            sft.encode(p, t, self.eos_id, seq_len, self.pad_id)
            for p, t in zip(prompts, traces, strict=True)
        ]
        return np.stack([t for t, _ in pairs]), np.stack([m for _, m in pairs])

    def prompt_arrays(self, problems: Sequence[task.Problem]):
        """Right-padded prompt ids [N, P] and lengths [N], as the Sampler takes them."""
        prompts = self.ids([p.prompt for p in problems])
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad_id, np.int32)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p
        return ids, np.asarray([len(p) for p in prompts], np.int32)
