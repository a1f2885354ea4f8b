"""The train step's numbers beside its loss: rewards, accuracy and lengths of the batch, tied
groups, token means split by guidance, and each metric's one value from its values per
micro-batch or per update (train_step.py).

Shapes: R rows, C completion width.
"""

import jax
import jax.numpy as jnp

from g2rpo_jax.advantages import group_ties
from g2rpo_jax.optimization import learning_rate_schedule


def batch_metrics(settings, state, batch, advantages, rows_in_loss, is_guided) -> dict:
    """The step's numbers that do not come from the loss: rewards, accuracy of the guided
    and the unguided rows, lengths, ℓ, the rows that move the policy, tied groups."""
    completion_length = batch["completion_mask"].sum(1).astype(jnp.float32)
    guided = is_guided.astype(jnp.float32)
    accuracy = batch["accuracy"].astype(jnp.float32)
    mean_over = lambda x, m: jnp.sum(x * m) / jnp.maximum(m.sum(), 1.0)
    metrics = {
        "lr": learning_rate_schedule(settings.optimizer)(state.step),
        "advantage_std": jnp.std(advantages),
        "reward": jnp.mean(batch["rewards"]),
        "accuracy": jnp.mean(accuracy),
        "accuracy_guided": mean_over(accuracy, guided),
        "accuracy_unguided": mean_over(accuracy, 1 - guided),
        "completion_length": jnp.mean(completion_length),
        "guidance_length": state.controller.length.astype(jnp.float32),
        # The rows that move the policy: in the loss, with A ≠ 0.
        "effective_rows": jnp.sum((advantages != 0) * rows_in_loss),
        "truncated_fraction": jnp.mean(batch["truncated"].astype(jnp.float32)),
    }
    ties = group_ties(
        batch["rewards"],
        accuracy,
        is_guided,
        settings.grpo.group_size,
        jnp.logical_not(batch["is_filler"]),
    )
    return metrics | {f"groups/{name}": value for name, value in ties.items()}


def by_guidance(
    name: str, x: jax.Array, mask: jax.Array, is_guided: jax.Array
) -> dict[str, jax.Array]:
    """Means of x [R, C] over the `mask` [R, C] tokens: all rows, guided rows, unguided rows."""
    guided = is_guided.astype(jnp.float32)[:, None]
    mean = lambda m: jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)
    return {
        name: mean(mask),
        f"{name}_guided": mean(mask * guided),
        f"{name}_unguided": mean(mask * (1 - guided)),
    }


def combine_micro_batches(metrics: dict, loss_weights: jax.Array) -> dict:
    """The full batch's value of each loss metric from its values per micro-batch [micro]:
    `loss_tokens` summed, `pg_loss` weighted as the loss is (`loss_weights`), `*_max` /
    `*_min` their max / min, and token means by each micro-batch's share of loss tokens."""
    tokens = metrics["loss_tokens"]
    token_share = tokens / jnp.maximum(tokens.sum(), 1.0)

    def combine(name: str, values: jax.Array) -> jax.Array:
        match name:
            case "loss_tokens":
                return values.sum()
            case "pg_loss":
                return jnp.sum(loss_weights * values)
        return reduce_metric(name, values, mean=lambda v: jnp.sum(token_share * v))

    return {name: combine(name, values) for name, values in metrics.items()}


def reduce_metric(name: str, values: jax.Array, mean=jnp.mean) -> jax.Array:
    """One value from a metric's values [n]: max / min for `*_max` / `*_min`, else `mean`
    (plain over the μ updates, which see the same rows and tokens)."""
    if name.endswith("_max"):
        return values.max()
    if name.endswith("_min"):
        return values.min()
    return mean(values)
