"""GRPO: group advantages and the clipped policy loss with k3 KL (SPEC §2, §3); the step that
applies them is g2rpo_jax/train_step.py.

Shapes: B prompts, G candidates per prompt (the group), T completion length. Rows are
prompt-major: candidate j of prompt b is row b*G + j, so a [B*G] vector reshapes to [B, G].
"""

import dataclasses
import enum

import jax
import jax.numpy as jnp

from g2rpo_jax.choices import as_enum

# SPEC §2: added to the std so that a group of near-tied rewards does not blow up.
ADVANTAGE_EPS = 1e-4


class Aggregation(enum.StrEnum):
    """How per-token losses become one scalar."""

    SEQ_MEAN = "seq_mean"  # mean over each sequence's tokens, then over sequences (the code)
    TOKEN_MEAN = "token_mean"  # sum over all tokens / number of tokens (DAPO)
    SEQ_SUM_FIXED = "seq_sum_fixed"  # sum / (rows · max_completion_length) (Dr.GRPO)


class GuidanceLoss(enum.StrEnum):
    """Whether guidance (expert) tokens get the policy loss and KL."""

    INCLUDE = "include"  # the released code: an SFT-like push on expert tokens when A > 0
    MASK = "mask"  # in attention, out of the loss


class AdvantageStd(enum.StrEnum):
    """The scale that divides r − mean(r_group)."""

    GROUP_UNBIASED = "group_unbiased"  # group std with N − 1, as the released code
    GROUP_POPULATION = "group_population"  # group std with N
    NONE = "none"  # no scaling (Dr.GRPO)
    BATCH = "batch"  # std of all B·G rewards, N − 1


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The loss of SPEC §3; hashable, so usable as a jit static argument.

    beta: β, weight of the k3 KL to the reference policy (0 drops the reference model).
    epsilon_low, epsilon_high: ε, the ratio is clipped to [1 − ε_low, 1 + ε_high].
    num_updates: μ, policy updates per batch of rollouts.
    max_completion_length: the fixed divisor of `seq_sum_fixed` (required by it).
    skip_zero_advantage_steps: skip the optimizer update when every A is 0 and β = 0.
    mask_truncated: rows that hit the length budget without EOS leave the loss (TRL's
    `mask_truncated_completions`): no loss weight, and out of every denominator.
    filter_zero_std_groups: groups whose rewards all tie (A = 0 for every candidate) are
    dropped and the batch refilled from more prompts, at most `filter_max_extra_batches`
    extra sampler calls a step (DAPO's dynamic sampling; the trainer does it, on the host).
    """

    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    num_updates: int = 1
    aggregation: Aggregation = Aggregation.SEQ_MEAN
    guidance_loss: GuidanceLoss = GuidanceLoss.INCLUDE
    advantage_std: AdvantageStd = AdvantageStd.GROUP_UNBIASED
    max_completion_length: int | None = None
    skip_zero_advantage_steps: bool = True
    mask_truncated: bool = False
    filter_zero_std_groups: bool = False
    filter_max_extra_batches: int = 3

    def __post_init__(self) -> None:
        # Configs arrive from ConfigDicts as plain strings; store the enums.
        for field, cls in (
            ("aggregation", Aggregation),
            ("guidance_loss", GuidanceLoss),
            ("advantage_std", AdvantageStd),
        ):
            object.__setattr__(self, field, as_enum(cls, getattr(self, field), field))
        if not self.beta >= 0:
            raise ValueError(f"beta (β) must be >= 0, got {self.beta}")
        if not 0 <= self.epsilon_low < 1:
            raise ValueError(f"epsilon_low (ε_low) must be in [0, 1), got {self.epsilon_low}")
        if not self.epsilon_high >= 0:
            raise ValueError(f"epsilon_high (ε_high) must be >= 0, got {self.epsilon_high}")
        if self.num_updates < 1:
            raise ValueError(f"num_updates (μ) must be >= 1, got {self.num_updates}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length must be >= 1, got {self.max_completion_length}"
            )
        if self.aggregation is Aggregation.SEQ_SUM_FIXED and self.max_completion_length is None:
            raise ValueError("aggregation='seq_sum_fixed' requires max_completion_length")
        if self.filter_max_extra_batches < 0:
            raise ValueError(
                f"filter_max_extra_batches must be >= 0, got {self.filter_max_extra_batches}"
            )


# --- Advantages (SPEC §2) ------------------------------------------------------------------


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
    for prefix, members in (("", counted), ("guided_", counted & guided),
                            ("unguided_", counted & ~guided)):  # fmt: skip
        tied = zero_std_groups(rewards, group_size, members)
        correct = tied & jnp.all(~members | (acc >= 1), axis=1)
        wrong = tied & jnp.all(~members | (acc <= 0), axis=1)
        groups = jnp.maximum(jnp.sum(jnp.any(members, axis=1)), 1)
        for name, x in (("zero_std", tied), ("zero_std_all_correct", correct),
                        ("zero_std_all_wrong", wrong)):  # fmt: skip
            out[prefix + name] = jnp.sum(x) / groups
    return out


# --- Policy loss (SPEC §3) -----------------------------------------------------------------


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_rows(batch: dict, config: GRPOConfig) -> jax.Array:
    """float32[B*G]: 1 for the rows that enter the loss, 0 for fill-in rows of a filtered
    batch (`is_filler`) and, with mask_truncated, rows cut off at the length budget."""
    out = jnp.logical_not(batch["is_filler"])
    if config.mask_truncated:
        out = out & jnp.logical_not(batch["truncated"])
    return out.astype(jnp.float32)


def token_loss_mask(
    completion_mask: jax.Array,
    is_guidance: jax.Array,
    mode: GuidanceLoss,
    rows: jax.Array | None = None,
) -> jax.Array:
    """float32[B*G, T]: the tokens that enter the loss (of the `rows` [B*G] that do)."""
    mask = completion_mask.astype(jnp.float32)
    if rows is not None:
        mask = mask * rows[:, None]
    match mode:
        case GuidanceLoss.INCLUDE:
            return mask
        case GuidanceLoss.MASK:
            return mask * jnp.logical_not(is_guidance)


def _aggregate(
    per_token: jax.Array, mask: jax.Array, config: GRPOConfig, rows: jax.Array | None
) -> jax.Array:
    """One scalar from per-token losses [B*G, T] over the loss mask [B*G, T] (float); rows
    [B*G] (None: all) are the rows that count in the per-row denominators."""
    num_rows = per_token.shape[0] if rows is None else jnp.maximum(jnp.sum(rows), 1.0)
    match config.aggregation:
        case Aggregation.SEQ_MEAN:
            # Every row in the loss counts in the mean over sequences, as the released code;
            # a row with no loss token (all guidance under `mask`) contributes 0.
            per_seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
            return jnp.sum(per_seq) / num_rows
        case Aggregation.TOKEN_MEAN:
            return _masked_mean(per_token, mask)
        case Aggregation.SEQ_SUM_FIXED:
            return jnp.sum(per_token * mask) / (num_rows * config.max_completion_length)


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    completion_mask: jax.Array,
    is_guidance: jax.Array,
    config: GRPOConfig,
    ref_logp: jax.Array | None = None,
    rows: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO loss with β·k3 KL, aggregated per `config`; returns (loss, metrics).

    logp, old_logp, ref_logp: float[B*G, T], log π of each completion token under the
    policy, the policy that sampled (with μ = 1 pass stop_gradient(logp)), and the reference.
    advantages: float[B*G]. completion_mask: [B*G, T], 1 up to and including EOS.
    is_guidance: bool[B*G, T], the guidance tokens; under `guidance_loss=mask` they leave
    the loss (they must stay in the model's attention — the caller's job).
    ref_logp is only read when β > 0; β = 0 skips the KL term entirely.
    rows: float[B*G], 1 for the rows in the loss (`loss_rows`); None: every row.
    Metrics are token means over the loss mask: `kl` (only when computed), `ratio_mean`,
    `clip_fraction_low/high` (tokens whose clip is active: ρ < 1 − ε_low with A < 0, ρ >
    1 + ε_high with A > 0), `clip_fraction`, `pg_loss` (aggregated), `loss_tokens`.
    """
    mask = token_loss_mask(completion_mask, is_guidance, config.guidance_loss, rows)
    adv = advantages.astype(jnp.float32)[:, None]  # [B*G, 1]

    ratio = jnp.exp(logp - old_logp)  # ρ
    clipped = jnp.clip(ratio, 1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
    pg = -jnp.minimum(ratio * adv, clipped * adv)
    per_token = pg
    metrics: dict[str, jax.Array] = {}
    if config.beta > 0:
        if ref_logp is None:
            raise ValueError("β > 0 needs ref_logp; set beta=0 to train without a reference")
        log_ref_ratio = ref_logp - logp
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0  # k3, ≥ 0
        per_token = pg + config.beta * kl
        metrics["kl"] = _masked_mean(kl, mask)

    low = (ratio < 1.0 - config.epsilon_low) & (adv < 0)
    high = (ratio > 1.0 + config.epsilon_high) & (adv > 0)
    metrics |= {
        "pg_loss": _aggregate(pg, mask, config, rows),
        "ratio_mean": _masked_mean(ratio, mask),
        "clip_fraction_low": _masked_mean(low, mask),
        "clip_fraction_high": _masked_mean(high, mask),
        "clip_fraction": _masked_mean(low | high, mask),
        "loss_tokens": jnp.sum(mask),
    }
    return _aggregate(per_token, mask, config, rows), metrics


def skip_update(advantages: jax.Array, config: GRPOConfig, rows: jax.Array) -> jax.Array:
    """Whether to skip this step's optimizer update (bool scalar), SPEC §3 (*ours*).

    True when skip_zero_advantage_steps is on, β = 0 and every A_i of the `rows` in the
    loss is 0: the gradient is then exactly 0, but Adam's momentum would still move the
    weights.
    """
    if not config.skip_zero_advantage_steps or config.beta > 0:
        return jnp.asarray(False)
    return jnp.all((advantages == 0) | (rows == 0))
