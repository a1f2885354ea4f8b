r"""pass@1 (and pass@k from n samples) of a model on a problem file, with SPEC §7's
evaluation decoding (temperature 0.6, top-p 0.95, top-k 20); writes a JSON report with
per-row completions and scores.

    python scripts/evaluate.py --model=/ckpt/run1/hf --data=hf:HuggingFaceH4/MATH-500
    python scripts/evaluate.py --model=/ckpt/run1 --data=/data/math500.jsonl \
        --num_samples=8 --pass_k=1,4,8 --out=/ckpt/run1/math500.json

--model is a Hugging Face folder (or hub id) or a training workdir / checkpoint step folder;
a checkpoint brings its own tokenizer, prompt settings (chat template, system prompt) and
reward (accuracy or code). Rows need `prompt` and `answer` (or `tests`); `guidance` is not
used. A completion is correct when its reward is 1 (math-verify equal; all tests passed).
Test code that is not call-based (HumanEval's `def check(candidate): ...`) scores 0 unless
`--trust_test_code`, which runs it in the program's process (README "Code rewards").
"""

import dataclasses
import functools
import json
import os

import transformers
from absl import app, flags
from flax import nnx

from g2rpo_jax import checkpoint, cli, evaluation, sampling
from g2rpo_jax.data import DataConfig, FieldMap, source_fields, tokenization
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.rewards import RewardConfig, RewardPool, parse_gold
from g2rpo_jax.rewards.code import check_tests
from g2rpo_jax.sampling import SamplingConfig

_MODEL = flags.DEFINE_string("model", None, "Hugging Face folder / hub id, or a workdir.")
_DATA = flags.DEFINE_string(
    "data",
    None,
    "Problems: JSONL, Parquet, a saved HF dataset, or hf:HUB_ID (e.g. hf:HuggingFaceH4/MATH-500).",
)
_SPLIT = flags.DEFINE_string("split", "test", "Split of an hf: or saved HF dataset.")
_OUT = flags.DEFINE_string("out", "eval_report.json", "Where the JSON report goes.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer (default: the model's).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "n completions per problem.")
_PASS_K = flags.DEFINE_list("pass_k", ["1"], "k values of pass@k (each ≤ n).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.6, "Sampling temperature (0: greedy).")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass.")
_TOP_K = flags.DEFINE_integer("top_k", 20, "Top-k filter (0: off).")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", None, "Completion budget (default: training's, else 4096)."
)
_MAX_PROMPT_LENGTH = flags.DEFINE_integer(
    "max_prompt_length", None, "Longer prompts are skipped (default 512)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Problems per sampler call.")
_MAX_ROWS = flags.DEFINE_integer("max_rows", 0, "Evaluate the first rows only (0: all).")
_REWARD = flags.DEFINE_enum(
    "reward", None, ["accuracy", "code"], "Scoring (default: the checkpoint's, else accuracy)."
)
_WORKERS = flags.DEFINE_integer("workers", 4, "Reward processes (0: in this process).")
_TRUST = flags.DEFINE_bool(
    "trust_test_code",
    False,
    "Code: run test code that is not call-based in the program's own process (gameable).",
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["model", "data"])


def _load(model_path: str):
    """(model, tokenizer, data settings, reward name, default budget, base model path)."""
    data = DataConfig(path="")
    if (
        os.path.isdir(os.path.join(model_path, checkpoint.SUBDIR))
        or os.path.basename(os.path.dirname(os.path.abspath(model_path))) == checkpoint.SUBDIR
    ):
        checkpoint.quiet_orbax_logs()
        model, meta = checkpoint.load_policy(model_path)
        saved = meta["config"]
        d = saved["data"]
        data = DataConfig(
            path="",
            fields=FieldMap(**d["fields"]),
            system_prompt=d["system_prompt"],
            enable_thinking=d["enable_thinking"],
            use_chat_template=d["use_chat_template"],
            max_prompt_length=d["max_prompt_length"],
        )
        tokenizer = _TOKENIZER.value or meta["tokenizer_path"]
        budget = d["max_completion_length"]
        reward, base = saved["rewards"]["accuracy_reward"], saved["model"]["path"]
    else:
        model, _ = from_pretrained(model_path, dtype=_DTYPE.value)
        tokenizer, budget, reward, base = (
            _TOKENIZER.value or model_path,
            4096,
            "accuracy",
            model_path,
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    return model, tokenizer, data, reward, budget, base


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model, tokenizer, data, reward, budget, base = _load(_MODEL.value)
    reward = _REWARD.value or reward
    data = dataclasses.replace(
        data,
        path=_DATA.value,
        split=_SPLIT.value,
        fields=source_fields(_DATA.value, data.fields),
        max_prompt_length=_MAX_PROMPT_LENGTH.value or data.max_prompt_length,
    )
    tests_check = functools.partial(check_tests, trust_test_code=_TRUST.value)
    examples = evaluation.eval_examples(
        data,
        tokenizer,
        parse_gold if reward == "accuracy" else None,
        _MAX_ROWS.value,
        tests_check if reward == "code" else None,
    )
    tokens = tokenization.TokenIds.of(tokenizer, model.config, base if os.path.isdir(base) else "")
    decoding = SamplingConfig(
        max_completion_length=_MAX_NEW_TOKENS.value or budget,
        temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value,
        top_k=_TOP_K.value,
    )
    pass_k = tuple(int(k) for k in _PASS_K.value)
    if any(not 1 <= k <= _NUM_SAMPLES.value for k in pass_k):
        raise app.UsageError(f"--pass_k={pass_k}: each k must be in [1, --num_samples]")
    settings = evaluation.EvalConfig(
        _DATA.value, _NUM_SAMPLES.value, pass_k, decoding, _BATCH_SIZE.value, _MAX_ROWS.value
    )
    graphdef, params = nnx.split(model)
    sampler = sampling.sampler_for(graphdef, decoding, tokens)
    rewards = RewardConfig(
        weights={reward: 1.0}, workers=_WORKERS.value, trust_test_code=_TRUST.value
    )
    with RewardPool(rewards) as pool:
        report = evaluation.evaluate(
            params, sampler, tokenizer, examples, pool, settings, reward, seed=_SEED.value
        )
    header = {
        "model": _MODEL.value,
        "data": _DATA.value,
        "reward": reward,
        "decoding": dataclasses.asdict(decoding),
    }
    report = header | report
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(report, f, indent=1)
    summary = {k: v for k, v in report.items() if k.startswith("pass@") or k == "num_rows"}
    print(json.dumps(summary), f"→ {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
