"""Supervised training on reference traces: the demo model's warm start and the study's
control. Cross-entropy on `prompt ⊕ trace ⊕ EOS`, loss on the trace and EOS tokens only,
AdamW with warmup and cosine decay (optimization.make_optimizer), one jitted step.

Warmup matters (NOTES.md): Adam's first update moves every weight by about lr in the sign of
its gradient, which on a calibrated model can wipe out a fragile skill in one step.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from g2rpo_jax.models import Qwen
from g2rpo_jax.optimization import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """steps optimizer updates of batch_size sequences, each padded to seq_len tokens."""

    steps: int
    batch_size: int = 64
    seq_len: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            total_steps=self.steps,
            learning_rate=self.learning_rate,
            warmup_steps=min(self.warmup_steps, self.steps - 1),
            final_lr_fraction=self.final_lr_fraction,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
        )


def encode(
    prompt_ids: Sequence[int], trace_ids: Sequence[int], eos_id: int, seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """One right-padded sequence `prompt ⊕ trace ⊕ EOS` [seq_len] and its loss mask, which
    marks the positions whose *next* token is a trace or EOS token."""
    ids = [*prompt_ids, *trace_ids, eos_id]
    if len(ids) > seq_len:
        raise ValueError(f"a sequence of {len(ids)} tokens does not fit seq_len={seq_len}")
    tokens = np.full(seq_len, pad_id, np.int32)
    tokens[: len(ids)] = ids
    loss_mask = np.zeros(seq_len, np.float32)
    loss_mask[len(prompt_ids) - 1 : len(ids) - 1] = 1.0
    return tokens, loss_mask


def cross_entropy(model: Qwen, tokens_BT: jax.Array, loss_mask_BT: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the masked positions (right padding, no left pad)."""
    attention_BT = jnp.ones_like(tokens_BT, dtype=bool)
    positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    logits_BTV = model(tokens_BT, positions_BT, attention_BT)[:, :-1]
    log_probs_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    picked_BT = jnp.take_along_axis(log_probs_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    mask_BT = loss_mask_BT[:, :-1]
    return -jnp.sum(picked_BT * mask_BT) / jnp.maximum(mask_BT.sum(), 1.0)


def train(
    model: Qwen,
    config: SFTConfig,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]],
    *,
    log_every: int = 0,
    log: Callable[[str], None] = print,
    check_every: int = 0,
    stop: Callable[[int, Qwen], bool] | None = None,
) -> list[float]:
    """Updates `model` in place for config.steps steps; `batches(k)` gives step k's
    (tokens [B, seq_len], loss mask [B, seq_len]). Returns the loss of every step.

    Every `check_every` steps, `stop(steps_done, model)` sees the model as trained so far and
    may end the run early by returning True (the learning-rate schedule is not stretched).
    """
    graphdef, params = nnx.split(model, nnx.Param)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    tx = make_optimizer(config.optimizer())
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, tokens, loss_mask):
        def loss_fn(p):
            return cross_entropy(nnx.merge(graphdef, p, rest), tokens, loss_mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, t0 = [], time.perf_counter()
    for k in range(config.steps):
        tokens, loss_mask = batches(k)
        params, opt_state, loss = step(params, opt_state, tokens, loss_mask)
        losses.append(loss)
        if log_every and ((k + 1) % log_every == 0 or k + 1 == config.steps):
            log(
                f"sft step {k + 1}/{config.steps}: loss {float(loss):.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
        if stop is not None and check_every and (k + 1) % check_every == 0:
            nnx.update(model, params)
            if stop(k + 1, model):
                break
    nnx.update(model, params)
    return [float(x) for x in jax.device_get(losses)]
