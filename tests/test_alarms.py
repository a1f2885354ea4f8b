"""Alarms for runs that learn nothing: streaks of truncated completions or tied groups."""

from g2rpo_jax import alarms


def metrics(truncated=0.0, tied=0.0, wrong=0.0, correct=0.0) -> dict[str, float]:
    return {"truncated_fraction": truncated, "groups/zero_std": tied,
            "groups/zero_std_all_wrong": wrong, "groups/zero_std_all_correct": correct}  # fmt: skip


def test_an_alarm_is_raised_once_per_streak_and_names_the_knob():
    monitor = alarms.AlarmMonitor(steps=3, max_completion_length=24, guidance_ratio=0.5)
    raised = {}
    truncated = [0.95, 1.0, 0.5, 0.9, 0.92, 0.97, 1.0, 1.0, 0.2, 0.9, 0.9, 0.95]
    for step, value in enumerate(truncated, start=1):
        raised[step] = monitor.observe(step, metrics(truncated=value))
    # Streaks: steps 1–2 (broken by 0.5), then 4–8 (alarm at its third step, 6), then 10–12.
    assert [s for s, lines in raised.items() if lines] == [6, 12]
    (line,) = raised[6]
    assert line.startswith("alarm at step 6: 97% of completions hit the length budget")
    assert "raise config.data.max_completion_length (now 24)" in line
    assert monitor.state() == {"truncation": 3, "ties": 0}


def test_tied_groups_name_guidance_when_all_fail_and_the_data_when_all_pass():
    monitor = alarms.AlarmMonitor(steps=2, max_completion_length=48, guidance_ratio=0.25)
    assert not monitor.observe(1, metrics(tied=1.0, wrong=1.0))
    (line,) = monitor.observe(2, metrics(tied=1.0, wrong=0.75, correct=0.25))
    assert "groups/zero_std = 1" in line and "all wrong in 75% of groups" in line
    assert "raise config.guidance.ratio (α = 0.25)" in line
    assert not monitor.observe(3, metrics(tied=0.875, correct=0.875))  # one group learns
    monitor.observe(4, metrics(tied=1.0, correct=1.0))
    (line,) = monitor.observe(5, metrics(tied=1.0, correct=1.0))
    assert "train on harder rows (config.data.path)" in line


def test_streaks_resume_where_the_checkpoint_left_them():
    uninterrupted = alarms.AlarmMonitor(steps=4, max_completion_length=24, guidance_ratio=0.5)
    first = alarms.AlarmMonitor(steps=4, max_completion_length=24, guidance_ratio=0.5)
    values = [metrics(truncated=1.0, tied=float(k % 2)) for k in range(6)]
    lines = [uninterrupted.observe(k, m) for k, m in enumerate(values)]
    for k, m in enumerate(values[:2]):
        first.observe(k, m)
    resumed = alarms.AlarmMonitor(steps=4, max_completion_length=24, guidance_ratio=0.5)
    resumed.restore(first.state())
    assert [resumed.observe(k, m) for k, m in enumerate(values) if k >= 2] == lines[2:]
    assert resumed.state() == uninterrupted.state()
    never = alarms.AlarmMonitor(steps=0, max_completion_length=24, guidance_ratio=0.5)
    assert not any(never.observe(k, metrics(truncated=1.0)) for k in range(50))
