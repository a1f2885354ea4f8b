"""The sandbox from the inside: confines a fresh process, then runs `main.py` in it.

Run by sandbox.py as `python -I -S jail.py CONFIG_JSON` in the throwaway directory, never
imported: stdlib only, so it starts fast. The namespaces and the read-only remount are best
effort, and what they achieved is reported; they need root or unprivileged user namespaces:

1. new network, PID, mount and IPC namespaces: no interface but a downed loopback, and the
   PID namespace dies with its first process, so nothing the program forks outlives it;
2. every mount read-only; on the throwaway directory a fresh tmpfs capped at `disk_bytes`
   (a copy of main.py in it), so the program cannot fill the host's disk;
3. a child (PID 1 of the new namespace) gets a fresh /proc, the rlimits (CPU, address space,
   file size, processes, no core), the sandbox user's uid/gid, no_new_privs and a
   parent-death SIGKILL, then execs the program's interpreter;
4. this process stays outside as the supervisor: it enforces the wall-clock limit, kills the
   child's process group, and writes {isolation, timed_out, exit_code, error} to the status
   file (error: [errno, message] when the jail or the child failed before the program ran).

Without namespaces, network calls are refused by replacing `socket`'s constructors in the
program's interpreter (a program that imports `_socket` or runs another binary gets past
that), and killing the process group misses processes that left it with setsid().
"""

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
# Per-mount flags a read-only remount must restate (dropping one is refused in a user ns).
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}
_NO_NETWORK = """\
import runpy, socket, sys
def _refuse(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
socket.socket = socket.create_connection = socket.socketpair = socket.fromfd = _refuse
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None
) -> None:
    def encode(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(options)))


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0))


def _unshare() -> list[str]:
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    if _libc.unshare(flags) == 0:
        return ["net", "pid", "mount"]
    # Without root, a user namespace may grant the right to the others.
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(flags | CLONE_NEWUSER) != 0:
        return []
    # Map our ids to themselves: files keep their owner and the program is no root inside.
    for name, line in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(line)
    return ["net", "pid", "mount", "userns"]


def _mounts() -> list[tuple[str, int]]:
    """Mount points of this namespace with the per-mount flags to keep."""
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    unescape = lambda s: re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), s)
    return [
        (unescape(row[4]), sum(_MOUNT_FLAGS.get(o, 0) for o in row[5].split(","))) for row in rows
    ]


def _read_only() -> bool:
    """Makes every mount read-only; True when all remounts succeeded."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    complete = True
    for target, flags in _mounts():
        try:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            complete = False
    return complete


def _private_workdir(workdir: str, config: dict) -> None:
    """Mounts a size-capped tmpfs on the workdir, holding a copy of main.py."""
    with open(os.path.join(workdir, "main.py"), "rb") as f:
        program = f.read()
    options = f"size={config['disk_bytes']},nr_inodes=4096,mode=700"
    if config["uid"] is not None:
        options += f",uid={config['uid']},gid={config['gid']}"
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)
    with open(os.path.join(workdir, "main.py"), "wb") as f:
        f.write(program)


def _confine(config: dict, isolation: list[str]) -> None:
    """In the child: fresh /proc, rlimits, the sandbox user; irreversible from inside."""
    os.setpgid(0, 0)
    if "pid" in isolation:
        # Hides the host's processes (their /proc/PID/mem would be open to the same uid).
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, value in config["rlimits"].items():
        limit = getattr(resource, name)
        # A CPU soft limit sends SIGXCPU; the hard limit one second later kills.
        hard = value + 1 if limit == resource.RLIMIT_CPU else value
        resource.setrlimit(limit, (value, hard))
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Set after setuid, which clears it: the child dies with its supervisor.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _command(python: str, isolation: list[str]) -> list[str]:
    if "net" in isolation:
        return [python, "-I", "main.py"]
    return [python, "-I", "-c", _NO_NETWORK]


def _describe(error: Exception) -> list:
    return [getattr(error, "errno", None), repr(error)]


def _kill(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # the group, and the leader if it left the group
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _supervise(pid: int, wall_s: float, errors: int) -> dict:
    """Waits for the child within `wall_s`; returns the report for the status file."""
    timed_out = False

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal timed_out
        timed_out = True
        _kill(pid)

    with contextlib.suppress(OSError):  # the child may have set its group and exec'd first
        os.setpgid(pid, pid)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, wall_s)
    error = os.read(errors, 1 << 16)  # empty once the exec closes the pipe
    # Wait without reaping, so the pid cannot be reused before the group is killed.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    signal.setitimer(signal.ITIMER_REAL, 0)
    _kill(pid)
    _, status = os.waitpid(pid, 0)
    return {
        "timed_out": timed_out,
        "exit_code": os.waitstatus_to_exitcode(status),
        "error": json.loads(error) if error else None,
    }


def _run(config: dict) -> dict:
    isolation = _unshare() if config["namespaces"] else []
    workdir = os.getcwd()
    if "mount" in isolation:
        if _read_only():
            isolation.append("readonly")
        _private_workdir(workdir, config)
        os.chdir(workdir)  # onto the new mount: the old cwd is on a read-only one
    if config["uid"] is not None:
        isolation.append("uid")
    errors_r, errors_w = os.pipe()  # close-on-exec: the child reports setup failures here
    pid = os.fork()
    if pid == 0:
        os.close(errors_r)
        try:
            _confine(config, isolation)
            command = _command(config["python"], isolation)
            os.execv(command[0], command)
        except Exception as e:
            os.write(errors_w, json.dumps(_describe(e)).encode())
        os._exit(127)
    os.close(errors_w)
    return {"isolation": isolation, **_supervise(pid, config["timeout_s"], errors_r)}


def main() -> None:
    config = json.loads(sys.argv[1])
    status = os.open(config["status_path"], os.O_WRONLY)  # before / turns read-only
    try:
        report = _run(config)
    except Exception as e:
        report = {"error": _describe(e)}
    os.write(status, json.dumps(report).encode())


if __name__ == "__main__":
    main()
