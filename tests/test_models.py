"""The decoder computes what transformers' Qwen2/Qwen3 compute, through every path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from g2rpo_jax.models import from_pretrained, init_cache
from g2rpo_jax.models.rope import rope_frequencies
from tests import tiny_models


@nnx.jit
def forward(model, ids, positions, mask):
    return model(ids, positions, mask)


@nnx.jit
def cached_forward(model, ids, positions, mask, cache):
    return model(ids, positions, mask, cache)


def max_error(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)].max())


@pytest.mark.parametrize("fixture", ["hf_qwen3_dir", "hf_qwen2_dir"])
def test_logits_match_transformers_on_left_padded_batch(fixture, request):
    directory = request.getfixturevalue(fixture)
    model, _ = from_pretrained(directory)
    ids, mask, positions = tiny_models.left_padded_batch()
    expected = tiny_models.hf_logits(tiny_models.load_hf(directory), ids, mask, positions)
    error = max_error(forward(model, ids, positions, mask), expected, mask)
    print(f"{fixture}: max |Δlogits| = {error:.2e}")
    assert error <= 1e-4


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
         "rope_theta": 10000.0},
    ],
)  # fmt: skip
def test_rope_scaling_matches_transformers(rope, tmp_path):
    config = tiny_models.qwen3_config(rope_parameters=rope, max_position_embeddings=64)
    hf = tiny_models.random_hf_model(config)
    hf.save_pretrained(tmp_path)
    model, ours = from_pretrained(str(tmp_path))
    inv_freq, scale = rope_frequencies(ours)
    rotary = hf.model.rotary_emb
    np.testing.assert_allclose(inv_freq, rotary.inv_freq.numpy(), rtol=1e-6)
    assert scale == pytest.approx(rotary.attention_scaling)
    ids, mask, positions = tiny_models.left_padded_batch(length=40, pads=(0, 7, 20))
    expected = tiny_models.hf_logits(hf, ids, mask, positions)
    assert max_error(forward(model, ids, positions, mask), expected, mask) <= 1e-4


def test_unsupported_rope_type_is_named(tmp_path):
    config = tiny_models.qwen3_config(
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    )
    tiny_models.save_hf(config, tmp_path)
    with pytest.raises(ValueError, match="rope type 'dynamic' is not supported"):
        from_pretrained(str(tmp_path))


@pytest.mark.parametrize("fixture", ["hf_qwen3_dir", "hf_qwen2_dir"])
def test_prefill_then_decode_equals_full_forward(fixture, request):
    model, config = from_pretrained(request.getfixturevalue(fixture))
    ids, mask, positions = tiny_models.left_padded_batch(length=14, pads=(0, 3, 6))
    full = np.asarray(forward(model, ids, positions, mask))
    prefill = 8
    cache = init_cache(config, batch=ids.shape[0], max_length=16)
    logits, cache = cached_forward(
        model, ids[:, :prefill], positions[:, :prefill], mask[:, :prefill], cache
    )
    steps = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        logits, cache = cached_forward(
            model, ids[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], cache
        )
        steps.append(np.asarray(logits))
    assert int(cache.index) == ids.shape[1]
    assert max_error(np.concatenate(steps, axis=1), full, mask) <= 1e-4


@pytest.mark.parametrize("remat", [False, True])
def test_last_positions_only(hf_qwen3_dir, remat):
    """`last=k` gives the full forward's last k hidden states and the same cache."""
    model, config = from_pretrained(hf_qwen3_dir)
    ids, mask, positions = tiny_models.left_padded_batch(length=14, pads=(0, 3, 6))

    @nnx.jit(static_argnums=1)
    def prefill(model, last):
        cache = init_cache(config, batch=ids.shape[0], max_length=ids.shape[1])
        return model.hidden_states(ids, positions, mask, cache, last=last, remat=remat)

    full, full_cache = prefill(model, None)
    for last in (1, 5):
        hidden, cache = prefill(model, last)
        assert hidden.shape == (ids.shape[0], last, config.hidden_size)
        np.testing.assert_allclose(hidden, full[:, -last:], atol=1e-5)
        for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(full_cache), strict=True):
            np.testing.assert_array_equal(a, b)


def test_left_padding_changes_nothing(hf_qwen3_dir):
    model, _ = from_pretrained(hf_qwen3_dir)
    ids, mask, positions = tiny_models.left_padded_batch(pads=(0, 5, 9))
    padded = np.asarray(forward(model, ids, positions, mask))
    row = 2
    alone = np.asarray(
        forward(model, ids[row:, 9:], positions[row:, 9:], mask[row:, 9:])
    )  # the same row without its padding
    np.testing.assert_allclose(padded[row, 9:], alone[0], atol=1e-5)


def test_remat_equals_no_remat(hf_qwen3_dir):
    ids, mask, positions = tiny_models.left_padded_batch()
    grads = []
    model, _ = from_pretrained(hf_qwen3_dir)
    for remat in (False, True):

        @nnx.jit
        def loss_grad(model, remat=remat):
            def loss(model):
                hidden, _ = model.hidden_states(ids, positions, mask, remat=remat)
                logp = jax.nn.log_softmax(model.logits(hidden))
                return jnp.sum(logp[..., 3] * mask)

            return nnx.grad(loss)(model)

        grads.append(jax.tree.leaves(nnx.state(loss_grad(model))))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_compute_stays_close_to_fp32(hf_qwen3_dir, param_dtype):
    ids, mask, positions = tiny_models.left_padded_batch()
    fp32, _ = from_pretrained(hf_qwen3_dir)
    bf16, _ = from_pretrained(hf_qwen3_dir, dtype="bfloat16", param_dtype=param_dtype)
    reference = np.asarray(forward(fp32, ids, positions, mask))
    logits = forward(bf16, ids, positions, mask)
    assert logits.dtype == jnp.float32  # the head accumulates in fp32
    error = max_error(logits, reference, mask)
    scale = float(np.abs(reference).max())
    print(
        f"bf16 compute, {param_dtype} params: max |Δlogits| = {error:.3e} (|logits| ≤ {scale:.2f})"
    )
    assert error <= 5e-2


def test_bf16_is_as_accurate_as_transformers_bf16(hf_qwen3_dir):
    ids, mask, positions = tiny_models.left_padded_batch()
    hf = tiny_models.load_hf(hf_qwen3_dir)
    reference = tiny_models.hf_logits(hf, ids, mask, positions)
    hf_error = max_error(tiny_models.hf_logits(hf.to(torch.bfloat16), ids, mask, positions),
                         reference, mask)  # fmt: skip
    ours, _ = from_pretrained(hf_qwen3_dir, dtype="bfloat16")
    error = max_error(forward(ours, ids, positions, mask), reference, mask)
    print(f"bf16 vs fp32 reference: ours {error:.3e}, transformers {hf_error:.3e}")
    assert error <= 1.5 * hf_error
