"""Group-relative advantages and the statistics of tied groups (SPEC §2); the loss that
uses them is g2rpo_jax/grpo.py.

Shapes: B prompts, G candidates per prompt (the group). Rows are prompt-major: candidate j of
prompt b is row b*G + j, so a [B*G] vector reshapes to [B, G].
"""

import enum

import jax
import jax.numpy as jnp

# SPEC §2: added to the std so that a group of near-tied rewards does not blow up.
ADVANTAGE_EPS = 1e-4


class AdvantageStd(enum.StrEnum):
    """The scale that divides r − mean(r_group)."""

    GROUP_UNBIASED = "group_unbiased"  # group std with N − 1, as the released code
    GROUP_POPULATION = "group_population"  # group std with N
    NONE = "none"  # no scaling (Dr.GRPO)
    BATCH = "batch"  # std of all B·G rewards, N − 1


def _tie_exact_mean(x: jax.Array) -> jax.Array:
    """Mean over the last axis (kept), exactly equal to the values when they all tie.

    Averaging offsets from the first value makes a tied group's mean bitwise equal to its
    members (a plain float sum of G copies of 0.1, divided by G, need not be 0.1), so tied
    groups get A = 0 exactly.
    """
    first = x[..., :1]
    return first + jnp.mean(x - first, axis=-1, keepdims=True)


def _std(centered: jax.Array, ddof: int) -> jax.Array:
    """Std over the last axis (kept) of already-centered values; 0 when n − ddof ≤ 0."""
    n = centered.shape[-1]
    return jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / max(n - ddof, 1))


def group_advantages(
    rewards: jax.Array, group_size: int, mode: AdvantageStd = AdvantageStd.GROUP_UNBIASED
) -> jax.Array:
    """A_i = (r_i − mean(r_group)) / (std + 1e-4), float32[B*G] from rewards[B*G].

    Guided and unguided candidates share the group statistics. A tied group gets exactly
    0; G = 1 gets 0 with every mode (its std is defined as 0, not NaN).
    """
    grouped = rewards.astype(jnp.float32).reshape(-1, group_size)  # [B, G]
    centered = grouped - _tie_exact_mean(grouped)
    match mode:
        case AdvantageStd.GROUP_UNBIASED:
            std = _std(centered, ddof=1)
        case AdvantageStd.GROUP_POPULATION:
            std = _std(centered, ddof=0)
        case AdvantageStd.NONE:
            return centered.reshape(-1)
        case AdvantageStd.BATCH:
            flat = grouped.reshape(-1)
            std = _std(flat - _tie_exact_mean(flat), ddof=1)
    return (centered / (std + ADVANTAGE_EPS)).reshape(-1)


def zero_std_groups(
    rewards: jax.Array, group_size: int, members: jax.Array | None = None
) -> jax.Array:
    """bool[B]: the groups whose rewards all tie (every A is then 0), over the `members`
    bool[B*G] of each group (default all); a group with no member does not tie."""
    r = jnp.reshape(rewards, (-1, group_size))
    m = jnp.ones(r.shape, bool) if members is None else jnp.reshape(members, r.shape)
    present = jnp.any(m, axis=1)
    highest = jnp.max(jnp.where(m, r, -jnp.inf), axis=1)
    return present & (highest == jnp.min(jnp.where(m, r, jnp.inf), axis=1))


def group_ties(
    rewards: jax.Array,
    accuracy: jax.Array,
    is_guided: jax.Array,
    group_size: int,
    rows: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """How many groups GRPO cannot learn from: fractions of the groups whose rewards all tie.

    rewards, accuracy: float[B*G]; is_guided: bool[B*G]; rows: bool[B*G], the rows to count
    (default all; a group none of whose rows count is left out of the denominators).
    `zero_std` counts groups whose counted rewards all tie; of those, `zero_std_all_correct`
    / `_all_wrong` have accuracy 1 / 0 on every candidate. The same three over the guided
    candidates of each group only (`guided_*`) and the unguided only (`unguided_*`): a
    subset of one candidate ties trivially. numpy or jax arrays, on the host or in jit.
    """
    shape = (-1, group_size)
    acc = jnp.reshape(accuracy, shape)
    guided = jnp.reshape(is_guided, shape).astype(bool)
    counted = jnp.ones_like(guided) if rows is None else jnp.reshape(rows, shape).astype(bool)
    out = {}
    for prefix, members in (
        ("", counted),
        ("guided_", counted & guided),
        ("unguided_", counted & ~guided),
    ):
        tied = zero_std_groups(rewards, group_size, members)
        correct = tied & jnp.all(~members | (acc >= 1), axis=1)
        wrong = tied & jnp.all(~members | (acc <= 0), axis=1)
        groups = jnp.maximum(jnp.sum(jnp.any(members, axis=1)), 1)
        for name, x in (
            ("zero_std", tied),
            ("zero_std_all_correct", correct),
            ("zero_std_all_wrong", wrong),
        ):
            out[prefix + name] = jnp.sum(x) / groups
    return out
