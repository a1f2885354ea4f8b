"""The toy study's protocol: every variant's config builds with its overrides; the table and
the run plots come out of records and logs."""

import copy
import json

import numpy as np
import pytest

from g2rpo_jax import evaluation, experiment, plots, report
from g2rpo_jax.toy import demo, study, study_part3, study_report, task, traces
from g2rpo_jax.toy.data import Encoder, read_problems, traced_rows, write_jsonl
from g2rpo_jax.toy.tokenizer import load_tokenizer
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


@pytest.mark.parametrize(
    "checks, stops_after",
    [
        ([0.02, 0.3, 0.5, 0.6, 0.605, 0.59, 0.608, 0.7], 6),  # 3 checks within 0.01 of 0.6
        ([0.02, 0.3, 0.305, 0.308, 0.5, 0.505, 0.508, 0.509], 7),  # a rise resets the count
        ([0.1 + 0.003 * i for i in range(10)], 3),  # a creep below the threshold is a plateau
        ([0.05 * i for i in range(10)], None),  # still rising: only max_steps stops it
    ],
)
def test_plateau_rule_stops_after_patience_checks_without_a_gain(checks, stops_after):
    rule = study_part3.PlateauRule(every=10, threshold=0.01, patience=3, max_steps=300)
    stops = [rule.stops(checks[: i + 1]) for i in range(len(checks))]
    assert (stops.index(True) if any(stops) else None) == stops_after
    with pytest.raises(ValueError, match="multiple of every"):
        study_part3.PlateauRule(every=10, max_steps=95)


def test_part3_variants_build_with_their_traces_and_lengths(tmp_path):
    names = [v.name for v in study_part3.PART3]
    assert len(set(names)) == len(names) == 16
    by_traces = {t: {v.name for v in study_part3.PART3 if v.traces is t} for t in study.Traces}
    hard_names = {"sft_hard", "fixed_full_hard", "g2rpo_a_hard", "g2rpo_a_hard_on_failure"}
    assert by_traces[study.Traces.HARD] == hard_names
    assert by_traces[study.Traces.NOISY] == {"g2rpo_a_noisy", "g2rpo_a_noisy_on_failure"}
    starts = [v.name for v in study_part3.PART3 if v.from_plateau]
    assert names.index("sft_plateau") < min(map(names.index, starts)) and len(starts) == 4
    base = study_part3.part3_config(demo_config())
    encoder = Encoder(load_tokenizer(base.model.path))
    held_out = study.HeldOut(encoder, read_problems(base.eval.path), study.harder_problems())
    hard_file = write_jsonl(
        str(tmp_path / "hard.jsonl"), traces.hard_rows(traced_rows(base.data.path))
    )
    hard = study_part3.hard_lengths(encoder, hard_file, held_out)
    for variant in study_part3.PART3:
        config = copy.deepcopy(base)
        if variant.traces is study.Traces.HARD:
            scored = study_part3.with_lengths(config, held_out, hard)
            assert scored.max_completion_length == hard.completion > hard.full
        if variant.sft_share:
            continue
        config = study.rl_config(config, variant, seed=1, budget=study.Budget())
        config.lock()
        exp = experiment.build(config, num_devices=1)
        on_failure = variant.name.endswith("on_failure")
        assert (exp.guidance.when == "unguided_failed") == on_failure, variant.name
        if variant.traces is study.Traces.HARD:
            assert exp.data.max_completion_length == hard.completion
            assert exp.guidance.initial_length == exp.guidance.max_length == hard.full
        else:
            assert exp.data.max_completion_length == demo.MAX_COMPLETION_LENGTH
            assert exp.guidance.max_length == study.FULL
        assert exp.guidance.rule == ("constant" if "fixed_full" in variant.name else "paper")
        assert exp.sampling.share_prefix and not exp.sampling.compact
        assert exp.sampling.decode_phases == 1


def test_pass_at_k_of_n_samples_per_problem(monkeypatch):
    problems = task.make_problems(5, 9, 4)
    # Only the first PASS_AT_ROWS held-out problems are sampled.
    held_out = study.HeldOut(None, problems + task.make_problems(6, 3, 4), [], 77)
    monkeypatch.setattr(study_part3, "PASS_AT_ROWS", len(problems))

    def completions(model, encoder, asked, config, seed, chunk):
        assert (config.temperature, config.max_completion_length) == (demo.TEMPERATURE, 77)
        assert asked == [p for p in problems for _ in range(study_part3.PASS_AT_N)]
        # Problem i: its first i samples right, the rest wrong.
        return [
            f"<answer>{p.answer if j < i else 'x'}</answer>"
            for i, p in enumerate(problems)
            for j in range(study_part3.PASS_AT_N)
        ]

    monkeypatch.setattr(study_part3.toy_evaluation, "completions", completions)
    got = study_part3.pass_at(None, held_out, seed=0)
    for k in study_part3.PASS_AT_K:
        expected = np.mean([evaluation.pass_at_k(8, i, k) for i in range(9)])
        assert got[f"pass@{k}"] == pytest.approx(expected)
    assert got["pass@1"] == pytest.approx(np.mean(range(9)) / 8)


def test_paired_differences_name_a_winner_only_beyond_two_standard_errors():
    values = {"a": (0.5, 0.6, 0.7), "b": (0.1, 0.3, 0.2), "c": (0.3, 0.9, 0.0)}
    records = [
        {"variant": n, "seed": s, "greedy": v} for n, vs in values.items() for s, v in enumerate(vs)
    ]
    text = study_report.paired(records, (("a", "b"), ("c", "b"), ("a", "d")), keys=("greedy",))
    # a − b per seed: 0.4, 0.3, 0.5 → mean 0.4, s.e. 0.1/√3 = 0.058: a wins.
    assert "| `a` − `b` | 3 | +0.400 ± 0.058 (**a**) |" in text
    # c − b: 0.2, 0.6, −0.2 → mean 0.2, s.e. 0.4/√3 = 0.231: no winner.
    assert "| `c` − `b` | 3 | +0.200 ± 0.231 |" in text
    assert "`d`" not in text  # no seeds to pair
