"""Shared test set-up: 8 simulated CPU devices, tiny random Hugging Face models on disk."""

import os

# Must precede the first jax import: sharding tests need several devices on CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite is compile-bound (tiny models, each program run a few times): JAX's own switch for
# that case (LLVM at -O0, no expensive passes) compiles ~35% faster. XLA's optimized HLO is the
# same, only its code generation plainer (last-bit rounding may differ, as between backends),
# so every claim a test makes holds as at full optimization; the scripts it launches inherit
# it. JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite at full optimization.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def hf_qwen3_dir(tmp_path_factory):
    """Tiny Qwen3: GQA 4:2, q/k norm, tied embeddings."""
    return tiny_models.save_hf(tiny_models.qwen3_config(), tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="session")
def hf_qwen2_dir(tmp_path_factory):
    """Tiny Qwen2: q/k/v bias, untied head, GQA 4:1."""
    return tiny_models.save_hf(tiny_models.qwen2_config(), tmp_path_factory.mktemp("qwen2"))
