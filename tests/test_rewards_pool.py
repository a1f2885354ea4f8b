"""Reward computation in worker processes: same numbers as serial evaluation, weighted total."""

import dataclasses
import random

import numpy as np
import pytest

from g2rpo_jax.rewards import (
    RewardConfig,
    RewardPool,
    SandboxConfig,
    accuracy_reward,
    code_reward,
    compute_rewards,
    format_reward,
)
from tests import runnable_sandbox

N = 512
CODE_EVERY = 64  # every 64th row is a code row, so code runs spread over the workers


@pytest.fixture(scope="module")
def sandbox() -> SandboxConfig:
    """An interpreter the sandbox user can run."""
    base = SandboxConfig(timeout_s=2.0, cpu_s=2, memory_mb=256)
    return runnable_sandbox.runnable(base)


def _row(i: int, rng: random.Random) -> tuple[str, str, str | None, list | None]:
    """(prompt, completion, answer, tests): a math row, or every CODE_EVERY-th a code row."""
    if i % CODE_EVERY == CODE_EVERY - 1:
        program = "print(sum(map(int, input().split())))" if i % 128 == 127 else "print(0)"
        return f"code {i}", f"```python\n{program}\n```", None, [{"input": "1 2", "output": "3"}]
    gold = rng.choice([str(i % 50), f"\\frac{{{i % 7 + 1}}}{{{i % 5 + 2}}}", "(0, 1]"])
    boxed = f"\\boxed{{{gold if rng.random() < 0.5 else rng.randint(0, 60)}}}"
    formatted = rng.random() < 0.7
    completion = f"<think>step {i}</think>\n<answer>{boxed}</answer>" if formatted else boxed
    return f"problem {i}", completion, gold, None


def test_parallel_equals_serial(sandbox: SandboxConfig) -> None:
    rng = random.Random(0)
    prompts, completions, answers, tests = map(
        list, zip(*(_row(i, rng) for i in range(N)), strict=True)
    )
    weights = (("accuracy", 1.0), ("format", 0.1), ("code", 0.5))
    config = RewardConfig(weights=weights, workers=2, sandbox=sandbox)
    fields = {"answer": answers, "tests": tests}
    serial = np.array(
        [
            accuracy_reward(prompts, completions, **fields),
            format_reward(prompts, completions, **fields),
            code_reward(prompts, completions, **fields, sandbox=sandbox),
        ],
        np.float32,
    ).T
    with RewardPool(config) as pool:
        first = pool.compute(prompts, completions, **fields)
        second = pool.compute(prompts, completions, **fields)  # workers reused, already warm
    print(
        f"\nrewards for {N} completions, 2 workers: {first.wall_s:.2f}s cold, {second.wall_s:.2f}s warm"
    )
    assert first.names == ("accuracy", "format", "code")
    assert first.per_function.dtype == np.float32 and first.per_function.shape == (N, 3)
    np.testing.assert_array_equal(first.per_function, serial)
    np.testing.assert_array_equal(second.per_function, serial)
    np.testing.assert_allclose(first.total, serial @ np.array([1.0, 0.1, 0.5], np.float32))
    assert first.total.shape == (N,) and first.total.dtype == np.float32
    # Each kind of row took a real mix of rewards, so the comparison is not of constants.
    math_rows = np.array([t is None for t in tests])
    assert 0 < serial[math_rows, 0].mean() < 1 and 0 < serial[math_rows, 1].mean() < 1
    np.testing.assert_array_equal(serial[~math_rows, 2], [0.0, 1.0] * (N // CODE_EVERY // 2))
    assert not serial[math_rows, 2].any() and not serial[~math_rows, 0].any()


def test_in_process_and_one_off() -> None:
    prompts = ["p"] * 3
    completions = [r"<think>a</think><answer>\boxed{2}</answer>", r"\boxed{2}", "nothing"]
    rewards = compute_rewards(prompts, completions, RewardConfig(workers=0), answer=["2"] * 3)
    np.testing.assert_array_equal(rewards.per_function, [[1, 1], [1, 0], [0, 0]])
    np.testing.assert_allclose(rewards.total, [1.1, 1.0, 0.0])
    assert rewards.wall_s >= 0


def test_empty_batch() -> None:
    with RewardPool(RewardConfig(workers=1)) as pool:
        rewards = pool.compute([], [], answer=[])
    assert rewards.per_function.shape == (0, 2) and rewards.total.shape == (0,)


def test_field_length_mismatch() -> None:
    with RewardPool(RewardConfig(workers=0)) as pool, pytest.raises(ValueError, match="answer"):
        pool.compute(["p", "p"], ["a", "b"], answer=["1"])


def test_config() -> None:
    assert RewardConfig().weights == (("accuracy", 1.0), ("format", 0.1))
    assert RewardConfig(weights={"format": 2}).weights == (("format", 2.0),)
    with pytest.raises(ValueError, match="unknown reward"):
        RewardConfig(weights={"accuracy": 1.0, "fluency": 1.0})
    with pytest.raises(ValueError):
        RewardConfig(weights={})
    with pytest.raises(ValueError):
        RewardConfig(weights={"accuracy": float("nan")})
    with pytest.raises(ValueError):
        RewardConfig(workers=-1)


def test_unusable_sandbox_fails_at_start(tmp_path: object) -> None:
    broken = SandboxConfig(python=f"{tmp_path}/no-such-python")
    with pytest.raises(RuntimeError, match="no-such-python"):
        RewardPool(RewardConfig(weights={"code": 1.0}, workers=0, sandbox=broken))


def test_weaker_sandbox_is_announced(
    sandbox: SandboxConfig, caplog: pytest.LogCaptureFixture
) -> None:
    weaker = dataclasses.replace(sandbox, namespaces=False)
    with RewardPool(RewardConfig(weights={"code": 1.0}, workers=0, sandbox=weaker)):
        pass
    assert "without network/PID namespaces" in caplog.text
