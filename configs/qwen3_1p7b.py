r"""Qwen3-1.7B-Base on math with G²RPO-A, α = 1/4 (SPEC §7).

    python scripts/train.py --config=configs/qwen3_1p7b.py --workdir=/ckpt/run \
        --config.data.path=/data/math_train.jsonl
    python scripts/train.py --config=configs/qwen3_1p7b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-1.7B-Base"
    c.model.preset = "qwen3-1.7b"
    c.guidance.ratio = 0.25
    return config_lib.variant(c, arg)
