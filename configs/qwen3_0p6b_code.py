r"""Qwen3-0.6B-Base on code with G²RPO-A: rows carry `tests`; reward = fraction passed.

α = 5/6 (10 of 12 guided; *ours* — the paper gives code more guidance than math without a
number for this size). Rows need a reference solution trace in `guidance` and `tests`
(see README); `answer` may be empty. There is no default data set: the hub code sets we know
(e.g. open-r1/verifiable-coding-problems-python) keep their test cases inside a JSON
`verification_info` column, which data.fields cannot map, so `--config.data.path` is required.

    python scripts/train.py --config=configs/qwen3_0p6b_code.py --workdir=/ckpt/run \
        --config.data.path=/data/code_train.jsonl
    python scripts/train.py --config=configs/qwen3_0p6b_code.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small_code.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

import ml_collections

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-0.6B-Base"
    c.model.preset = "qwen3-0.6b"
    c.guidance.ratio = 5 / 6
    c.rewards.weights = ml_collections.ConfigDict({"code": 1.0, "format": 0.1})
    c.rewards.accuracy_reward = "code"
    return config_lib.variant(c, arg)
