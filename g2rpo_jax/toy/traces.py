"""Reference traces as real data sets hold them: some wrong, some missing (toy study, part 2).

A wrong trace goes wrong the way a worked sum does: one step writes the wrong carry, every
later step adds that carry in correctly, and the answer written at the end is the one those
steps give — a self-consistent trace with a wrong answer, like a wrong first generation of
OpenR1-Math. A missing trace is a row without a `guidance` value (the trainer's
`data.fields.guidance_optional`): its guided candidates sample unguided.
"""

from collections.abc import Sequence

import numpy as np

from g2rpo_jax.toy import task


def corrupted_trace(problem: task.Problem, step: int) -> str:
    """`problem.trace` with the carry out of `step` (0 = units) flipped and the rest of the
    sum, answer included, carried on from it; the answer is then never `problem.answer`."""
    if not 0 <= step < problem.digits:
        raise ValueError(f"step {step} is not one of the {problem.digits} steps")
    digits = zip(
        task.lsd_first(problem.a, problem.digits),
        task.lsd_first(problem.b, problem.digits),
        strict=True,
    )
    steps, answer, carry = [], [], 0
    for i, (x, y) in enumerate(digits):
        total = int(x) + int(y) + carry
        carry_out = total // 10 if i != step else 1 - total // 10
        steps.append(f"{x}+{y}+{carry}={carry_out}{total % 10};")
        answer.append(str(total % 10))
        carry = carry_out
    answer += ["1"] if carry else []
    return (
        f"{task.THINK}{''.join(steps)}{task.END_THINK}\n"
        f"{task.ANSWER}{''.join(answer)}{task.END_ANSWER}"
    )


def noisy_rows(rows: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """`rows` (toy data rows) with the traces of round(fraction · N) of them, drawn by `seed`,
    corrupted at a step drawn by `seed` (`corrupted_trace`); the answers stay right."""
    rng = np.random.default_rng(seed)
    chosen = _chosen(len(rows), fraction, rng)
    out = [dict(r) for r in rows]
    for i in chosen:
        problem = task.parse_prompt(rows[i]["prompt"])
        out[i]["guidance"] = corrupted_trace(problem, int(rng.integers(problem.digits)))
    return out


def covered_rows(rows: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """`rows` with the trace kept on round(fraction · N) of them, drawn by `seed`, and
    removed (no `guidance` key) from the rest."""
    keep = set(_chosen(len(rows), fraction, np.random.default_rng(seed)))
    return [
        dict(r) if i in keep else {k: v for k, v in r.items() if k != "guidance"}
        for i, r in enumerate(rows)
    ]


def _chosen(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is not in [0, 1]")
    return np.sort(rng.permutation(n)[: round(fraction * n)])
