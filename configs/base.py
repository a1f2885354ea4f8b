r"""Every option at its default (SPEC §7 paper scale); name the model and data on the flags.

    python scripts/train.py --config=configs/base.py --workdir=/ckpt/run \
        --config.model.path=Qwen/Qwen3-1.7B-Base --config.data.path=/data/train.jsonl

`:smoke` trains a tiny random Qwen3 with a byte-level tokenizer for 4 steps on CPU:

    python scripts/train.py --config=configs/base.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl
"""

from g2rpo_jax import config as config_lib


def get_config(arg: str | None = None):
    return config_lib.variant(config_lib.default_config(), arg)
