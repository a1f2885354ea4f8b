"""Runs N copies of a command as the processes of one JAX job on this machine.

    python scripts/launch_local.py --num_processes=2 --devices_per_process=4 -- \
        python scripts/train.py --config=configs/qwen3_0p6b.py:smoke --workdir=/tmp/run

Each copy gets --coordinator_address, --num_processes and --process_id appended and
simulated CPU devices through XLA_FLAGS (the caller's other XLA flags kept). When one exits
with an error the others are stopped, and the launcher exits with the first failure's code.
"""

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
    """The caller's XLA flags with the simulated device count set to `devices`."""
    kept = [f for f in xla_flags.split() if "device_count" not in f]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def launch(
    command: list[str], num_processes: int, devices_per_process: int, timeout_s: float
) -> int:
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""), devices_per_process)
    procs = [
        subprocess.Popen(
            command
            + [
                f"--coordinator_address={address}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ],
            env=env,
        )
        for i in range(num_processes)
    ]
    deadline = time.monotonic() + timeout_s
    code = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            code = failed[0] if failed else 124
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            break
        time.sleep(0.2)
    return code or next((p.returncode for p in procs if p.returncode), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--timeout_s", type=float, default=3600)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    sys.exit(launch(command, args.num_processes, args.devices_per_process, args.timeout_s))


if __name__ == "__main__":
    main()
