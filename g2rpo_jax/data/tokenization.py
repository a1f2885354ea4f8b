"""Prompt ids through the chat template, and trace ids tokenized once without special tokens.

Prompts are rendered and tokenized at load time (they are short, and their length decides
which rows are kept). Traces are long, so they are tokenized per batch in the Grain pipeline,
only for the rows a host reads; the sampler receives these ids and never re-tokenizes text
(SPEC §1).
"""

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence

import jax
import numpy as np
import tokenizers
import transformers

from g2rpo_jax.data.config import DataConfig
from g2rpo_jax.data.schema import Prompt, Row
from g2rpo_jax.models.config import ModelConfig

Tokenizer = transformers.PreTrainedTokenizerBase
BYTES_TOKENIZER = "builtin:bytes"  # a byte-level Qwen-style tokenizer written to the workdir
TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, copied into the workdir at the start


@dataclasses.dataclass(frozen=True)
class Example:
    """A validated row with its prompt rendered and tokenized."""

    row: Row
    prompt_text: str  # the chat-templated prompt: exactly what prompt_ids encode
    prompt_ids: np.ndarray  # int32 [prompt length ≤ max_prompt_length]


def render_prompt(tokenizer: Tokenizer, prompt: Prompt, config: DataConfig) -> str:
    """The text the model sees before its answer: chat template with the generation prompt.

    `config.system_prompt` goes first unless the row's messages bring their own system message.
    """
    if not config.use_chat_template:
        if not isinstance(prompt, str):
            raise ValueError("a prompt given as chat messages needs use_chat_template=True")
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if config.system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": config.system_prompt}, *messages]
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=config.enable_thinking,
    )


def encode_prompts(
    rows: Sequence[Row], tokenizer: Tokenizer, config: DataConfig
) -> tuple[list[Example], int]:
    """Examples for the rows whose prompt fits `max_prompt_length`, and how many did not."""
    texts = [render_prompt(tokenizer, row.prompt, config) for row in rows]
    # The template already holds the special tokens: add none, but do parse those it wrote.
    ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    examples = [
        Example(row, text, np.asarray(row_ids, np.int32))
        for row, text, row_ids in zip(rows, texts, ids, strict=True)
        if len(row_ids) <= config.max_prompt_length
    ]
    return examples, len(rows) - len(examples)


class TraceEncoder:
    """Trace text → ids: no special tokens added, special-token text kept as plain text.

    A trace that happens to contain "<|im_end|>" must not end the sequence, so special tokens
    are split (Qwen3's <think> and </think> are ordinary added tokens and stay whole). Ids are
    cut to `max_length`: max_completion_length counts guidance tokens (SPEC §1), so no longer
    prefix is ever used. The encoder owns a copy of the backend tokenizer, so Grain's reader
    threads never share mutable tokenizer state with the caller's tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"a fast (tokenizers-backed) tokenizer is needed, got {type(tokenizer)}"
            )
        self._backend = tokenizers.Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._backend.encode_special_tokens = True
        self._max_length = max_length

    def __call__(self, traces: Sequence[str]) -> list[np.ndarray]:
        encodings = self._backend.encode_batch_fast(list(traces), add_special_tokens=False)
        return [np.asarray(e.ids[: self._max_length], np.int32) for e in encodings]


def pad_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (padding is never attended: lengths say where)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an EOS token")


def bytes_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE without merges (any text round-trips), Qwen's special tokens and a
    Qwen3-like chat template: what `:smoke` configs train with, no download needed."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    )
    backend.add_tokens([AddedToken(t, special=False) for t in ("<think>", "</think>")])
    template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
        "{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and "
        "enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=template,
    )


def load_tokenizer(spec: str, workdir: str | None = None) -> Tokenizer:
    """The run's tokenizer; with a workdir it is saved there first (or read from there on
    resume), so the workdir alone is enough to export and evaluate."""
    saved = os.path.join(workdir, TOKENIZER_DIR) if workdir else None
    if saved and os.path.exists(os.path.join(saved, "tokenizer_config.json")):
        return transformers.AutoTokenizer.from_pretrained(saved)
    if spec == BYTES_TOKENIZER:
        with tempfile.TemporaryDirectory() as folder:  # reload, as a saved folder would load
            bytes_tokenizer().save_pretrained(folder)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec)
    if saved and jax.process_index() == 0:
        tokenizer.save_pretrained(saved)
    return tokenizer


_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def stop_ids(tokenizer, model_config: ModelConfig, model_path: str = "") -> tuple:
    """Token ids that end a completion: the tokenizer's and model's EOS, the generation
    config's, and Qwen's end-of-turn / end-of-text tokens when the vocabulary has them."""
    ids = {tokenizer.eos_token_id, model_config.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in _STOP_TOKENS if t in vocab}
    generation = os.path.join(model_path, "generation_config.json") if model_path else ""
    if generation and os.path.exists(generation):
        with open(generation) as f:
            eos = json.load(f).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos])
    return tuple(sorted(i for i in ids if i is not None and i < model_config.vocab_size))


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The tokenizer's ids a sampler writes and stops on; hashable (static under jit).

    eos: ids that end a completion (`stop_ids`); () runs every row to its budget.
    pad: the id written after a row's end and in padding rows (`data.tokenization.pad_id`).
    """

    eos: tuple[int, ...] = ()
    pad: int = 0

    @classmethod
    def of(cls, tokenizer, model_config: ModelConfig, model_path: str = "") -> "TokenIds":
        """The ids of this tokenizer and model (`model_path`: its folder, for the
        generation config's EOS)."""
        return cls(stop_ids(tokenizer, model_config, model_path), pad_id(tokenizer))
