"""The guidance plan and the adaptive guidance-length controller (SPEC §1, §4).

Shapes: B prompts, G candidates per prompt (the group), T the controller's history window.
Candidates are prompt-major: candidate j of prompt b is row b*G + j.

The controller is a pytree carried in the train state. `update` is pure and runs inside jit
with the config static; the length ℓ it returns after step k is used from step k+1.
"""

import dataclasses
import enum
import math

import flax.struct
import jax
import jax.numpy as jnp

from g2rpo_jax.choices import as_enum


class GuidanceRule(enum.StrEnum):
    """How ℓ evolves: the paper's adaptive rule, the released code's cadence, or a schedule."""

    PAPER = "paper"
    OFFICIAL = "official"
    CONSTANT = "constant"
    LINEAR = "linear"
    STEP = "step"
    CONCAVE = "concave"
    CONVEX = "convex"


class GuidanceSignal(enum.StrEnum):
    """What the controller reads each step as r_k."""

    ACCURACY = "accuracy"  # mean accuracy reward over all candidates
    UNGUIDED_ACCURACY = "unguided_accuracy"  # mean accuracy over unguided candidates only
    TOTAL_REWARD = "total_reward"  # mean weighted total reward over all candidates


class GuidanceWhen(enum.StrEnum):
    """Which groups' guided candidates receive trace tokens in a step."""

    ALWAYS = "always"  # every group's (SPEC §1)
    # Only groups whose unguided candidates all failed (accuracy 0) this step; the others'
    # guided slots sample unguided (*ours*, issue 32; guidance_on_failure.py).
    UNGUIDED_FAILED = "unguided_failed"


_NEEDS_TOTAL_STEPS = (
    GuidanceRule.LINEAR,
    GuidanceRule.STEP,
    GuidanceRule.CONCAVE,
    GuidanceRule.CONVEX,
)
# The released code's cycle: two steps record the signal, the third applies the ratio rule.
_OFFICIAL_CYCLE = 3
# Bound on ℓ_max so that float32, where ℓ's updates are computed, resolves whole tokens with
# room to spare (ulp ≤ 2^-6 and the floor margin below stays < 1/8 of a token).
_MAX_LENGTH_LIMIT = 2**17
# Every floor is floor(x·(1 + margin)). float32 rounding of ℓ·r̄/r_k (≤ 6 ulps for T = 2) can
# land just below an integer that exact arithmetic hits: 3072·0.45/0.45 gives 3071.9998, so a
# flat reward would shrink ℓ by one token a step. The 2^-20 margin (16 ulps) absorbs that;
# the price is that an exact value less than 2^-20 (relative) below an integer rounds up.
# The golden table checks the result against exact rational arithmetic.
_FLOOR_MARGIN = 2.0**-20


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Guidance ratio α and the ℓ controller; hashable, so usable as a jit static argument.

    ratio: α, the fraction of each group that is guided (first ceil(α·G) candidates).
    rule: how ℓ evolves (SPEC §4).
    initial_length, min_length, max_length: ℓ0, ℓ_min, ℓ_max in tokens.
    history: T, the `paper` rule's window of past signals.
    total_steps: length of training, for the schedules (p = k / total_steps).
    steps: S, the number of drops of the `step` schedule.
    signal: what the controller reads as r_k.
    when: which groups' guided candidates get trace tokens (GuidanceWhen).
    """

    ratio: float
    rule: GuidanceRule = GuidanceRule.PAPER
    initial_length: int = 3072
    min_length: int = 1
    max_length: int = 3072
    history: int = 2
    total_steps: int | None = None
    steps: int = 4
    signal: GuidanceSignal = GuidanceSignal.ACCURACY
    when: GuidanceWhen = GuidanceWhen.ALWAYS

    def __post_init__(self) -> None:
        # Configs arrive from ConfigDicts as plain strings; store the enum.
        object.__setattr__(self, "rule", as_enum(GuidanceRule, self.rule, "rule"))
        object.__setattr__(self, "signal", as_enum(GuidanceSignal, self.signal, "signal"))
        object.__setattr__(self, "when", as_enum(GuidanceWhen, self.when, "when"))
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"guidance ratio α must be in [0, 1], got ratio={self.ratio}")
        if self.min_length < 0:
            raise ValueError(f"min_length (ℓ_min) must be >= 0, got {self.min_length}")
        if self.min_length > self.max_length:
            raise ValueError(
                f"min_length (ℓ_min={self.min_length}) must be <= max_length "
                f"(ℓ_max={self.max_length})"
            )
        if self.max_length > _MAX_LENGTH_LIMIT:
            raise ValueError(
                f"max_length (ℓ_max) must be <= {_MAX_LENGTH_LIMIT} (2**17) for the float32 "
                f"controller, got {self.max_length}"
            )
        if not self.min_length <= self.initial_length <= self.max_length:
            raise ValueError(
                f"initial_length (ℓ0={self.initial_length}) must be in [min_length, max_length]"
                f" = [{self.min_length}, {self.max_length}]"
            )
        if self.history < 1:
            raise ValueError(f"history (T) must be >= 1, got {self.history}")
        if self.steps < 1:
            raise ValueError(f"steps (S) must be >= 1, got {self.steps}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.total_steps is None and self.rule in _NEEDS_TOTAL_STEPS:
            raise ValueError(f"total_steps is required by the {self.rule.value!r} schedule")
        if self.signal is GuidanceSignal.UNGUIDED_ACCURACY and self.ratio == 1.0:
            raise ValueError(
                "signal='unguided_accuracy' needs unguided candidates, but ratio α = 1 "
                "guides every candidate"
            )


# --- The guidance plan ---------------------------------------------------------------------


def num_guided(ratio: float, group_size: int) -> int:
    """ceil(α·G), the number of guided candidates per group.

    The product is snapped to the nearest integer when within float error of it, so
    0.1·30 (= 3.0000000000000004 in floats) gives 3, not 4.
    """
    if group_size < 1:
        raise ValueError(f"group_size (G) must be >= 1, got {group_size}")
    product = ratio * group_size
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, abs(product)):
        return int(nearest)
    return math.ceil(product)


def guidance_lengths(
    trace_lengths: jax.Array, length: jax.Array, group_size: int, num_guided: int
) -> jax.Array:
    """Guidance tokens per candidate: min(ℓ, trace length) for the guided, 0 for the rest.

    trace_lengths: int[B], tokens in each prompt's reference trace.
    length: ℓ, an int32 scalar (the controller's current length).
    group_size, num_guided: G and ceil(α·G), static.
    Returns int32[B*G], prompt-major; the first `num_guided` candidates of a group are guided.
    """
    guided = jnp.arange(group_size) < num_guided  # [G]
    per_prompt = jnp.minimum(jnp.asarray(length, jnp.int32), trace_lengths.astype(jnp.int32))
    return jnp.where(guided[None, :], per_prompt[:, None], 0).reshape(-1)


# --- The controller ------------------------------------------------------------------------


@flax.struct.dataclass
class ControllerState:
    """length: ℓ (int32 scalar); history: the last signals, newest last (float32[T], or
    float32[2] for the `official` rule); count: completed steps (int32 scalar)."""

    length: jax.Array
    history: jax.Array
    count: jax.Array


def _history_size(config: GuidanceConfig) -> int:
    # The official cycle averages the two signals recorded before its third step.
    return _OFFICIAL_CYCLE - 1 if config.rule is GuidanceRule.OFFICIAL else config.history


def init_controller(config: GuidanceConfig) -> ControllerState:
    """ℓ = ℓ0, an empty history, no completed step."""
    return ControllerState(
        length=jnp.asarray(config.initial_length, jnp.int32),
        history=jnp.zeros((_history_size(config),), jnp.float32),
        count=jnp.asarray(0, jnp.int32),
    )


def _clipped_floor(value: jax.Array, config: GuidanceConfig) -> jax.Array:
    """clip(floor(value), ℓ_min, ℓ_max) as int32; floor with the float32 margin above."""
    floored = jnp.floor(value * (1.0 + _FLOOR_MARGIN))
    return jnp.clip(floored, config.min_length, config.max_length).astype(jnp.int32)


def _ratio_length(
    length: jax.Array, r_bar: jax.Array, r: jax.Array, config: GuidanceConfig
) -> jax.Array:
    """clip(floor(ℓ·r̄/r_k), ℓ_min, ℓ_max); only meaningful where r̄ > 0 and r_k > 0."""
    safe_r = jnp.where(r > 0, r, 1.0)
    return _clipped_floor(length.astype(jnp.float32) * r_bar / safe_r, config)


def _paper_length(state: ControllerState, r: jax.Array, config: GuidanceConfig) -> jax.Array:
    window = state.history.shape[0]
    m = jnp.minimum(state.count, window)
    recent = jnp.arange(window) >= window - m  # the last m entries of the shift register
    r_bar = jnp.sum(jnp.where(recent, state.history, 0.0)) / jnp.maximum(m, 1)
    # r_k ≤ 0 after a positive r̄ is the formula's limit ℓ → ∞, clipped to ℓ_max; with no
    # history (m = 0) r̄ = 0 and ℓ holds. Non-positive r̄ holds ℓ (the ratio has no meaning).
    changed = jnp.where(r > 0, _ratio_length(state.length, r_bar, r, config), config.max_length)
    return jnp.where(r_bar > 0, changed, state.length)


def _official_length(state: ControllerState, r: jax.Array, config: GuidanceConfig) -> jax.Array:
    cycle_end = state.count % _OFFICIAL_CYCLE == _OFFICIAL_CYCLE - 1
    r_bar = jnp.mean(state.history)  # the cycle's two recorded signals
    apply = cycle_end & (r_bar > 0) & (r > 0)
    return jnp.where(apply, _ratio_length(state.length, r_bar, r, config), state.length)


def _one_minus_p(k: jax.Array, total_steps: int) -> jax.Array:
    """1 − p with p = min(k / N, 1), formed as (N − k)/N from exact integers so that float32
    error stays relative to the result as p → 1. p stops at 1 so that running past N keeps
    the final length (the convex form would otherwise grow again)."""
    return (total_steps - jnp.minimum(k, total_steps)).astype(jnp.float32) / total_steps


def _schedule_fraction(k: jax.Array, config: GuidanceConfig) -> jax.Array:
    """f(p) of the fixed schedules after k completed steps; ℓ = ℓ0·f(p)."""
    n = config.total_steps
    match config.rule:
        case GuidanceRule.CONSTANT:
            return jnp.ones((), jnp.float32)
        case GuidanceRule.LINEAR:
            return _one_minus_p(k, n)
        case GuidanceRule.STEP:
            drops = jnp.minimum(k, n) * config.steps // n  # floor(p·S), exact in int32
            return (config.steps - drops).astype(jnp.float32) / config.steps
        case GuidanceRule.CONCAVE:
            left = _one_minus_p(k, n)
            return left * (2.0 - left)  # 1 − p² = (1 − p)(1 + p)
        case GuidanceRule.CONVEX:
            return jnp.square(_one_minus_p(k, n))


def update(state: ControllerState, signal: jax.Array, config: GuidanceConfig) -> ControllerState:
    """One controller step (SPEC §4): reads r_k = signal, returns the state with the next ℓ.

    Pure; jit it with `static_argnames="config"`. Every rule records r_k in the history.
    """
    r = jnp.asarray(signal, jnp.float32)
    match config.rule:
        case GuidanceRule.PAPER:
            length = _paper_length(state, r, config)
        case GuidanceRule.OFFICIAL:
            length = _official_length(state, r, config)
        case (
            GuidanceRule.CONSTANT
            | GuidanceRule.LINEAR
            | GuidanceRule.STEP
            | GuidanceRule.CONCAVE
            | GuidanceRule.CONVEX
        ):
            # ℓ after k = count + 1 completed steps.
            fraction = _schedule_fraction(state.count + 1, config)
            length = _clipped_floor(config.initial_length * fraction, config)
    return ControllerState(
        length=length.astype(jnp.int32),
        history=jnp.concatenate([state.history[1:], r[None]]),
        count=state.count + 1,
    )


def step_signal(
    accuracy: jax.Array, total_reward: jax.Array, is_guided: jax.Array, config: GuidanceConfig
) -> jax.Array:
    """r_k for this step, a float32 scalar.

    accuracy, total_reward: float[B*G]; is_guided: bool[B*G].
    With `unguided_accuracy` and no unguided candidate the signal is 0 rather than NaN; the
    paper rule then keeps ℓ (r̄ stays 0), since there is nothing to measure.
    """
    match config.signal:
        case GuidanceSignal.ACCURACY:
            return jnp.mean(accuracy.astype(jnp.float32))
        case GuidanceSignal.UNGUIDED_ACCURACY:
            unguided = jnp.logical_not(is_guided)
            total = jnp.sum(jnp.where(unguided, accuracy.astype(jnp.float32), 0.0))
            return total / jnp.maximum(jnp.sum(unguided), 1).astype(jnp.float32)
        case GuidanceSignal.TOTAL_REWARD:
            return jnp.mean(total_reward.astype(jnp.float32))
