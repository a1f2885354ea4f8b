"""The demo path: configs/demo.py:smoke trains the shipped demo model for 2 steps, evaluating
before and after, and writes the plots; the shipped files are what the recipe says."""

import dataclasses
import importlib.util
import json
import os
import pathlib

import pytest
import transformers

from g2rpo_jax import experiment, trainer
from g2rpo_jax.plots import PLOTS
from g2rpo_jax.toy import demo
from g2rpo_jax.toy.data import read_problems
from tests.test_trainer import row_wise

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "demo.py"


def demo_config(arg=None):
    spec = importlib.util.spec_from_file_location("config_demo", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_shipped_demo_assets_match_the_recipe():
    model_dir = os.path.join(demo.DEMO_DIR, demo.MODEL_DIR)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    assert hf["model_type"] == "qwen3" and hf["vocab_size"] >= len(tokenizer)
    assert hf["eos_token_id"] == tokenizer.eos_token_id
    size = sum(p.stat().st_size for p in pathlib.Path(demo.DEMO_DIR).rglob("*") if p.is_file())
    assert size < 20 * 2**20
    sets = demo.problem_sets(demo.Recipe())
    assert read_problems(os.path.join(demo.DEMO_DIR, demo.EVAL_FILE)) == sets["eval"]
    train = read_problems(os.path.join(demo.DEMO_DIR, demo.TRAIN_FILE))
    assert train == sets["train"] and not set(train) & set(sets["eval"])
    assert all(p.digits == demo.RL_DIGITS for p in train)
    assert max(len(tokenizer(p.trace)["input_ids"]) for p in train) < demo.MAX_COMPLETION_LENGTH
    # Provenance: the shipped model was built by today's recipe and starts in the sparse-reward
    # regime the demo is about.
    with open(os.path.join(demo.DEMO_DIR, demo.INFO_FILE)) as f:
        info = json.load(f)
    assert info["recipe"] == json.loads(json.dumps(dataclasses.asdict(demo.Recipe())))
    assert 0.02 <= info["held_out"]["greedy"] <= 0.20


def test_demo_smoke_run_evaluates_before_and_after_and_plots(tmp_path, capsys):
    config = row_wise(demo_config("smoke"))
    config.lock()
    result = trainer.train(config, str(tmp_path))
    assert result.step == result.total_steps == 2
    with open(tmp_path / "eval.jsonl") as f:
        evals = [json.loads(line) for line in f]
    assert [e["step"] for e in evals] == [0, 2]
    assert all(e["num_rows"] == 16 for e in evals)
    for name in PLOTS[:3]:
        assert (tmp_path / name).stat().st_size > 1000
    assert "before" in capsys.readouterr().out


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_demo_config_builds_and_fits_the_task(arg):
    config = demo_config(arg)
    config.lock()  # as train.py sees it
    exp = experiment.build(config, num_devices=8)
    assert exp.model.path == os.path.join(demo.DEMO_DIR, demo.MODEL_DIR)
    longest = 10 * demo.RL_DIGITS + 6  # the longest 4-digit trace, in tokens
    assert config.guidance.max_length == longest
    assert config.data.max_completion_length >= longest + 1  # room for EOS
    assert config.data.max_completion_length == demo.MAX_COMPLETION_LENGTH
