"""Qwen2 / Qwen2.5 / Qwen3 decoders and their Hugging Face import/export."""

from g2rpo_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from g2rpo_jax.models.hf import from_pretrained, save_pretrained
from g2rpo_jax.models.kv_cache import KVCache, init_cache
from g2rpo_jax.models.qwen import Qwen, abstract_model, positions_from_mask

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Qwen",
    "RopeScaling",
    "abstract_model",
    "from_pretrained",
    "init_cache",
    "positions_from_mask",
    "preset",
    "save_pretrained",
]
