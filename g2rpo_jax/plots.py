"""PNG plots of a run from its metrics.jsonl (and eval.jsonl): reward, accuracy of guided vs
unguided candidates, guidance length ℓ, and held-out accuracy, each over training steps."""

import os
from collections.abc import Sequence

import numpy as np

from g2rpo_jax.logging_utils import EVAL_FILE, METRICS_FILE, read_jsonl

PLOTS = ("reward.png", "accuracy_guided_unguided.png", "guidance_length.png", "eval_accuracy.png")


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), int | float)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps), np.asarray(values)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start), same length as `values`."""
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def write_plots(workdir: str, out_dir: str | None = None, window: int = 10) -> list[str]:
    """Writes the PNGs of `PLOTS` that the logs have data for; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_jsonl(os.path.join(workdir, METRICS_FILE))
    evals = read_jsonl(os.path.join(workdir, EVAL_FILE))
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def figure(
        name: str,
        title: str,
        ylabel: str,
        lines: Sequence[tuple[str, str, bool]],
        records: Sequence[dict],
    ) -> None:
        series = [(label, *_series(records, key), smoothed) for label, key, smoothed in lines]
        if not any(len(s[1]) for s in series):
            return
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        for label, steps, values, smoothed in series:
            if not len(steps):
                continue
            if smoothed:
                (line,) = ax.plot(
                    steps, smooth(values, window), label=f"{label} ({window}-step mean)"
                )
                ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
            else:
                ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, label=label)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    figure(
        "reward.png",
        "Reward per step",
        "mean over candidates",
        [("total reward", "reward", True), ("accuracy", "accuracy", True)],
        metrics,
    )
    figure(
        "accuracy_guided_unguided.png",
        "Rollout accuracy: guided vs unguided candidates",
        "accuracy",
        [("guided", "accuracy_guided", True), ("unguided", "accuracy_unguided", True)],
        metrics,
    )
    figure(
        "guidance_length.png",
        "Guidance length ℓ (tokens)",
        "ℓ",
        [("ℓ", "guidance_length", False)],
        metrics,
    )
    figure(
        "eval_accuracy.png",
        "Held-out unguided accuracy",
        "pass@1",
        [("held-out", "pass@1", False)],
        evals,
    )
    return written
