"""The paper configs' hub data (issue 16): OpenR1-Math-220k to train, MATH-500 to evaluate.

No network here, so the hub path is exercised two ways: offline it must stop in one line
naming what it could not fetch; with local copies laid out as the hub repos are (read by the
same `datasets.load_dataset` call) the user's command must train and evaluate.
"""

import json
import pathlib
import runpy

import pyarrow as pa
import pyarrow.parquet as pq

from g2rpo_jax import config as config_lib
from g2rpo_jax import experiment
from g2rpo_jax.data import FieldMap, load_rows, source_fields, tokenization
from g2rpo_jax.data.tokenization import TraceEncoder, render_prompt
from g2rpo_jax.rewards import parse_gold
from g2rpo_jax.rewards.accuracy import accuracy_reward
from g2rpo_jax.rewards.format import format_reward
from tests import tiny_models
from tests.test_cli_errors import run_script
from tests.test_trainer import ROW_WISE_FLAGS

REPO = pathlib.Path(__file__).resolve().parent.parent
_PAPER = "configs/qwen3_0p6b.py"
# Shrinks the paper config to seconds on a CPU and nothing else: the data, eval and model
# paths, the field mapping and the eval split stay the config's own (the row-wise programs:
# test_trainer.ROW_WISE).
_SMALL = (*ROW_WISE_FLAGS,
    "--config.model.dtype=float32", "--config.train.remat=False",
    f"--config.data.max_prompt_length={96 + len(config_lib.MATH_SYSTEM_PROMPT)}", "--config.data.max_completion_length=24",
    "--config.data.batch_size=4", "--config.grpo.group_size=2",
    "--config.guidance.initial_length=16", "--config.guidance.max_length=16",
    "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.save_every=2",
    "--config.eval.max_rows=4", "--config.eval.batch_size=4",
    "--config.eval.max_completion_length=8", "--config.rewards.workers=0",
    "--config.train.progress_bar=False",
)  # fmt: skip


def openr1_copy(directory: pathlib.Path) -> str:
    """A local copy of open-r1/OpenR1-Math-220k's default config: data/train-*.parquet with its
    columns. Rows 0–7: the first trace wrong, the second marked correct by math-verify; row 8:
    marked correct by the LLM judge only (it trains); row 9: by neither (skipped, counted)."""
    rows = [
        {"problem": f"What is {a} + {b}?", "answer": str(a + b), "uuid": f"u{a}",
         "generations": [f"<think>{a}+{b}</think> \\boxed{{{a + b + 1}}}",
                         f"<think>\n{a}+{b}={a + b}\n</think>\n\nSo \\boxed{{{a + b}}}."],
         "correctness_math_verify": [False, True], "correctness_llama": None,
         "is_reasoning_complete": [True, True]}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 1), (6, 1), (3, 3), (9, 9), (8, 8)]
    ]  # fmt: skip
    rows[8] |= {"correctness_math_verify": [False, False], "correctness_llama": [False, True]}
    rows[9] |= {"correctness_math_verify": [False, False], "correctness_llama": [False, False]}
    folder = directory / "OpenR1-Math-220k"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    return str(folder)


def math500_copy(directory: pathlib.Path) -> str:
    """A local copy of HuggingFaceH4/MATH-500: test.jsonl with its columns."""
    folder = directory / "MATH-500"
    folder.mkdir()
    rows = [
        {"problem": f"Compute {a} \\cdot 2.", "solution": f"$2 {a} = {2 * a}$", "answer": str(2 * a),
         "subject": "Prealgebra", "level": 1, "unique_id": f"test/{a}.json"}
        for a in range(1, 6)
    ]  # fmt: skip
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def model_copy(directory: pathlib.Path) -> str:
    """A local copy of a Qwen3 checkpoint: tiny random weights with a byte-level tokenizer."""
    tokenizer = tokenization.bytes_tokenizer()
    config = tiny_models.qwen3_config(vocab_size=len(tokenizer),
                                      eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=tokenizer.pad_token_id)  # fmt: skip
    folder = tiny_models.save_hf(config, directory / "Qwen3-0.6B-Base")
    tokenizer.save_pretrained(folder)
    return folder


def test_offline_the_paper_command_names_the_model_and_data_it_needs(tmp_path):
    result = run_script("train.py", f"--config={_PAPER}", f"--workdir={tmp_path / 'work'}",
                        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert "Compiling" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    for needed in ("HF_HUB_OFFLINE=1", "model Qwen/Qwen3-0.6B-Base", "--config.model.path",
                   f"data {config_lib.OPENR1_MATH}", "--config.data.path",
                   f"eval data {config_lib.MATH_500}", "--config.eval.path"):  # fmt: skip
        assert needed in lines[-1]


def test_the_paper_command_trains_on_local_copies_of_model_and_data(tmp_path):
    data, evals = openr1_copy(tmp_path), math500_copy(tmp_path)
    work = tmp_path / "work"
    result = run_script(
        "train.py", f"--config={_PAPER}", f"--workdir={work}", *_SMALL,
        f"--config.model.path={model_copy(tmp_path)}", f"--config.data.path=hf:{data}",
        f"--config.eval.path=hf:{evals}", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "done at step 2/2" in result.stdout
    # The row no judge marked correct is skipped and counted, not a reason to stop.
    assert "untraced_rows=1, prompt_too_long=0, rows=9" in result.stderr
    steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[0]["guidance/trace_tokens"] > 0  # the traces marked correct guided
    (evaluation,) = [json.loads(line) for line in (work / "eval.jsonl").read_text().splitlines()]
    assert (evaluation["step"], evaluation["num_rows"]) == (2, 4)  # MATH-500's test split


def test_known_hub_sets_bring_their_columns_and_given_fields_win():
    assert source_fields(config_lib.OPENR1_MATH, FieldMap()) == FieldMap.openr1_math()
    assert source_fields("hf:/data/copies/OpenR1-Math-220k/", FieldMap()) == FieldMap.openr1_math()
    assert source_fields(config_lib.MATH_500, FieldMap()) == FieldMap.math500()
    mine = FieldMap(prompt="question")
    assert source_fields(config_lib.OPENR1_MATH, mine) == mine
    assert source_fields("/data/OpenR1-Math-220k", FieldMap()) == FieldMap()  # not hf:


def test_a_guided_candidate_given_the_whole_trace_earns_the_full_format_reward(tmp_path):
    """Under the paper config's template and system prompt, OpenR1's trace (its solution
    wrapped as the answer) is the format the rewards check, for guidance and policy alike."""
    c = runpy.run_path(str(REPO / _PAPER))["get_config"]()
    c.data.path = f"hf:{openr1_copy(tmp_path)}"  # a local copy, read as the hub set is
    data = experiment.build(c, num_devices=1).data
    tokenizer = tokenization.bytes_tokenizer()
    rows = load_rows(data, parse_gold).rows
    assert (len(rows), rows[8].index) == (9, 8)  # the second judge's row is in
    prompts = [render_prompt(tokenizer, row.prompt, data) for row in rows]
    assert all(config_lib.MATH_SYSTEM_PROMPT in p for p in prompts)
    # The trace as the sampler hands it on: ids tokenized once, decoded without specials.
    ids = TraceEncoder(tokenizer, data.max_completion_length)([row.guidance for row in rows])
    completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    answers = [row.answer for row in rows]
    assert format_reward(prompts, completions) == [1.0] * len(rows)
    assert accuracy_reward(prompts, completions, answer=answers) == [1.0] * len(rows)
