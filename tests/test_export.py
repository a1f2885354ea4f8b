"""The real programs lower for TPU and NVIDIA GPUs, from this CPU machine (jax.export).

Nothing is allocated: weights, state and batches are ShapeDtypeStructs. The model is built
for the target platform (`abstract_model(config, platform)`), so "auto" attention resolves to
that platform's kernel; the XLA:CPU forms (models/xla_cpu.py) are lowered only for CPU, and
every exported program is checked for them.

cuDNN's attention checks the installed cuDNN before it lowers; this machine has no CUDA
plugin, so the check is told a cuDNN 9.10 is there. Its custom calls are not in jax.export's
list of calls with a stability guarantee, so the export names them as accepted.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.cudnn import fused_attention_stablehlo

from g2rpo_jax import grpo, guidance, optimization, sharding, train_step
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import abstract_model, attention, preset
from g2rpo_jax.models.config import ModelConfig
from g2rpo_jax.rollout import Groups, GroupSampler
from g2rpo_jax.sampling import Sampler, SamplingConfig

PAPER_TOKENS = 512 + 4096
CUDNN_CALLS = ("__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward",
               "__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward")  # fmt: skip
# The custom call each platform's attention kernel lowers to.
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__cudnn$fmha"}


@pytest.fixture(autouse=True)
def cudnn_9_10(monkeypatch):
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)


def _export(fn, platform: str, *args) -> str:
    """The exported program's StableHLO text; no XLA:CPU form may reach another platform's
    (the text's locations name the file each op was traced in)."""
    disabled = [jax.export.DisabledSafetyCheck.custom_call(c) for c in CUDNN_CALLS]
    exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=disabled)
    text = exported(*args).mlir_module()
    assert (XLA_CPU_FILE in text) == (platform == "cpu")
    return text


XLA_CPU_FILE = "models/xla_cpu.py"


def test_xla_cpu_forms_reach_cpu_programs_only():
    """A decode step: the multiply-reduces and the barrier on CPU, einsums elsewhere."""
    B, K, G, H, S = 2, 2, 2, 16, 32
    q, k, v = jnp.zeros((B, K, G, H)), jnp.zeros((B, K, H, S)), jnp.zeros((B, K, S, H))
    mask = jnp.ones((B, S), bool)
    step = lambda q, k, v, mask: attention.decode(q, k, v, mask, jnp.int32(3))
    for platform in ("cpu", "tpu", "cuda"):
        _export(step, platform, q, k, v, mask)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.mark.parametrize("platform,implementation", [("tpu", "splash"), ("cuda", "cudnn")])
def test_qwen3_0p6b_forward_and_backward_at_paper_length(platform, implementation):
    """Qwen3-0.6B's layer (its heads, head size 128, GQA 16:8) at 4,608 tokens, remat on,
    bf16 compute: value and gradient of the hidden states, the shape of one row of the
    paper's training step. Two of its 28 layers: the kernel is chosen per layer from the
    head and sequence shape, which the other 26 would only repeat."""
    config = preset("qwen3-0.6b", dtype="bfloat16", attention=implementation, num_layers=2)
    graphdef, params = nnx.split(abstract_model(config, platform))
    ids = jax.ShapeDtypeStruct((1, PAPER_TOKENS), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, PAPER_TOKENS), jnp.bool_)

    def loss(params, ids, mask):
        positions = jnp.cumsum(mask, axis=1) - 1
        hidden, _ = nnx.merge(graphdef, params).hidden_states(ids, positions, mask, remat=True)
        return jnp.sum(hidden.astype(jnp.float32))

    text = _export(jax.value_and_grad(loss), platform, _abstract(params), ids, mask)
    assert KERNEL_CALL[platform] in text


TINY = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=128, intermediate_size=256,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, qk_norm=True,
                   tie_word_embeddings=True, dtype="bfloat16")  # fmt: skip


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_train_step_lowers_with_auto_attention(platform):
    """The whole jitted step, as the trainer builds it, over a one-device mesh."""
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    grpo_config = grpo.GRPOConfig(group_size=4, beta=0.04)
    optimizer = optimization.OptimizerConfig(total_steps=10, micro_batches=2)
    guidance_config = guidance.GuidanceConfig(ratio=0.5, initial_length=16, max_length=32)
    graphdef, params = nnx.split(abstract_model(TINY, platform))
    state = jax.eval_shape(
        lambda p: train_step.init_train_state(
            nnx.merge(graphdef, p), grpo_config, optimizer, guidance_config
        ),
        params,
    )
    step = train_step.make_train_step(
        graphdef, grpo_config, optimizer, guidance_config, mesh, state, remat=True
    )
    rows, prompt, completion = 8, 32, 96
    spec = {"prompt_ids": (prompt, jnp.int32), "prompt_mask": (prompt, jnp.bool_),
            "completion_ids": (completion, jnp.int32), "completion_mask": (completion, jnp.bool_),
            "is_guidance": (completion, jnp.bool_),
        "sampler_log_probs": (completion, jnp.float32), "rewards": (None, jnp.float32),
            "accuracy": (None, jnp.float32),
            "truncated": (None, jnp.bool_), "is_filler": (None, jnp.bool_)}  # fmt: skip
    batch = {k: jax.ShapeDtypeStruct((rows,) if w is None else (rows, w), dt)
             for k, (w, dt) in spec.items()}  # fmt: skip
    # Each program a run may compile: row-wise, shared prompt, shared guidance (W = 24). The
    # shared prompt's completions attend over a KV cache (the decode path's einsums); the
    # others run whole sequences through the platform's kernel.
    programs = [step.program(f) for f in range(len(step.forwards(batch)))]
    texts = [_export(program, platform, _abstract(state), batch) for program in programs]
    assert [KERNEL_CALL[platform] in text for text in texts] == [True, False, True]


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_sampler_lowers_with_auto_attention(platform):
    """Guided prefill (the platform's kernel) and the decode loop (the generic einsums)."""
    graphdef, params = nnx.split(abstract_model(TINY, platform))
    config = SamplingConfig(max_completion_length=32, temperature=1.0, top_p=0.95)
    sampler = Sampler(graphdef, config, TokenIds(eos=(1,)))
    B, P, L = 8, 32, 16
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    row_ids = jax.ShapeDtypeStruct((B,), jnp.uint32)
    text = _export(sampler._sample, platform, _abstract(params), int32(B, P), int32(B),
                   int32(B, L), int32(B), row_ids, key)  # fmt: skip
    assert KERNEL_CALL[platform] in text


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_group_sampler_lowers_with_auto_attention(platform):
    """The group prefill (the platform's kernel) and the decode over a group-shared prefix
    (group_cache.attend through attention.decode_scores / decode_values, generic einsums),
    compacted widths included."""
    graphdef, params = nnx.split(abstract_model(TINY, platform))
    G = 4
    config = SamplingConfig(max_completion_length=32, temperature=1.0, top_p=0.95)
    sampler = GroupSampler(graphdef, config, TokenIds(eos=(1,)), group_size=G, num_guided=2)
    B, P, L = 2, 32, 16
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    groups = Groups(
        prompt_ids=int32(B, P),
        prompt_len=int32(B),
        trace_ids=int32(B, L),
        trace_len=int32(B),
        ell=int32(),
        num_guided=int32(),
        max_new_tokens=int32(B * G),
        row_ids=jax.ShapeDtypeStruct((B * G,), jnp.uint32),
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    text = _export(sampler._sample, platform, _abstract(params), groups, key)
    assert KERNEL_CALL[platform] in text
