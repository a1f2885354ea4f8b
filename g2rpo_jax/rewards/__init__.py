"""Verifiable rewards: accuracy (math-verify), format, code execution in a sandbox.

Every reward function has TRL's interface `fn(prompts, completions, **row_fields)`, where
each row field is a per-completion list (`answer=[...]`, `tests=[...]`), and returns one
float per completion. `RewardPool` computes the configured ones in worker processes.
"""

from g2rpo_jax.rewards.accuracy import accuracy_reward, extract_answer, parse_gold
from g2rpo_jax.rewards.code import code_reward, extract_program, run_tests
from g2rpo_jax.rewards.config import REWARD_FUNCTIONS, RewardConfig
from g2rpo_jax.rewards.format import format_reward
from g2rpo_jax.rewards.pool import RewardPool, Rewards, compute_rewards
from g2rpo_jax.rewards.sandbox import SandboxConfig, SandboxResult, run_python

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardConfig",
    "RewardPool",
    "Rewards",
    "SandboxConfig",
    "SandboxResult",
    "accuracy_reward",
    "code_reward",
    "compute_rewards",
    "extract_answer",
    "extract_program",
    "format_reward",
    "parse_gold",
    "run_python",
    "run_tests",
]
