"""The Grain pipeline: batch format, tokenization, curriculum, sharding, epochs and resume."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from g2rpo_jax.data import (
    DataConfig,
    DataError,
    DifficultySource,
    FieldMap,
    load_rows,
    make_dataset,
)
from g2rpo_jax.data import difficulty as difficulty_lib
from tests.fake_tokenizer import make_tokenizer

B = 4


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def write_rows(path, n: int, *, difficulty=lambda i: float(i % 5), **extra) -> str:
    """n math rows; row i's trace is i+1 steps long, so trace length grows with i."""
    with open(path, "w") as f:
        for i in range(n):
            row = {
                "prompt": f"What is {i}+{i}?",
                "answer": str(2 * i),
                "guidance": f"<think>{'step;' * (i + 1)}{i}+{i}={2 * i}</think>",
                "difficulty": difficulty(i),
                **extra,
            }
            f.write(json.dumps(row) + "\n")
    return str(path)


def all_batches(config: DataConfig, tokenizer, **kwargs) -> list[dict]:
    return list(make_dataset(config, tokenizer, process_index=0, process_count=1, **kwargs).batches)


def indices(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch["index"]]


def config_for(path: str, **kwargs) -> DataConfig:
    return DataConfig(
        path=path, batch_size=B, max_prompt_length=96, max_completion_length=64, **kwargs
    )


def test_batch_format(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 10, tests=["assert True"])
    data = make_dataset(config_for(path), tokenizer, process_index=0, process_count=1)
    batches = list(data.batches)
    assert len(batches) == data.stats.num_batches == 2  # 10 rows: the partial batch is dropped
    batch = batches[0]
    expected = {
        "prompt_ids": (np.int32, (B, 96)),
        "prompt_length": (np.int32, (B,)),
        "guidance_ids": (np.int32, (B, 64)),
        "guidance_length": (np.int32, (B,)),
        "difficulty": (np.float32, (B,)),
        "index": (np.int64, (B,)),
        "answer": (object, (B,)),
        "prompt_text": (object, (B,)),
        "tests": (object, (B,)),
    }
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        k: (np.dtype(t), s) for k, (t, s) in expected.items()
    }
    for i in range(B):
        n, m = batch["prompt_length"][i], batch["guidance_length"][i]
        assert (batch["prompt_ids"][i, n:] == data.pad_id).all()
        assert (batch["guidance_ids"][i, m:] == data.pad_id).all()
        assert batch["answer"][i] == str(2 * batch["index"][i])
        assert batch["tests"][i] == ["assert True"]


def test_prompt_uses_the_chat_template(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", B)
    config = config_for(path, order="none", system_prompt="Think step by step.")
    batch = all_batches(config, tokenizer)[0]
    text = batch["prompt_text"][0]
    assert text == (
        "<|im_start|>system\nThink step by step.<|im_end|>\n"
        "<|im_start|>user\nWhat is 0+0?<|im_end|>\n<|im_start|>assistant\n"
    )
    n = batch["prompt_length"][0]
    assert batch["prompt_ids"][0, :n].tolist() == tokenizer.encode(text, add_special_tokens=False)
    assert batch["prompt_ids"][0, 0] == tokenizer.convert_tokens_to_ids("<|im_start|>")

    no_thinking = dataclasses.replace(config, enable_thinking=False, system_prompt=None)
    text = all_batches(no_thinking, tokenizer)[0]["prompt_text"][0]
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_trace_ids_have_no_special_tokens_and_are_cut(tmp_path, tokenizer):
    trace = "<think>2+2=4<|im_end|><|endoftext|></think>"
    rows = [{"prompt": "2+2?", "answer": "4", "guidance": trace, "difficulty": 0}] * B
    rows.append({"prompt": "x?", "answer": "1", "guidance": "y" * 100, "difficulty": 1})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) * 2)
    config = dataclasses.replace(config_for(str(path)), batch_size=5, order="none")
    batch = all_batches(config, tokenizer)[0]

    ids = batch["guidance_ids"][0, : batch["guidance_length"][0]].tolist()
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert ids == tokenizer(trace, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert tokenizer.decode(ids) == trace
    assert ids[0] == tokenizer.convert_tokens_to_ids("<think>")  # an added, not special, token
    assert batch["guidance_length"][4] == 64  # a 100-token trace is cut to max_completion_length
    assert tokenizer.decode(batch["guidance_ids"][4]) == "y" * 64


def test_long_prompts_are_dropped_and_counted(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 12)
    # "What is 10+10?" and longer render to more tokens than "What is 9+9?".
    messages = [{"role": "user", "content": "What is 9+9?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    short = len(tokenizer.encode(text, add_special_tokens=False))
    config = dataclasses.replace(config_for(path, order="none"), max_prompt_length=short)
    data = make_dataset(config, tokenizer, process_index=0, process_count=1)
    assert data.stats.prompt_too_long == 2 and data.stats.rows == 10
    assert sorted(indices(data.batches)) == list(range(8))


def test_sorted_order_holds_across_batches(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 24)
    batches = all_batches(config_for(path), tokenizer)
    difficulty = np.concatenate([b["difficulty"] for b in batches])
    assert len(batches) == 6 and (np.diff(difficulty) >= 0).all()
    assert sorted(indices(batches)) == list(range(24))
    # Ties (rows of equal difficulty) are shuffled by the seed, not kept in file order.
    other_seed = all_batches(config_for(path, seed=1), tokenizer)
    assert indices(batches) != indices(other_seed)
    assert indices(batches) == indices(all_batches(config_for(path), tokenizer))


def test_sorted_without_difficulty_uses_trace_length(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 8, difficulty=lambda i: None)
    # Trace length grows with the row index: file order reversed must come back sorted.
    lines = open(path).read().splitlines()[::-1]
    open(path, "w").write("\n".join(lines) + "\n")
    data = make_dataset(config_for(path), tokenizer, process_index=0, process_count=1)
    assert data.stats.difficulty_source == DifficultySource.TRACE_LENGTH
    assert indices(data.batches) == list(range(7, -1, -1))


def test_sorted_refuses_partly_missing_difficulty(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 8, difficulty=lambda i: None if i % 2 else 1.0)
    with pytest.raises(ValueError, match="4 of 8 rows have no difficulty"):
        make_dataset(config_for(path), tokenizer, process_index=0, process_count=1)
    assert len(all_batches(config_for(path, order="random"), tokenizer)) == 2


def test_random_order_is_seeded_and_reshuffled_each_epoch(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 16)

    def run(seed: int) -> list[int]:
        config = config_for(path, order="random", seed=seed, num_epochs=2)
        return indices(all_batches(config, tokenizer))

    first = run(0)
    assert first == run(0)
    assert first != run(1)
    epoch0, epoch1 = first[:16], first[16:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(16))
    assert epoch0 != epoch1 and epoch0 != list(range(16))


def test_none_keeps_file_order(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 12, difficulty=lambda i: float(-i))
    assert indices(all_batches(config_for(path, order="none"), tokenizer)) == list(range(12))


def test_two_processes_get_disjoint_covering_shards_in_global_order(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 26)  # 26 = 3 global batches of 2×4, plus 2
    config = config_for(path, num_epochs=2)
    hosts = [
        list(make_dataset(config, tokenizer, process_index=p, process_count=2).batches)
        for p in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == 6
    for epoch in range(2):
        seen = [set(indices(host[3 * epoch : 3 * epoch + 3])) for host in hosts]
        assert not seen[0] & seen[1]
        assert len(seen[0] | seen[1]) == 24  # all but the 2 hardest rows of each epoch
    # Global step s reads the same rows as one process with batch B × 2: the curriculum holds.
    single = all_batches(dataclasses.replace(config, batch_size=2 * B), tokenizer)
    for step, batch in enumerate(single):
        assert set(hosts[0][step]["index"]) | set(hosts[1][step]["index"]) == set(batch["index"])


RESUME = textwrap.dedent(
    """
    import json, sys
    import transformers
    from g2rpo_jax.data import DataConfig, make_dataset

    config, tokenizer_dir, state, n = json.loads(sys.argv[1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    data = make_dataset(DataConfig(**config), tokenizer, process_index=1, process_count=2)
    iterator = iter(data.batches)
    iterator.set_state(state)
    batches = [next(iterator) for _ in range(n)]
    print(json.dumps([{k: v.tolist() for k, v in b.items()} for b in batches]))
    """
)


def test_resume_in_a_new_process_continues_with_the_next_batch(tmp_path, tokenizer, tokenizer_dir):
    path = write_rows(tmp_path / "rows.jsonl", 20)
    config = dict(
        path=path,
        batch_size=3,
        max_prompt_length=48,
        max_completion_length=64,
        order="random",
        num_epochs=2,
    )
    data = make_dataset(DataConfig(**config), tokenizer, process_index=1, process_count=2)
    uninterrupted = [{k: v.tolist() for k, v in b.items()} for b in data.batches]
    assert len(uninterrupted) == 6  # 3 per epoch: resuming after 2 crosses into epoch 2

    iterator = iter(data.batches)
    for _ in range(2):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint stores
    args = json.dumps([config, tokenizer_dir, state, 4])
    result = subprocess.run(
        [sys.executable, "-c", RESUME, args], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == uninterrupted[2:]


def test_too_few_rows_for_one_global_batch(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 7)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_dataset(config_for(path), tokenizer, process_index=0, process_count=2)


def test_rows_without_a_trace_are_bad_unless_guidance_is_optional(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", 8)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w") as f:  # odd rows: no trace (one key absent, one null)
        for i, row in enumerate(rows):
            if i % 2:
                row = {k: v for k, v in row.items() if k != "guidance"} | (
                    {"guidance": None} if i == 3 else {}
                )
            f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1.*field 'guidance': missing"):
        all_batches(config_for(path), tokenizer)
    config = config_for(path, fields=FieldMap(guidance_optional=True), order="none")
    data = make_dataset(config, tokenizer, process_index=0, process_count=1)
    for (
        batch
    ) in data.batches:  # a row without a trace: 0 trace tokens, so its candidates are unguided
        unguided = batch["index"] % 2 == 1
        assert (batch["guidance_length"][unguided] == 0).all()
        assert (batch["guidance_ids"][unguided] == data.pad_id).all()
        assert (batch["guidance_length"][~unguided] > 0).all()


def test_rows_without_a_trace_get_no_trace_length_difficulty(tmp_path, tokenizer):
    """Trace length 0 would make a trace-less row the easiest problem (issue 33): `sorted`
    refuses, naming the file and what to do; random order carries NaN; the estimator refuses."""
    path = tmp_path / "rows.jsonl"
    write_rows(path, 8, difficulty=lambda i: None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[1::2]:
        del row["guidance"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    optional = FieldMap(guidance_optional=True)
    with pytest.raises(DataError, match=rf"{path}: .*4 of 8 rows have no reference trace"):
        make_dataset(config_for(str(path), fields=optional), tokenizer, process_count=1)
    config = config_for(str(path), fields=optional, order="random")
    (batch,) = all_batches(config, tokenizer)[:1]
    traced = batch["guidance_length"] > 0
    assert np.isnan(batch["difficulty"][~traced]).all() and traced.any() and (~traced).any()
    assert (batch["difficulty"][traced] > 0).all()
    loaded = load_rows(config)
    with pytest.raises(DataError, match="4 of 8 rows have no reference trace"):
        difficulty_lib.with_difficulty(loaded.rows, difficulty_lib.trace_length)
