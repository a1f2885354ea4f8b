r"""Qwen3-0.6B-Base on math with G²RPO-A, α = 3/4 (SPEC §7: small models need more guidance).

    python scripts/train.py --config=configs/qwen3_0p6b.py --workdir=/ckpt/run \
        --config.data.path=/data/math_train.jsonl
    python scripts/train.py --config=configs/qwen3_0p6b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-0.6B-Base"
    c.model.preset = "qwen3-0.6b"
    c.guidance.ratio = 0.75
    return config_lib.variant(c, arg)
