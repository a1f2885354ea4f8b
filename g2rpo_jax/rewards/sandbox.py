"""Runs untrusted Python in a throwaway directory with limits; see jail.py for the inside.

Guarantees where the host allows them (root, or unprivileged user namespaces), reported per
run in `SandboxResult.isolation`:
- "net": a fresh network namespace, so no connection to anything, loopback included;
- "pid": a fresh PID namespace, so every process the program starts dies with it;
- "mount" + "readonly": all mounts read-only except the throwaway directory;
- "uid": run as `SandboxConfig.user` (when started as root), so no write where that user
  cannot, and the limits below cannot be raised again.
Always: wall-clock (`timeout_s`) and CPU limits, address-space, file-size and process-count
limits, a minimal environment, `python -I`, stdout read from a file capped by the file-size
limit, the directory deleted afterwards. Without namespaces network calls are refused only
at Python's `socket` level, and processes that call setsid() can outlive the run.
"""

import dataclasses
import errno
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile

_JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jail.py")
# Beyond the wall clock, time for the jail to start, kill and report before it is killed.
_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run.

    `max_procs` (RLIMIT_NPROC) counts every process and thread of the sandbox user,
    concurrent runs included, so memory_mb × max_procs bounds the memory of all runs
    together; without root that user is the trainer's, whose own threads leave no room to
    fork. `max_file_bytes` caps each file and stdout; `disk_mb` caps the directory (with
    namespaces); `user` applies when the trainer runs as root; `python` runs the program
    and must be executable by that user.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    max_procs: int = 32
    max_file_bytes: int = 4 << 20
    disk_mb: int = 64
    user: str | None = "nobody"
    namespaces: bool = True
    python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Exit code (-N: killed by signal N), stdout (at most max_file_bytes), guarantees met."""

    exit_code: int
    stdout: bytes
    timed_out: bool
    isolation: frozenset[str]


def _user_ids(user: str | None) -> tuple[int, int] | None:
    if user is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        # One thread per numeric library keeps the address-space limit meaningful.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _rlimits(config: SandboxConfig) -> dict[str, int]:
    return {
        "RLIMIT_CPU": config.cpu_s,
        "RLIMIT_AS": config.memory_mb << 20,
        "RLIMIT_FSIZE": config.max_file_bytes,
        "RLIMIT_NPROC": config.max_procs,
        "RLIMIT_CORE": 0,
    }


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def run_python(
    source: str, stdin: str = "", config: SandboxConfig = SandboxConfig()
) -> SandboxResult:
    """Runs `source` as main.py in a fresh sandbox, feeding it `stdin`.

    Raises RuntimeError when the sandbox itself fails (not the program): a jail that dies
    without a report, or a child that cannot confine itself or start the interpreter.
    """
    ids = _user_ids(config.user)
    with tempfile.TemporaryDirectory(prefix="g2rpo-sandbox-", ignore_cleanup_errors=True) as root:
        # Traversable, so the program can reach its directory by path (TMPDIR); the files
        # beside it are the jail's.
        os.chmod(root, 0o711)
        workdir = os.path.join(root, "work")
        os.mkdir(workdir, 0o700)
        if ids is not None:
            os.chown(workdir, *ids)
        with open(os.path.join(workdir, "main.py"), "w") as f:
            f.write(source)
        paths = {name: os.path.join(root, name) for name in ("stdin", "stdout", "status")}
        with open(paths["stdin"], "w", opener=_private) as f:
            f.write(stdin)
        open(paths["status"], "w", opener=_private).close()
        jail_config = {
            "status_path": paths["status"],
            "namespaces": config.namespaces,
            "uid": None if ids is None else ids[0],
            "gid": None if ids is None else ids[1],
            "rlimits": _rlimits(config),
            "disk_bytes": config.disk_mb << 20,
            "python": config.python,
            "timeout_s": config.timeout_s,
        }
        with (
            open(paths["stdin"], "rb") as fin,
            open(paths["stdout"], "wb", opener=_private) as fout,
        ):
            jail = subprocess.Popen(
                [sys.executable, "-I", "-S", _JAIL, json.dumps(jail_config)],
                cwd=workdir,
                stdin=fin,
                stdout=fout,
                stderr=subprocess.DEVNULL,
                env=_environment(workdir),
                start_new_session=True,
            )
            try:
                jail.wait(config.timeout_s + _GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(jail.pid, signal.SIGKILL)  # its child follows by parent-death signal
                jail.wait()
                return SandboxResult(-signal.SIGKILL, b"", timed_out=True, isolation=frozenset())
        report = _read(paths["status"], 1 << 16)
        stdout = _read(paths["stdout"], config.max_file_bytes)
    if not report:
        raise RuntimeError(f"the sandbox jail exited with {jail.returncode} and no report")
    status = json.loads(report)
    # EAGAIN from the child: the sandbox user is at its process limit, a failed run.
    if status["error"] is not None and (
        status["error"][0] != errno.EAGAIN or "exit_code" not in status
    ):
        raise RuntimeError(
            f"the sandbox could not run {config.python} as {config.user!r}: "
            f"{status['error'][1]} (SandboxConfig.python must be an interpreter that user "
            "can run; user=None keeps the trainer's user)"
        )
    return SandboxResult(
        exit_code=status["exit_code"],
        stdout=stdout,
        timed_out=status["timed_out"],
        isolation=frozenset(status["isolation"]),
    )
