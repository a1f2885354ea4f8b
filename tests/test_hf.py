"""Hugging Face import/export: round trips, sharded files, presets, and clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from g2rpo_jax import sharding
from g2rpo_jax.models import PRESETS, abstract_model, from_pretrained, save_pretrained
from g2rpo_jax.models.hf import config_to_hf
from g2rpo_jax.models.qwen import param_count
from tests import tiny_models


def hf_logits_of(directory):
    ids, mask, positions = tiny_models.left_padded_batch()
    return tiny_models.hf_logits(tiny_models.load_hf(directory), ids, mask, positions), mask


@pytest.mark.parametrize("fixture", ["hf_qwen3_dir", "hf_qwen2_dir"])
def test_save_pretrained_loads_in_transformers_with_identical_logits(fixture, request, tmp_path):
    original = request.getfixturevalue(fixture)
    model, _ = from_pretrained(original)
    save_pretrained(model, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"][0] in ("Qwen3ForCausalLM", "Qwen2ForCausalLM")
    expected, mask = hf_logits_of(original)
    reloaded, _ = hf_logits_of(str(tmp_path))
    assert np.abs(reloaded - expected)[mask.astype(bool)].max() <= 1e-5


def test_sharded_safetensors_load_both_ways(hf_qwen2_dir, tmp_path):
    model, _ = from_pretrained(hf_qwen2_dir)
    save_pretrained(model, str(tmp_path), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (tmp_path / "model.safetensors").exists()
    expected, mask = hf_logits_of(hf_qwen2_dir)
    through_transformers, _ = hf_logits_of(str(tmp_path))
    assert np.abs(through_transformers - expected)[mask.astype(bool)].max() <= 1e-5
    ours, _ = from_pretrained(str(tmp_path))
    for a, b in zip(
        jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(model)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_transformers_sharded_checkpoint_loads(hf_qwen3_dir, tmp_path):
    tiny_models.load_hf(hf_qwen3_dir).save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = from_pretrained(str(tmp_path))
    reference, _ = from_pretrained(hf_qwen3_dir)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(reference)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("disk_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load(hf_qwen3_dir, tmp_path, disk_dtype):
    tiny_models.load_hf(hf_qwen3_dir).to(disk_dtype).save_pretrained(tmp_path)
    model, _ = from_pretrained(str(tmp_path), dtype="float32")
    hf_embed = tiny_models.load_hf(hf_qwen3_dir).model.embed_tokens.weight
    expected = hf_embed.to(disk_dtype).float().detach().numpy()
    np.testing.assert_array_equal(np.asarray(model.embed[...]), expected)


def test_dtype_as_name_jnp_or_numpy_gives_the_same_model(hf_qwen3_dir, tmp_path):
    for name, as_jnp, as_np in [("float32", jnp.float32, np.float32),
                                ("bfloat16", jnp.bfloat16, np.dtype(jnp.bfloat16))]:  # fmt: skip
        by_name, config = from_pretrained(hf_qwen3_dir, dtype=name)
        for dtype in (as_jnp, as_np):
            model, same = from_pretrained(hf_qwen3_dir, dtype=dtype)
            assert same == config and config.dtype == name
            leaves = jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(by_name))
            for a, b in zip(*leaves, strict=True):
                np.testing.assert_array_equal(a, b)
    save_pretrained(by_name, str(tmp_path), dtype=jnp.float16)
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "float16"
    for bad in ("float64", jnp.int32, "fp32"):
        with pytest.raises(ValueError, match=r"use one of \['float32', 'bfloat16', 'float16'\]"):
            from_pretrained(hf_qwen3_dir, dtype=bad)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_abstractly_with_transformers_parameter_count(name):
    config = PRESETS[name]
    model = abstract_model(config)  # ShapeDtypeStructs only: nothing allocated
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config, "float32"))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert param_count(model) == sum(p.numel() for p in hf.parameters())


def test_unknown_model_type_is_named(hf_qwen3_dir, tmp_path):
    tiny_models.load_hf(hf_qwen3_dir).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'llama' is not supported"):
        from_pretrained(str(tmp_path))


def test_missing_tensor_names_tensor_and_file(hf_qwen3_dir, tmp_path):
    tensors = safetensors.numpy.load_file(os.path.join(hf_qwen3_dir, "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(hf_qwen3_dir, "config.json")).read())
    with pytest.raises(
        KeyError, match=r"model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'"
    ):
        from_pretrained(str(tmp_path))


def test_wrong_shape_names_tensor_file_and_shapes(hf_qwen3_dir, tmp_path):
    tiny_models.load_hf(hf_qwen3_dir).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    with pytest.raises(
        ValueError,
        match=r"model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(96, 64\), expected \(80, 64\)",
    ):
        from_pretrained(str(tmp_path))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        from_pretrained(str(tmp_path / "nowhere"))


def test_load_onto_mesh_shards_weights_by_the_rules(hf_qwen3_dir):
    mesh = sharding.make_mesh((1, 2, 4))
    model, _ = from_pretrained(hf_qwen3_dir, mesh=mesh)
    q = model.layers[0].attn.q_proj[...]  # [D=64, N=4, H=16]: embed on fsdp, heads on tensor
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    k = model.layers[0].attn.k_proj[...]  # 2 kv heads do not split 4 ways: replicated
    assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None)
    ids, mask, positions = tiny_models.left_padded_batch()
    expected, _ = hf_logits_of(hf_qwen3_dir)
    logits = np.asarray(model(ids, positions, mask))
    assert np.abs(logits - expected)[mask.astype(bool)].max() <= 1e-4
