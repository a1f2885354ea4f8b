"""The pass-rate difficulty (issue 17): counts, restart from the journal, the script.

The model is test_scripts' bigram model: from any prompt it writes `\\boxed{7}` and stops,
under any temperature ≤ 1, so every row's pass rate is known in advance (1 when the gold
answer is 7, else 0) and the sampler runs for real over the 8 simulated devices.
"""

import json

import numpy as np
import pytest

from g2rpo_jax import config as config_lib
from g2rpo_jax import pass_rate
from g2rpo_jax.data import Row
from g2rpo_jax.data.tfds_builder import read_records
from tests.test_scripts import bigram_model, run_script
from tests.test_trainer import ROW_WISE, row_wise

ANSWERS = ["7", "8", "$7$", "6", "\\frac{14}{2}"]
EXPECTED = [1.0, 0.0, 1.0, 0.0, 1.0]
# One pytest-xdist worker runs the file: `model_dir` is made once.
pytestmark = pytest.mark.xdist_group("pass_rate")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bigram")
    bigram_model(directory)
    return directory


def rows() -> list[Row]:
    return [Row(i, f"What is {i}+7-{i}?", a, "trace") for i, a in enumerate(ANSWERS)]


def config(model_dir, tmp_path):
    c = config_lib.default_config()
    c.model.path = str(model_dir)
    c.data.path = str(tmp_path / "unused.jsonl")  # build needs one; rows come in directly
    c.rewards.workers = 0
    # The claim is the counting, not the sampler: its row-wise programs compile fastest.
    return row_wise(c)


def estimator(model_dir, tmp_path, journal, samples=2):
    return pass_rate.Estimator.from_config(config(model_dir, tmp_path), str(journal),
                                           samples=samples, max_new_tokens=16, batch_size=2,
                                           progress=False)  # fmt: skip


def test_pass_rates_equal_the_hand_count_and_a_rerun_skips_finished_rows(model_dir, tmp_path):
    journal = tmp_path / "out" / pass_rate.JOURNAL
    with estimator(model_dir, tmp_path, journal) as full:
        done, too_long = full(rows(), "train")
    assert too_long == 0
    assert [r.pass_rate for r in done] == EXPECTED
    assert [r.difficulty for r in done] == [1.0 - p for p in EXPECTED]

    # A run killed after its first batch: the journal holds two rows and half a line.
    partial = tmp_path / "partial" / pass_rate.JOURNAL
    with estimator(model_dir, tmp_path, partial) as first:
        first(rows()[:2], "train")
    with open(partial, "a") as f:
        f.write('{"split": "train", "ind')
    with estimator(model_dir, tmp_path, partial) as resumed:
        sampled = []
        score = resumed.score
        resumed.score = lambda examples, *a: (
            sampled.extend(e.row.index for e in examples) or score(examples, *a)
        )
        again, _ = resumed(rows(), "train")
    assert sampled == [2, 3, 4]
    assert again == done
    assert partial.read_text() == journal.read_text()  # the same journal, cut line gone

    with pytest.raises(config_lib.ConfigError, match="other settings"):
        estimator(model_dir, tmp_path, partial, samples=3)


def test_pass_rate_lies_in_0_1_and_the_key_is_per_row():
    ids = pass_rate.row_ids([5, 0], 3)
    assert ids.tolist() == [15, 16, 17, 0, 1, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        from g2rpo_jax.data import difficulty

        difficulty.with_pass_rates(rows()[:1], [1.5])


def test_prepare_data_writes_pass_rate_and_difficulty_and_reports_the_counts(model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "answer": r.answer,
                                        "guidance": "trace"}) + "\n" for r in rows()))  # fmt: skip
    settings = tmp_path / "settings.py"  # the default config, rewards in this process
    settings.write_text("from g2rpo_jax import config\n\ndef get_config():\n"
                        "    c = config.default_config()\n    c.rewards.workers = 0\n"
                        f"    c.sampling.update({ROW_WISE})\n    return c\n")  # fmt: skip
    out = tmp_path / "out"
    result = run_script("prepare_data.py", f"--input={data}", f"--output={out}",
                        "--difficulty=pass_rate", f"--model={model_dir}", "--samples=2",
                        "--max_new_tokens=16", "--batch_size=4", f"--config={settings}")  # fmt: skip
    assert "3 rows always solved (1), 2 never solved (0), of 5" in result.stdout
    values = [r.value for r in read_records(str(out), "train")]
    assert [v["pass_rate"] for v in values] == EXPECTED
    assert np.allclose([v["difficulty"] for v in values], 1 - np.asarray(EXPECTED))
