"""Code reward throughput: rows (completions) per second of `code_reward` on 64 completions.

    python benchmarks/code_reward.py                  # asserts and stdin cases, 3 runs each
    python benchmarks/code_reward.py --runs 5 --wait-quiet 120
    PYTHONPATH=/tmp/old python benchmarks/code_reward.py  # another checkout's grader

Each completion is one of four programs (correct, wrong on one test, raising, correct but
printing), scored against 5 tests of one kind: `asserts` (`assert add(a, b) == c`, one
sandbox run per completion) or `stdin` (5 stdin/stdout cases, one run per case). Scoring is
sequential in this process, as one reward worker does it. The kinds alternate for `--runs`
passes; each time is a median. One JSON line per kind; benchmarks/README.md has the fields.
"""

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys

from _common import CpuMonitor, log, timed, wait_for_quiet

import g2rpo_jax
from g2rpo_jax.rewards import SandboxConfig, code_reward, run_python

COMPLETIONS, TESTS = 64, 5
PAIRS = [(1, 2), (-4, 4), (10, 5), (7, 0), (123, 877)]
ASSERTS = [f"assert add({a}, {b}) == {a + b}" for a, b in PAIRS]
CASES = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in PAIRS]
PROGRAMS = {
    "asserts": [
        "def add(a, b):\n    return a + b",
        "def add(a, b):\n    return a + b if a != 7 else 0",
        "def add(a, b):\n    raise ValueError('no')",
        "def add(a, b):\n    print('adding', a, b)\n    return a + b",
    ],
    "stdin": [
        "a, b = map(int, input().split())\nprint(a + b)",
        "a, b = map(int, input().split())\nprint(a + b if a != 7 else 0)",
        "raise ValueError('no')",
        "import sys\na, b = map(int, input().split())\nsys.stderr.write('dbg')\nprint(a + b)",
    ],
}


def sandbox() -> SandboxConfig:
    """The default limits, with an interpreter the sandbox user can run (the venv's may sit
    where `nobody` cannot enter)."""
    for python in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        config = SandboxConfig(python=python)
        try:
            if run_python("pass", config=config).exit_code == 0:
                return config
        except RuntimeError:
            pass
    raise SystemExit("the sandbox user can run no interpreter here")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    args = parser.parse_args()
    box = sandbox()
    isolation = sorted(run_python("pass", config=box).isolation)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=g2rpo_jax.__path__[0],
    ).stdout.strip()
    tests = {"asserts": ASSERTS, "stdin": CASES}
    work = {
        kind: [f"```python\n{programs[i % len(programs)]}\n```" for i in range(COMPLETIONS)]
        for kind, programs in PROGRAMS.items()
    }
    expected = {
        kind: sum(code_reward([""] * 4, work[kind][:4], [tests[kind]] * 4, sandbox=box))
        for kind in work
    }
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    times: dict[str, list[float]] = {kind: [] for kind in work}
    others: dict[str, list[float]] = {kind: [] for kind in work}
    for run in range(args.runs):
        for kind, completions in work.items():
            load: dict = {}
            score = functools.partial(
                code_reward,
                [""] * COMPLETIONS,
                completions,
                [tests[kind]] * COMPLETIONS,
                sandbox=box,
            )
            with CpuMonitor().measure(load):
                times[kind].append(timed(score))
            others[kind].append(load["others_cpu_frac"])
            log(f"run {run}: {kind} {times[kind][-1]:.2f} s")
    for kind in work:
        seconds = statistics.median(times[kind])
        print(
            json.dumps(
                {
                    "bench": "code_reward",
                    "kind": kind,
                    "completions": COMPLETIONS,
                    "tests": TESTS,
                    "rows_per_s": round(COMPLETIONS / seconds, 2),
                    "seconds": round(seconds, 3),
                    "runs": args.runs,
                    "reward_of_four_programs": expected[kind],
                    "others_cpu_frac": max(others[kind]),
                    "isolation": isolation,
                    "code": g2rpo_jax.__path__[0],
                    "commit": commit,
                }
            )
        )


if __name__ == "__main__":
    main()
