"""The run configuration: one ml_collections ConfigDict at the edge, checked and turned into
the small frozen dataclasses each module takes (STYLE §2).

`default_config()` is the schema: every option, its default (SPEC §7 paper scale) and a
comment. Config files in configs/ start from it and change what they need; `variant(c, arg)`
applies `get_config(arg)` variants such as `smoke`. `build(c)` validates everything before
any model is loaded or compiled and raises `ConfigError` naming the field.
"""

import dataclasses
import math

import ml_collections
from ml_collections import config_dict

from g2rpo_jax.data import HUB_PREFIX, DataConfig, FieldMap, source_fields
from g2rpo_jax.grpo import GRPOConfig
from g2rpo_jax.guidance import GuidanceConfig
from g2rpo_jax.models import PRESETS, ModelConfig, preset
from g2rpo_jax.models.attention import check as check_attention
from g2rpo_jax.models.config import LORA_TARGETS, LoraConfig
from g2rpo_jax.optimization import OptimizerConfig
from g2rpo_jax.rewards import REWARD_FUNCTIONS, RewardConfig, SandboxConfig
from g2rpo_jax.sampling import SamplingConfig

BYTES_TOKENIZER = "builtin:bytes"  # a byte-level Qwen-style tokenizer written to the workdir
VARIANTS = ("smoke",)
OPENR1_MATH = "hf:open-r1/OpenR1-Math-220k"
MATH_500 = "hf:HuggingFaceH4/MATH-500"
# The paper recipe's instruction (SPEC §7): the format that the format reward checks and that
# OpenR1's traces take once their solution is wrapped as the answer (FieldMap.openr1_math).
MATH_SYSTEM_PROMPT = (
    "You are a helpful assistant. Reason about the problem step by step first, then give "
    "your solution. Respond in this format:\n<think>\n...\n</think>\n<answer>\n...\n"
    "</answer>\nand put the final answer within \\boxed{} inside the answer."
)
# Sub-dicts whose keys are free (checked against another schema instead of the defaults).
_FREE_KEYS = ("model.overrides", "rewards.weights")


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
    c.model.lora.dropout = 0.0  # only 0 is supported
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
        dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=16, max_position_embeddings=1024)
    )  # fmt: skip
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


# --- The checked, typed form ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the initial policy comes from: `path` (weights) or `preset` + overrides."""

    path: str
    preset: str
    overrides: tuple[tuple[str, object], ...]
    fit_vocab_to_tokenizer: bool
    dtype: str
    param_dtype: str
    remat: bool
    lora: LoraConfig = LoraConfig()
    attention: str = "auto"


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    num_steps: int  # 0 = every batch of the data's epochs
    sample_every: int
    num_logged_samples: int
    eval_every: int
    save_every: int
    keep_checkpoints: int
    async_checkpointing: bool
    progress_bar: bool
    wandb_project: str
    eval_at_start: bool
    plots: bool
    alarm_steps: int
    stop_on_alarm: bool


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation decoding and scoring (SPEC §7): n samples per problem, pass@k."""

    path: str
    num_samples: int
    pass_k: tuple[int, ...]
    sampling: SamplingConfig  # eos/pad ids are filled in once the tokenizer is known
    batch_size: int
    max_rows: int
    split: str = "train"
    fields: FieldMap = FieldMap()


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, checked; built once by `build` from the ConfigDict."""

    seed: int
    model: ModelSource
    tokenizer: str
    mesh_shape: tuple[int, int, int]  # resolved: no -1
    data: DataConfig
    sampling: SamplingConfig  # eos/pad ids are filled in once the tokenizer is known
    grpo: GRPOConfig
    group_size: int  # G
    optimizer: OptimizerConfig
    guidance: GuidanceConfig
    rewards: RewardConfig
    accuracy_reward: str
    train: TrainLoopConfig
    eval: EvalConfig

    def with_total_steps(self, total_steps: int) -> "Experiment":
        """The optimizer's and the guidance schedules' run length, once the data is known."""
        optimizer = _replace("optimizer", self.optimizer, total_steps=total_steps)
        guidance_config = _replace("guidance", self.guidance, total_steps=total_steps)
        return dataclasses.replace(self, optimizer=optimizer, guidance=guidance_config)


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def _make(group: str, cls, **kwargs):
    """cls(**kwargs), with the dataclass's own validation error prefixed by the group."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.{group}: {e}") from None


def _replace(group: str, instance, **changes):
    try:
        return dataclasses.replace(instance, **changes)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.{group}: {e}") from None


def check_keys(c: ml_collections.ConfigDict) -> None:
    """Every key must exist in `default_config()` (a typo in a config file fails here;
    on the command line the locked ConfigDict already refuses it)."""

    def walk(given, schema, prefix):
        for key in given.keys():
            name = f"{prefix}{key}"
            if key not in schema:
                group = f"config.{prefix[:-1]}" if prefix else "config"
                _fail(name, f"unknown key (the keys of {group}: {', '.join(sorted(schema))})")
            if name in _FREE_KEYS:
                continue
            if isinstance(schema[key], ml_collections.ConfigDict):
                if not isinstance(given[key], ml_collections.ConfigDict):
                    _fail(name, "must be a group of options")
                walk(given[key], schema[key], f"{name}.")

    walk(c, default_config(), "")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in c.model.overrides.keys():
        if key not in model_fields:
            _fail(f"model.overrides.{key}", f"not a ModelConfig field ({sorted(model_fields)})")
    for key in c.rewards.weights.keys():
        if key not in REWARD_FUNCTIONS:
            _fail(f"rewards.weights.{key}", f"unknown reward; known: {sorted(REWARD_FUNCTIONS)}")


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        _fail("mesh.shape", f"{shape}: three sizes (data, fsdp, tensor), at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            _fail("mesh.shape", f"{shape}: {num_devices} devices are not divisible by {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        _fail("mesh.shape", f"{shape} needs {math.prod(shape)} devices, {num_devices} exist")
    return shape


def build(
    c: ml_collections.ConfigDict,
    *,
    num_devices: int,
    process_count: int = 1,
) -> Experiment:
    """Checks `c` and returns the typed Experiment; raises ConfigError naming the field.

    The optimizer and schedules run for train.num_steps, or a stand-in until the data says
    how many steps there are (`Experiment.with_total_steps`).
    """
    check_keys(c)
    m = c.model
    if not m.path and not m.preset:
        _fail("model.path", "set model.path (a Hugging Face folder or hub id) or model.preset")
    if m.preset and m.preset not in PRESETS:
        _fail("model.preset", f"{m.preset!r} is not one of {sorted(PRESETS)}")
    overrides = dict(m.overrides.to_dict())
    # overrides.attention and model.attention name the same field, which any model takes.
    _make("model", check_attention, implementation=m.attention)
    attention = _make("model.overrides", check_attention,
                      implementation=overrides.pop("attention", m.attention))  # fmt: skip
    if overrides and m.path:
        _fail("model.overrides", "only apply to a random init (model.path is set)")
    if m.fit_vocab_to_tokenizer and m.path:
        _fail("model.fit_vocab_to_tokenizer", "only applies to a random init")
    overrides = tuple(sorted(overrides.items()))
    if m.preset:  # the architecture must build (dtype names, head counts)
        try:
            preset(m.preset, **dict(overrides), dtype=m.dtype, param_dtype=m.param_dtype)
        except (ValueError, TypeError) as e:
            _fail("model", str(e))
    if m.lora.dropout != 0:
        _fail("model.lora.dropout", f"{m.lora.dropout}: only 0 is supported")
    lora_kw = {k: v for k, v in m.lora.to_dict().items() if k != "dropout"}
    lora = _make("model.lora", LoraConfig, **lora_kw)
    model = ModelSource(m.path, m.preset, overrides, m.fit_vocab_to_tokenizer, m.dtype,
                        m.param_dtype, m.remat, lora, attention)  # fmt: skip
    if not (c.tokenizer or m.path):
        _fail("tokenizer", "set a tokenizer folder or hub id (or model.path, whose it is)")

    group_size = c.grpo.group_size
    if group_size < 2:
        _fail("grpo.group_size", f"G={group_size}: a group needs at least 2 candidates")
    if not 0.0 <= c.guidance.ratio <= 1.0:
        _fail("guidance.ratio", f"α={c.guidance.ratio} must be in [0, 1]")

    mesh_shape = resolve_mesh_shape(c.mesh.shape, num_devices)
    data_parallel = mesh_shape[0] * mesh_shape[1]
    d = c.data
    if not d.path:
        _fail("data.path", "set the training data (--config.data.path=FILE or hf:HUB_ID)")
    rows = d.batch_size * process_count * group_size
    if d.batch_size < 1:
        _fail("data.batch_size", f"{d.batch_size} must be >= 1")
    if rows % data_parallel:
        _fail(
            "data.batch_size",
            f"B={d.batch_size} × {process_count} hosts × G={group_size} = {rows} rows per "
            f"step are not divisible by the mesh's data × fsdp = {data_parallel} "
            f"(config.mesh.shape={tuple(c.mesh.shape)} on {num_devices} devices)",
        )
    if rows % c.optimizer.micro_batches:
        _fail("optimizer.micro_batches", f"{c.optimizer.micro_batches} does not divide {rows} rows")

    fields = _make("data.fields", FieldMap, **c.data.fields.to_dict())
    data_kw = {k: v for k, v in d.to_dict().items() if k != "fields"}
    data = _make("data", DataConfig, **data_kw, fields=source_fields(d.path, fields))

    s = c.sampling
    sampling = _make(
        "sampling", SamplingConfig, max_completion_length=d.max_completion_length,
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        guidance_in_budget=s.guidance_in_budget, batch_multiple=s.batch_multiple,
        decode_phases=s.decode_phases, param_dtype=s.param_dtype,
    )  # fmt: skip
    grpo_kw = {k: v for k, v in c.grpo.to_dict().items() if k != "group_size"}
    # Greedy rollouts report temperature-1 log-probs.
    grpo = _make("grpo", GRPOConfig, **grpo_kw, max_completion_length=d.max_completion_length,
                 sampling_temperature=s.temperature if s.temperature > 0 else 1.0)  # fmt: skip

    t = c.train
    if t.num_steps < 0:
        _fail("train.num_steps", f"{t.num_steps} must be >= 0 (0: every batch of the data)")
    # Until the data says how many steps there are, a stand-in that any warmup fits.
    steps = t.num_steps or (c.optimizer.warmup_steps or 0) + 1
    optimizer = _make("optimizer", OptimizerConfig, total_steps=steps, **c.optimizer.to_dict())
    guidance_config = _make("guidance", GuidanceConfig, total_steps=steps, **c.guidance.to_dict())
    if guidance_config.max_length > d.max_completion_length:
        # Traces are cut to max_completion_length tokens when read, with or without
        # guidance_in_budget: a longer ℓ would be capped there without a word.
        _fail(
            "guidance.max_length",
            f"ℓ_max={guidance_config.max_length} exceeds data.max_completion_length="
            f"{d.max_completion_length}, the most trace tokens a row holds",
        )

    r = c.rewards
    box = r.sandbox.to_dict() | {"user": r.sandbox.user or None}
    box["python"] = r.sandbox.python or SandboxConfig.python
    sandbox = _make("rewards.sandbox", SandboxConfig, **box)
    rewards = _make("rewards", RewardConfig, weights=r.weights.to_dict(), workers=r.workers,
                    sandbox=sandbox)  # fmt: skip
    if r.accuracy_reward not in r.weights:
        _fail("rewards.accuracy_reward", f"{r.accuracy_reward!r} is not in rewards.weights")

    for name in ("save_every", "keep_checkpoints"):
        if t[name] < 1:
            _fail(f"train.{name}", f"{t[name]} must be >= 1")
    for name in ("sample_every", "eval_every", "num_logged_samples", "alarm_steps"):
        if t[name] < 0:
            _fail(f"train.{name}", f"{t[name]} must be >= 0")
    if t.eval_every and not c.eval.path:
        _fail("eval.path", "train.eval_every is set but there is no eval file")
    train = TrainLoopConfig(**t.to_dict())

    e = c.eval
    if e.num_samples < 1:
        _fail("eval.num_samples", f"n={e.num_samples} must be >= 1")
    pass_k = tuple(int(k) for k in e.pass_k)
    if not pass_k or any(not 1 <= k <= e.num_samples for k in pass_k):
        _fail("eval.pass_k", f"{pass_k}: each k must be in [1, eval.num_samples={e.num_samples}]")
    if e.batch_size < 1:
        _fail("eval.batch_size", f"{e.batch_size} must be >= 1")
    eval_sampling = _make(
        "eval", SamplingConfig, max_completion_length=e.max_completion_length or
        d.max_completion_length, temperature=e.temperature, top_p=e.top_p, top_k=e.top_k,
        batch_multiple=s.batch_multiple, decode_phases=s.decode_phases,
    )  # fmt: skip
    evaluation = EvalConfig(e.path, e.num_samples, pass_k, eval_sampling, e.batch_size,
                            e.max_rows, e.split or d.split, source_fields(e.path, fields))  # fmt: skip

    return Experiment(
        seed=c.seed, model=model, tokenizer=c.tokenizer or m.path, mesh_shape=mesh_shape,
        data=data, sampling=sampling, grpo=grpo, group_size=group_size, optimizer=optimizer,
        guidance=guidance_config, rewards=rewards, accuracy_reward=r.accuracy_reward,
        train=train, eval=evaluation,
    )  # fmt: skip


def preset_model_config(source: ModelSource, vocab_size: int | None = None) -> ModelConfig:
    """The architecture of a random init (or the preset a `path` config names), offline."""
    overrides = dict(source.overrides)
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    return preset(source.preset, **overrides, dtype=source.dtype,
                  param_dtype=source.param_dtype, remat=source.remat,
                  attention=source.attention)  # fmt: skip
