"""TFDS/ArrayRecord: a round trip gives the JSONL's rows without importing tensorflow."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from g2rpo_jax.data import DataConfig, load_rows

SCRIPT = Path(__file__).parents[1] / "scripts" / "prepare_data.py"

ROWS = [
    {"prompt": "1+1?", "answer": "2", "guidance": "1+1=2", "difficulty": 0.5},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "é?"}],
        "answer": "\\frac{1}{2}",
        "guidance": "<think>ünïcödé</think>",
    },
    {
        "prompt": "Write f.",
        "answer": "",
        "guidance": "def f(x): return x + 1",
        "difficulty": 3,
        "tests": ["assert f(1) == 2", "assert f(2) == 3"],
    },
    {"prompt": "Read n.", "answer": "", "guidance": "print(n)", "tests": "1\n1\n"},
    {"prompt": "2+2?", "answer": "4"},  # no trace (guidance_optional): stored and read as none
] * 3

ROUND_TRIP = textwrap.dedent(
    """
    import sys
    import pytest
    from g2rpo_jax.data import DataConfig, FieldMap, load_rows
    from g2rpo_jax.data.tfds_builder import write_array_record

    jsonl, data_dir = sys.argv[1:]
    optional = FieldMap(guidance_optional=True)
    rows = load_rows(DataConfig(path=jsonl, fields=optional)).rows
    assert [row.guidance for row in rows].count("") == 3
    write_array_record({"train": rows[:8], "test": rows[8:]}, data_dir)
    train = load_rows(DataConfig(path=data_dir, format="tfds", split="train")).rows
    test = load_rows(DataConfig(path=data_dir, format="tfds", split="test", fields=optional)).rows
    assert train + test == rows, (train + test, rows)
    with pytest.raises(FileExistsError):
        write_array_record({"train": rows}, data_dir)
    assert "tensorflow" not in sys.modules
    print("ok", len(rows))
    """
)


def test_array_record_round_trip_without_tensorflow(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    result = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(jsonl), str(tmp_path / "tfds")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"ok {len(ROWS)}"


def test_prepare_data_maps_validates_and_estimates_difficulty(tmp_path):
    openr1 = [
        {
            "problem": f"{i}+{i}?",
            "answer": str(2 * i) if i != 3 else "",  # row 3: unparseable gold
            "generations": ["wrong", f"<think>{'.' * i}{2 * i}</think>"],
            "correctness_math_verify": [False, i != 1],  # row 1: no correct trace
        }
        for i in range(6)
    ]
    source = tmp_path / "openr1.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in openr1))
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(SCRIPT),
        f"--input=train={source}",
        "--fields=openr1_math",
        f"--output={out}",
        "--difficulty=trace_length",
        "--skip_bad_rows",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: " in result.stdout and "4 rows kept, 1 bad rows skipped" in result.stdout
    assert "1 without a complete trace marked correct skipped" in result.stdout

    rows = load_rows(DataConfig(path=str(out), format="tfds")).rows
    assert [r.index for r in rows] == [0, 2, 4, 5]  # indices of the original file
    assert [r.prompt for r in rows] == ["0+0?", "2+2?", "4+4?", "5+5?"]
    assert [r.difficulty for r in rows] == [float(len(r.guidance)) for r in rows]
    assert rows[1].guidance == "<think>..4</think>"
