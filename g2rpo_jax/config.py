"""The run configuration: one ml_collections ConfigDict at the edge, checked and turned into
the small frozen dataclasses each module takes (STYLE §2).

`default_config()` is the schema: every option, its default (SPEC §7 paper scale) and a
comment. Config files in configs/ start from it and change what they need; `variant(c, arg)`
applies `get_config(arg)` variants such as `smoke`; `check_keys(c)` refuses keys the schema
does not have. experiment.py turns a config into the typed `Experiment`.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from g2rpo_jax.data import HUB_PREFIX
from g2rpo_jax.data.tokenization import BYTES_TOKENIZER
from g2rpo_jax.models import ModelConfig
from g2rpo_jax.models.config import LORA_TARGETS
from g2rpo_jax.rewards import REWARD_FUNCTIONS

VARIANTS = ("smoke",)
OPENR1_MATH = "hf:open-r1/OpenR1-Math-220k"
MATH_500 = "hf:HuggingFaceH4/MATH-500"
CODE_COT = "hf:Blancy/verifiable-coding-problems-CoT"  # the paper recipe's code data
# The paper recipe's instruction (SPEC §7): the format that the format reward checks and that
# OpenR1's traces take once their solution is wrapped as the answer (FieldMap.openr1_math).
MATH_SYSTEM_PROMPT = (
    "You are a helpful assistant. Reason about the problem step by step first, then give "
    "your solution. Respond in this format:\n<think>\n...\n</think>\n<answer>\n...\n"
    "</answer>\nand put the final answer within \\boxed{} inside the answer."
)
# The same for code: the code reward runs the last ```python block of the completion.
CODE_SYSTEM_PROMPT = (
    "You are a helpful assistant. Reason about the problem step by step first, then give "
    "your solution. Respond in this format:\n<think>\n...\n</think>\n<answer>\n...\n"
    "</answer>\nand put your complete Python program in a ```python block inside the answer."
)
# Sub-dicts whose keys are free (checked against another schema instead of the defaults).
_FREE_KEYS = ("model.overrides", "rewards.weights")
# Keys that configs once had, with what to do instead.
_REMOVED_KEYS = {
    "model.lora.dropout": "removed (only 0 was ever supported): delete the line",
}


class ConfigError(ValueError):
    """A bad config value; the message names the field as `config.group.key`."""


def default_config() -> ml_collections.ConfigDict:
    """Every option with its default; configs/*.py change what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # sampling keys are fold_in(key(seed), step); random init uses it too

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # Hugging Face folder or hub id of the initial policy; "" = random init
    c.model.preset = ""  # architecture (models.PRESETS): random init, and the offline shape check
    c.model.overrides = ml_collections.ConfigDict()  # ModelConfig fields over the preset
    c.model.fit_vocab_to_tokenizer = False  # random init: vocab_size = len(tokenizer)
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"  # weights and optimizer state
    c.model.remat = True  # recompute each layer in the backward pass
    # auto | xla | chunked | splash | cudnn (models/attention.py); auto picks by platform.
    c.model.attention = "auto"
    # Low-rank adapters W + (alpha/rank)·A·B trained on a frozen base (README "LoRA").
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # r; 0 = full fine-tuning
    c.model.lora.alpha = 16.0
    c.model.lora.targets = LORA_TARGETS  # projections by name: q k v o gate up down

    c.tokenizer = ""  # folder or hub id; "" = model.path; "builtin:bytes" = byte-level (tests)
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices

    c.data = ml_collections.ConfigDict()
    # Training rows: JSONL, Parquet, saved HF dataset, TFDS data_dir, or `hf:<hub id>`.
    c.data.path = ""
    c.data.format = "auto"  # auto | jsonl | parquet | hf_disk | hf_hub | tfds
    c.data.split = "train"
    c.data.fields = ml_collections.ConfigDict()  # source column of each row field
    c.data.fields.prompt = "prompt"
    c.data.fields.answer = "answer"
    c.data.fields.guidance = "guidance"
    c.data.fields.guidance_correctness = config_dict.placeholder(str)
    c.data.fields.difficulty = config_dict.FieldReference("difficulty", field_type=str)
    c.data.fields.tests = config_dict.FieldReference("tests", field_type=str)
    c.data.fields.guidance_optional = False  # True: rows without a trace train unguided
    c.data.max_prompt_length = 512  # longer prompts are dropped
    c.data.max_completion_length = 4096  # guidance tokens included (SPEC §1)
    c.data.batch_size = 8  # B, prompts per step per host
    c.data.order = "sorted"  # curriculum (SPEC §5): sorted | random | none
    c.data.seed = 0
    c.data.num_epochs = 1
    c.data.skip_bad_rows = False
    c.data.system_prompt = config_dict.placeholder(str)
    c.data.enable_thinking = True
    c.data.use_chat_template = True

    c.sampling = ml_collections.ConfigDict()  # rollout decoding
    c.sampling.temperature = 0.7
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.guidance_in_budget = True  # max_completion_length counts guidance tokens
    c.sampling.batch_multiple = 8  # rows are padded to a multiple (fewer compiled programs)
    c.sampling.decode_phases = 4  # decode loops, each over a cache grown to what it fills
    c.sampling.param_dtype = "float32"  # float32 | bfloat16: a copy the rollouts read
    # Each group's prompt, and its guided rows' common guidance prefix, through the model
    # once (the train step's forwards); False: every row on its own, to compare and bisect.
    c.sampling.share_prefix = True

    c.grpo = ml_collections.ConfigDict()  # SPEC §2–3
    c.grpo.group_size = 12  # G
    c.grpo.beta = 0.04  # β; 0 drops the reference model
    c.grpo.epsilon_low = 0.2  # ε
    c.grpo.epsilon_high = 0.2
    c.grpo.num_updates = 1  # μ
    c.grpo.aggregation = "seq_mean"  # seq_mean | token_mean | seq_sum_fixed
    c.grpo.guidance_loss = "include"  # include | mask
    c.grpo.advantage_std = "group_unbiased"  # group_unbiased | group_population | none | batch
    c.grpo.skip_zero_advantage_steps = True
    c.grpo.mask_truncated = False  # rows cut at the length budget leave the loss (TRL)
    c.grpo.filter_zero_std_groups = False  # drop groups whose rewards tie, refill (DAPO)
    c.grpo.filter_max_extra_batches = 3  # at most this many extra sampler calls a step
    c.grpo.kl_estimator = "k3"  # k3 | k1 | k2
    c.grpo.importance_level = "token"  # token | sequence (GSPO)
    # Sampler–trainer mismatch: none | token_truncate | token_mask | sequence_truncate |
    # sequence_mask, with its bounds on π_old / π_sampler (None: unbounded).
    c.grpo.rollout_correction = "none"
    c.grpo.rollout_correction_max = config_dict.FieldReference(3.0, field_type=float)
    c.grpo.rollout_correction_min = config_dict.placeholder(float)

    c.optimizer = ml_collections.ConfigDict()  # AdamW, warmup + cosine (SPEC §7)
    c.optimizer.learning_rate = 1e-5
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = config_dict.placeholder(int)  # wins over warmup_ratio
    c.optimizer.warmup_ratio = 0.05
    c.optimizer.final_lr_fraction = 0.1
    c.optimizer.max_grad_norm = config_dict.FieldReference(1.0, field_type=float)
    c.optimizer.micro_batches = 1  # gradient accumulation inside a step

    c.guidance = ml_collections.ConfigDict()  # SPEC §1, §4
    c.guidance.ratio = 0.75  # α: the first ceil(α·G) candidates of a group are guided
    c.guidance.rule = "paper"  # paper | official | constant | linear | step | concave | convex
    c.guidance.initial_length = 3072  # ℓ0
    c.guidance.min_length = 1  # ℓ_min
    c.guidance.max_length = 3072  # ℓ_max
    c.guidance.history = 2  # T
    c.guidance.steps = 4  # S of the `step` schedule
    c.guidance.signal = "accuracy"  # accuracy | unguided_accuracy | total_reward

    c.rewards = ml_collections.ConfigDict()  # SPEC §6
    c.rewards.weights = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.1})
    c.rewards.accuracy_reward = "accuracy"  # the reward read as accuracy (controller, eval)
    c.rewards.workers = 4  # reward processes; 0 = in the trainer process
    c.rewards.sandbox = ml_collections.ConfigDict()  # code execution limits
    c.rewards.sandbox.timeout_s = 5.0
    c.rewards.sandbox.cpu_s = 5
    c.rewards.sandbox.memory_mb = 1024
    c.rewards.sandbox.namespaces = True
    c.rewards.sandbox.user = "nobody"  # run as this user when root; "" = the trainer's user
    c.rewards.sandbox.python = ""  # interpreter for programs; "" = the trainer's
    c.rewards.code = ml_collections.ConfigDict()
    # True: test code that is not call-based runs in the program's process (gameable).
    c.rewards.code.trust_test_code = False

    c.train = ml_collections.ConfigDict()  # the loop
    c.train.num_steps = 0  # 0 = every batch of data.num_epochs
    c.train.sample_every = 10  # log sample completions every n steps (0 = never)
    c.train.num_logged_samples = 4
    c.train.eval_every = 0  # evaluate on eval.path every n steps (0 = never)
    c.train.save_every = 100
    c.train.keep_checkpoints = 3
    c.train.async_checkpointing = True
    c.train.progress_bar = True
    c.train.wandb_project = ""  # log to Weights & Biases too when set and installed
    c.train.eval_at_start = False  # evaluate before the first step too (the step-0 baseline)
    c.train.plots = False  # at the end: PNG plots and the before → after line (report.py)
    # Warn when ≥ 90% of completions are truncated, or every group ties, this many steps in
    # a row (0 = never); stop_on_alarm then saves and stops (exit code 2).
    c.train.alarm_steps = 20
    c.train.stop_on_alarm = False

    c.eval = ml_collections.ConfigDict()  # periodic eval and scripts/evaluate.py (SPEC §7)
    c.eval.path = ""  # problems, in any data.path form; known hub sets bring their fields
    c.eval.split = ""  # "" = data.split
    c.eval.num_samples = 1  # n completions per problem
    c.eval.pass_k = (1,)  # pass@k reported for each k ≤ n
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.top_k = 20
    c.eval.max_completion_length = 0  # 0 = data.max_completion_length
    c.eval.batch_size = 8  # prompts per sampler call
    c.eval.max_rows = 0  # 0 = every row
    return c


def math_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's math data (SPEC §7) from the hub: OpenR1-Math-220k's default split to
    train on (FieldMap.openr1_math picks the trace), MATH-500 evaluated every 100 steps, and
    the system prompt that asks for the rewarded format.
    `--config.data.path` / `--config.eval.path` point at local copies instead."""
    c.data.path = OPENR1_MATH
    c.data.system_prompt = MATH_SYSTEM_PROMPT
    c.eval.path = MATH_500
    c.eval.split = "test"  # MATH-500's only split
    c.train.eval_every = 100
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to a few CPU-seconds a step: a tiny random model of the same family,
    a byte-level tokenizer, short sequences, small groups, 4 steps."""
    c.model.path = ""
    c.model.preset = c.model.preset or "qwen3-0.6b"
    c.model.overrides = ml_collections.ConfigDict(
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
        )
    )
    c.model.fit_vocab_to_tokenizer = True
    c.model.dtype = c.model.param_dtype = "float32"
    c.model.remat = False
    c.tokenizer = BYTES_TOKENIZER
    # Byte tokens: a system prompt costs one per byte on top of the problem's 96.
    c.data.max_prompt_length = 96 + len((c.data.system_prompt or "").encode())
    c.data.max_completion_length = 32
    c.data.batch_size = 4
    c.grpo.group_size = 4
    c.guidance.initial_length = c.guidance.max_length = 24
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 1
    c.rewards.workers = 0
    c.train.num_steps = 4
    c.train.save_every = 2
    c.train.sample_every = 2
    c.train.num_logged_samples = 2
    c.eval.max_completion_length = 32
    c.eval.num_samples = 2
    c.eval.pass_k = (1, 2)
    c.eval.batch_size = 4
    c.eval.max_rows = 8
    # Hub data is for real runs; a smoke run reads the local file it is given.
    for group in (c.data, c.eval):
        if group.path.startswith(HUB_PREFIX):
            group.path = ""
    if not c.eval.path:
        c.train.eval_every = 0
    return c


def variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies `get_config(arg)`'s variant: none, or one of VARIANTS."""
    if not arg:
        return c
    if arg == "smoke":
        return smoke(c)
    raise ConfigError(f"unknown config variant {arg!r}: use one of {VARIANTS} or none")


def fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def check_keys(c: ml_collections.ConfigDict) -> None:
    """Every key must exist in `default_config()` (a typo in a config file fails here;
    on the command line the locked ConfigDict already refuses it)."""

    def walk(given, schema, prefix):
        for key in given.keys():
            name = f"{prefix}{key}"
            if name in _REMOVED_KEYS:
                fail(name, _REMOVED_KEYS[name])
            if key not in schema:
                group = f"config.{prefix[:-1]}" if prefix else "config"
                fail(name, f"unknown key (the keys of {group}: {', '.join(sorted(schema))})")
            if name in _FREE_KEYS:
                continue
            if isinstance(schema[key], ml_collections.ConfigDict):
                if not isinstance(given[key], ml_collections.ConfigDict):
                    fail(name, "must be a group of options")
                walk(given[key], schema[key], f"{name}.")

    walk(c, default_config(), "")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in c.model.overrides.keys():
        if key not in model_fields:
            fail(f"model.overrides.{key}", f"not a ModelConfig field ({sorted(model_fields)})")
    for key in c.rewards.weights.keys():
        if key not in REWARD_FUNCTIONS:
            fail(f"rewards.weights.{key}", f"unknown reward; known: {sorted(REWARD_FUNCTIONS)}")
