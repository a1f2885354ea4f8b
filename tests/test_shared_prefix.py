"""The train step's shared forwards: each group's prompt, or its prompt ⊕ trace[:ℓ′], through
the model once gives the row-wise loss and gradients (issue 34, acceptance 2)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g2rpo_jax import completion_forward, grpo, shared_prefix, train_step
from g2rpo_jax.models import from_pretrained
from tests.test_train_step import GUIDANCE, OPTIMIZER

G, P, C = 4, 8, 12
GUIDED = 3  # n: the plan's ceil(α·G) at α = 3/4
SUFFIX = 8  # W: a guided row's tokens after its guidance
# ℓ′ per group at ℓ = 4: a full trace, none (the planned slots sample unguided), a trace
# shorter than ℓ, a full trace again.
TRACES = (4, 0, 2, 4)


def guided_batch(seed: int = 0, n: int = GUIDED, width: int = SUFFIX, completion: int = C):
    """Rows shaped as the sampler returns them: a prompt per group, left-padded to different
    lengths; the first n rows of a group open with the same ℓ′ guidance tokens and generate
    at most `width` after them; the rest generate up to the whole completion."""
    rng = np.random.RandomState(seed)
    Q = len(TRACES)
    R = Q * G
    guided = np.tile(np.arange(G) < n, Q)
    prompt_len = np.repeat(rng.randint(2, P + 1, Q), G)
    prompt_mask = np.arange(P)[None] >= (P - prompt_len)[:, None]
    ell = np.repeat(TRACES, G) * guided
    generated = rng.randint(1, np.where(guided, width, completion - ell) + 1)
    generated[-G] = width  # a guided row that fills its suffix
    completion_mask = np.arange(completion)[None] < (ell + generated)[:, None]
    is_guidance = np.arange(completion)[None] < ell[:, None]
    trace = np.repeat(rng.randint(2, 128, (Q, completion)), G, axis=0)
    ids = np.where(is_guidance, trace, rng.randint(2, 128, (R, completion)))
    rewards = rng.rand(R).astype(np.float32)
    return {
        "prompt_ids": np.where(prompt_mask, np.repeat(rng.randint(2, 128, (Q, P)), G, 0), 0),
        "prompt_mask": prompt_mask,
        "completion_ids": np.where(completion_mask, ids, 0).astype(np.int32),
        "completion_mask": completion_mask,
        "is_guidance": is_guidance,
        "sampler_log_probs": np.where(completion_mask, -rng.rand(R, completion), 0.0).astype(
            np.float32
        ),
        "rewards": rewards,
        "accuracy": (rewards > 0.5).astype(np.float32),
        "truncated": np.zeros(R, bool),
        "is_filler": np.zeros(R, bool),
    }


def _losses_and_grads(graphdef, params, batch, forward, settings_list, noise):
    """Each settings' micro-batch loss (train_step._micro_loss, the step's own) and its
    gradient: [len(settings_list)] and a list of gradient trees. One compiled forward and
    one compiled backward serve every settings (its loss's cotangent); μ = 2 reads π_old
    and the reference as this forward's log-probs moved by `noise`, so that ρ ≠ 1 and the
    KL term pulls."""
    head = train_step._stats_head(settings_list[0].grpo)
    stats, vjp = jax.vjp(jax.jit(lambda p: forward(graphdef, p, batch, None, head)), params)
    fixed = jax.lax.stop_gradient(stats.log_probs)
    advantages = jnp.asarray(np.linspace(-1.0, 1.0, batch["rewards"].shape[0]), jnp.float32)
    rows = jnp.ones_like(advantages)
    losses, grads = [], []
    for settings in settings_list:
        old = None
        if settings.grpo.num_updates > 1:
            old = (fixed + noise, stats.sampling_log_probs)
        mb = (batch, advantages, old, fixed - noise, rows, 1.0)
        loss_of = lambda s, settings=settings, mb=mb: train_step._micro_loss(settings, mb, s)[0]
        loss, cotangent = jax.value_and_grad(loss_of)(stats)
        losses.append(loss)
        grads.append(vjp(cotangent)[0])
    return np.asarray(losses), grads


def _settings(graphdef, guidance_loss: str, num_updates: int) -> train_step.StepSettings:
    config = grpo.GRPOConfig(
        group_size=G, beta=0.04, guidance_loss=guidance_loss, num_updates=num_updates
    )
    return train_step.StepSettings(graphdef, config, OPTIMIZER, GUIDANCE, None, 1)


def test_shared_forwards_give_the_row_wise_loss_and_gradients(hf_qwen3_dir):
    """Each group's prompt once, and each group's prompt ⊕ guidance once (each guided row's
    loss on the group's one copy of the guidance tokens under guidance_loss include, in
    attention only under mask), at μ = 1 and μ = 2: the loss and every parameter's gradient
    within 1e-5 of the row-wise forward's."""
    batch = jax.tree.map(jnp.asarray, guided_batch())
    model, _ = from_pretrained(hf_qwen3_dir)
    graphdef, params = nnx.split(model)
    settings_list = [_settings(graphdef, mode, mu) for mode in ("include", "mask") for mu in (1, 2)]
    noise = jnp.asarray(0.1 * np.random.RandomState(1).randn(G * len(TRACES), C), jnp.float32)
    assert completion_forward.groups_share_prompt(batch, G)
    assert shared_prefix.groups_share_guidance(batch, G, GUIDED, SUFFIX)
    args = (graphdef, params, batch)
    row_wise = completion_forward.log_probs_per_row
    row_loss, row_grads = _losses_and_grads(*args, row_wise, settings_list, noise)
    assert len(set(np.asarray(row_loss).round(6))) == 4  # the four settings differ
    shared_prompt = functools.partial(completion_forward.log_probs_shared_prompt, group_size=G)
    shared_guidance = functools.partial(
        shared_prefix.log_probs_shared_guidance, group_size=G, num_guided=GUIDED, width=SUFFIX
    )
    # remat: the same numbers with every layer recomputed in the backward pass.
    remat_guidance = functools.partial(shared_guidance, remat=True)
    for forward in (shared_prompt, shared_guidance, remat_guidance):
        loss, grads = _losses_and_grads(*args, forward, settings_list, noise)
        np.testing.assert_allclose(loss, row_loss, atol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(row_grads), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_forward_index_takes_the_narrowest_shared_forward_the_batch_has():
    """Row-wise, shared prompt, shared guidance at W = C/2, at W = C/4: the last whose
    structure holds, checked on device; a batch that breaks it falls back."""
    completion = 64  # W ∈ (32, 16): both save tokens with n = 3
    choice = jax.jit(lambda b: completion_forward.forward_index(b, G, GUIDED))
    index = lambda b: int(choice(b))
    assert shared_prefix.suffix_widths(completion, GUIDED) == (32, 16)
    assert len(completion_forward.shared_forwards(completion, G, GUIDED)) == 4
    assert index(guided_batch(width=16, completion=completion)) == 3
    assert index(guided_batch(width=32, completion=completion)) == 2  # a suffix of 32 tokens
    other_trace = guided_batch(width=16, completion=completion)
    other_trace["completion_ids"][1, 0] += 1  # a guided row of group 0 with its own trace
    assert index(other_trace) == 1
    guided_slot = guided_batch(width=16, completion=completion)
    guided_slot["is_guidance"][3, 0] = True  # an unguided slot that received guidance
    assert index(guided_slot) == 1
    other_prompt = guided_batch(width=16, completion=completion)
    other_prompt["prompt_ids"][1, -1] += 1
    assert index(other_prompt) == 0
    # No guided slots (α = 0), or n guided rows too few to pay for the prefix: prompt only.
    assert shared_prefix.suffix_widths(completion, 0) == ()
    assert shared_prefix.suffix_widths(completion, 1) == ()
