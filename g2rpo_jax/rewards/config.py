"""Reward configuration: which functions, their weights, the worker pool and the sandbox."""

import dataclasses
import math
from collections.abc import Callable, Mapping

from g2rpo_jax.rewards.accuracy import accuracy_reward
from g2rpo_jax.rewards.code import code_reward
from g2rpo_jax.rewards.format import format_reward
from g2rpo_jax.rewards.sandbox import SandboxConfig

RewardFn = Callable[..., list[float]]
# Config names of the reward functions; each is `fn(prompts, completions, **row_fields)`.
REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "code": code_reward,
}


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Total reward = Σ weight · fn (SPEC §6); `workers` = 0 computes in the calling process."""

    weights: tuple[tuple[str, float], ...] | Mapping[str, float] = (
        ("accuracy", 1.0),
        ("format", 0.1),
    )
    workers: int = 4
    sandbox: SandboxConfig = SandboxConfig()
    # Run test code that is not call-based in the program's process (code.py): gameable.
    trust_test_code: bool = False

    def __post_init__(self) -> None:
        pairs = tuple((str(n), float(w)) for n, w in dict(self.weights).items())
        object.__setattr__(self, "weights", pairs)  # one hashable form for either input
        for name, weight in pairs:
            if name not in REWARD_FUNCTIONS:
                raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARD_FUNCTIONS)}")
            if not math.isfinite(weight):
                raise ValueError(f"the weight of {name!r} is {weight}")
        if not pairs:
            raise ValueError("no reward function configured")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, not {self.workers}")
