"""The command line end to end: train.py :smoke, export_hf.py into transformers, evaluate.py."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import math_verify
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from g2rpo_jax import checkpoint, logging_utils, trainer
from tests import fake_tokenizer, tiny_models
from tests.test_trainer import ROW_WISE_FLAGS, row_wise, smoke_config, write_rows

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    if check and result.returncode:
        raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def test_train_smoke_then_export_to_transformers_and_fine_tune_from_there(tmp_path):
    """One test, not a shared fixture: pytest-xdist would run the training once per worker."""
    data = write_rows(tmp_path / "train.jsonl")
    smoke_run = tmp_path / "work"
    result = run_script("train.py", "--config=configs/qwen3_0p6b.py:smoke", f"--workdir={smoke_run}",
                        f"--config.data.path={data}", *ROW_WISE_FLAGS)  # fmt: skip
    assert "done at step 4/4" in result.stdout
    assert sorted(os.listdir(smoke_run / "checkpoints")) == ["2", "4"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(smoke_run / "tensorboard"))
    records = logging_utils.read_jsonl(smoke_run / logging_utils.METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    expected_keys = {"loss", "kl", "reward", "accuracy", "guidance_length", "tokens_per_s"}
    assert expected_keys <= set(records[0])

    hf_dir = tmp_path / "hf"
    run_script("export_hf.py", f"--checkpoint={smoke_run}", f"--out={hf_dir}")
    names = set(os.listdir(hf_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (0.6, 0.95, 20)

    ours, _ = checkpoint.load_policy(str(smoke_run))
    ids, mask, positions = tiny_models.left_padded_batch()
    expected = np.asarray(jax.device_get(ours(ids, positions, mask)))
    hf = tiny_models.load_hf(hf_dir)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    got = tiny_models.hf_logits(hf, ids, mask, positions)
    assert np.abs(got - expected)[mask.astype(bool)].max() <= 1e-5
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer.decode(tokenizer("7+8=15")["input_ids"]) == "7+8=15"

    # The exported folder is a starting point like any Hugging Face model: weights,
    # tokenizer and stop tokens all come from it.
    config = row_wise(smoke_config(data, num_steps=1))
    config.model.path, config.model.fit_vocab_to_tokenizer = str(hf_dir), False
    config.model.overrides = ml_collections.ConfigDict()
    config.tokenizer, config.optimizer.warmup_steps = "", 0
    assert trainer.train(config, str(tmp_path / "finetune")).step == 1
    first = logging_utils.read_jsonl(tmp_path / "finetune" / logging_utils.METRICS_FILE)[0]
    assert first["kl"] == 0 and math.isfinite(first["loss"])  # starts as its own reference


def bigram_model(directory) -> tuple:
    """A Qwen3 whose layers add nothing and whose head maps each token to a fixed successor,
    so from any prompt (ending in "\\n") it writes `\\boxed{7}` and stops — a model whose
    accuracy on a file is known in advance, under any temperature ≤ 1."""
    tokenizer = fake_tokenizer.make_tokenizer(str(directory))
    config = tiny_models.qwen3_config(vocab_size=len(tokenizer), tie_word_embeddings=False,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)  # fmt: skip
    model = tiny_models.random_hf_model(config)
    chain = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c))[0] for c in "\n\\boxed{7}"]
    chain.append(tokenizer.eos_token_id)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.copy_(torch.randn_like(embed))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros_like(model.lm_head.weight)
        for token, successor in zip(chain[:-1], chain[1:], strict=True):
            head[successor] += 10 * embed[token] / embed[token].norm()
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    return model, tokenizer


def test_evaluate_report_equals_an_independent_computation(tmp_path):
    model, tokenizer = bigram_model(tmp_path / "model")
    rows = [("What is 3+4?", "7"), ("What is 3+5?", "8"), ("Half of 14?", "\\frac{14}{2}"),
            ("Seven minus one?", "6"), ("7?", "$7$")]  # fmt: skip
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    report_path = tmp_path / "report.json"
    run_script("evaluate.py", f"--model={tmp_path / 'model'}", f"--data={data}",
               "--num_samples=2", "--pass_k=1,2", "--workers=0", "--max_new_tokens=16",
               "--noshare_prefix", "--nocompact", f"--out={report_path}")  # fmt: skip
    report = json.loads(report_path.read_text())

    # Independently: transformers' greedy decoding, the boxed answer, math-verify.
    correct = []
    for prompt, answer in rows:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)  # fmt: skip
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, do_sample=False, max_new_tokens=16, pad_token_id=0,
                             eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        completion = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert completion == "\\boxed{7}"
        gold = answer if "$" in answer else f"${answer}$"
        correct.append(math_verify.verify(math_verify.parse(gold), math_verify.parse(completion)))
    assert correct == [True, False, True, False, True]
    assert report["num_rows"] == len(rows) and report["num_samples"] == 2
    assert [r["correct"] for r in report["rows"]] == [2 * c for c in correct]
    assert report["pass@1"] == pytest.approx(np.mean(correct))
    assert report["pass@2"] == pytest.approx(np.mean(correct))
    assert report["decoding"]["temperature"] == 0.6 and report["decoding"]["top_k"] == 20
