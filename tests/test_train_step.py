"""The jitted, sharded GRPO step: mesh-invariant, micro-batch-exact, host-sync-free."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from g2rpo_jax import (
    advantages,
    grpo,
    guidance,
    optimization,
    sharding,
    train_step,
)
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.sampling import Sampler, SamplingConfig
from tests import tiny_models

G = 4  # candidates per prompt
ROWS, P, C = 16, 8, 12
GUIDANCE = guidance.GuidanceConfig(ratio=0.5, initial_length=8, max_length=8, min_length=1)


def make_batch(seed=0):
    """A batch shaped like sampler output + rewards, with a tied group and guided rows; the
    second prompt has no trace, so its planned guided slots received none."""
    rng = np.random.RandomState(seed)
    prompt_len = rng.randint(2, P + 1, ROWS)
    prompt_mask = np.arange(P)[None] >= (P - prompt_len)[:, None]
    completion_len = rng.randint(3, C + 1, ROWS)
    completion_mask = np.arange(C)[None] < completion_len[:, None]
    planned = np.tile(np.arange(G) < 2, ROWS // G)
    planned[G : 2 * G] = False
    is_guidance = planned[:, None] & (np.arange(C)[None] < 2)
    rewards = rng.rand(ROWS).astype(np.float32)
    rewards[:G] = 0.5  # a tied group: A = 0 there
    return {
        "prompt_ids": np.where(prompt_mask, rng.randint(2, 128, (ROWS, P)), 0).astype(np.int32),
        "prompt_mask": prompt_mask,
        "completion_ids": np.where(completion_mask, rng.randint(2, 128, (ROWS, C)), 0).astype(
            np.int32
        ),
        "completion_mask": completion_mask,
        "is_guidance": is_guidance & completion_mask,
        "sampler_log_probs": np.where(completion_mask, -rng.rand(ROWS, C), 0.0).astype(np.float32),
        "rewards": rewards,
        "accuracy": (rewards > 0.5).astype(np.float32),
        "truncated": completion_len == C,  # cut at the budget, as the sampler reports it
        "is_filler": np.zeros(ROWS, bool),
    }


def run_step(directory, mesh, grpo_config, optimizer_config, batch):
    model, _ = from_pretrained(directory)
    graphdef = nnx.graphdef(model)
    state = train_step.init_train_state(model, grpo_config, optimizer_config, GUIDANCE)
    state = jax.device_put(state, train_step.state_shardings(state, mesh))
    step = train_step.make_train_step(
        graphdef, grpo_config, optimizer_config, GUIDANCE, mesh, state
    )
    batch = jax.device_put(batch, train_step.batch_sharding(mesh))
    return step(state, batch)


GRPO = grpo.GRPOConfig(group_size=G, beta=0.04)
# Adam's first step moves each weight by lr·g/(|g|+ε): with the default ε = 1e-8 a
# near-zero gradient turns float-rounding differences into changes up to ±lr. ε = 1e-3
# bounds that amplification by lr/ε = 1, so parameters can be compared at 1e-5.
OPTIMIZER = optimization.OptimizerConfig(
    total_steps=10, learning_rate=1e-3, eps=1e-3, warmup_steps=0
)


@pytest.fixture(scope="module")
def single_device(hf_qwen3_dir):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return jax.device_get(run_step(hf_qwen3_dir, mesh, GRPO, OPTIMIZER, make_batch()))


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_step_equals_single_device(hf_qwen3_dir, single_device, shape):
    mesh = sharding.make_mesh(shape)
    state, metrics = run_step(hf_qwen3_dir, mesh, GRPO, OPTIMIZER, make_batch())
    expected_state, expected_metrics = single_device
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], atol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], expected_metrics["grad_norm"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(expected_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)
    # The weights are split as the rules say, not silently replicated.
    q = state.params["layers"][0]["attn"]["q_proj"][...]  # [D, N, H]
    mlp = state.params["layers"][0]["mlp"]["down_proj"][...]  # [F, D]
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None
    tensor = "tensor" if mesh.shape["tensor"] > 1 else None
    assert q.sharding.spec == jax.sharding.PartitionSpec(fsdp, tensor, None)
    assert mlp.sharding.spec == jax.sharding.PartitionSpec(tensor, fsdp)
    adam_mu = state.opt_state[1][0].mu["layers"][0]["attn"]["q_proj"][...]
    assert adam_mu.sharding.spec == q.sharding.spec


def test_entropy_and_the_sampler_gap_equal_a_float64_computation(hf_qwen3_dir, single_device):
    """The step's entropy of π over the loss tokens (all, guided rows, unguided rows) and its
    gap to the sampler's log-probs, against the transformers model's logits in float64."""
    import torch

    _, metrics = single_device
    batch = make_batch()
    ids = np.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = np.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1).astype(np.int64)
    with torch.no_grad():
        logits = tiny_models.load_hf(hf_qwen3_dir).double()(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0)),
        ).logits.numpy()[:, P - 1 : P + C - 1]  # fmt: skip
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    entropy = -(np.exp(log_p) * log_p).sum(-1)  # [R, C]
    in_loss = batch["completion_mask"]  # every row in the loss, guidance included
    guided = batch["is_guidance"].any(1)[:, None]
    for name, tokens in (("entropy", in_loss), ("entropy_guided", in_loss & guided),
                         ("entropy_unguided", in_loss & ~guided)):  # fmt: skip
        assert metrics[name] == pytest.approx(entropy[tokens].mean(), abs=1e-5), name
    picked = np.take_along_axis(log_p, batch["completion_ids"][..., None], -1)[..., 0]
    gap = np.abs(picked - batch["sampler_log_probs"])[in_loss]
    assert metrics["rollout/logp_diff_mean"] == pytest.approx(gap.mean(), abs=1e-5)
    assert metrics["rollout/logp_diff_max"] == pytest.approx(gap.max(), abs=1e-5)


def test_guided_rows_are_those_that_received_guidance_tokens(single_device):
    """accuracy_guided / _unguided and the group counts follow the trace tokens a row got,
    not the slots planned for guidance (issue 33: a trace-less prompt's slots)."""
    _, metrics = single_device
    batch = make_batch()
    guided = batch["is_guidance"].any(1)
    accuracy = batch["accuracy"]
    assert metrics["accuracy_guided"] == np.float32(accuracy[guided].mean())
    assert metrics["accuracy_unguided"] == np.float32(accuracy[~guided].mean())
    ties = advantages.group_ties(batch["rewards"], accuracy, guided, G, ~batch["is_filler"])
    for name, value in ties.items():
        np.testing.assert_allclose(metrics[f"groups/{name}"], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])  # seq_sum_fixed: as seq_mean
def test_micro_batches_equal_the_full_batch(hf_qwen3_dir, aggregation):
    config = grpo.GRPOConfig(
        group_size=G, beta=0.04, aggregation=aggregation, max_completion_length=C
    )
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    results = []
    for micro in (1, 4):
        optimizer = dataclasses.replace(OPTIMIZER, micro_batches=micro)
        results.append(
            jax.device_get(run_step(hf_qwen3_dir, mesh, config, optimizer, make_batch(1)))
        )
    (full, full_metrics), (accumulated, accumulated_metrics) = results
    np.testing.assert_allclose(accumulated_metrics["loss"], full_metrics["loss"], atol=1e-5)
    np.testing.assert_allclose(
        accumulated_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5
    )
    for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The loss's metrics are the full batch's too: counts summed, token means over all tokens.
    assert accumulated_metrics["loss_tokens"] == full_metrics["loss_tokens"]
    for name in ("pg_loss", "kl", "ratio_mean", "clip_fraction"):
        np.testing.assert_allclose(
            accumulated_metrics[name], full_metrics[name], rtol=1e-5, atol=1e-7, err_msg=name
        )
    # Token statistics are taken over the whole batch, whatever its micro-batches.
    for name in ("entropy", "entropy_guided", "rollout/logp_diff_max", "rollout/ratio_min"):
        np.testing.assert_allclose(accumulated_metrics[name], full_metrics[name], rtol=1e-5)


def test_beta_zero_holds_no_reference_and_runs_no_reference_forward(hf_qwen3_dir):
    model, _ = from_pretrained(hf_qwen3_dir)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    counts = {}
    for beta in (0.0, 0.04):
        config = grpo.GRPOConfig(group_size=G, beta=beta)
        state = train_step.init_train_state(model, config, OPTIMIZER, GUIDANCE)
        assert (state.ref_params is None) == (beta == 0)
        step = train_step.make_train_step(
            nnx.graphdef(model), config, OPTIMIZER, GUIDANCE, mesh, state
        )
        text = step.program(0).lower(state, make_batch()).as_text()
        counts[beta] = text.count("dot_general")
    # The reference forward adds its own matmuls; without it only the policy's remain.
    assert counts[0.0] < counts[0.04]


def test_multiple_updates_per_batch_move_the_ratio(hf_qwen3_dir):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    # π_old from the forward before the first update, also at the sampler's τ = 0.7, for the
    # correction's weights.
    config = grpo.GRPOConfig(group_size=G, beta=0.0, num_updates=3, rollout_correction="token_truncate",
                             sampling_temperature=0.7)  # fmt: skip
    _, metrics = jax.device_get(run_step(hf_qwen3_dir, mesh, config, OPTIMIZER, make_batch(2)))
    # First update has ρ ≡ 1; later ones see the moved policy against the frozen π_old.
    assert metrics["ratio_mean"] != pytest.approx(1.0, abs=1e-7)
    assert 0 <= metrics["clip_fraction"] <= 1
    assert 0 < metrics["rollout/ratio_min"] <= metrics["rollout/ratio_mean"]
    assert metrics["rollout/ratio_mean"] <= metrics["rollout/ratio_max"] < np.inf


def test_all_tied_rewards_skip_the_update(hf_qwen3_dir):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    batch = make_batch(3)
    batch["rewards"][:] = 1.0
    model, _ = from_pretrained(hf_qwen3_dir)
    before = jax.device_get(nnx.state(model, nnx.Param))
    state, metrics = jax.device_get(
        run_step(hf_qwen3_dir, mesh, grpo.GRPOConfig(group_size=G, beta=0.0), OPTIMIZER, batch)
    )
    assert metrics["skipped"] == 1 and state.step == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)
    assert state.controller.count == 1  # the controller still sees the step


def test_train_step_makes_no_host_transfers(hf_qwen3_dir):
    model, _ = from_pretrained(hf_qwen3_dir)
    mesh = sharding.make_mesh((1, 2, 4))
    state = train_step.init_train_state(model, GRPO, OPTIMIZER, GUIDANCE)
    state = jax.device_put(state, train_step.state_shardings(state, mesh))
    step = train_step.make_train_step(nnx.graphdef(model), GRPO, OPTIMIZER, GUIDANCE, mesh, state)
    batches = [jax.device_put(make_batch(s), train_step.batch_sharding(mesh)) for s in range(3)]
    with jax.transfer_guard("disallow"):  # the forward's index is an explicit device_get
        for batch in batches:
            state, metrics = step(state, batch)
    assert int(jax.device_get(state.step)) == 3
    # make_batch's rows share no prompt: every step runs the row-wise forward, and only its
    # program is compiled, not the shared forwards' (test_shared_prefix runs those).
    assert {step.forward(batch) for batch in batches} == {0}
    assert list(step.programs) == [0]


def test_sampling_and_training_raise_a_toy_reward(hf_qwen3_dir):
    """30 steps of rollout + update on 'fraction of completion tokens equal to TARGET'."""
    target, steps, prompts = 7, 30, 4
    model, _ = from_pretrained(hf_qwen3_dir)
    graphdef = nnx.graphdef(model)
    config = grpo.GRPOConfig(group_size=8, beta=0.0)
    optimizer = optimization.OptimizerConfig(total_steps=steps, learning_rate=3e-3, warmup_steps=2)
    no_guidance = dataclasses.replace(GUIDANCE, ratio=0.0)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = train_step.init_train_state(model, config, optimizer, no_guidance)
    # Each group's prompt is shared, but the claim is learning: the row-wise forward only.
    step = train_step.make_train_step(
        graphdef, config, optimizer, no_guidance, mesh, state, share_prefix=False
    )
    sampler = Sampler(graphdef, SamplingConfig(max_completion_length=8), TokenIds())
    rng = np.random.RandomState(0)
    rewards = []
    for k in range(steps):
        prompt_ids = np.repeat(rng.randint(2, 128, (prompts, 4)), 8, axis=0).astype(np.int32)
        out = jax.device_get(sampler(state.params, prompt_ids, np.full(prompts * 8, 4),
                                     np.zeros((prompts * 8, 0), np.int32), np.zeros(prompts * 8, np.int32),
                                     jax.random.fold_in(jax.random.key(0), k)))  # fmt: skip
        reward = ((out.completion_ids == target) & out.completion_mask).sum(
            1
        ) / out.completion_mask.sum(1)
        batch = {f: getattr(out, f) for f in train_step.BATCH_FIELDS[:5]}
        batch |= {"sampler_log_probs": out.log_probs, "rewards": reward.astype(np.float32),
                  "accuracy": reward.astype(np.float32), "truncated": np.zeros(prompts * 8, bool),
                  "is_filler": np.zeros(prompts * 8, bool)}  # fmt: skip
        state, _ = step(state, batch)
        rewards.append(reward.mean())
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    print(f"toy reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last > first + 0.1
