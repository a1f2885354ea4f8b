"""Where a run's numbers go: TensorBoard events, `metrics.jsonl`, sample completions,
alarms, a progress bar, and Weights & Biases when asked for and installed. Only process 0
writes. `StepLogs` writes each step's record one step late and counts it into the alarms."""

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
import tqdm
from absl import logging

from g2rpo_jax.alarms import AlarmMonitor

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
EVAL_FILE = "eval.jsonl"
ALARMS_FILE = "alarms.jsonl"
TB_DIR = "tensorboard"
# Progress-bar fields: (label, metric).
_POSTFIX = (
    ("reward", "reward"),
    ("acc", "accuracy"),
    ("ℓ", "guidance_length"),
    ("kl", "kl"),
    ("tok/s", "tokens_per_s"),
)


def _plain(value):
    """JSON-safe Python scalars (NaN/inf as strings, as JSON has none)."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class RunLogger:
    """One per run. `scalars(step, {...})` each step, `samples(step, rows)` now and then."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int,
        progress_bar: bool,
        wandb_project: str = "",
        config: dict | None = None,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self._bar = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        for name in (METRICS_FILE, SAMPLES_FILE, EVAL_FILE, ALARMS_FILE):
            _drop_records_after(os.path.join(workdir, name), start_step)
        self._metrics = open(os.path.join(workdir, METRICS_FILE), "a")
        self._samples = open(os.path.join(workdir, SAMPLES_FILE), "a")
        self._eval = open(os.path.join(workdir, EVAL_FILE), "a")
        self._alarms = open(os.path.join(workdir, ALARMS_FILE), "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, TB_DIR), purge_step=start_step + 1)
        if progress_bar:
            self._bar = tqdm.tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc="train"
            )
        if wandb_project:
            try:
                import wandb
            except ImportError:
                logging.warning("train.wandb_project is set but wandb is not installed")
            else:
                self._wandb = wandb.init(
                    project=wandb_project,
                    dir=workdir,
                    config=config,
                    resume="allow",
                    id=_wandb_id(workdir),
                )
        self._start = time.time()

    def scalars(self, step: int, values: dict[str, float], extra: dict | None = None) -> None:
        """Writes one step's scalars (and JSON-only `extra` fields, e.g. the rows read)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        record |= {k: _plain(v) for k, v in (extra or {}).items()}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for name, value in values.items():
            if isinstance(value, int | float | np.number) and math.isfinite(value):
                self._tb.add_scalar(name, float(value), step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        if self._bar is not None:
            postfix = {label: f"{values[key]:.3g}" for label, key in _POSTFIX if key in values}
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(step - self._bar.n)

    def samples(self, step: int, rows: list[dict]) -> None:
        """Sample completions (prompt, completion, reward, …) to samples.jsonl and TensorBoard."""
        if not self.enabled or not rows:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **_plain_dict(row)}) + "\n")
        self._samples.flush()
        text = "\n\n".join(
            "\n".join(f"**{k}**: `{v}`" for k, v in row.items() if k != "completion")
            + f"\n\n```\n{row.get('completion', '')}\n```"
            for row in rows
        )
        self._tb.add_text("samples", text, step)

    def evaluation(self, step: int, report: dict) -> None:
        """An eval summary (no per-row results) to eval.jsonl and as scalars `eval/...`."""
        if not self.enabled:
            return
        summary = {k: v for k, v in report.items() if k != "rows"}
        self._eval.write(json.dumps({"step": step, **_plain_dict(summary)}) + "\n")
        self._eval.flush()
        for name, value in summary.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(f"eval/{name}", float(value), step)
        if self._wandb is not None:
            self._wandb.log({f"eval/{k}": v for k, v in summary.items()}, step=step)

    def alarm(self, step: int, message: str) -> None:
        """One alarm line: a WARNING, alarms.jsonl (for the end-of-run report), TensorBoard."""
        if not self.enabled:
            return
        logging.warning("%s", message)
        self._alarms.write(json.dumps({"step": step, "message": message}) + "\n")
        self._alarms.flush()
        self._tb.add_text("alarms", message, step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        for f in (self._metrics, self._samples, self._eval, self._alarms):
            f.close()
        if self._wandb is not None:
            self._wandb.finish()


@dataclasses.dataclass
class _Pending:
    step: int
    metrics: dict  # on device until read, then floats
    host: dict  # host-side numbers and times; "end": when the step was seen to finish
    read: bool = False


class StepLogs:
    """Each step's record, written one step late so that nothing waits on the step just
    dispatched. The alarm monitor counts each step's metrics once, when they are read: at
    the latest when written, earlier when a checkpoint records the streaks (`streaks`).
    `stop`: an alarm was raised and train.stop_on_alarm is set."""

    def __init__(self, logger: RunLogger, monitor: AlarmMonitor, stop_on_alarm: bool):
        self.logger, self.monitor, self.stop_on_alarm = logger, monitor, stop_on_alarm
        self.pending: _Pending | None = None
        self.raised: list[str] = []  # the alarm lines of this run

    @property
    def stop(self) -> bool:
        return self.stop_on_alarm and bool(self.raised)

    def finished(self) -> None:
        """The pending step's train step has finished (its wall time ends now)."""
        if self.pending is not None:
            self.pending.host["end"] = time.perf_counter()

    def push(self, step: int, metrics: dict, host: dict) -> None:
        self.write()
        self.pending = _Pending(step, metrics, host)

    def streaks(self) -> dict[str, int]:
        """The alarm streaks, counted through the pending step."""
        self._read()
        return self.monitor.state()

    def _read(self) -> None:
        p = self.pending
        if p is None or p.read:
            return
        p.metrics, p.read = {k: float(v) for k, v in jax.device_get(p.metrics).items()}, True
        for message in self.monitor.observe(p.step, p.metrics):
            self.logger.alarm(p.step, message)
            self.raised.append(message)

    def write(self) -> None:
        if self.pending is None:
            return
        self._read()
        p, self.pending = self.pending, None
        wall = p.host["end"] - p.host["start"]
        values = p.metrics | {k: v for k, v in p.host.items() if k not in ("rows", "start", "end")}
        values |= {
            "time/step_s": wall,
            "tokens_per_s": p.host["generated_tokens"] / max(wall, 1e-9),
        }
        self.logger.scalars(p.step, values, extra={"rows": p.host["rows"]})


def _drop_records_after(path: str, step: int) -> None:
    """A run killed after its last checkpoint logged steps it will redo: drop them."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def _plain_dict(d: dict) -> dict:
    return {k: _plain(v) for k, v in d.items()}


def _wandb_id(workdir: str) -> str:
    """One W&B run per workdir, so a resumed run continues its curves."""
    import hashlib

    return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file; none when it does not exist (yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_plain_dict(record)) + "\n")
