"""Code reward and its sandbox: scoring, and containment of hostile programs."""

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from g2rpo_jax.rewards import SandboxConfig, code_reward, extract_program, run_python, run_tests
from tests import runnable_sandbox

PR_SET_CHILD_SUBREAPER = 36
ADD_CASES = [
    {"input": "1 2\n", "output": "3\n"},
    {"input": "5 5\n", "output": "10"},
    {"input": "-4 1", "output": "-3"},
]
ADD_ASSERTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\n"


@pytest.fixture(scope="module")
def sandbox() -> SandboxConfig:
    """Short limits, and an interpreter the sandbox user can run."""
    base = SandboxConfig(timeout_s=2.0, cpu_s=2, memory_mb=256, max_file_bytes=1 << 20, disk_mb=8)
    return runnable_sandbox.runnable(base)


@pytest.fixture(scope="module")
def isolation(sandbox: SandboxConfig) -> frozenset[str]:
    return run_python("pass", config=sandbox).isolation


def _children() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process."""
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        table[int(entry)] = (int(ppid), state)
    return table


def _descendants() -> dict[int, str]:
    table, found, frontier = _children(), {}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = state
                frontier.append(pid)
    return found


@pytest.fixture
def no_strays() -> Iterator[None]:
    """Fails the test if a process it started outlives it.

    The test process becomes a child subreaper, so orphans that escaped with setsid() or a
    double fork are reparented to it instead of init and stay visible as its descendants.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    before = set(_descendants())
    try:
        yield
        new = {pid: state for pid, state in _descendants().items() if pid not in before}
        for pid in (pid for pid, state in new.items() if state == "Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # a dead orphan handed to us: reap it
        assert [pid for pid, state in new.items() if state != "Z"] == []
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```python\na\n```\ntext\n```py\nb\n```", "b\n"),
        ("```Python3  \nc\n```", "c\n"),
        ("```\nplain fence\n```", None),
        ("```python\nunclosed", None),
        ("no code", None),
    ],
)
def test_extract_program(completion: str, expected: str | None) -> None:
    assert extract_program(completion) == expected


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("a, b = map(int, input().split())\nprint(a + b)", 1.0),
        ("a, b = map(int, input().split())\nprint(a - b - 1000)", 0.0),
        ("a, b = map(int, input().split())\nprint(a + b if a > 0 else 0)", 2 / 3),
        ("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n", 1.0),
        ("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)", 0.0),
        ("this is not python", 0.0),
    ],
)
def test_stdin_stdout_cases(sandbox: SandboxConfig, program: str, expected: float) -> None:
    assert code_reward(["p"], [fenced(program)], tests=[ADD_CASES], sandbox=sandbox) == [expected]


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("def add(a, b):\n    return a + b", 1.0),
        ("def add(a, b):\n    return a - b", 0.0),
        ("def add(a, b):\n    return a + b if a != 2 else 0", 2 / 3),
        # Output of the program cannot pose as the harness's report.
        ("def add(a, b):\n    return None\nprint('0\\n1\\n2')", 0.0),
        # A program that exits before the tests run passes none of them.
        ("def add(a, b):\n    return a + b\nimport sys\nsys.exit(0)", 0.0),
        ("def add(a, b):\n    return a + b\nraise ValueError", 0.0),
    ],
)
def test_assert_tests(sandbox: SandboxConfig, program: str, expected: float) -> None:
    assert code_reward(["p"], [fenced(program)], tests=[ADD_ASSERTS], sandbox=sandbox) == [expected]


def test_other_test_formats(sandbox: SandboxConfig) -> None:
    program = "def add(a, b):\n    return a + b"
    test_code = "def check(f):\n    assert f(2, 3) == 5\n\ncheck(add)"
    # Test code the grader cannot judge outside the program runs only when trusted.
    assert run_tests(program, test_code, sandbox) == 0.0
    assert run_tests(program, test_code, sandbox, trust_test_code=True) == 1.0
    assert (
        run_tests(program, "check = 1\nassert add(2, 3) == 6", sandbox, trust_test_code=True) == 0.0
    )
    # Cases stored as a JSON string are decoded, not run as an always-passing literal.
    assert run_tests("print(7)", '[{"input": "", "output": "8"}]', sandbox) == 0.0
    assert run_tests("print(8)", '[{"input": "", "output": "8"}]', sandbox) == 1.0
    with pytest.raises(ValueError, match="empty test"):
        run_tests(program, ["assert True", "  "], sandbox)
    with pytest.raises(TypeError):
        run_tests(program, [{"stdin": "1"}], sandbox)


def test_nothing_to_run_scores_zero(sandbox: SandboxConfig) -> None:
    completions = ["no code here", fenced("print(1)"), fenced("print(1)")]
    tests = [ADD_CASES, None, []]
    assert code_reward(["p"] * 3, completions, tests=tests, sandbox=sandbox) == [0.0] * 3


def test_isolation_and_cleanup(
    sandbox: SandboxConfig, monkeypatch: pytest.MonkeyPatch, no_strays: None
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    program = (
        "import os\nprint(os.getcwd())\nprint(os.getuid())\nprint('SECRET_TOKEN' in os.environ)"
    )
    result = run_python(program, config=sandbox)
    workdir, uid, leaked = result.stdout.decode().split()
    assert result.exit_code == 0 and leaked == "False"
    assert not os.path.exists(workdir)
    if os.geteuid() == 0:
        assert {"net", "pid", "mount", "readonly", "uid"} <= result.isolation
        assert uid != "0"


def test_infinite_loop(sandbox: SandboxConfig, no_strays: None) -> None:
    start = time.monotonic()
    program = fenced("while True:\n    pass")
    assert code_reward(["p"], [program], tests=[ADD_CASES], sandbox=sandbox) == [0.0]
    # The first timeout ends the run: one time limit, not one per case.
    assert time.monotonic() - start < sandbox.timeout_s + 3


def test_cpu_limit(sandbox: SandboxConfig, no_strays: None) -> None:
    config = dataclasses.replace(sandbox, timeout_s=20.0, cpu_s=1)
    start = time.monotonic()
    result = run_python("while True:\n    pass", config=config)
    assert not result.timed_out
    assert result.exit_code in (-signal.SIGXCPU, -signal.SIGKILL)
    assert time.monotonic() - start < 10


def test_memory_bomb(sandbox: SandboxConfig, no_strays: None) -> None:
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))"
    assert code_reward(["p"], [fenced(bomb)], tests=[ADD_CASES], sandbox=sandbox) == [0.0]
    caught = f"try:\n    {bomb.replace(chr(10), chr(10) + '    ')}\nexcept MemoryError:\n    print('capped')"
    # Time enough for a loaded machine: the memory cap, not a time limit, is what must stop it
    # (under 2 s of wall time the run was once killed before reaching the cap, printing nothing).
    roomy = dataclasses.replace(sandbox, timeout_s=30.0, cpu_s=30)
    assert run_python(caught, config=roomy).stdout == b"capped\n"


def test_fork_bomb(sandbox: SandboxConfig, no_strays: None) -> None:
    # A fork bomb that survives failed forks holds its user's process quota until killed;
    # a lower limit than other tests' sandboxes leaves them room to start meanwhile.
    config = dataclasses.replace(sandbox, max_procs=16, timeout_s=1.0)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    assert code_reward(["p"], [fenced(bomb)], tests=[ADD_CASES[:1]], sandbox=config) == [0.0]
    assert time.monotonic() - start < config.timeout_s + 4


def test_daemons_die_with_the_run(sandbox: SandboxConfig, no_strays: None) -> None:
    program = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        os._exit(0)\n"
        "print('done')"
    )
    tests = [[{"input": "", "output": "done"}]]
    assert code_reward(["p"], [fenced(program)], tests=tests, sandbox=sandbox) == [1.0]


@pytest.mark.parametrize("where", ["tmp_path", "world_writable", "sandbox_parent"])
def test_write_outside(
    sandbox: SandboxConfig,
    isolation: frozenset[str],
    tmp_path: os.PathLike,
    where: str,
    no_strays: None,
) -> None:
    if where == "world_writable" and "readonly" not in isolation:
        pytest.skip("only a read-only filesystem keeps a world-writable directory safe")
    with tempfile.TemporaryDirectory() as world:
        outside = {"tmp_path": str(tmp_path), "world_writable": world}.get(where)
        if outside is not None:
            os.chmod(outside, 0o777)  # the directory's mode does not stop the program
        target = "../escaped" if outside is None else os.path.join(outside, "escaped")
        # "written" is printed only after a successful write, so reward 0.0 = the write failed.
        program = f"open({target!r}, 'w').write('x')\nprint('written')"
        tests = [[{"input": "", "output": "written"}]]
        assert code_reward(["p"], [fenced(program)], tests=tests, sandbox=sandbox) == [0.0]
        if outside is not None:
            assert os.listdir(outside) == []


@pytest.mark.parametrize("namespaces", [True, False])
def test_network(sandbox: SandboxConfig, namespaces: bool, no_strays: None) -> None:
    config = dataclasses.replace(sandbox, namespaces=namespaces)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = (
            "import socket\n"
            f"with socket.create_connection(('127.0.0.1', {port}), timeout=1) as s:\n"
            "    s.sendall(b'leak')\n"
            "print('connected')"
        )
        tests = [[{"input": "", "output": "connected"}]]
        assert code_reward(["p"], [fenced(program)], tests=tests, sandbox=config) == [0.0]
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_huge_print(sandbox: SandboxConfig, no_strays: None) -> None:
    program = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    start = time.monotonic()
    result = run_python(program, config=sandbox)
    # The file-size limit stops the writer long before the clock does.
    assert not result.timed_out and result.exit_code != 0
    assert 0 < len(result.stdout) <= sandbox.max_file_bytes
    tests = [[{"input": "", "output": "x"}]]
    assert code_reward(["p"], [fenced(program)], tests=tests, sandbox=sandbox) == [0.0]
    assert time.monotonic() - start < sandbox.timeout_s
