"""Reward computation off the main thread: chunks of completions scored in worker processes.

Workers are spawned, never forked: the trainer process runs JAX, whose threads a fork would
copy mid-flight. They live as long as the pool, so their start-up and imports (sympy for
math-verify) are paid once per run, not once per step.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from g2rpo_jax.rewards.config import REWARD_FUNCTIONS, RewardConfig, RewardFn
from g2rpo_jax.rewards.sandbox import run_python

_log = logging.getLogger(__name__)
# Several chunks per worker even out the load when some completions are slow (code runs).
_CHUNKS_PER_WORKER = 4
_DEFAULT_CONFIG = RewardConfig()


@dataclasses.dataclass(frozen=True)
class Rewards:
    """Rewards of N completions: per function [N, n_fns] float32, weighted total [N]."""

    names: tuple[str, ...]
    per_function: np.ndarray
    total: np.ndarray
    wall_s: float


def _bind(name: str, config: RewardConfig) -> RewardFn:
    if name == "code":
        return functools.partial(
            REWARD_FUNCTIONS[name], sandbox=config.sandbox, trust_test_code=config.trust_test_code
        )
    return REWARD_FUNCTIONS[name]


def _score_chunk(
    fns: Sequence[RewardFn],
    prompts: Sequence[str],
    completions: Sequence[str],
    row_fields: dict[str, Sequence[Any]],
) -> np.ndarray:
    scores = np.zeros((len(completions), len(fns)), np.float32)
    for j, fn in enumerate(fns):
        scores[:, j] = fn(list(prompts), list(completions), **row_fields)
    return scores


class RewardPool:
    """Scores completions with the configured rewards; reuse it across steps, then close()."""

    def __init__(self, config: RewardConfig = _DEFAULT_CONFIG):
        self._config = config
        self._names = tuple(name for name, _ in config.weights)
        self._weights = np.array([w for _, w in config.weights], np.float32)
        self._fns = tuple(_bind(name, config) for name in self._names)
        if "code" in self._names:
            self._check_sandbox()
        self._executor = None
        if config.workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                config.workers, mp_context=multiprocessing.get_context("spawn")
            )

    def _check_sandbox(self) -> None:
        """Fails now, not mid-run, if the sandbox cannot start; says what it guarantees."""
        isolation = run_python("pass", config=self._config.sandbox).isolation
        _log.info("code sandbox isolation: %s", ", ".join(sorted(isolation)) or "none")
        if not {"net", "pid"} <= isolation:
            _log.warning(
                "code sandbox without network/PID namespaces: network blocked only at Python's "
                "socket level, escaped processes may outlive a run (see rewards/sandbox.py)"
            )
        if self._config.trust_test_code:
            _log.warning(
                "rewards.code.trust_test_code: test code that is not call-based runs in the "
                "program's own process, where a program can forge its verdict"
            )

    def compute(
        self, prompts: Sequence[str], completions: Sequence[str], **row_fields: Sequence[Any]
    ) -> Rewards:
        """Rewards of each completion; `row_fields` are per-completion lists (answer, tests)."""
        start = time.perf_counter()
        n = len(completions)
        for name, values in {"prompts": prompts, **row_fields}.items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} completions")
        if self._executor is None:
            per_function = _score_chunk(self._fns, prompts, completions, row_fields)
        else:
            chunks = min(n, self._config.workers * _CHUNKS_PER_WORKER)
            bounds = np.linspace(0, n, chunks + 1).astype(int)
            futures = [
                self._executor.submit(
                    _score_chunk,
                    self._fns,
                    prompts[lo:hi],
                    completions[lo:hi],
                    {k: v[lo:hi] for k, v in row_fields.items()},
                )
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            parts = [f.result() for f in futures]
            per_function = np.concatenate(parts) if parts else np.zeros((0, len(self._fns)))
        per_function = per_function.astype(np.float32)
        return Rewards(
            names=self._names,
            per_function=per_function,
            total=per_function @ self._weights,
            wall_s=time.perf_counter() - start,
        )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def compute_rewards(
    prompts: Sequence[str],
    completions: Sequence[str],
    config: RewardConfig = _DEFAULT_CONFIG,
    **row_fields: Sequence[Any],
) -> Rewards:
    """One-off rewards with a pool made for this call; a training loop keeps a RewardPool."""
    with RewardPool(config) as pool:
        return pool.compute(prompts, completions, **row_fields)
