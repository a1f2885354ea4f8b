r"""Qwen3-1.7B-Base on math with G²RPO-A, α = 1/4 (SPEC §7).

Trains on OpenR1-Math-220k and evaluates on MATH-500 from the hub (config.math_recipe);
`--config.data.path=/data/math_train.jsonl` (or `hf:/data/OpenR1-Math-220k`, a downloaded
copy) and `--config.eval.path=...` point at local data instead.

    python scripts/train.py --config=configs/qwen3_1p7b.py --workdir=/ckpt/run
    python scripts/train.py --config=configs/qwen3_1p7b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-1.7B-Base"
    c.model.preset = "qwen3-1.7b"
    c = config_lib.math_recipe(c)
    c.guidance.ratio = 0.25
    return config_lib.variant(c, arg)
