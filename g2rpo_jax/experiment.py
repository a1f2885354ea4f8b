"""A run's configuration, checked and typed: `build(c)` turns the ConfigDict of config.py into
an `Experiment` of the small frozen dataclasses each module takes (STYLE §2).

Everything is validated before any model is loaded or compiled; a bad value raises
`ConfigError` naming the field (`config.group.key`). Each group has its builder below, in the
order the Experiment lists them.
"""

import dataclasses
import re

import ml_collections

from g2rpo_jax.config import ConfigError, check_keys, fail
from g2rpo_jax.data import DataConfig, FieldMap, source_fields
from g2rpo_jax.evaluation import EvalConfig
from g2rpo_jax.grpo import GRPOConfig
from g2rpo_jax.guidance import GuidanceConfig, GuidanceWhen
from g2rpo_jax.models import PRESETS, ModelConfig, preset
from g2rpo_jax.models.attention import check as check_attention
from g2rpo_jax.models.config import LoraConfig
from g2rpo_jax.optimization import OptimizerConfig
from g2rpo_jax.rewards import RewardConfig, SandboxConfig
from g2rpo_jax.sampling import SamplingConfig
from g2rpo_jax.sharding import resolve_mesh_shape


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the initial policy comes from: `path` (weights) or `preset` + overrides."""

    path: str
    preset: str
    overrides: tuple[tuple[str, object], ...]
    fit_vocab_to_tokenizer: bool
    dtype: str
    param_dtype: str
    lora: LoraConfig = LoraConfig()
    attention: str = "auto"


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    num_steps: int  # 0 = every batch of the data's epochs
    remat: bool  # the train step recomputes each layer in the backward pass
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
class Experiment:
    """Everything a run needs, checked; built once by `build` from the ConfigDict."""

    seed: int
    model: ModelSource
    tokenizer: str
    mesh_shape: tuple[int, int, int]  # resolved: no -1
    data: DataConfig
    sampling: SamplingConfig  # eos/pad ids are filled in once the tokenizer is known
    grpo: GRPOConfig
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


def _make(group: str, cls, **kwargs):
    """cls(**kwargs), with the dataclass's own validation error naming the field."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(_naming_field(group, cls, str(e))) from None


def _replace(group: str, instance, **changes):
    try:
        return dataclasses.replace(instance, **changes)
    except (ValueError, TypeError) as e:
        raise ConfigError(_naming_field(group, type(instance), str(e))) from None


def _naming_field(group: str, cls, message: str) -> str:
    """`config.group.field…` when the message starts with one of the dataclass's fields
    (they do: "group_size (G) must be >= 2"), else `config.group: message`."""
    first = re.match(r"[A-Za-z_]\w*", message)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else ()
    if first and first.group() in fields:
        return f"config.{group}.{message}"
    return f"config.{group}: {message}"


def build(c: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1) -> Experiment:
    """Checks `c` and returns the typed Experiment; raises ConfigError naming the field.

    The optimizer and schedules run for train.num_steps, or a stand-in until the data says
    how many steps there are (`Experiment.with_total_steps`).
    """
    check_keys(c)
    model = _model_source(c.model)
    if not (c.tokenizer or model.path):
        fail("tokenizer", "set a tokenizer folder or hub id (or model.path, whose it is)")
    mesh_shape = _make(
        "mesh.shape", resolve_mesh_shape, shape=c.mesh.shape, num_devices=num_devices
    )
    grpo = _grpo(c)
    _check_rows(c, mesh_shape, num_devices, process_count)
    data = _data(c.data)
    d, s = c.data, c.sampling
    sampling = _make(
        "sampling",
        SamplingConfig,
        max_completion_length=d.max_completion_length,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        guidance_in_budget=s.guidance_in_budget,
        batch_multiple=s.batch_multiple,
        decode_phases=s.decode_phases,
        param_dtype=s.param_dtype,
        share_prefix=s.share_prefix,
        compact=s.compact,
    )
    train = _train_loop(c)
    # Until the data says how many steps there are, a stand-in that any warmup fits.
    steps = train.num_steps or (c.optimizer.warmup_steps or 0) + 1
    optimizer = _make("optimizer", OptimizerConfig, total_steps=steps, **c.optimizer.to_dict())
    return Experiment(
        seed=c.seed,
        model=model,
        tokenizer=c.tokenizer or model.path,
        mesh_shape=mesh_shape,
        data=data,
        sampling=sampling,
        grpo=grpo,
        optimizer=optimizer,
        guidance=_guidance(c, steps),
        rewards=_rewards(c.rewards),
        accuracy_reward=c.rewards.accuracy_reward,
        train=train,
        eval=_evaluation(c, data),
    )


def _model_source(m: ml_collections.ConfigDict) -> ModelSource:
    if not m.path and not m.preset:
        fail("model.path", "set model.path (a Hugging Face folder or hub id) or model.preset")
    if m.preset and m.preset not in PRESETS:
        fail("model.preset", f"{m.preset!r} is not one of {sorted(PRESETS)}")
    overrides = dict(m.overrides.to_dict())
    # overrides.attention and model.attention name the same field, which any model takes.
    _make("model", check_attention, implementation=m.attention)
    attention = _make(
        "model.overrides", check_attention, implementation=overrides.pop("attention", m.attention)
    )
    if overrides and m.path:
        fail("model.overrides", "only apply to a random init (model.path is set)")
    if m.fit_vocab_to_tokenizer and m.path:
        fail("model.fit_vocab_to_tokenizer", "only applies to a random init")
    overrides = tuple(sorted(overrides.items()))
    if m.preset:  # the architecture must build (dtype names, head counts)
        try:
            preset(m.preset, **dict(overrides), dtype=m.dtype, param_dtype=m.param_dtype)
        except (ValueError, TypeError) as e:
            fail("model", str(e))
    lora = _make("model.lora", LoraConfig, **m.lora.to_dict())
    return ModelSource(
        m.path,
        m.preset,
        overrides,
        m.fit_vocab_to_tokenizer,
        m.dtype,
        m.param_dtype,
        lora,
        attention,
    )


def _grpo(c: ml_collections.ConfigDict) -> GRPOConfig:
    temperature = c.sampling.temperature
    return _make(
        "grpo",
        GRPOConfig,
        **c.grpo.to_dict(),
        max_completion_length=c.data.max_completion_length,
        # Greedy rollouts report temperature-1 log-probs.
        sampling_temperature=temperature if temperature > 0 else 1.0,
    )


def _check_rows(c, mesh_shape: tuple[int, int, int], num_devices: int, process_count: int):
    """B × hosts × G rows a step must split evenly over the data-parallel devices and the
    micro-batches."""
    d, group_size = c.data, c.grpo.group_size
    if d.batch_size < 1:
        fail("data.batch_size", f"{d.batch_size} must be >= 1")
    rows = d.batch_size * process_count * group_size
    data_parallel = mesh_shape[0] * mesh_shape[1]
    if rows % data_parallel:
        fail(
            "data.batch_size",
            f"B={d.batch_size} × {process_count} hosts × G={group_size} = {rows} rows per "
            f"step are not divisible by the mesh's data × fsdp = {data_parallel} "
            f"(config.mesh.shape={tuple(c.mesh.shape)} on {num_devices} devices)",
        )
    if rows % c.optimizer.micro_batches:
        fail("optimizer.micro_batches", f"{c.optimizer.micro_batches} does not divide {rows} rows")


def _data(d: ml_collections.ConfigDict) -> DataConfig:
    if not d.path:
        fail("data.path", "set the training data (--config.data.path=FILE or hf:HUB_ID)")
    fields = _make("data.fields", FieldMap, **d.fields.to_dict())
    data_kw = {k: v for k, v in d.to_dict().items() if k != "fields"}
    return _make("data", DataConfig, **data_kw, fields=source_fields(d.path, fields))


def _guidance(c: ml_collections.ConfigDict, steps: int) -> GuidanceConfig:
    if not 0.0 <= c.guidance.ratio <= 1.0:
        fail("guidance.ratio", f"α={c.guidance.ratio} must be in [0, 1]")
    guidance = _make("guidance", GuidanceConfig, total_steps=steps, **c.guidance.to_dict())
    if guidance.max_length > c.data.max_completion_length:
        # Traces are cut to max_completion_length tokens when read, with or without
        # guidance_in_budget: a longer ℓ would be capped there without a word.
        fail(
            "guidance.max_length",
            f"ℓ_max={guidance.max_length} exceeds data.max_completion_length="
            f"{c.data.max_completion_length}, the most trace tokens a row holds",
        )
    if guidance.when is GuidanceWhen.UNGUIDED_FAILED and not (
        c.sampling.share_prefix or c.sampling.compact
    ):
        # Its two sampler calls leave each other's rows a budget of 0 tokens.
        fail(
            "guidance.when",
            "unguided_failed needs per-row budgets: sampling.share_prefix or sampling.compact",
        )
    return guidance


def _rewards(r: ml_collections.ConfigDict) -> RewardConfig:
    box = r.sandbox.to_dict() | {"user": r.sandbox.user or None}
    box["python"] = r.sandbox.python or SandboxConfig.python
    sandbox = _make("rewards.sandbox", SandboxConfig, **box)
    rewards = _make(
        "rewards",
        RewardConfig,
        weights=r.weights.to_dict(),
        workers=r.workers,
        sandbox=sandbox,
        trust_test_code=r.code.trust_test_code,
    )
    if r.accuracy_reward not in r.weights:
        fail("rewards.accuracy_reward", f"{r.accuracy_reward!r} is not in rewards.weights")
    return rewards


def _train_loop(c: ml_collections.ConfigDict) -> TrainLoopConfig:
    t = c.train
    if t.num_steps < 0:
        fail("train.num_steps", f"{t.num_steps} must be >= 0 (0: every batch of the data)")
    for name in ("save_every", "keep_checkpoints"):
        if t[name] < 1:
            fail(f"train.{name}", f"{t[name]} must be >= 1")
    for name in ("sample_every", "eval_every", "num_logged_samples", "alarm_steps"):
        if t[name] < 0:
            fail(f"train.{name}", f"{t[name]} must be >= 0")
    if t.eval_every and not c.eval.path:
        fail("eval.path", "train.eval_every is set but there is no eval file")
    return TrainLoopConfig(**t.to_dict())


def _evaluation(c: ml_collections.ConfigDict, data: DataConfig) -> EvalConfig:
    e, s = c.eval, c.sampling
    if e.num_samples < 1:
        fail("eval.num_samples", f"n={e.num_samples} must be >= 1")
    pass_k = tuple(int(k) for k in e.pass_k)
    if not pass_k or any(not 1 <= k <= e.num_samples for k in pass_k):
        fail("eval.pass_k", f"{pass_k}: each k must be in [1, eval.num_samples={e.num_samples}]")
    if e.batch_size < 1:
        fail("eval.batch_size", f"{e.batch_size} must be >= 1")
    sampling = _make(
        "eval",
        SamplingConfig,
        max_completion_length=e.max_completion_length or data.max_completion_length,
        temperature=e.temperature,
        top_p=e.top_p,
        top_k=e.top_k,
        batch_multiple=s.batch_multiple,
        decode_phases=s.decode_phases,
        share_prefix=s.share_prefix,
        compact=s.compact,
    )
    fields = _make("data.fields", FieldMap, **c.data.fields.to_dict())
    return EvalConfig(
        e.path,
        e.num_samples,
        pass_k,
        sampling,
        e.batch_size,
        e.max_rows,
        e.split or data.split,
        source_fields(e.path, fields),
    )


def preset_model_config(source: ModelSource, vocab_size: int | None = None) -> ModelConfig:
    """The architecture of a random init (or the preset a `path` config names), offline."""
    overrides = dict(source.overrides)
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    return preset(
        source.preset,
        **overrides,
        dtype=source.dtype,
        param_dtype=source.param_dtype,
        attention=source.attention,
    )
