"""Invariants of the GRPO loss math, its advantages and optimizer (g2rpo_jax.grpo, .advantages),
against references."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from g2rpo_jax import advantages, grpo, optimization

GOLDEN = json.loads((pathlib.Path(__file__).parent / "goldens" / "grpo_loss.json").read_text())

advantages_fn = jax.jit(advantages.group_advantages, static_argnames=("group_size", "mode"))
loss_fn = jax.jit(grpo.policy_loss, static_argnames="config")


def numpy_advantages(rewards: np.ndarray, group_size: int, mode: advantages.AdvantageStd):
    grouped = rewards.astype(np.float64).reshape(-1, group_size)
    centered = grouped - grouped.mean(axis=1, keepdims=True)
    match mode:
        case advantages.AdvantageStd.GROUP_UNBIASED:
            std = grouped.std(axis=1, ddof=1, keepdims=True)
        case advantages.AdvantageStd.GROUP_POPULATION:
            std = grouped.std(axis=1, keepdims=True)
        case advantages.AdvantageStd.NONE:
            return centered.reshape(-1)
        case advantages.AdvantageStd.BATCH:
            std = rewards.astype(np.float64).std(ddof=1)
    return (centered / (std + 1e-4)).reshape(-1)


@pytest.mark.parametrize("mode", list(advantages.AdvantageStd))
def test_advantages_match_numpy(mode):
    rewards = np.random.default_rng(0).uniform(0.0, 1.1, size=5 * 6).astype(np.float32)
    got = advantages_fn(rewards, group_size=6, mode=mode)
    np.testing.assert_allclose(got, numpy_advantages(rewards, 6, mode), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got).reshape(5, 6).sum(axis=1), 0.0, atol=1e-5)


@pytest.mark.parametrize("mode", list(advantages.AdvantageStd))
def test_tied_groups_get_exactly_zero(mode):
    # 0.1 and 1/3 do not survive a naive sum-then-divide mean exactly.
    tied = np.array([0.1] * 7 + [1 / 3] * 7 + [1.0] * 7, np.float32)
    rewards = np.concatenate([tied, np.linspace(0.0, 1.0, 7, dtype=np.float32)])
    got = np.asarray(advantages_fn(rewards, group_size=7, mode=mode))
    assert np.all(got[:21] == 0.0) and np.all(np.isfinite(got))
    all_tied = np.asarray(advantages_fn(np.full(14, 0.1, np.float32), group_size=7, mode=mode))
    assert np.all(all_tied == 0.0)
    singletons = np.asarray(advantages_fn(rewards[:4], group_size=1, mode=mode))
    assert np.all(singletons == 0.0)  # G = 1: no NaN from the N − 1 std


def golden_inputs():
    x = {k: np.asarray(v) for k, v in GOLDEN["inputs"].items()}
    return (
        jnp.asarray(x["logp"], jnp.float32),
        jnp.asarray(x["old_logp"], jnp.float32),
        jnp.asarray(x["advantages"], jnp.float32),
        jnp.asarray(x["completion_mask"], bool),
        jnp.asarray(x["is_guidance"], bool),
        jnp.asarray(x["ref_logp"], jnp.float32),
    )


@pytest.mark.parametrize("key", sorted(GOLDEN["expected"]))
def test_loss_matches_float64_golden(key):
    aggregation, guidance_loss = key.split("/")
    config = grpo.GRPOConfig(
        aggregation=aggregation, guidance_loss=guidance_loss, **GOLDEN["params"]
    )
    logp, old, adv, mask, guidance, ref = golden_inputs()
    loss, metrics = loss_fn(logp, old, adv, mask, guidance, config=config, ref_logp=ref)
    expected = GOLDEN["expected"][key]
    assert float(loss) == pytest.approx(expected["loss"], abs=1e-6)
    for name in ("kl", "ratio_mean", "clip_fraction_low", "clip_fraction_high"):
        assert float(metrics[name]) == pytest.approx(expected[name], abs=1e-6), name


def random_batch(seed: int, rows: int = 4, length: int = 6):
    rng = np.random.default_rng(seed)
    logp = jnp.asarray(-rng.uniform(0.1, 2.0, (rows, length)), jnp.float32)
    ref = jnp.asarray(logp + rng.normal(0.0, 0.3, (rows, length)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=rows), jnp.float32)
    lengths = np.array([length, 4, 2, 5])[:rows]
    mask = jnp.asarray(np.arange(length)[None, :] < lengths[:, None])
    guidance = jnp.asarray(np.arange(length)[None, :] < np.array([2, 0, 1, 3])[:rows, None])
    return logp, ref, adv, mask, guidance


@pytest.mark.parametrize("aggregation", list(grpo.Aggregation))
def test_mu_1_gradient_is_the_policy_gradient(aggregation):
    beta, max_len = 0.1, 8
    config = grpo.GRPOConfig(beta=beta, aggregation=aggregation, max_completion_length=max_len)
    logp, ref, adv, mask, guidance = random_batch(1)

    def loss(lp):
        old = jax.lax.stop_gradient(lp)  # μ = 1: ρ ≡ 1 in value
        return grpo.policy_loss(lp, old, adv, mask, guidance, config, ref_logp=ref)[0]

    grad = jax.jit(jax.grad(loss))(logp)
    m = np.asarray(mask, np.float64)
    rows = m.shape[0]
    match aggregation:
        case grpo.Aggregation.SEQ_MEAN:
            weight = 1.0 / (m.sum(axis=1, keepdims=True) * rows)  # 1 / (|o_i| · N)
        case grpo.Aggregation.TOKEN_MEAN:
            weight = 1.0 / m.sum()
        case grpo.Aggregation.SEQ_SUM_FIXED:
            weight = 1.0 / (rows * max_len)
    # ∂/∂logp of −ρ·A is −A at ρ = 1; of β·k3 it is β·(1 − exp(ref − logp)).
    d_kl = 1.0 - np.exp(np.asarray(ref, np.float64) - np.asarray(logp, np.float64))
    expected = (-np.asarray(adv, np.float64)[:, None] + beta * d_kl) * m * weight
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_masked_guidance_tokens_get_no_gradient():
    logp, ref, adv, mask, guidance = random_batch(2)
    # μ > 1: ratios away from 1 on both sides of the clip range.
    old = logp + jnp.asarray(np.random.default_rng(3).normal(0.0, 0.3, logp.shape), jnp.float32)

    def grad_for(guidance_loss):
        config = grpo.GRPOConfig(guidance_loss=guidance_loss)
        loss = lambda lp: grpo.policy_loss(lp, old, adv, mask, guidance, config, ref_logp=ref)
        return np.asarray(jax.jit(jax.grad(lambda lp: loss(lp)[0]))(logp))

    masked, included = grad_for("mask"), grad_for("include")
    in_loss = np.asarray(mask & ~guidance)
    assert np.all(masked[np.asarray(guidance)] == 0.0)
    assert np.all(masked[in_loss] != 0.0)
    assert np.any(included[np.asarray(guidance & mask)] != 0.0)


def test_beta_zero_skips_the_reference():
    logp, ref, adv, mask, guidance = random_batch(4)
    no_kl = grpo.GRPOConfig(beta=0.0)
    loss, metrics = grpo.policy_loss(logp, logp, adv, mask, guidance, no_kl)
    assert "kl" not in metrics and np.isfinite(float(loss))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.policy_loss(logp, logp, adv, mask, guidance, grpo.GRPOConfig(beta=0.04))


def test_skip_update_only_for_all_zero_advantages_without_kl():
    zeros, some, rows = jnp.zeros(8), jnp.zeros(8).at[3].set(0.5), jnp.ones(8)
    no_kl = grpo.GRPOConfig(beta=0.0)
    assert bool(grpo.skip_update(zeros, no_kl, rows))
    assert not bool(grpo.skip_update(some, no_kl, rows))
    assert bool(grpo.skip_update(some, no_kl, rows.at[3].set(0)))  # its only A ≠ 0 left out
    assert not bool(grpo.skip_update(zeros, grpo.GRPOConfig(beta=0.04), rows))
    off = grpo.GRPOConfig(beta=0.0, skip_zero_advantage_steps=False)
    assert not bool(grpo.skip_update(zeros, off, rows))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: grpo.GRPOConfig(beta=-0.1), "beta"),
        (lambda: grpo.GRPOConfig(epsilon_low=1.0), "epsilon_low"),
        (lambda: grpo.GRPOConfig(num_updates=0), "num_updates"),
        (lambda: grpo.GRPOConfig(aggregation="seq_sum_fixed"), "max_completion_length"),
        (lambda: grpo.GRPOConfig(aggregation="sum"), "aggregation"),
        (lambda: optimization.OptimizerConfig(total_steps=0), "total_steps"),
        (lambda: optimization.OptimizerConfig(total_steps=10, warmup_steps=10), "warmup_steps"),
        (lambda: optimization.OptimizerConfig(total_steps=10, final_lr_fraction=2.0), "final_lr"),
    ],
)
def test_invalid_configs_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_are_hashable_and_take_strings():
    config = grpo.GRPOConfig(aggregation="token_mean", guidance_loss="mask")
    assert config.aggregation is grpo.Aggregation.TOKEN_MEAN
    assert hash(config) == hash(
        grpo.GRPOConfig(
            aggregation=grpo.Aggregation.TOKEN_MEAN, guidance_loss=grpo.GuidanceLoss.MASK
        )
    )


def test_schedule_warms_up_then_decays_to_the_final_fraction():
    config = optimization.OptimizerConfig(total_steps=100, learning_rate=1e-3)
    assert config.num_warmup_steps == 5  # ceil(0.05 · 100), not 6 from float error
    lr = np.asarray(optimization.learning_rate_schedule(config)(jnp.arange(111)))
    assert lr[0] == 0.0
    assert lr[5] == pytest.approx(1e-3, rel=1e-6)
    assert lr[100] == pytest.approx(1e-4, rel=1e-5) and lr[110] == pytest.approx(1e-4, rel=1e-5)
    assert np.all(np.diff(lr[:6]) > 0) and np.all(np.diff(lr[5:101]) < 0)


def test_optimizer_first_step_moves_each_weight_by_lr():
    config = optimization.OptimizerConfig(total_steps=10, learning_rate=1e-2, warmup_steps=0)
    optimizer = optimization.make_optimizer(config)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([3.0, -0.5, 100.0])}  # clipped to norm 1 first; Adam → sign
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1.0 - 1e-2 * np.sign(grads["w"]), rtol=1e-5)


def numpy_loss(logp, old, adv, mask, ref, config: grpo.GRPOConfig, rows) -> float:
    """SPEC §3 in float64 over the rows with `rows` set only, written out by hand."""
    keep = np.asarray(rows, bool)
    logp, old, ref = (np.asarray(x, np.float64)[keep] for x in (logp, old, ref))
    mask, adv = np.asarray(mask, np.float64)[keep], np.asarray(adv, np.float64)[keep][:, None]
    ratio = np.exp(logp - old)
    clipped = np.clip(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    per_token = -np.minimum(ratio * adv, clipped * adv)
    per_token += config.beta * (np.exp(ref - logp) - (ref - logp) - 1)
    match config.aggregation:
        case grpo.Aggregation.TOKEN_MEAN:
            return (per_token * mask).sum() / mask.sum()
        case grpo.Aggregation.SEQ_MEAN:
            return ((per_token * mask).sum(1) / mask.sum(1)).mean()
        case grpo.Aggregation.SEQ_SUM_FIXED:
            return (per_token * mask).sum() / (keep.sum() * config.max_completion_length)


@pytest.mark.parametrize("aggregation", list(grpo.Aggregation))
def test_a_truncated_row_has_no_loss_weight_under_mask_truncated(aggregation):
    rng = np.random.default_rng(3)
    R, T = 6, 9
    logp = jnp.asarray(rng.normal(-1.0, 0.3, (R, T)), jnp.float32)
    old = logp + jnp.asarray(rng.normal(0.0, 0.2, (R, T)), jnp.float32)
    ref = logp + jnp.asarray(rng.normal(0.0, 0.2, (R, T)), jnp.float32)
    adv = jnp.asarray(rng.normal(0.0, 1.0, R), jnp.float32)
    lengths = np.array([4, 9, 6, 9, 2, 7])
    mask = jnp.asarray(np.arange(T)[None] < lengths[:, None])
    batch = {"truncated": lengths == T, "is_filler": np.zeros(R, bool)}
    batch["truncated"][3] = False  # a row that ended with EOS on its last slot stays in
    config = grpo.GRPOConfig(aggregation=aggregation, beta=0.04, max_completion_length=T,
                             mask_truncated=True)  # fmt: skip
    rows = grpo.loss_rows(batch, config)
    np.testing.assert_array_equal(rows, [1, 0, 1, 1, 1, 1])
    no_guidance = jnp.zeros((R, T), bool)

    def loss(lp):
        return grpo.policy_loss(lp, old, adv, mask, no_guidance, config, ref, rows)[0]

    # fp32 against float64 over ≤ 54 terms of size ~1: a few ulps of the sum, far below 1e-5.
    want = numpy_loss(logp, old, adv, mask, ref, config, rows)
    assert float(loss(logp)) == pytest.approx(want, rel=1e-5, abs=1e-6)
    grads = jax.grad(loss)(logp)
    assert np.all(np.asarray(grads[1]) == 0.0) and np.any(np.asarray(grads[0]) != 0.0)
    off = grpo.loss_rows(batch, grpo.GRPOConfig(aggregation=aggregation,
                                                max_completion_length=T))  # fmt: skip
    np.testing.assert_array_equal(off, np.ones(R))  # the default keeps truncated rows in
    filler = grpo.loss_rows(batch | {"is_filler": np.arange(R) == 5}, config)
    np.testing.assert_array_equal(filler, [1, 0, 1, 1, 1, 0])


def numpy_group_ties(rewards, accuracy, is_guided, group_size, rows) -> dict[str, float]:
    """Counts by a plain loop over groups and their members."""
    counts, present = {}, {}
    for g in range(len(rewards) // group_size):
        idx = range(g * group_size, (g + 1) * group_size)
        for prefix, member in (("", lambda i: rows[i]),
                               ("guided_", lambda i: rows[i] and is_guided[i]),
                               ("unguided_", lambda i: rows[i] and not is_guided[i])):  # fmt: skip
            members = [i for i in idx if member(i)]
            if not members:
                continue
            present[prefix] = present.get(prefix, 0) + 1
            tied = len({float(rewards[i]) for i in members}) == 1
            correct = tied and all(accuracy[i] == 1 for i in members)
            wrong = tied and all(accuracy[i] == 0 for i in members)
            for name, hit in (("zero_std", tied), ("zero_std_all_correct", correct),
                              ("zero_std_all_wrong", wrong)):  # fmt: skip
                counts[prefix + name] = counts.get(prefix + name, 0) + int(hit)
    return {name: n / present[name.split("zero_std")[0]] for name, n in counts.items()}


def test_group_ties_equal_a_numpy_count():
    G = 4  # the first two candidates of each group are guided
    accuracy = np.array([1, 1, 1, 1,  0, 0, 0, 0,  1, 1, 0, 0,  1, 0, 1, 0,
                         0, 0, 1, 1,  1, 1, 1, 1], np.float32)  # fmt: skip
    rewards = accuracy + np.array([0] * 20 + [0.0, 0.0, 0.0, 0.5], np.float32)  # format bonus
    is_guided = np.tile(np.arange(G) < 2, 6)
    rows = np.ones(24, bool)
    rows[16:20] = False  # a filler group: left out of every count
    got = {
        k: float(v) for k, v in advantages.group_ties(rewards, accuracy, is_guided, G, rows).items()
    }
    want = numpy_group_ties(rewards, accuracy, is_guided, G, rows)
    assert got.keys() == want.keys() and len(got) == 9
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-7), name
    # By hand: of 5 counted groups, [1111] and [0000] tie; the last ties on its guided pair.
    fifths = {"zero_std": 2, "zero_std_all_correct": 1, "zero_std_all_wrong": 1,
              "guided_zero_std": 4, "unguided_zero_std": 3}  # fmt: skip
    for name, n in fifths.items():
        assert got[name] == np.float32(n / 5), name
    jitted = jax.jit(advantages.group_ties, static_argnames="group_size")
    on_device = jitted(rewards, accuracy, is_guided, group_size=G, rows=rows)
    assert {k: float(v) for k, v in on_device.items()} == got
