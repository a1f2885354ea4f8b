"""The toy study's protocol: every variant's config builds with its overrides; the table and
the run plots come out of records and logs."""

import json

import numpy as np
import pytest

from g2rpo_jax import experiment, plots, report
from g2rpo_jax.toy import study, study_report
from tests.test_demo import demo_config


@pytest.mark.parametrize("variant", [v for v in study.VARIANTS if not v.name.startswith("sft")],
                         ids=lambda v: v.name)  # fmt: skip
def test_every_rl_variant_builds_with_the_same_budget(variant):
    budget = study.Budget(steps=12, eval_every=4)
    config = study.rl_config(demo_config(), variant, seed=3, budget=budget)
    config.lock()
    exp = experiment.build(config, num_devices=1)
    assert exp.train.num_steps == 12 and exp.seed == exp.data.seed == 3
    assert (exp.data.batch_size, exp.grpo.group_size) == (8, 8)  # the same budget for all
    for key, value in variant.overrides.items():  # the override reaches the built run
        group, name = key.split(".")
        built = getattr(getattr(exp, group), name)
        if name == "weights":
            built, value = dict(built), value.to_dict()
        assert built == value, key
    if variant.name.startswith("g2rpo_a"):
        assert exp.guidance.rule == "paper" and exp.guidance.initial_length == study.FULL


def test_table_reports_mean_and_sample_std_over_seeds():
    records = [{"variant": "base", "seed": 0, "greedy": 0.1, "sampled": 0.05, "wall_s": 0}]
    records += [{"variant": "grpo", "seed": s, "greedy": g, "sampled": 0.0, "wall_s": 10.0}
                for s, g in enumerate((0.2, 0.4, 0.6))]  # fmt: skip
    text = study_report.table(records)
    assert "| base model (before RL) (`base`) | 0.100 | 0.050 | 0.100 | – | 1 |" in text
    assert "0.400 ± 0.200" in text and "0.200, 0.400, 0.600" in text


def test_run_plots_and_before_after_line(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "reward": 0.1 * step, "accuracy": 0.05 * step,
                                "accuracy_guided": 1.0, "accuracy_unguided": 0.04 * step,
                                "guidance_length": 46 - step}) + "\n")  # fmt: skip
    with open(tmp_path / "eval.jsonl", "w") as f:
        for step, acc in ((0, 0.1), (10, 0.3), (20, 0.5)):
            f.write(json.dumps({"step": step, "num_rows": 50, "pass@1": acc}) + "\n")
    lines = report.finish(str(tmp_path))
    assert lines[0].startswith("held-out unguided pass@1 (50 problems): before 0.100")
    assert lines[0].endswith("×5.0")
    for name in plots.PLOTS:
        assert (tmp_path / name).stat().st_size > 1000
    np.testing.assert_allclose(plots.smooth(np.arange(4.0), 2), [0.0, 0.5, 1.5, 2.5])
