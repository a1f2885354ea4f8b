"""The GRPO loss: the clipped policy loss with a KL penalty (SPEC §3), its variants (GSPO's
sequence-level ratio, k1/k2/k3 KL) and the rollout correction of the sampler–trainer
mismatch. The advantages are g2rpo_jax/advantages.py; the step that applies both,
g2rpo_jax/train_step.py.

Shapes: B prompts, G candidates per prompt (the group), T completion length. Rows are
prompt-major: candidate j of prompt b is row b*G + j.
"""

import dataclasses
import enum

import jax
import jax.numpy as jnp

from g2rpo_jax.advantages import AdvantageStd
from g2rpo_jax.choices import as_enum


class Aggregation(enum.StrEnum):
    """How per-token losses become one scalar."""

    SEQ_MEAN = "seq_mean"  # mean over each sequence's tokens, then over sequences (the code)
    TOKEN_MEAN = "token_mean"  # sum over all tokens / number of tokens (DAPO)
    SEQ_SUM_FIXED = "seq_sum_fixed"  # sum / (rows · max_completion_length) (Dr.GRPO)


class GuidanceLoss(enum.StrEnum):
    """Whether guidance (expert) tokens get the policy loss and KL."""

    INCLUDE = "include"  # the released code: an SFT-like push on expert tokens when A > 0
    MASK = "mask"  # in attention, out of the loss


class KLEstimator(enum.StrEnum):
    """The per-token estimate of KL(π ‖ π_ref) in the loss, with d = log π − log π_ref."""

    K3 = "k3"  # exp(−d) + d − 1: unbiased, ≥ 0 (the code, DeepSeekMath)
    K1 = "k1"  # d
    K2 = "k2"  # d² / 2


class ImportanceLevel(enum.StrEnum):
    """Where the ratio ρ = π / π_old is taken (TRL's `importance_sampling_level`)."""

    TOKEN = "token"  # one ρ per token (GRPO)
    SEQUENCE = "sequence"  # exp of the mean log ratio over each row's loss tokens (GSPO)


class RolloutCorrection(enum.StrEnum):
    """Importance weight for the sampler–trainer mismatch, w = π_old / π_sampler, on each
    token's policy loss (TRL's `vllm_importance_sampling_mode`): per token or per row (the
    ratio of the row's summed log-probs), kept to [min, max] by clamping (truncate) or by
    zeroing what falls outside (mask)."""

    NONE = "none"
    TOKEN_TRUNCATE = "token_truncate"
    TOKEN_MASK = "token_mask"
    SEQUENCE_TRUNCATE = "sequence_truncate"
    SEQUENCE_MASK = "sequence_mask"


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The loss of SPEC §3; hashable, so usable as a jit static argument.

    group_size: G, candidates per prompt; rows are group-major (G consecutive rows a group).
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
    rollout_correction, rollout_correction_min / _max: the weight w = π_old / π_sampler and
    its bounds (None: unbounded on that side), TRL's `vllm_importance_sampling_*`.
    sampling_temperature: τ of the sampler's log-probs (log softmax(logits / τ)); π_old is
    compared with them at the same τ. 1 for greedy sampling.
    """

    group_size: int = 12
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
    kl_estimator: KLEstimator = KLEstimator.K3
    importance_level: ImportanceLevel = ImportanceLevel.TOKEN
    rollout_correction: RolloutCorrection = RolloutCorrection.NONE
    rollout_correction_max: float | None = 3.0
    rollout_correction_min: float | None = None
    sampling_temperature: float = 1.0

    def __post_init__(self) -> None:
        # Configs arrive from ConfigDicts as plain strings; store the enums.
        for field, cls in (
            ("aggregation", Aggregation),
            ("guidance_loss", GuidanceLoss),
            ("advantage_std", AdvantageStd),
            ("kl_estimator", KLEstimator),
            ("importance_level", ImportanceLevel),
            ("rollout_correction", RolloutCorrection),
        ):
            object.__setattr__(self, field, as_enum(cls, getattr(self, field), field))
        if self.group_size < 2:
            raise ValueError(f"group_size (G) must be >= 2 candidates, got {self.group_size}")
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
        self._check_rollout_correction()
        if not self.sampling_temperature > 0:
            raise ValueError(f"sampling_temperature must be > 0, got {self.sampling_temperature}")

    def _check_rollout_correction(self) -> None:
        low, high = self.rollout_correction_min, self.rollout_correction_max
        if low is not None and not low >= 0:
            raise ValueError(f"rollout_correction_min must be >= 0 or None, got {low}")
        if high is not None and not high > 0:
            raise ValueError(f"rollout_correction_max must be > 0 or None, got {high}")
        if low is not None and high is not None and not low < high:
            raise ValueError(
                f"rollout_correction_min ({low}) must be < rollout_correction_max ({high})"
            )
        truncate = (RolloutCorrection.TOKEN_TRUNCATE, RolloutCorrection.SEQUENCE_TRUNCATE)
        if self.rollout_correction in truncate and low is None and high is None:
            raise ValueError(
                f"rollout_correction={self.rollout_correction.value!r} clamps to "
                "[rollout_correction_min, rollout_correction_max]: set at least one"
            )


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


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: KLEstimator) -> jax.Array:
    """The per-token KL estimate [B*G, T] of `estimator`, from log π and log π_ref."""
    d = logp - ref_logp
    match estimator:
        case KLEstimator.K3:
            return jnp.exp(-d) + d - 1.0
        case KLEstimator.K1:
            return d
        case KLEstimator.K2:
            return 0.5 * jnp.square(d)


def _rollout_ratio(
    old_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, per_sequence: bool
) -> jax.Array:
    """π_old / π_sampler over the loss `mask`: per token [B*G, T], or per row [B*G, 1] (the
    ratio of the row's summed log-probs); no gradient."""
    diff = jax.lax.stop_gradient((old_logp - sampler_logp) * mask)
    return jnp.exp(jnp.sum(diff, axis=-1, keepdims=True) if per_sequence else diff)


def _out_of_bounds(ratio: jax.Array, config: GRPOConfig) -> jax.Array:
    """bool: the ratios below rollout_correction_min or above rollout_correction_max."""
    out = jnp.zeros(ratio.shape, bool)
    if config.rollout_correction_min is not None:
        out = out | (ratio < config.rollout_correction_min)
    if config.rollout_correction_max is not None:
        out = out | (ratio > config.rollout_correction_max)
    return out


def rollout_weights(
    old_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, config: GRPOConfig
) -> jax.Array:
    """The rollout correction's weight on each token's policy loss: [B*G, T] in token modes,
    [B*G, 1] in sequence modes, 1 under `none`; no gradient.

    old_logp: log π_old at the sampler's temperature; sampler_logp: the sampler's log-probs;
    mask: the loss tokens (a sequence ratio sums over them).
    """
    bounds = (config.rollout_correction_min, config.rollout_correction_max)
    match config.rollout_correction:
        case RolloutCorrection.NONE:
            return jnp.ones((old_logp.shape[0], 1), jnp.float32)
        case RolloutCorrection.TOKEN_TRUNCATE:
            return jnp.clip(_rollout_ratio(old_logp, sampler_logp, mask, False), *bounds)
        case RolloutCorrection.SEQUENCE_TRUNCATE:
            return jnp.clip(_rollout_ratio(old_logp, sampler_logp, mask, True), *bounds)
        case RolloutCorrection.TOKEN_MASK:
            ratio = _rollout_ratio(old_logp, sampler_logp, mask, False)
            return jnp.where(_out_of_bounds(ratio, config), 0.0, ratio)
        case RolloutCorrection.SEQUENCE_MASK:
            ratio = _rollout_ratio(old_logp, sampler_logp, mask, True)
            return jnp.where(_out_of_bounds(ratio, config), 0.0, ratio)


def rollout_metrics(
    old_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, config: GRPOConfig
) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from the trainer's π_old, over the loss tokens.

    `logp_diff_mean` / `_max`: |log π_old − log π_sampler|; `ratio_mean` / `_min` / `_max`:
    the correction's ratio π_old / π_sampler before its bounds (per row in sequence modes,
    each token carrying its row's; per token otherwise, `none` included); `masked_fraction`:
    the loss tokens whose ratio is out of [min, max] (zeroed by *_mask, clamped by
    *_truncate, left alone by `none`). Inputs as `rollout_weights`.
    """
    per_sequence = config.rollout_correction in (
        RolloutCorrection.SEQUENCE_TRUNCATE,
        RolloutCorrection.SEQUENCE_MASK,
    )
    ratio = _rollout_ratio(old_logp, sampler_logp, mask, per_sequence)
    ratio = jnp.broadcast_to(ratio, mask.shape)
    gap = jnp.abs(old_logp - sampler_logp)
    counted = mask > 0
    return {
        "rollout/logp_diff_mean": _masked_mean(gap, mask),
        "rollout/logp_diff_max": jnp.max(jnp.where(counted, gap, 0.0)),
        "rollout/ratio_mean": _masked_mean(ratio, mask),
        "rollout/ratio_min": jnp.min(jnp.where(counted, ratio, jnp.inf)),
        "rollout/ratio_max": jnp.max(jnp.where(counted, ratio, 0.0)),
        "rollout/masked_fraction": _masked_mean(_out_of_bounds(ratio, config), mask),
    }


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    completion_mask: jax.Array,
    is_guidance: jax.Array,
    config: GRPOConfig,
    ref_logp: jax.Array | None = None,
    rows: jax.Array | None = None,
    *,
    sampler_logp: jax.Array | None = None,
    old_sampling_logp: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO loss with β·KL, aggregated per `config`; returns (loss, metrics).

    logp, old_logp, ref_logp: float[B*G, T], log π of each completion token under the
    policy, the policy that sampled (with μ = 1 pass stop_gradient(logp)), and the reference.
    advantages: float[B*G]. completion_mask: [B*G, T], 1 up to and including EOS.
    is_guidance: bool[B*G, T], the guidance tokens; under `guidance_loss=mask` they leave
    the loss (they must stay in the model's attention — the caller's job).
    ref_logp is only read when β > 0; β = 0 skips the KL term entirely.
    rows: float[B*G], 1 for the rows in the loss (`loss_rows`); None: every row.
    sampler_logp: float[B*G, T], the sampler's log-probs, read by the rollout correction
    (not `none`), whose weight multiplies the policy term (not the KL); old_sampling_logp:
    log π_old at the sampler's temperature τ (default old_logp, the same when τ = 1).
    ρ is per token, or per row under importance_level=sequence (GSPO), clipped likewise.
    Metrics are token means over the loss mask: `kl` (only when computed), `ratio_mean`,
    `clip_fraction_low/high` (tokens whose clip is active: ρ < 1 − ε_low with A < 0, ρ >
    1 + ε_high with A > 0), `clip_fraction`, `pg_loss` (aggregated), `loss_tokens`.
    """
    mask = token_loss_mask(completion_mask, is_guidance, config.guidance_loss, rows)
    adv = advantages.astype(jnp.float32)[:, None]  # [B*G, 1]

    log_ratio = logp - old_logp
    match config.importance_level:
        case ImportanceLevel.TOKEN:
            ratio = jnp.exp(log_ratio)  # ρ [B*G, T]
        case ImportanceLevel.SEQUENCE:
            row_tokens = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
            ratio = jnp.exp(jnp.sum(log_ratio * mask, axis=-1, keepdims=True) / row_tokens)
    clipped = jnp.clip(ratio, 1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
    pg = -jnp.minimum(ratio * adv, clipped * adv)
    if config.rollout_correction is not RolloutCorrection.NONE:
        if sampler_logp is None:
            raise ValueError("rollout_correction needs sampler_logp (the sampler's log-probs)")
        old = old_logp if old_sampling_logp is None else old_sampling_logp
        pg = pg * rollout_weights(old, sampler_logp, mask, config)
    pg = jnp.broadcast_to(pg, logp.shape)
    ratio = jnp.broadcast_to(ratio, logp.shape)
    per_token = pg
    metrics: dict[str, jax.Array] = {}
    if config.beta > 0:
        if ref_logp is None:
            raise ValueError("β > 0 needs ref_logp; set beta=0 to train without a reference")
        kl = kl_penalty(logp, ref_logp, config.kl_estimator)
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
