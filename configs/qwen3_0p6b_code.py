r"""Qwen3-0.6B-Base on code with G²RPO-A: rows carry `tests`; reward = fraction passed.

α = 5/6 (10 of 12 guided; *ours* — the paper gives code more guidance than math without a
number for this size). Trains on the official recipe's data, Blancy/verifiable-coding-problems-CoT
from the hub: `problem_statement` is the prompt, `generations` the reference trace, and the
test cases inside `verification_info` the tests (README "Code rewards"); rows whose tests are
not in Python are skipped and counted. The system prompt asks for the rewarded format with
the program in a ```python block. `--config.data.path=/data/code_train.jsonl` (or
`hf:/data/verifiable-coding-problems-CoT`, a downloaded copy) points at local data instead.

    python scripts/train.py --config=configs/qwen3_0p6b_code.py --workdir=/ckpt/run
    python scripts/train.py --config=configs/qwen3_0p6b_code.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small_code.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

import ml_collections

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-0.6B-Base"
    c.model.preset = "qwen3-0.6b"
    c.data.path = config_lib.CODE_COT
    c.data.skip_bad_rows = True  # e.g. a row whose tests are in C++
    c.data.system_prompt = config_lib.CODE_SYSTEM_PROMPT
    c.guidance.ratio = 5 / 6
    c.rewards.weights = ml_collections.ConfigDict({"code": 1.0, "format": 0.1})
    c.rewards.accuracy_reward = "code"
    return config_lib.variant(c, arg)
