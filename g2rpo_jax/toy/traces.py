"""Reference traces as real data sets hold them: some wrong, some missing (toy study, part 2),
some written the long way (part 3).

A wrong trace goes wrong the way a worked sum does: one step writes the wrong carry, every
later step adds that carry in correctly, and the answer written at the end is the one those
steps give — a self-consistent trace with a wrong answer, like a wrong first generation of
OpenR1-Math. A missing trace is a row without a `guidance` value (the trainer's
`data.fields.guidance_optional`): its guided candidates sample unguided. A hard trace does
the same sums by a longer route, about 3× the tokens (`hard_trace`), as another model's
verbose reasoning would: right, but costly for a small student to imitate token by token.
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


def hard_trace(problem: task.Problem) -> str:
    """`problem.trace` the long way, 32 tokens a digit instead of 9: each step adds the two
    digits first (`x+y=s;`, s two digits), then the carry (`s+c=kd;`), checks the sum by
    adding in the reverse order (`c+y+x=kd;`) and by place value (`kd=d+k0;`). The answer
    block is the clean trace's, so the verifier and the rewards score it alike.

    7+6 with carry 1: `7+6=13;13+1=14;1+6+7=14;14=4+10;` (clean: `7+6+1=14;`).
    """
    digits = zip(
        task.lsd_first(problem.a, problem.digits),
        task.lsd_first(problem.b, problem.digits),
        strict=True,
    )
    steps, carry = [], 0
    for x, y in digits:
        s = f"{int(x) + int(y):02d}"
        k, d = divmod(int(s) + carry, 10)
        steps.append(f"{x}+{y}={s};{s}+{carry}={k}{d};{carry}+{y}+{x}={k}{d};{k}{d}={d}+{k}0;")
        carry = k
    return (
        f"{task.THINK}{''.join(steps)}{task.END_THINK}\n"
        f"{task.ANSWER}{problem.answer}{task.END_ANSWER}"
    )


def hard_rows(rows: Sequence[dict]) -> list[dict]:
    """`rows` with every trace in `hard_trace`'s form; answers and difficulties unchanged."""
    return [r | {"guidance": hard_trace(task.parse_prompt(r["prompt"]))} for r in rows]


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
