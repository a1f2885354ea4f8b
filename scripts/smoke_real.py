r"""Real-size smoke (`make smoke-real`): the qwen3-0.6b preset with random weights and a
151,643-token byte-level BPE tokenizer with ChatML (Qwen's sizes, nothing downloaded), 1 prompt
× G = 2, 2 steps through scripts/train.py, export, and transformers loading the export.

    python scripts/smoke_real.py --workdir=/tmp/smoke_real

Prints one JSON line: wall seconds of each stage and the peak RSS of the training process.
The unit tests use toy widths; this is the one run at the shapes users train.
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from g2rpo_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", "runs/smoke_real", "Everything goes here (replaced).")
_STEPS = flags.DEFINE_integer("steps", 2, "Training steps.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGULAR_TOKENS = 151_643  # Qwen2/3's BPE vocabulary before its special tokens
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def real_size_tokenizer(folder: str):
    """Byte-level BPE of Qwen's size: the 256 byte symbols, every byte pair, then byte triples
    (pair + byte) until there are REGULAR_TOKENS, each one a merge; ChatML special tokens."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = []
    pairs = [(a, b) for a in symbols for b in symbols]
    triples = ((a + b, c) for a, b in pairs for c in symbols)
    for left, right in [*pairs, *triples]:
        if len(vocab) == REGULAR_TOKENS:
            break
        vocab[left + right] = len(vocab)
        merges.append((left, right))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    backend.add_tokens([AddedToken(t, special=False) for t in ("<think>", "</think>")])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def _run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], cwd=REPO, check=True, env=dict(os.environ, PYTHONPATH=REPO)
    )
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    work = os.path.abspath(_WORKDIR.value)
    subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(work)
    times = {}
    start = begin = time.perf_counter()
    tokenizer = real_size_tokenizer(os.path.join(work, "tokenizer_src"))
    times["tokenizer_s"] = time.perf_counter() - start
    data = os.path.join(work, "train.jsonl")
    with open(data, "w") as f:
        for a in range(_STEPS.value):
            row = {
                "prompt": f"What is {a} + 2?",
                "answer": str(a + 2),
                "guidance": f"<think>{a} + 2 = {a + 2}</think> \\boxed{{{a + 2}}}",
            }
            f.write(json.dumps(row) + "\n")
    train = os.path.join(work, "train")
    times["train_s"] = _run(
        "scripts/train.py",
        "--config=configs/qwen3_0p6b.py",
        f"--workdir={train}",
        "--config.model.path=",
        f"--config.tokenizer={work}/tokenizer_src",
        f"--config.data.path={data}",
        "--config.data.batch_size=1",
        "--config.grpo.group_size=2",
        "--config.data.max_prompt_length=64",
        "--config.data.max_completion_length=16",
        "--config.guidance.initial_length=8",
        "--config.guidance.max_length=8",
        f"--config.train.num_steps={_STEPS.value}",
        "--config.train.eval_every=0",
        "--config.train.save_every=1",
        "--config.train.progress_bar=False",
        "--config.rewards.workers=0",
        # fp32 weights + Adam + the β reference copy of 0.6B already fill a 24 GiB machine
        # (killed at 24 GiB RSS): bf16 weights and no reference keep the shapes, not the bytes.
        "--config.model.param_dtype=bfloat16",
        "--config.grpo.beta=0",
    )
    train_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    hf_dir = os.path.join(work, "hf")
    times["export_s"] = _run("scripts/export_hf.py", f"--checkpoint={train}", f"--out={hf_dir}")

    start = time.perf_counter()
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}],
        add_generation_prompt=True,
        return_dict=False,
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits.numpy()
    times["transformers_load_s"] = time.perf_counter() - start
    if not np.isfinite(logits).all():
        raise AssertionError("the exported model's logits are not finite")
    print(
        json.dumps(
            {
                "benchmark": "smoke_real",
                "preset": "qwen3-0.6b",
                "tokenizer_size": len(tokenizer),
                "vocab_size": model.config.vocab_size,
                "parameters": model.num_parameters(),
                "steps": _STEPS.value,
                **{k: round(v, 1) for k, v in times.items()},
                "wall_s": round(time.perf_counter() - begin, 1),
                "peak_rss_train_gib": round(train_rss_gib, 2),
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
