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
    "model.remat": "moved: remat is a train-step setting, config.train.remat",
}


class ConfigError(ValueError):
    """A bad config value; the message names the field as `config.group.key`."""


def default_config() -> ml_collections.ConfigDict:
    """Every option with its default; configs/*.py change what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # sampling keys are fold_in(key(seed), step); random init uses it too
    c.model = _model_defaults()
    c.tokenizer = ""  # folder or hub id; "" = model.path; "builtin:bytes" = byte-level (tests)
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
    c.data = _data_defaults()
    c.sampling = _sampling_defaults()  # rollout decoding
    c.grpo = _grpo_defaults()  # SPEC §2–3
    c.optimizer = _optimizer_defaults()  # AdamW, warmup + cosine (SPEC §7)
    c.guidance = _guidance_defaults()  # SPEC §1, §4
    c.rewards = _rewards_defaults()  # SPEC §6
    c.train = _train_defaults()  # the loop
    c.eval = _eval_defaults()  # periodic eval and scripts/evaluate.py (SPEC §7)
    return c


def _model_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.path = ""  # Hugging Face folder or hub id of the initial policy; "" = random init
    g.preset = ""  # architecture (models.PRESETS): random init, and the offline shape check
    g.overrides = ml_collections.ConfigDict()  # ModelConfig fields over the preset
    g.fit_vocab_to_tokenizer = False  # random init: vocab_size = len(tokenizer)
    g.dtype = "bfloat16"  # compute dtype
    g.param_dtype = "float32"  # weights and optimizer state
    # auto | xla | chunked | splash | cudnn (models/attention.py); auto picks by platform.
    g.attention = "auto"
    # Low-rank adapters W + (alpha/rank)·A·B trained on a frozen base (README "LoRA").
    g.lora = ml_collections.ConfigDict()
    g.lora.rank = 0  # r; 0 = full fine-tuning
    g.lora.alpha = 16.0
    g.lora.targets = LORA_TARGETS  # projections by name: q k v o gate up down
    return g


def _data_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    # Training rows: JSONL, Parquet, saved HF dataset, TFDS data_dir, or `hf:<hub id>`.
    g.path = ""
    g.format = "auto"  # auto | jsonl | parquet | hf_disk | hf_hub | tfds
    g.split = "train"
    g.fields = ml_collections.ConfigDict()  # source column of each row field
    g.fields.prompt = "prompt"
    g.fields.answer = "answer"
    g.fields.guidance = "guidance"
    g.fields.guidance_correctness = config_dict.placeholder(str)
    g.fields.difficulty = config_dict.FieldReference("difficulty", field_type=str)
    g.fields.tests = config_dict.FieldReference("tests", field_type=str)
    g.fields.guidance_optional = False  # True: rows without a trace train unguided
    g.max_prompt_length = 512  # longer prompts are dropped
    g.max_completion_length = 4096  # guidance tokens included (SPEC §1)
    g.batch_size = 8  # B, prompts per step per host
    g.order = "sorted"  # curriculum (SPEC §5): sorted | random | none
    g.seed = 0
    g.num_epochs = 1
    g.skip_bad_rows = False
    g.system_prompt = config_dict.placeholder(str)
    g.enable_thinking = True
    g.use_chat_template = True
    return g


def _sampling_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.temperature = 0.7
    g.top_p = 1.0
    g.top_k = 0
    g.guidance_in_budget = True  # max_completion_length counts guidance tokens
    g.batch_multiple = 8  # rows are padded to a multiple (fewer compiled programs)
    g.decode_phases = 4  # decode loops, each over a cache grown to what it fills
    g.param_dtype = "float32"  # float32 | bfloat16: a copy the rollouts read
    # Each group's prompt and its guided rows' common guidance prefix prefilled, held and run
    # once (rollouts and the train step's forwards); compact: finished rows leave the decode
    # batch. Both off: every row on its own (the row-wise sampler), to compare and bisect.
    g.share_prefix = True
    g.compact = True
    return g


def _grpo_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.group_size = 12  # G
    g.beta = 0.04  # β; 0 drops the reference model
    g.epsilon_low = 0.2  # ε
    g.epsilon_high = 0.2
    g.num_updates = 1  # μ
    g.aggregation = "seq_mean"  # seq_mean | token_mean | seq_sum_fixed
    g.guidance_loss = "include"  # include | mask
    g.advantage_std = "group_unbiased"  # group_unbiased | group_population | none | batch
    g.skip_zero_advantage_steps = True
    g.mask_truncated = False  # rows cut at the length budget leave the loss (TRL)
    g.filter_zero_std_groups = False  # drop groups whose rewards tie, refill (DAPO)
    g.filter_max_extra_batches = 3  # at most this many extra sampler calls a step
    g.kl_estimator = "k3"  # k3 | k1 | k2
    g.importance_level = "token"  # token | sequence (GSPO)
    # Sampler–trainer mismatch: none | token_truncate | token_mask | sequence_truncate |
    # sequence_mask, with its bounds on π_old / π_sampler (None: unbounded).
    g.rollout_correction = "none"
    g.rollout_correction_max = config_dict.FieldReference(3.0, field_type=float)
    g.rollout_correction_min = config_dict.placeholder(float)
    return g


def _optimizer_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.learning_rate = 1e-5
    g.b1 = 0.9
    g.b2 = 0.999
    g.eps = 1e-8
    g.weight_decay = 0.0
    g.warmup_steps = config_dict.placeholder(int)  # wins over warmup_ratio
    g.warmup_ratio = 0.05
    g.final_lr_fraction = 0.1
    g.max_grad_norm = config_dict.FieldReference(1.0, field_type=float)
    g.micro_batches = 1  # gradient accumulation inside a step
    return g


def _guidance_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.ratio = 0.75  # α: the first ceil(α·G) candidates of a group are guided
    g.rule = "paper"  # paper | official | constant | linear | step | concave | convex
    g.initial_length = 3072  # ℓ0
    g.min_length = 1  # ℓ_min
    g.max_length = 3072  # ℓ_max
    g.history = 2  # T
    g.steps = 4  # S of the `step` schedule
    g.signal = "accuracy"  # accuracy | unguided_accuracy | total_reward
    # always | unguided_failed: guide only the groups whose unguided candidates all failed
    # this step (a second sampler call; README "Sampling with guidance").
    g.when = "always"
    return g


def _rewards_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.weights = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.1})
    g.accuracy_reward = "accuracy"  # the reward read as accuracy (controller, eval)
    g.workers = 4  # reward processes; 0 = in the trainer process
    g.sandbox = ml_collections.ConfigDict()  # code execution limits
    g.sandbox.timeout_s = 5.0
    g.sandbox.cpu_s = 5
    g.sandbox.memory_mb = 1024
    g.sandbox.namespaces = True
    g.sandbox.user = "nobody"  # run as this user when root; "" = the trainer's user
    g.sandbox.python = ""  # interpreter for programs; "" = the trainer's
    g.code = ml_collections.ConfigDict()
    # True: test code that is not call-based runs in the program's process (gameable).
    g.code.trust_test_code = False
    return g


def _train_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.num_steps = 0  # 0 = every batch of data.num_epochs
    # Recompute each layer's activations in the train step's backward instead of storing
    # them (memory for ~1/3 more compute; README "Memory"). The sampler never differentiates.
    g.remat = True
    g.sample_every = 10  # log sample completions every n steps (0 = never)
    g.num_logged_samples = 4
    g.eval_every = 0  # evaluate on eval.path every n steps (0 = never)
    g.save_every = 100
    g.keep_checkpoints = 3
    g.async_checkpointing = True
    g.progress_bar = True
    g.wandb_project = ""  # log to Weights & Biases too when set and installed
    g.eval_at_start = False  # evaluate before the first step too (the step-0 baseline)
    g.plots = False  # at the end: PNG plots and the before → after line (report.py)
    # Warn when ≥ 90% of completions are truncated, or every group ties, this many steps in
    # a row (0 = never); stop_on_alarm then saves and stops (exit code 2).
    g.alarm_steps = 20
    g.stop_on_alarm = False
    return g


def _eval_defaults() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.path = ""  # problems, in any data.path form; known hub sets bring their fields
    g.split = ""  # "" = data.split
    g.num_samples = 1  # n completions per problem
    g.pass_k = (1,)  # pass@k reported for each k ≤ n
    g.temperature = 0.6
    g.top_p = 0.95
    g.top_k = 20
    g.max_completion_length = 0  # 0 = data.max_completion_length
    g.batch_size = 8  # prompts per sampler call
    g.max_rows = 0  # 0 = every row
    return g


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
    c.train.remat = False
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
