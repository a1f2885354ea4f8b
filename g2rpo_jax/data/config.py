"""DataConfig: where rows come from, how their fields are named, and how they are batched."""

import dataclasses
import enum


class SourceFormat(enum.StrEnum):
    AUTO = "auto"  # from the path: hf:… → HF_HUB, .jsonl → JSONL, .parquet → Parquet
    JSONL = "jsonl"
    PARQUET = "parquet"
    HF_DISK = "hf_disk"  # a folder written by `datasets.Dataset.save_to_disk`
    HF_HUB = "hf_hub"  # `hf:<hub id or local copy>`, read by `datasets.load_dataset`
    TFDS = "tfds"  # a data_dir written by `scripts/prepare_data.py` (ArrayRecord)


class Order(enum.StrEnum):
    """Curriculum order (SPEC §5)."""

    SORTED = "sorted"  # easy to hard by difficulty; ties in a seeded shuffle
    RANDOM = "random"  # a seeded permutation, new each epoch
    NONE = "none"  # file order


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Names of the source's columns that hold each field of our row schema.

    `guidance_correctness` set: the guidance column holds a list of candidate traces and this
    column a parallel list of bools; the first trace marked True is the guidance. Unset: the
    guidance column is one string. With a list of candidates:
    - `guidance_correctness_fallback`, a second judge's parallel flags (null: no verdict),
      picks the trace when the first judge marked none correct;
    - `guidance_complete`, parallel flags (null: not recorded) of traces that ran to their
      end: an incomplete trace is never picked;
    - a row with no trace picked is skipped and counted (`Loaded.untraced_rows`): the source
      could not solve it, so neither its trace nor its label is trusted.
    `guidance_optional`: a row whose guidance is missing or null is not a bad row but one
    without a trace; its guided candidates get min(ℓ, 0) = 0 trace tokens, i.e. sample
    unguided (traces that exist for only part of the data).
    `guidance_answer_tags`: the part of a trace after its `</think>` is wrapped in
    `<answer>…</answer>`, so a trace with a prose solution (OpenR1's) has the format the
    format reward and the paper's system prompt ask for.
    """

    prompt: str = "prompt"
    answer: str = "answer"
    guidance: str = "guidance"
    guidance_correctness: str | None = None
    guidance_correctness_fallback: str | None = None
    guidance_complete: str | None = None
    difficulty: str | None = "difficulty"
    tests: str | None = "tests"
    guidance_optional: bool = False
    guidance_answer_tags: bool = False

    @classmethod
    def openr1_math(cls) -> "FieldMap":
        """OpenR1-Math-220k: `problem`, `answer`, `generations`; the first complete trace
        (`is_reasoning_complete`) that math-verify marked correct, else one its LLM judge
        did (`correctness_llama`); the prose after `</think>` becomes the answer block."""
        return cls(
            prompt="problem",
            guidance="generations",
            guidance_correctness="correctness_math_verify",
            guidance_correctness_fallback="correctness_llama",
            guidance_complete="is_reasoning_complete",
            difficulty=None,
            tests=None,
            guidance_answer_tags=True,
        )

    @classmethod
    def verifiable_coding_cot(cls) -> "FieldMap":
        """Blancy/verifiable-coding-problems-CoT, the paper recipe's code set: the problem in
        `problem_statement`, a reference trace in `generations`, the tests in
        `verification_info` (schema.py unpacks its test_cases); no answer column. What
        follows a trace's `</think>` becomes its answer block, as for OpenR1."""
        return cls(
            prompt="problem_statement",
            guidance="generations",
            difficulty=None,
            tests="verification_info",
            guidance_answer_tags=True,
        )

    @classmethod
    def math500(cls) -> "FieldMap":
        """MATH-500: `problem`, `answer`, and a worked `solution` (the reference trace)."""
        return cls(prompt="problem", guidance="solution", difficulty=None, tests=None)


HUB_PREFIX = "hf:"
# The column mapping of the hub datasets the paper's recipe uses, by dataset name, so that
# `hf:open-r1/OpenR1-Math-220k` and a local copy of it (`hf:/data/OpenR1-Math-220k`) both work
# with data.fields left at our own schema's names.
_KNOWN_HUB_FIELDS = {
    "OpenR1-Math-220k": FieldMap.openr1_math(),
    "MATH-500": FieldMap.math500(),
    "verifiable-coding-problems-CoT": FieldMap.verifiable_coding_cot(),
}


def hub_id(path: str) -> str | None:
    """The hub id (or local copy) of an `hf:` path; None for any other path."""
    return path.removeprefix(HUB_PREFIX) if path.startswith(HUB_PREFIX) else None


def source_fields(path: str, fields: FieldMap) -> FieldMap:
    """`fields`, or the known mapping of an `hf:` dataset when `fields` is our schema's."""
    source = hub_id(path)
    if source is None or fields != FieldMap():
        return fields
    return _KNOWN_HUB_FIELDS.get(source.rstrip("/").rsplit("/", 1)[-1], fields)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the data pipeline needs; built once from the ml_collections config.

    batch_size is B per host: each host gets `batch_size` prompts per step, so the global
    batch is batch_size × process_count. max_completion_length counts guidance tokens too
    (SPEC §1), so trace ids are cut to it.
    """

    path: str
    format: SourceFormat = SourceFormat.AUTO
    split: str = "train"  # TFDS split, or the split of a saved HF DatasetDict
    fields: FieldMap = FieldMap()
    max_prompt_length: int = 512
    max_completion_length: int = 4096
    batch_size: int = 8
    order: Order = Order.SORTED
    seed: int = 0
    num_epochs: int = 1
    skip_bad_rows: bool = False
    system_prompt: str | None = None
    enable_thinking: bool = True  # passed to Qwen3 chat templates; others ignore it
    use_chat_template: bool = True  # False: string prompts are tokenized as they are

    def __post_init__(self):
        if self.batch_size < 1 or self.num_epochs < 1:
            raise ValueError("batch_size and num_epochs must be at least 1")
        if self.max_prompt_length < 1 or self.max_completion_length < 1:
            raise ValueError("max_prompt_length and max_completion_length must be at least 1")
        if not self.use_chat_template and self.system_prompt is not None:
            raise ValueError("system_prompt needs use_chat_template=True")
        # Accept plain strings from ml_collections; fail here on a typo.
        object.__setattr__(self, "format", SourceFormat(self.format))
        object.__setattr__(self, "order", Order(self.order))
