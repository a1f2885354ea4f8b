"""Every shipped config builds; bad values fail before anything is loaded, naming the field."""

import importlib.util
import json
import os
import pathlib

import jax
import pytest

from g2rpo_jax import config as config_lib
from g2rpo_jax import experiment, hub, trainer
from g2rpo_jax.data import FieldMap
from g2rpo_jax.models import abstract_model
from g2rpo_jax.models.hf import config_from_hf
from g2rpo_jax.models.qwen import param_count

CONFIGS = sorted((pathlib.Path(__file__).resolve().parent.parent / "configs").glob("*.py"))
# Approximate parameter counts of the published models (embeddings included).
SIZES = {"qwen3-0.6b": 0.6e9, "qwen3-1.7b": 2.0e9, "qwen3-8b": 8.2e9}
PAPER_SCALE = {"base", "qwen3_0p6b", "qwen3_1p7b", "qwen3_8b", "qwen3_0p6b_code"}


def load(path: pathlib.Path, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.data.path = config.data.path or "train.jsonl"
    return config


@pytest.mark.parametrize("name", ["qwen3_0p6b", "qwen3_1p7b", "qwen3_8b"])
def test_paper_configs_read_the_hub_math_data_and_smoke_reads_local(name):
    path = CONFIGS[0].parent / f"{name}.py"
    exp = experiment.build(load(path), num_devices=8)
    assert (exp.data.path, exp.data.fields) == (config_lib.OPENR1_MATH, FieldMap.openr1_math())
    assert (exp.eval.path, exp.eval.split, exp.eval.fields) == (
        config_lib.MATH_500,
        "test",
        FieldMap.math500(),
    )
    assert [s.what for s in hub.run_sources(exp, needs_weights=True)] == [
        "model", "data", "eval data"
    ]  # fmt: skip
    # Resuming, the weights and tokenizer come from the workdir.
    assert [s.what for s in hub.run_sources(exp, needs_weights=False)] == ["data", "eval data"]
    smoke = load(path, "smoke")
    assert (smoke.data.path, smoke.eval.path, smoke.train.eval_every) == ("train.jsonl", "", 0)


@pytest.mark.parametrize("variant", [None, "smoke"])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds_and_its_model_builds_abstractly(path, variant):
    config = load(path, variant)
    if path.stem == "base" and variant is None:
        config.model.path, config.model.preset = "Qwen/Qwen3-0.6B-Base", "qwen3-0.6b"
    config.lock()  # as train.py sees it
    exp = experiment.build(config, num_devices=8)
    if os.path.isdir(exp.model.path):  # a local checkpoint (the demo): its own config.json
        with open(os.path.join(exp.model.path, "config.json")) as f:
            model = abstract_model(config_from_hf(json.load(f)))
    else:
        vocab = 261 if exp.model.fit_vocab_to_tokenizer else None
        model = abstract_model(experiment.preset_model_config(exp.model, vocab))
    params = param_count(model)
    if variant == "smoke":
        assert params < 1e6 and exp.train.num_steps <= 4
    if path.stem not in PAPER_SCALE:
        return
    if variant == "smoke":
        assert exp.model.path == "" and exp.model.preset == config.model.preset  # shrunk
    else:
        assert exp.model.path.startswith("Qwen/")
        assert params == pytest.approx(SIZES[exp.model.preset], rel=0.15)
        assert (
            exp.grpo.group_size == 12
            and exp.grpo.beta == 0.04
            and exp.optimizer.learning_rate == 1e-5
        )


def test_unknown_variant_is_refused():
    with pytest.raises(config_lib.ConfigError, match="variant 'smol'"):
        load(CONFIGS[0], "smol")


def smoke(**changes):
    config = config_lib.smoke(config_lib.default_config())
    config.data.path = "train.jsonl"
    for key, value in changes.items():
        group, name = key.split("__")
        config[group][name] = value
    return config


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(guidance__ratio=1.5), "config.guidance.ratio"),
        (dict(guidance__ratio=-0.1), "config.guidance.ratio"),
        (dict(grpo__group_size=1), "config.grpo.group_size"),
        (dict(data__batch_size=3), "config.data.batch_size"),  # 3 × G=4 rows on 8 devices
        (dict(grpo__grop_size=3), "config.grpo.grop_size"),  # a typo inside a config file
        (dict(guidance__rule="sine"), "config.guidance"),
        (dict(rewards__accuracy_reward="code"), "config.rewards.accuracy_reward"),
        (dict(guidance__max_length=64), "config.guidance.max_length"),  # > 32 completion tokens
        (dict(train__eval_every=2), "config.eval.path"),
        (dict(grpo__rollout_correction="tis"), "config.grpo.rollout_correction"),
        (dict(grpo__rollout_correction_min=4.0), "config.grpo.rollout_correction_min"),
        (dict(sampling__param_dtype="float16"), "config.sampling.param_dtype"),
        (dict(train__alarm_steps=-1), "config.train.alarm_steps"),
    ],
)
def test_bad_config_fails_before_anything_is_loaded_naming_the_field(
    changes, field, tmp_path, monkeypatch
):
    def too_late(*args, **kwargs):
        raise AssertionError("the config should have been refused before this")

    monkeypatch.setattr(trainer, "load_tokenizer", too_late)
    monkeypatch.setattr(trainer, "make_dataset", too_late)
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
        trainer.train(smoke(**changes), str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_batch_divisibility_follows_the_mesh():
    assert experiment.build(smoke(data__batch_size=3), num_devices=1).mesh_shape == (1, 1, 1)
    config = smoke(data__batch_size=1, grpo__group_size=2)  # 2 rows
    config.mesh.shape = (2, 2, 2)
    with pytest.raises(config_lib.ConfigError, match=r"data × fsdp = 4"):
        experiment.build(config, num_devices=8)
    config.data.batch_size = 2
    assert experiment.build(config, num_devices=8).mesh_shape == (2, 2, 2)
    with pytest.raises(config_lib.ConfigError, match=r"config\.mesh\.shape"):
        experiment.build(config, num_devices=4)


def test_the_run_length_reaches_the_optimizer_and_the_schedules():
    exp = experiment.build(smoke(), num_devices=jax.device_count()).with_total_steps(40)
    assert exp.optimizer.total_steps == exp.guidance.total_steps == 40


def test_model_attention_is_a_config_key_and_an_override():
    c = load(CONFIGS[0].parent / "demo.py")
    c.model.attention = "chunked"
    assert experiment.build(c, num_devices=1).model.attention == "chunked"
    c.model.attention = "auto"
    c.model.overrides.attention = "splash"  # the same field; also with a model.path
    assert experiment.build(c, num_devices=1).model.attention == "splash"
    c.model.overrides.attention = "flash"
    with pytest.raises(config_lib.ConfigError, match=r"model\.overrides: attention='flash': use"):
        experiment.build(c, num_devices=1)
    del c.model.overrides["attention"]
    c.model.attention = "flash"
    with pytest.raises(config_lib.ConfigError, match=r"config\.model: attention='flash': use"):
        experiment.build(c, num_devices=1)


def test_share_prefix_is_a_sampling_key_the_train_step_reads():
    """sampling.share_prefix (default on) reaches the step's settings: off, every forward
    is row-wise, to compare and bisect."""
    assert experiment.build(smoke(), num_devices=1).sampling.share_prefix
    exp = experiment.build(smoke(sampling__share_prefix=False), num_devices=1)
    assert not exp.sampling.share_prefix
