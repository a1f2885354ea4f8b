"""End-of-run report: held-out accuracy before → after (from eval.jsonl), the alarms the run
raised (alarms.jsonl) and the PNG plots."""

import os

from g2rpo_jax import plots
from g2rpo_jax.logging_utils import ALARMS_FILE, EVAL_FILE, read_jsonl


def eval_history(workdir: str) -> list[dict]:
    """The run's evaluations in step order (the last record of a step wins on resume)."""
    by_step = {r["step"]: r for r in read_jsonl(os.path.join(workdir, EVAL_FILE))}
    return [by_step[s] for s in sorted(by_step)]


def before_after(workdir: str, metric: str = "pass@1") -> str | None:
    """ "held-out pass@1: before … → after …" when the run evaluated at step 0 and later."""
    history = eval_history(workdir)
    if len(history) < 2 or history[0]["step"] != 0:
        return None
    first, last = history[0], history[-1]
    line = (
        f"held-out unguided {metric} ({last['num_rows']} problems): "
        f"before {first[metric]:.3f} (step 0) → after {last[metric]:.3f} "
        f"(step {last['step']})"
    )
    if first[metric] > 0:
        line += f", ×{last[metric] / first[metric]:.1f}"
    return line


def finish(workdir: str, write_plots: bool = True) -> list[str]:
    """Prints the before/after line and the run's alarms, and writes the plots (when asked);
    returns the lines printed."""
    lines = []
    summary = before_after(workdir)
    if summary:
        lines.append(summary)
    lines += [r["message"] for r in read_jsonl(os.path.join(workdir, ALARMS_FILE))]
    written = plots.write_plots(workdir) if write_plots else []
    if written:
        lines.append("plots: " + ", ".join(os.path.basename(p) for p in written))
    for line in lines:
        print(line, flush=True)
    return lines
