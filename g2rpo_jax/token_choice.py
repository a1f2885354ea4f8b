"""Choosing each row's next token from its logits: greedy, or a draw at a temperature with
top-k / top-p filters, and the log-prob of the chosen token (the sampler's decode step).

The draw and the argmax have XLA:CPU forms (models/xla_cpu.py), picked only in programs
lowered for CPU; elsewhere they are jax.random.categorical and jnp.argmax.
"""

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from g2rpo_jax.models import xla_cpu

if TYPE_CHECKING:
    from g2rpo_jax.sampling import SamplingConfig


def _argmax(x_BV: jax.Array) -> jax.Array:
    """The first index of each row's maximum: int32 [B]."""
    return jax.lax.platform_dependent(
        x_BV, cpu=xla_cpu.argmax, default=lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)
    )


def _categorical(keys_B: jax.Array, weights_BV: jax.Array) -> jax.Array:
    """One token per row drawn with probability ∝ its weight (≥ 0; 0 is never drawn)."""

    def gumbel(keys_B, weights_BV):
        draw = lambda key, w: jax.random.categorical(key, jnp.log(w))
        return jax.vmap(draw)(keys_B, weights_BV).astype(jnp.int32)

    return jax.lax.platform_dependent(keys_B, weights_BV, cpu=xla_cpu.categorical, default=gumbel)


def sample_tokens(logits_BV, keys_B, step, config: "SamplingConfig"):
    """Chooses one token per row; returns (tokens [B], log-probs [B]).

    One exp over the vocabulary serves both: the sampling weights are exp(scaled − max)
    with filtered tokens zeroed, and their unfiltered sum gives the log-probs' normalizer.
    """
    scaled_BV = logits_BV.astype(jnp.float32)
    if not config.is_greedy:
        scaled_BV = scaled_BV / config.temperature
    max_B1 = jnp.max(scaled_BV, axis=-1, keepdims=True)
    weights_BV = jnp.exp(scaled_BV - max_B1)
    log_normalizer_B = max_B1[:, 0] + jnp.log(jnp.sum(weights_BV, axis=-1))
    if config.is_greedy:
        tokens = _argmax(scaled_BV)
    else:
        keep_BV = None
        if config.top_k:
            kth_B1 = jax.lax.top_k(scaled_BV, config.top_k)[0][:, -1:]
            keep_BV = scaled_BV >= kth_B1
        if config.top_p < 1:
            # Keep the smallest set of most likely tokens whose mass reaches top_p.
            candidates_BV = (
                scaled_BV if keep_BV is None else jnp.where(keep_BV, scaled_BV, -jnp.inf)
            )
            sorted_BV = jnp.sort(candidates_BV, axis=-1)[:, ::-1]
            probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
            before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
            kept_BV = jnp.where(before_BV < config.top_p, sorted_BV, jnp.inf)
            threshold_B1 = jnp.min(kept_BV, axis=-1, keepdims=True)
            keep_BV = candidates_BV >= threshold_B1
        if keep_BV is not None:
            weights_BV = jnp.where(keep_BV, weights_BV, 0.0)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
        tokens = _categorical(step_keys, weights_BV)
    picked = jnp.take_along_axis(scaled_BV, tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), picked - log_normalizer_B
