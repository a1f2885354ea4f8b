"""A real Qwen-style transformers tokenizer, built offline for tests.

No Qwen tokenizer files are reachable offline, so tests build one with the `tokenizers`
library: byte-level BPE without merges (one token per UTF-8 byte, so any text round-trips),
Qwen's special tokens after the byte vocabulary, and a Qwen3-like chat template that honours
`enable_thinking`. Reused by data, sampler and trainer tests.
"""

import tempfile

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
END_THINK = "</think>"

# Like Qwen3: <think> and </think> are added tokens the model emits, not special ones, so
# `skip_special_tokens=True` keeps them in decoded text.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
THINK_TOKENS = (THINK, END_THINK)

# Qwen3's template reduced to what tests need: optional system message, turns, generation
# prompt, and an empty think block when `enable_thinking=False`.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _backend() -> Tokenizer:
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False) for t in THINK_TOKENS])
    return tokenizer


def make_tokenizer(tmp_dir: str | None = None) -> transformers.PreTrainedTokenizerFast:
    """Builds the tokenizer, saves it with save_pretrained and reloads it with AutoTokenizer.

    The round trip proves the saved folder is what a user's checkpoint directory would hold.
    Pass `tmp_dir` to keep the files (e.g. a pytest tmp_path); otherwise a temporary folder is
    used and removed.
    """
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
    )
    if tmp_dir is not None:
        tokenizer.save_pretrained(tmp_dir)
        return transformers.AutoTokenizer.from_pretrained(tmp_dir)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return transformers.AutoTokenizer.from_pretrained(folder)
