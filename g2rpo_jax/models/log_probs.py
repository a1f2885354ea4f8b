"""Per-token log-probs and entropy from a decoder's hidden states, through the LM head in
chunks of the sequence so that the float32 logits [B, T, V] never exist at once (Qwen's V
is 151,936). Shapes as in models/qwen.py; c is the chunk length.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from g2rpo_jax.models.qwen import Qwen


def _picked_log_probs(logits_BcV: jax.Array, targets_Bc: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(logits_BcV, targets_Bc[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits_BcV, axis=-1)


def _over_chunks(fn: Callable, hidden_BTD: jax.Array, targets_BT: jax.Array, chunk: int):
    """`fn(hidden [B, c, D], targets [B, c])` → a pytree of [B, c] arrays, applied to T in
    chunks of `chunk` (each rematerialized in the backward pass) and joined to [B, T]."""
    B, T, D = hidden_BTD.shape
    fn = jax.checkpoint(fn)
    if T <= chunk:
        return fn(hidden_BTD, targets_BT)
    n = -(-T // chunk)
    pad = n * chunk - T
    h_nBcD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D)
    t_nBc = jnp.pad(targets_BT, ((0, 0), (0, pad))).reshape(B, n, chunk)
    out = jax.lax.map(
        lambda args: fn(*args), (h_nBcD.transpose(1, 0, 2, 3), t_nBc.transpose(1, 0, 2))
    )
    return jax.tree.map(lambda x: x.transpose(1, 0, 2).reshape(B, n * chunk)[:, :T], out)


def token_log_probs(
    model: Qwen,
    hidden_BTD: jax.Array,
    targets_BT: jax.Array,
    temperature: float = 1.0,
    chunk: int = 256,
) -> jax.Array:
    """log softmax(logits / temperature) at the target tokens: float32 [B, T]."""
    return _over_chunks(
        lambda h, t: _picked_log_probs(model.logits(h) / temperature, t),
        hidden_BTD,
        targets_BT,
        chunk,
    )


class TokenStats(NamedTuple):
    """Per target token, float32 [B, T].

    log_probs: log π (temperature 1), differentiable. sampling_log_probs: log softmax(logits
    / τ), the distribution the sampler draws from at temperature τ, and entropy: −Σ π log π
    (temperature 1, nats); both without gradient.
    """

    log_probs: jax.Array
    sampling_log_probs: jax.Array
    entropy: jax.Array


def token_stats(
    model: Qwen,
    hidden_BTD: jax.Array,
    targets_BT: jax.Array,
    sampling_temperature: float = 1.0,
    chunk: int = 256,
) -> TokenStats:
    """`TokenStats` of the target tokens from one pass over the logits, chunk by chunk."""

    def stats(h_BcD, t_Bc) -> TokenStats:
        logits_BcV = model.logits(h_BcD)
        log_probs = _picked_log_probs(logits_BcV, t_Bc)
        fixed_BcV = jax.lax.stop_gradient(logits_BcV)
        log_z = jax.nn.logsumexp(fixed_BcV, axis=-1)
        # H = log Z − Σ p·logit, with p = softmax(logits).
        mean_logit = jnp.sum(jnp.exp(fixed_BcV - log_z[..., None]) * fixed_BcV, axis=-1)
        if sampling_temperature == 1.0:
            sampling = jax.lax.stop_gradient(log_probs)
        else:
            sampling = _picked_log_probs(fixed_BcV / sampling_temperature, t_Bc)
        return TokenStats(log_probs, sampling, log_z - mean_logit)

    return _over_chunks(stats, hidden_BTD, targets_BT, chunk)


# What a forward takes of each completion token from the hidden state that predicts it:
# head(model, hidden [R, C, D], ids [R, C]) → [R, C] arrays (token_log_probs, token_stats).
Head = Callable[[Qwen, jax.Array, jax.Array], jax.Array | TokenStats]
