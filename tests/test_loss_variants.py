"""The loss variants of g2rpo_jax.grpo against float64 references: GSPO's sequence ratio, the
k1/k2/k3 KL estimators and the rollout correction modes, each written out in numpy from its
definition, and GSPO and the four correction modes also as TRL's GRPOTrainer computes them
(written in torch float64 from reading trl/trainer/grpo_trainer.py, `_compute_loss` and the
importance-sampling block of `_generate_and_score_completions`, at huggingface/trl f2cd577,
version 1.10.0.dev0, the newest source at hand; TRL is not installed).

Tolerances: the fp32 loss and its gradient w.r.t. log π within 1e-5 of the float64 value
(≤ 42 terms of size ~1, a few fp32 ulps); numpy gradients by central differences (h = 1e-6,
error ~1e-10) at inputs at least 1e-3 away from every clip boundary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from g2rpo_jax import grpo

R, T = 6, 7
LENGTHS = np.array([7, 5, 3, 6, 7, 4])
# Row sums of log π_old − log π_sampler: sequence ratios e^s on both sides of [0.5, 3].
ROW_GAPS = np.array([2.0, -1.5, 0.3, -0.2, 1.5, -3.0])
BOUNDS = [(None, 3.0), (0.5, 3.0), (0.5, None)]
CORRECTIONS = [m for m in grpo.RolloutCorrection if m is not grpo.RolloutCorrection.NONE]


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """float64 inputs: a loss mask of ragged rows, guidance on the first tokens of rows 0–2,
    π_old off π by ±~0.3 (ratios past both clip edges), π_sampler off π_old by ~0.8 a token."""
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None] < LENGTHS[:, None]
    logp = -rng.uniform(0.1, 2.0, (R, T))
    old = logp + rng.normal(0.0, 0.3, (R, T))
    gap = rng.normal(0.0, 0.8, (R, T)) * mask
    gap += mask * ((ROW_GAPS - gap.sum(1)) / LENGTHS)[:, None]  # each row's sum → ROW_GAPS
    return {
        "logp": logp,
        "old": old,
        "sampler": old - gap,
        "ref": logp + rng.normal(0.0, 0.3, (R, T)),
        "adv": rng.normal(0.0, 1.0, R),
        "mask": mask,
        "guidance": mask & (np.arange(T)[None] < np.array([2, 1, 1, 0, 0, 0])[:, None]),
    }


INPUTS = make_inputs()


def test_the_inputs_cover_both_sides_of_every_bound():
    x = INPUTS
    gap = (x["old"] - x["sampler"])[x["mask"]]
    assert (np.exp(gap) > 3.0).any() and (np.exp(gap) < 0.5).any()
    assert ((np.exp(gap) > 0.5) & (np.exp(gap) < 3.0)).any()
    rows = np.exp(((x["old"] - x["sampler"]) * x["mask"]).sum(1))
    assert (rows > 3.0).any() and (rows < 0.5).any() and ((rows > 0.5) & (rows < 3.0)).any()
    ratio = np.exp(x["logp"] - x["old"])[x["mask"]]
    assert (ratio > 1.2).any() and (ratio < 0.8).any()


# --- References ----------------------------------------------------------------------------


def numpy_loss(logp: np.ndarray, x: dict, config: grpo.GRPOConfig) -> float:
    """The loss of SPEC §3 with its variants, float64, from the definitions in grpo.py's
    docstrings; every row in the loss."""
    mask = x["mask"].astype(np.float64)
    if config.guidance_loss is grpo.GuidanceLoss.MASK:
        mask = mask * ~x["guidance"]
    adv = x["adv"][:, None]
    log_ratio = logp - x["old"]
    if config.importance_level is grpo.ImportanceLevel.SEQUENCE:
        log_ratio = (log_ratio * mask).sum(1, keepdims=True) / np.maximum(mask.sum(1), 1)[:, None]
    ratio = np.exp(log_ratio)
    clipped = np.clip(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    pg = -np.minimum(ratio * adv, clipped * adv)

    mode = config.rollout_correction.value
    if mode != "none":
        diff = (x["old"] - x["sampler"]) * mask
        w = np.exp(diff.sum(1, keepdims=True) if mode.startswith("sequence") else diff)
        low = -np.inf if config.rollout_correction_min is None else config.rollout_correction_min
        high = np.inf if config.rollout_correction_max is None else config.rollout_correction_max
        w = np.clip(w, low, high) if mode.endswith("truncate") else np.where(
            (w < low) | (w > high), 0.0, w)  # fmt: skip
        pg = pg * w
    d = logp - x["ref"]
    kl = {"k1": d, "k2": d**2 / 2, "k3": np.exp(-d) + d - 1}[config.kl_estimator.value]
    per_token = pg + config.beta * kl
    match config.aggregation:
        case grpo.Aggregation.SEQ_MEAN:
            return ((per_token * mask).sum(1) / np.maximum(mask.sum(1), 1)).mean()
        case grpo.Aggregation.TOKEN_MEAN:
            return (per_token * mask).sum() / mask.sum()
        case grpo.Aggregation.SEQ_SUM_FIXED:
            return (per_token * mask).sum() / (R * config.max_completion_length)


def numpy_grad(x: dict, config: grpo.GRPOConfig, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros((R, T))
    for i in range(R):
        for j in range(T):
            step = np.zeros((R, T))
            step[i, j] = h
            up, down = (
                numpy_loss(x["logp"] + step, x, config),
                numpy_loss(x["logp"] - step, x, config),
            )
            grad[i, j] = (up - down) / (2 * h)
    return grad


def trl_loss(logp, x: dict, *, beta, level="token", mode=None, clip_min=None, clip_max=3.0,
             loss_type="grpo", eps=0.2, max_completion_length=None):  # fmt: skip
    """TRL's GRPOTrainer loss in torch float64 (no liger, no vespo/cispo/sapo, no tool mask):
    the vLLM importance-sampling ratio from π_old and the sampler's log-probs, then
    `_compute_loss` for loss_type grpo / bnpo / dr_grpo."""
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    old, sampling, ref, mask = t(x["old"]), t(x["sampler"]), t(x["ref"]), t(x["mask"])
    advantages = t(x["adv"]).unsqueeze(1)

    # The sampler–trainer correction (_generate_and_score_completions).
    is_ratio = None
    if mode is not None:
        diff = (old - sampling) * mask
        if mode in ("sequence_mask", "sequence_truncate"):
            diff = diff.sum(dim=-1, keepdim=True)
        is_ratio = torch.exp(diff)
        if mode in ("sequence_truncate", "token_truncate"):
            is_ratio = torch.clamp(is_ratio, min=clip_min, max=clip_max)
        else:
            low = clip_min if clip_min is not None else -float("inf")
            high = clip_max if clip_max is not None else float("inf")
            is_ratio = is_ratio.masked_fill((is_ratio < low) | (is_ratio > high), 0.0)

    # _compute_loss
    log_ratio = logp - old
    if level == "token":
        log_weights = log_ratio
    else:
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_weights)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if is_ratio is not None:
        per_token_loss = per_token_loss * is_ratio
    if beta != 0.0:
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        per_token_loss = per_token_loss + beta * kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    assert loss_type == "dr_grpo"
    return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)


def trl_value_and_grad(x: dict, **kw) -> tuple[float, np.ndarray]:
    logp = torch.tensor(x["logp"], dtype=torch.float64, requires_grad=True)
    loss = trl_loss(logp, x, **kw)
    loss.backward()
    return float(loss.detach()), logp.grad.numpy()


# --- Ours ----------------------------------------------------------------------------------


def _loss(logp, old, adv, mask, guidance, ref, sampler, config):
    return grpo.policy_loss(logp, old, adv, mask, guidance, config, ref, sampler_logp=sampler)


_value_and_grad = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnames="config")


def ours(x: dict, config: grpo.GRPOConfig, old_is_logp: bool = False):
    """(loss, d loss / d log π, metrics) in float32; old_is_logp: μ = 1 (π_old = π, no grad)."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    if old_is_logp:
        fn = lambda lp, *rest: _loss(lp, jax.lax.stop_gradient(lp), *rest, config)  # noqa: E731
        (loss, metrics), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(
            f32(x["logp"]), f32(x["adv"]), x["mask"], x["guidance"], f32(x["ref"]),
            f32(x["sampler"]))  # fmt: skip
    else:
        (loss, metrics), grad = _value_and_grad(
            f32(x["logp"]), f32(x["old"]), f32(x["adv"]), x["mask"], x["guidance"],
            f32(x["ref"]), f32(x["sampler"]), config=config)  # fmt: skip
    return float(loss), np.asarray(grad), metrics


def assert_close(got_loss, got_grad, want_loss, want_grad):
    assert got_loss == pytest.approx(want_loss, abs=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-5)


# --- Against the definitions (numpy) --------------------------------------------------------


@pytest.mark.parametrize("mode", CORRECTIONS)
@pytest.mark.parametrize("bounds", BOUNDS)
def test_rollout_correction_matches_numpy(mode, bounds):
    config = grpo.GRPOConfig(rollout_correction=mode, rollout_correction_min=bounds[0],
                             rollout_correction_max=bounds[1], guidance_loss="mask")  # fmt: skip
    loss, grad, _ = ours(INPUTS, config)
    assert_close(loss, grad, numpy_loss(INPUTS["logp"], INPUTS, config), numpy_grad(INPUTS, config))


def test_the_correction_leaves_the_kl_term_alone():
    """With every ratio masked, the policy term is gone and only β·KL remains."""
    x = INPUTS | {"sampler": INPUTS["old"] - 5.0}  # π_old / π_sampler = e^5 everywhere
    config = grpo.GRPOConfig(rollout_correction="token_mask", beta=0.1)
    loss, grad, _ = ours(x, config)
    kl_only = grpo.GRPOConfig(beta=0.1)
    no_policy = x | {"adv": np.zeros(R)}
    assert_close(
        loss, grad, numpy_loss(x["logp"], no_policy, kl_only), numpy_grad(no_policy, kl_only)
    )


@pytest.mark.parametrize("aggregation", list(grpo.Aggregation))
def test_sequence_level_ratio_matches_numpy(aggregation):
    config = grpo.GRPOConfig(importance_level="sequence", aggregation=aggregation,
                             max_completion_length=T)  # fmt: skip
    log_ratio = (INPUTS["logp"] - INPUTS["old"]) * INPUTS["mask"]
    rows = np.exp(log_ratio.sum(1) / LENGTHS)
    assert (rows > 1.2).any() or (rows < 0.8).any()  # a clipped row
    assert np.abs(rows[:, None] - [0.8, 1.2]).min() > 1e-3
    loss, grad, _ = ours(INPUTS, config)
    assert_close(loss, grad, numpy_loss(INPUTS["logp"], INPUTS, config), numpy_grad(INPUTS, config))


@pytest.mark.parametrize("estimator", list(grpo.KLEstimator))
def test_kl_estimators_match_numpy(estimator):
    config = grpo.GRPOConfig(beta=0.1, kl_estimator=estimator)
    x = INPUTS | {"old": INPUTS["logp"]}  # μ = 1
    loss, grad, metrics = ours(x, config, old_is_logp=True)
    assert_close(loss, grad, numpy_loss(x["logp"], x, config), numpy_grad(x, config))
    d = (x["logp"] - x["ref"])[x["mask"]]
    kl = {"k1": d, "k2": d**2 / 2, "k3": np.exp(-d) + d - 1}[estimator.value]
    assert float(metrics["kl"]) == pytest.approx(kl.mean(), abs=1e-6)


@pytest.mark.parametrize("mode", ["none", *CORRECTIONS])
def test_rollout_metrics_match_numpy(mode):
    config = grpo.GRPOConfig(rollout_correction=mode, rollout_correction_min=0.5)
    mask = INPUTS["mask"]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = jax.jit(grpo.rollout_metrics, static_argnames="config")(
        f32(INPUTS["old"]), f32(INPUTS["sampler"]), f32(mask), config=config)  # fmt: skip
    gap = INPUTS["old"] - INPUTS["sampler"]
    ratio = np.exp(gap * mask)
    if mode.startswith("sequence"):
        ratio = np.broadcast_to(np.exp((gap * mask).sum(1, keepdims=True)), mask.shape)
    want = {
        "logp_diff_mean": np.abs(gap)[mask].mean(),
        "logp_diff_max": np.abs(gap)[mask].max(),
        "ratio_mean": ratio[mask].mean(),
        "ratio_min": ratio[mask].min(),
        "ratio_max": ratio[mask].max(),
        "masked_fraction": ((ratio < 0.5) | (ratio > 3.0))[mask].mean(),
    }
    for name, value in want.items():
        assert float(got[f"rollout/{name}"]) == pytest.approx(value, rel=1e-5), name
    assert 0 < want["masked_fraction"] < 1


# --- Against TRL's formulas (torch) ---------------------------------------------------------


@pytest.mark.parametrize("mode", CORRECTIONS)
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 3.0)])
def test_rollout_correction_matches_trl(mode, bounds):
    config = grpo.GRPOConfig(rollout_correction=mode, rollout_correction_min=bounds[0],
                             rollout_correction_max=bounds[1])  # fmt: skip
    loss, grad, _ = ours(INPUTS, config)
    assert_close(loss, grad, *trl_value_and_grad(INPUTS, beta=0.04, mode=mode.value,
                                                 clip_min=bounds[0], clip_max=bounds[1]))  # fmt: skip


@pytest.mark.parametrize(
    "aggregation, loss_type", [("seq_mean", "grpo"), ("token_mean", "bnpo"),
                               ("seq_sum_fixed", "dr_grpo")],
)  # fmt: skip
def test_gspo_matches_trl(aggregation, loss_type):
    config = grpo.GRPOConfig(importance_level="sequence", aggregation=aggregation,
                             max_completion_length=T)  # fmt: skip
    loss, grad, _ = ours(INPUTS, config)
    want = trl_value_and_grad(INPUTS, beta=0.04, level="sequence", loss_type=loss_type,
                              max_completion_length=T)  # fmt: skip
    assert_close(loss, grad, *want)


def test_gspo_with_sequence_mask_at_mu_1_matches_trl():
    """TRL's default correction with GSPO, μ = 1: ρ ≡ 1, the gradient −A·w/|o| per token."""
    config = grpo.GRPOConfig(importance_level="sequence", rollout_correction="sequence_mask")
    x = INPUTS | {"old": INPUTS["logp"]}
    loss, grad, _ = ours(x, config, old_is_logp=True)
    assert_close(loss, grad, *trl_value_and_grad(x, beta=0.04, level="sequence",
                                                 mode="sequence_mask"))  # fmt: skip


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(rollout_correction="token_truncate", rollout_correction_max=None), "at least one"),
        (dict(rollout_correction_min=3.0, rollout_correction_max=2.0), "rollout_correction_min"),
        (dict(rollout_correction_max=0.0), "rollout_correction_max"),
        (dict(rollout_correction="token"), "rollout_correction must be one of"),
        (dict(importance_level="row"), "importance_level must be one of"),
        (dict(kl_estimator="k4"), "kl_estimator must be one of"),
    ],
)
def test_invalid_variant_settings_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        grpo.GRPOConfig(**kw)


def test_a_correction_without_the_samplers_log_probs_is_an_error():
    x = {k: jnp.asarray(v) for k, v in INPUTS.items()}
    with pytest.raises(ValueError, match="sampler_logp"):
        grpo.policy_loss(x["logp"], x["old"], x["adv"], x["mask"], x["guidance"],
                         grpo.GRPOConfig(rollout_correction="sequence_mask"), x["ref"])  # fmt: skip
