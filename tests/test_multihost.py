"""Several JAX processes on one machine (CPU collectives) train like one process."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from g2rpo_jax.logging_utils import METRICS_FILE, read_jsonl
from tests.test_trainer import ROW_WISE_FLAGS, final_state, write_rows

REPO = pathlib.Path(__file__).resolve().parents[1]
# Adam's ε at 1e-3 keeps its first steps from amplifying float-rounding differences of
# near-zero gradients (rows are summed in another order on two hosts) into ±lr changes.
# The group sampler and the shared-prefix step, as by default (their hosts place the
# groups), without compaction and decode phases: device-side only, and most of a compile.
COMMON = ["--config.train.num_steps=2", "--config.train.save_every=1",
          "--config.train.progress_bar=False", "--config.optimizer.eps=1e-3",
          "--config.sampling.compact=False", "--config.sampling.decode_phases=1"]  # fmt: skip


def train_command(data, workdir, batch_size):
    return [sys.executable, str(REPO / "scripts/train.py"), f"--config={REPO}/configs/qwen3_0p6b.py:smoke",
            f"--workdir={workdir}", f"--config.data.path={data}",
            f"--config.data.batch_size={batch_size}", *COMMON]  # fmt: skip


def environment(devices: int) -> dict:
    """This process's environment, its other XLA flags (conftest's) too, with `devices` CPU
    devices; scripts/launch_local.py keeps them the same way."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def run(command, devices, timeout=400, **kw):
    env = environment(devices)
    return subprocess.run(command, env=env, cwd=REPO, timeout=timeout, capture_output=True,
                          text=True, **kw)  # fmt: skip


def launch(command, timeout=400):
    launcher = [sys.executable, str(REPO / "scripts/launch_local.py"), "--num_processes=2",
                "--devices_per_process=4", f"--timeout_s={timeout}", "--"]  # fmt: skip
    return subprocess.run(launcher + command, cwd=REPO, timeout=timeout + 60,
                          capture_output=True, text=True)  # fmt: skip


def losses(workdir):
    return [r["loss"] for r in read_jsonl(workdir / METRICS_FILE)]


# The tests reading `runs` share one pytest-xdist worker, so its launches happen once.
one_set_of_runs = pytest.mark.xdist_group("multihost_runs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    data = write_rows(tmp / "train.jsonl")
    one, two = tmp / "one_process", tmp / "two_processes"
    result = run(train_command(data, one, batch_size=4), devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    # Two hosts × 2 prompts each = the same 4 prompts per step. Run both steps, then drop
    # step 2's checkpoint and resume: a collective save and a collective restore.
    result = launch(train_command(data, two, batch_size=2))
    assert result.returncode == 0, result.stderr[-3000:]
    import shutil

    shutil.rmtree(two / "checkpoints" / "2")
    result = launch(train_command(data, two, batch_size=2))
    assert result.returncode == 0, result.stderr[-3000:]
    return one, two


@one_set_of_runs
def test_two_processes_train_like_one(runs):
    one, two = runs
    np.testing.assert_allclose(losses(two)[-2:], losses(one), atol=1e-5)
    step_one, state_one, data_one = final_state(one)
    step_two, state_two, data_two = final_state(two)
    assert step_one == step_two == 2 and data_one == data_two
    leaves_one, leaves_two = jax.tree.leaves(state_one.params), jax.tree.leaves(state_two.params)
    for a, b in zip(leaves_two, leaves_one, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(state_two.controller.length, state_one.controller.length)


@one_set_of_runs
def test_each_host_reads_only_its_own_rows(runs):
    one, two = runs
    with open(one / "metrics.jsonl") as f:
        global_rows = {r["step"]: r["rows"] for r in map(json.loads, f)}
    seen = {}
    for process in (0, 1):
        with open(two / f"rows.process{process}.jsonl") as f:
            for record in map(json.loads, f):  # a resumed step is logged again: keep the last
                seen[process, record["step"]] = record["rows"]
    for step in (1, 2):
        # The step's rows in global curriculum order, strided: host p reads p, p + 2, ...
        assert seen[0, step] == global_rows[step][0::2]
        assert seen[1, step] == global_rows[step][1::2]


def test_killing_one_process_stops_the_other(tmp_path):
    data = write_rows(tmp_path / "train.jsonl")
    port = 20000 + os.getpid() % 20000
    env = environment(4)
    command = train_command(data, tmp_path / "run", batch_size=2)
    command[command.index("--config.train.num_steps=2")] = "--config.train.num_steps=4"
    command += ROW_WISE_FLAGS  # the claim is the survivor's exit, not what a step computes
    procs = [subprocess.Popen(command + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                         f"--process_id={i}", "--heartbeat_timeout_s=10"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(2)]  # fmt: skip
    try:
        rows_file = tmp_path / "run" / "rows.process1.jsonl"
        deadline = time.monotonic() + 300
        while not rows_file.exists() and time.monotonic() < deadline:  # training has begun
            assert procs[0].poll() is None and procs[1].poll() is None
            time.sleep(0.5)
        assert rows_file.exists()
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=120)  # no hang: the survivor fails within bounded time
        print(f"survivor exited with {code} after {time.monotonic() - killed_at:.1f} s")
        assert code != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
