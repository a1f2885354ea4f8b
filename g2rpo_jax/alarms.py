"""Alarms for runs that learn nothing without an error: completions cut at the length budget
(reward 0, no signal) or groups whose rewards all tie (every advantage 0), step after step.

Host-side bookkeeping over each step's logged metrics: a streak per alarm, counted in steps
in a row; when one reaches `train.alarm_steps` the run logs one WARNING line naming the
cause, the figure and the config key to change. The streaks travel in each checkpoint's
meta, so a resumed run counts on exactly where the saved one stopped.
"""

import dataclasses
from collections.abc import Mapping

TRUNCATED_AT = 0.9  # truncated_fraction at or above this counts toward the alarm
META_KEY = "alarm_streaks"


class TrainingAlarm(RuntimeError):
    """A run stopped by `train.stop_on_alarm`; the message names the cause and the knob."""


@dataclasses.dataclass
class AlarmMonitor:
    """steps: train.alarm_steps (0: never alarm). The other fields name the knobs' values."""

    steps: int
    max_completion_length: int
    guidance_ratio: float
    streaks: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"truncation": 0, "ties": 0}
    )

    def restore(self, saved: Mapping[str, int] | None) -> None:
        """The streaks a checkpoint's meta holds (none in checkpoints from before alarms)."""
        self.streaks |= dict(saved or {})

    def state(self) -> dict[str, int]:
        return dict(self.streaks)

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[str]:
        """Counts step `step`'s metrics into the streaks; returns the alarm lines raised now:
        one per streak that reaches `steps` at this step."""
        raised = []
        for name, hit, message in self._checks(metrics):
            self.streaks[name] = self.streaks[name] + 1 if hit else 0
            if self.steps and self.streaks[name] == self.steps:
                raised.append(f"alarm at step {step}: {message}")
        return raised

    def _checks(self, m: Mapping[str, float]):
        """(streak name, whether this step counts, the alarm's line) for each alarm."""
        truncated = m["truncated_fraction"]
        yield (
            "truncation",
            truncated >= TRUNCATED_AT,
            (
                f"{truncated:.0%} of completions hit the length budget without EOS "
                f"(truncated_fraction >= {TRUNCATED_AT} for {self.steps} steps in a row): they are "
                "cut before their answer, score 0 and teach nothing; raise "
                f"config.data.max_completion_length (now {self.max_completion_length})"
            ),
        )
        wrong, right = m["groups/zero_std_all_wrong"], m["groups/zero_std_all_correct"]
        if wrong >= right:
            knob = (
                f"raise config.guidance.ratio (α = {self.guidance_ratio}) so that guided "
                "candidates succeed, or give partial credit in config.rewards.weights"
            )
        else:
            knob = (
                "train on harder rows (config.data.path), or reward more than correctness "
                "in config.rewards.weights"
            )
        yield (
            "ties",
            m["groups/zero_std"] >= 1.0,
            (
                f"every group's rewards tied (groups/zero_std = 1 for {self.steps} steps in a row; "
                f"all wrong in {wrong:.0%} of groups, all correct in {right:.0%}): every advantage "
                f"is 0 and no step moves the policy; {knob}"
            ),
        )
