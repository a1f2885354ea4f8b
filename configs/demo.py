r"""The CPU demo: G²RPO-A (adaptive ℓ + curriculum) on the toy addition task, a 0.8M-parameter
Qwen3 warm-started by scripts/make_demo_model.py (shipped in assets/demo), no network.

    make demo                                   # = the line below, workdir runs/demo
    python scripts/train.py --config=configs/demo.py --workdir=runs/demo

One epoch over 1024 four-digit problems, easy to hard (B = 8 prompts × G = 8 candidates a
step, 4 of them guided by the first ℓ tokens of the reference trace; ℓ starts at the whole
trace and adapts). Prints held-out unguided greedy accuracy before and after training and
writes PNG plots of reward, guided vs unguided rollout accuracy and ℓ to the workdir.
`:smoke` runs 2 tiny steps (tests/test_demo.py).
"""

import os

import ml_collections

from g2rpo_jax import config as config_lib

_DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")


def get_config(arg: str | None = None):
    c = config_lib.default_config()
    c.model.path = os.path.join(_DEMO, "model")
    c.model.dtype = c.model.param_dtype = "float32"
    c.train.remat = False

    c.data.path = os.path.join(_DEMO, "train.jsonl")  # 4-digit problems, difficulty = NLL
    c.data.use_chat_template = False  # prompts are plain text ("563+141=")
    c.data.max_prompt_length = 16
    c.data.max_completion_length = 48  # a 4-digit trace is 45–46 tokens, then EOS
    c.data.batch_size = 8  # B
    c.data.order = "sorted"  # the curriculum

    c.sampling.temperature = 1.0
    c.grpo.group_size = 8  # G
    c.grpo.beta = 0.0
    c.guidance.ratio = 0.5  # α: 4 of 8 candidates guided
    c.guidance.rule = "paper"  # adaptive ℓ
    c.guidance.initial_length = c.guidance.max_length = 46  # ℓ0 = ℓ_max = the whole trace
    c.guidance.min_length = 1  # ℓ_min
    c.guidance.history = 2  # T

    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.final_lr_fraction = 0.1

    c.rewards.weights = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.1})
    c.rewards.workers = 0

    c.train.num_steps = 0  # one epoch, easy to hard: 1024 rows / B = 128 steps
    c.train.eval_every = 32
    c.train.eval_at_start = True  # the held-out accuracy before training
    c.train.plots = True  # reward, guided vs unguided accuracy, ℓ; before → after printed
    c.train.save_every = 128
    c.train.keep_checkpoints = 1
    c.train.sample_every = 32

    c.eval.path = os.path.join(_DEMO, "eval.jsonl")
    c.eval.temperature = 0.0  # greedy
    c.eval.max_completion_length = 48
    c.eval.batch_size = 500
    c.eval.max_rows = 500

    if arg == "smoke":  # 2 steps of B=2, G=4 and a 16-row eval: the demo path in seconds
        c.data.batch_size = 2
        c.grpo.group_size = 4
        c.train.num_steps = c.train.eval_every = c.train.save_every = 2
        c.optimizer.warmup_steps = 1
        c.train.sample_every = 1
        c.train.progress_bar = False
        c.eval.max_rows = c.eval.batch_size = 16
        return c
    return config_lib.variant(c, arg)
