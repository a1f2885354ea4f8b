"""LoRA adapters: an untrained adapter is the base model exactly; trained ones equal the
dense model with merged weights W + (alpha/r)·A·B, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from g2rpo_jax import experiment
from g2rpo_jax.models import ModelConfig, Qwen
from g2rpo_jax.models.config import LoraConfig
from g2rpo_jax.models.qwen import LoraParam

BASE = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)  # fmt: skip
LORA = BASE.replace(lora=LoraConfig(rank=4, alpha=8.0))
IDS = np.random.RandomState(0).randint(0, 64, (2, 7)).astype(np.int32)
MASK = np.ones_like(IDS)
POS = np.tile(np.arange(7, dtype=np.int32), (2, 1))


def models():
    """(base model, LoRA model on the same base weights)."""
    base = Qwen(BASE, rngs=nnx.Rngs(0))
    lora = Qwen(LORA, rngs=nnx.Rngs(1))
    nnx.update(lora, nnx.state(base, nnx.Param))
    return base, lora


def merged_params(lora: Qwen) -> nnx.State:
    """The base weights with each adapter folded in: W + (alpha/r)·A·B in our layout."""
    base = nnx.to_pure_dict(nnx.state(lora, nnx.Not(LoraParam)))
    adapters = nnx.to_pure_dict(nnx.state(lora, LoraParam))
    scale = LORA.lora.scale

    def fold(b, a):
        for key, sub in a.items():
            if isinstance(key, str) and key.endswith("_lora_a"):
                name = key[: -len("_lora_a")]
                A, B = sub, a[f"{name}_lora_b"]
                delta = jnp.tensordot(A, B, axes=1)
                b[f"{name}_proj"] = b[f"{name}_proj"] + scale * delta
            elif isinstance(sub, dict):
                fold(b[key], sub)
        return b

    return fold(base, adapters)


def test_rank_zero_adds_nothing_and_zero_b_is_the_base_model_exactly():
    base, lora = models()
    assert not jax.tree.leaves(nnx.state(base, LoraParam))
    adapters = nnx.state(lora, LoraParam)
    assert len(jax.tree.leaves(adapters)) == 2 * 7 * BASE.num_layers
    np.testing.assert_array_equal(lora(IDS, POS, MASK), base(IDS, POS, MASK))


def test_lora_forward_and_gradients_equal_the_dense_merged_model():
    base, lora = models()
    rng = np.random.RandomState(1)
    graphdef, adapters, rest = nnx.split(lora, LoraParam, ...)
    adapters = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.randn(*x.shape), x.dtype), adapters)
    nnx.update(lora, adapters)
    dense = Qwen(BASE, rngs=nnx.Rngs(0))
    nnx.update(dense, merged_params(lora))
    np.testing.assert_allclose(lora(IDS, POS, MASK), dense(IDS, POS, MASK), atol=1e-5)

    dense_graphdef = nnx.graphdef(dense)
    weights = jax.random.normal(jax.random.key(0), (2, 7, 64))

    def lora_loss(adapters):
        return jnp.sum(weights * nnx.merge(graphdef, adapters, rest)(IDS, POS, MASK))

    def dense_loss(adapters):  # the reference: differentiate through W + s·A·B
        merged = nnx.merge(graphdef, adapters, rest)
        return jnp.sum(weights * nnx.merge(dense_graphdef, merged_params(merged))(IDS, POS, MASK))

    got, want = jax.grad(lora_loss)(adapters), jax.grad(dense_loss)(adapters)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_a_train_step_moves_the_adapters_only_on_the_frozen_base():
    """With β > 0 (the reference is the base: adapters zeroed) and remat on; the optimizer
    state holds adapter moments only."""
    from g2rpo_jax import grpo, lora, optimization, sharding, train_step
    from tests.test_train_step import GUIDANCE, G, make_batch

    config = LORA.replace(vocab_size=128)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = lora.random_model(config, mesh, seed=0)
    optimizer = optimization.OptimizerConfig(total_steps=4, learning_rate=1e-2, warmup_steps=0)
    grpo_config = grpo.GRPOConfig(group_size=G, beta=0.04)
    state = train_step.init_train_state(model, grpo_config, optimizer, GUIDANCE)
    assert state.ref_params is None  # no second copy of the weights
    before = jax.device_get(state)  # host copies: the step donates `state`
    graphdef = nnx.graphdef(model)
    step = train_step.make_train_step(
        graphdef, grpo_config, optimizer, GUIDANCE, mesh, state, remat=True
    )
    after, metrics = jax.device_get(step(state, jax.device_put(make_batch())))

    assert float(metrics["kl"]) == 0.0  # B = 0: the policy is the base exactly
    base_leaves = jax.tree_util.tree_leaves_with_path(before.frozen)
    assert len(base_leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param))) - 28
    for (path, want), got in zip(base_leaves, jax.tree.leaves(after.frozen), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    moved = {jax.tree_util.keystr(path): bool(np.any(got != want)) for (path, want), got in
             zip(jax.tree_util.tree_leaves_with_path(before.params),
                 jax.tree.leaves(after.params), strict=True)}  # fmt: skip
    assert len(moved) == 28 and all(v for k, v in moved.items() if "lora_b" in k)
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(before.params))
    moments = [x for x in jax.tree.leaves(before.opt_state) if np.ndim(x)]
    assert sorted(x.shape for x in moments) == sorted(adapter_shapes * 2)  # Adam's mu, nu


def test_export_writes_merged_weights_that_transformers_loads(tmp_path, hf_qwen3_dir):
    """A LoRA checkpoint (adapters + the base's folder) → scripts/export_hf.py → a plain
    Hugging Face folder: no adapter tensors, logits equal to ours unmerged."""
    import importlib.util
    import json
    import os

    import safetensors

    from g2rpo_jax import (
        checkpoint,
        grpo,
        guidance,
        lora,
        optimization,
        sharding,
        train_step,
    )
    from g2rpo_jax import config as config_lib
    from g2rpo_jax.data import tokenization
    from g2rpo_jax.models import from_pretrained
    from tests import tiny_models

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = lora.add_adapters(from_pretrained(hf_qwen3_dir)[0], LORA.lora, seed=0, mesh=mesh)
    rng = np.random.RandomState(0)
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(0.1 * rng.randn(*x.shape), x.dtype),
                                   nnx.state(model, LoraParam)))  # fmt: skip
    state = train_step.init_train_state(model, grpo.GRPOConfig(beta=0.0),
                                  optimization.OptimizerConfig(total_steps=2),
                                  guidance.GuidanceConfig(0.5, initial_length=8, max_length=8))  # fmt: skip
    workdir = tmp_path / "run"
    tokenization.bytes_tokenizer().save_pretrained(workdir / tokenization.TOKENIZER_DIR)
    meta = {"config": json.loads(config_lib.default_config().to_json_best_effort()),
            "tokenizer": tokenization.TOKENIZER_DIR, "step": 1,
            "model_config": checkpoint.model_config_to_json(model.config),
            checkpoint.BASE_MODEL: lora.base_location(hf_qwen3_dir, seed=0)}  # fmt: skip
    saver = checkpoint.Checkpointer(str(workdir), async_save=False)
    saver.save(1, state.checkpointed(), {}, meta)
    saver.close()

    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "export_hf.py")
    spec = importlib.util.spec_from_file_location("export_hf", script)
    export_hf = importlib.util.module_from_spec(spec)
    defined = set(flags.FLAGS)
    try:
        spec.loader.exec_module(export_hf)
        export_hf.export(str(workdir), str(tmp_path / "hf"))
    finally:  # its required --checkpoint/--out would bind every later script in this process
        for name in set(flags.FLAGS) - defined:
            delattr(flags.FLAGS, name)

    with safetensors.safe_open(tmp_path / "hf" / "model.safetensors", "np") as f:
        assert f.keys() and not [k for k in f.keys() if "lora" in k]
    ids, mask, positions = tiny_models.left_padded_batch()
    expected = np.asarray(model(ids, positions, mask))
    got = tiny_models.hf_logits(tiny_models.load_hf(tmp_path / "hf"), ids, mask, positions)
    assert np.abs(got - expected)[mask.astype(bool)].max() <= 1e-5
    assert (
        np.abs(expected - np.asarray(from_pretrained(hf_qwen3_dir)[0](ids, positions, mask))).max()
        > 1e-3
    )  # fmt: skip  (the adapters matter)


def test_lora_config_keys_are_checked_and_round_trip_through_checkpoint_meta():
    import json

    import pytest

    from g2rpo_jax import checkpoint
    from g2rpo_jax import config as config_lib

    c = config_lib.smoke(config_lib.default_config())
    c.data.path = "rows.jsonl"
    c.model.lora.rank, c.model.lora.targets = 8, ("q", "v")
    exp = experiment.build(c, num_devices=1)
    assert exp.model.lora == LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))
    config = LORA.replace(lora=exp.model.lora)
    as_json = json.loads(json.dumps(checkpoint.model_config_to_json(config)))  # as in meta
    assert checkpoint.model_config_from_json(as_json) == config
    c.model.lora.dropout = 0.0  # an old config naming the removed key
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.lora\.dropout: removed"):
        experiment.build(c, num_devices=1)
    del c.model.lora["dropout"]
    c.model.lora.targets = ("q", "qkv")
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.lora"):
        experiment.build(c, num_devices=1)
