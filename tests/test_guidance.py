"""Invariants of the guidance plan and the ℓ controller (g2rpo_jax.guidance)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from g2rpo_jax import guidance

TABLE = json.loads(
    (pathlib.Path(__file__).parent / "goldens" / "controller_trajectories.json").read_text()
)
CASES = {case["name"]: case for case in TABLE["cases"]}

update_jit = jax.jit(guidance.update, static_argnames="config")
lengths_jit = jax.jit(guidance.guidance_lengths, static_argnames=("group_size", "num_guided"))


def run(update, config: guidance.GuidanceConfig, signals) -> list[guidance.ControllerState]:
    state, states = guidance.init_controller(config), []
    for r in signals:
        state = update(state, r, config=config)
        states.append(state)
    return states


@pytest.mark.parametrize(
    "ratio, group_size, expected",
    [
        (0.75, 12, 9),
        (0.1, 30, 3),  # 0.1·30 = 3.0000000000000004
        (0.7, 10, 7),  # 0.7·10 = 7.000000000000001
        (1 / 3, 3, 1),  # 0.9999999999999999
        (0.25, 12, 3),
        (0.26, 4, 2),
        (0.0, 8, 0),
        (1.0, 8, 8),
        (0.01, 8, 1),
    ],
)
def test_num_guided_is_ceil_of_alpha_g(ratio, group_size, expected):
    assert guidance.num_guided(ratio, group_size) == expected


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 1.0])
def test_guidance_lengths_guide_the_first_candidates_of_each_group(ratio):
    group_size, length = 4, 7
    trace_lengths = np.array([5, 100, 0], np.int32)
    n = guidance.num_guided(ratio, group_size)
    got = lengths_jit(jnp.asarray(trace_lengths), jnp.int32(length), group_size, n)
    expected = np.zeros((3, group_size), np.int32)
    expected[:, :n] = np.minimum(length, trace_lengths)[:, None]
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, expected.reshape(-1))  # prompt-major rows b*G + j


@pytest.mark.parametrize("name", sorted(CASES))
def test_controller_reproduces_golden_trajectory(name):
    case = CASES[name]
    config = guidance.GuidanceConfig(ratio=0.5, **case["config"])
    eager = run(guidance.update, config, case["signals"])
    jitted = run(update_jit, config, case["signals"])
    assert [int(s.length) for s in eager] == case["lengths"]
    for a, b in zip(eager, jitted, strict=True):  # jit(update) == update, whole state
        jax.tree.map(np.testing.assert_array_equal, a, b)
    final = eager[-1]
    assert int(final.count) == len(case["signals"])
    window = final.history.shape[0]
    np.testing.assert_array_equal(final.history, np.float32(case["signals"][-window:]))


def test_paper_rule_lengths_stay_in_bounds_for_random_signals():
    config = guidance.GuidanceConfig(ratio=0.5, initial_length=300, min_length=40, max_length=900)
    signals = np.random.default_rng(0).choice([0.0, 0.01, 0.3, 0.9, 1.0], size=40)
    lengths = [int(s.length) for s in run(update_jit, config, signals)]
    assert min(lengths) >= 40 and max(lengths) <= 900
    assert len(set(lengths)) > 3


def test_state_survives_orbax_roundtrip(tmp_path):
    config = guidance.GuidanceConfig(ratio=0.5, history=3)
    state = run(update_jit, config, [0.2, 0.5, 0.4])[-1]
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "controller", state)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpointer.restore(tmp_path / "controller", abstract)
    assert isinstance(restored, guidance.ControllerState)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    after = update_jit(restored, 0.6, config=config)
    jax.tree.map(np.testing.assert_array_equal, after, update_jit(state, 0.6, config=config))


@pytest.mark.parametrize(
    "signal, expected",
    [("accuracy", 0.625), ("unguided_accuracy", 0.25), ("total_reward", 0.925)],
)
def test_step_signal(signal, expected):
    config = guidance.GuidanceConfig(ratio=0.5, signal=signal)
    accuracy = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    total = accuracy + 0.3
    is_guided = jnp.asarray([True, True, False, False, True, True, False, False])
    got = jax.jit(guidance.step_signal, static_argnames="config")(
        accuracy, total, is_guided, config=config
    )
    assert got.dtype == jnp.float32 and float(got) == pytest.approx(expected)


def test_unguided_signal_without_unguided_candidates_is_zero():
    config = guidance.GuidanceConfig(ratio=0.9, signal="unguided_accuracy")
    ones = jnp.ones(4)
    assert float(guidance.step_signal(ones, ones, jnp.ones(4, bool), config)) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 0.5, "min_length": 10, "max_length": 5, "initial_length": 5}, "min_length"),
        ({"ratio": 0.5, "initial_length": 4000}, "initial_length"),
        ({"ratio": 0.5, "max_length": 2**20, "initial_length": 10}, "max_length"),
        ({"ratio": 0.5, "history": 0}, "history"),
        ({"ratio": 0.5, "rule": "linear"}, "total_steps"),
        ({"ratio": 0.5, "rule": "step", "total_steps": 10, "steps": 0}, "steps"),
        ({"ratio": 0.5, "rule": "cosine"}, "rule"),
        ({"ratio": 1.0, "signal": "unguided_accuracy"}, "unguided"),
    ],
)
def test_invalid_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        guidance.GuidanceConfig(**kwargs)
