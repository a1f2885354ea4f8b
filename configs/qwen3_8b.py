r"""Qwen3-8B-Base on math with G²RPO-A, α = 1/4 (SPEC §7), weights sharded (FSDP).

The fsdp axis takes every device: each holds 1/N of the fp32 weights and Adam moments;
gradients are accumulated over 4 micro-batches.

Trains on OpenR1-Math-220k and evaluates on MATH-500 from the hub (config.math_recipe);
`--config.data.path=/data/math_train.jsonl` (or `hf:/data/OpenR1-Math-220k`, a downloaded
copy) and `--config.eval.path=...` point at local data instead.

    python scripts/train.py --config=configs/qwen3_8b.py --workdir=/ckpt/run
    python scripts/train.py --config=configs/qwen3_8b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl   # tiny random Qwen3 (untied head), CPU
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = "Qwen/Qwen3-8B-Base"
    c.model.preset = "qwen3-8b"
    c = config_lib.math_recipe(c)
    c.mesh.shape = (1, -1, 1)
    c.guidance.ratio = 0.25
    c.optimizer.micro_batches = 4
    c = config_lib.variant(c, arg)
    if arg == "smoke":
        c.optimizer.micro_batches = 2
    return c
