"""The toy task's tokenizer: one token per character, the four tags whole, Qwen's specials.

A real Hugging Face fast tokenizer (`tokenizer.json`, loadable with AutoTokenizer), built
offline with the `tokenizers` library. Ids, in order: `<|endoftext|>` (padding),
`<|im_start|>`, `<|im_end|>` (EOS), `<unk>`, the characters of `task.ALPHABET`, then
`<think>`, `</think>`, `<answer>`, `</answer>`. The tags are added tokens that are not
special (as Qwen3's `<think>`), so decoding with `skip_special_tokens=True` keeps them.

Prompts are plain text (`563+141=`). The chat template renders the user turns' text and
nothing else, so the trainer's chat-template path and `use_chat_template=False` give the
same ids.
"""

import os
import tempfile

import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from g2rpo_jax.toy import task

ENDOFTEXT, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{- message['content'] }}{%- endif %}{%- endfor %}"
)


def _backend() -> Tokenizer:
    symbols = [*SPECIAL_TOKENS, UNK, *task.ALPHABET]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in task.TAGS])
    return backend


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """The tokenizer object (save it with `save_pretrained`)."""
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(out_dir: str) -> transformers.PreTrainedTokenizerBase:
    """Writes the tokenizer files to `out_dir` and returns them as AutoTokenizer loads them."""
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer().save_pretrained(out_dir)
    return transformers.AutoTokenizer.from_pretrained(out_dir)


def load_tokenizer(directory: str | None = None) -> transformers.PreTrainedTokenizerBase:
    """From `directory`, or freshly built through a temporary folder (as a user would load it)."""
    if directory is not None:
        return transformers.AutoTokenizer.from_pretrained(directory)
    with tempfile.TemporaryDirectory() as folder:
        return save_tokenizer(folder)
