r"""Qwen3-0.6B-Base on math with G²RPO-A, α = 3/4 (SPEC §7: small models need more guidance).

Trains on OpenR1-Math-220k and evaluates on MATH-500 from the hub (config.math_recipe);
`--config.data.path=/data/math_train.jsonl` (or `hf:/data/OpenR1-Math-220k`, a downloaded
copy) and `--config.eval.path=...` point at local data instead.

    python scripts/train.py --config=configs/qwen3_0p6b.py --workdir=/ckpt/run
    python scripts/train.py --config=configs/qwen3_0p6b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl   # tiny random Qwen3, CPU, 4 steps
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-0.6B-Base"
    c.model.preset = "qwen3-0.6b"
    c = config_lib.math_recipe(c)
    c.guidance.ratio = 0.75
    return config_lib.variant(c, arg)
