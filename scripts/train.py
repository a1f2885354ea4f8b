r"""Trains a policy with G²RPO-A; resumes from the newest checkpoint in --workdir.

    python scripts/train.py --config=configs/qwen3_0p6b.py --workdir=/ckpt/run1 \
        --config.data.path=/data/math_train.jsonl --config.guidance.ratio=0.25
    python scripts/train.py --config=configs/qwen3_0p6b.py:smoke --workdir=/tmp/smoke \
        --config.data.path=/data/small.jsonl

SIGTERM or Ctrl-C saves a checkpoint after the current step and exits; run the same command
again to continue.
"""

from absl import app, flags
from ml_collections import config_flags

from g2rpo_jax import cli, distributed, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, PATH[:variant] (e.g. configs/qwen3_0p6b.py:smoke).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and the tokenizer go here.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process job."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "A process silent this long fails the whole job."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Explicit flags (scripts/launch_local.py), or TPU pod / SLURM detection; else one process.
    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT.value
    )
    result = trainer.train(_CONFIG.value, _WORKDIR.value)
    state = "stopped by a signal" if result.preempted else "done"
    print(f"{state} at step {result.step}/{result.total_steps}; workdir {_WORKDIR.value}")


if __name__ == "__main__":
    cli.run(main)
