"""ModelConfig: the architecture of a dense Qwen2 / Qwen2.5 / Qwen3 decoder, and presets."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from g2rpo_jax.models import attention as attention_impl

MODEL_TYPES = ("qwen2", "qwen3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(dtype, field: str = "dtype") -> str:
    """The name in DTYPES of a dtype given as a string, a jnp or numpy type, or an np.dtype.

    Configs and checkpoints store the name; JAX users pass `jnp.float32`, numpy users
    `np.float32`, and all three must mean the same model.
    """
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in DTYPES:
        raise ValueError(f"{field}={dtype!r}: use one of {list(DTYPES)} (or their jnp/np dtypes)")
    return name


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling as Hugging Face configs write it; `kind` is "linear" or "yarn"."""

    kind: str
    factor: float
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.kind not in ("linear", "yarn"):
            raise ValueError(
                f"rope_scaling type {self.kind!r} is not supported: use 'linear' or 'yarn'"
            )


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W + (alpha/rank)·A·B on the named projections; rank 0 = none.

    A [in, rank] starts random, B [rank, out] at zero, so an untrained adapter leaves the
    model's output exactly as it was. Adapters are stored in float32 whatever param_dtype.
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"lora.targets {unknown}: use a subset of {LORA_TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def applies_to(self, name: str) -> bool:
        return self.rank > 0 and name in self.targets


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of the decoder; frozen so it can be a jit static argument.

    qkv_bias: q/k/v projections carry a bias (Qwen2/2.5). o_bias: so does the output
    projection (Qwen3 with attention_bias). qk_norm: per-head RMSNorm on q and k (Qwen3).
    dtype is the compute dtype, param_dtype the storage dtype of the weights. attention: how
    the full and prefill attention runs (attention.py; "auto" picks by platform and length);
    it changes no result beyond fp32 rounding, so it is not part of the HF config.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: LoraConfig = LoraConfig()
    attention: str = "auto"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported: use one of {MODEL_TYPES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        attention_impl.check(self.attention)
        for field in ("dtype", "param_dtype"):
            # Frozen: normalising a jnp/np dtype to its name is the one write after init.
            object.__setattr__(self, field, dtype_name(getattr(self, field), field))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def qwen3(**kw) -> ModelConfig:
    return ModelConfig(model_type="qwen3", qk_norm=True, **kw)


def qwen2(**kw) -> ModelConfig:
    return ModelConfig(model_type="qwen2", qkv_bias=True, **kw)


_QWEN_VOCAB = 151_936
_QWEN3 = dict(
    vocab_size=_QWEN_VOCAB,
    head_dim=128,
    max_position_embeddings=40_960,
    bos_token_id=151_643,
    eos_token_id=151_645,
)
_QWEN25 = dict(max_position_embeddings=32_768, bos_token_id=151_643, eos_token_id=151_643)
_QWEN25_MATH = dict(
    rope_theta=10_000.0, max_position_embeddings=4096, bos_token_id=151_643, eos_token_id=151_643
)

# The published architectures (config.json of each Hugging Face repo); no weights here.
PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": qwen3(
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        tie_word_embeddings=True,
        **_QWEN3,
    ),
    "qwen3-1.7b": qwen3(
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        tie_word_embeddings=True,
        **_QWEN3,
    ),
    "qwen3-4b": qwen3(
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        tie_word_embeddings=True,
        **_QWEN3,
    ),
    "qwen3-8b": qwen3(
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        tie_word_embeddings=False,
        **_QWEN3,
    ),
    "qwen2.5-0.5b": qwen2(
        vocab_size=_QWEN_VOCAB,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
        **_QWEN25,
    ),
    "qwen2.5-1.5b": qwen2(
        vocab_size=_QWEN_VOCAB,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        tie_word_embeddings=True,
        **_QWEN25,
    ),
    "qwen2.5-7b": qwen2(
        vocab_size=152_064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        tie_word_embeddings=False,
        **_QWEN25,
    ),
    "qwen2.5-math-1.5b": qwen2(
        vocab_size=_QWEN_VOCAB,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        tie_word_embeddings=True,
        **_QWEN25_MATH,
    ),
    "qwen2.5-math-7b": qwen2(
        vocab_size=152_064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        tie_word_embeddings=False,
        **_QWEN25_MATH,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset by name (e.g. "qwen3-0.6b"), with field overrides such as dtype."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
