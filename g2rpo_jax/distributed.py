"""JAX's distributed runtime: start it, and move batches between host-local and global.

One process per host. Each host feeds its own rows; `global_batch` assembles them into
arrays over the global mesh, and `local_rows` reads back the rows this host holds (for
decoding completions and computing rewards where they are).
"""

import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)


def _cluster_detected() -> bool:
    """A multi-process launch that jax.distributed.initialize() can configure by itself."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Starts the distributed runtime when this is one process of many; else does nothing.

    Explicit arguments win; on TPU VM pods and SLURM jobs JAX detects the cluster itself.
    A process that stops answering for heartbeat_timeout_s makes the others fail instead
    of waiting forever in a collective.
    """
    explicit = coordinator_address is not None
    if not explicit and not _cluster_detected():
        return
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if (
        jax.config.jax_platforms in (None, "", "cpu")
        and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu"
    ):
        # CPU devices need a collectives backend to talk across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def global_batch(local: dict, sharding: jax.sharding.NamedSharding) -> dict:
    """This host's rows (numpy, [R_local, ...]) → global arrays [R_local · hosts, ...]."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def local_rows(array: jax.Array) -> np.ndarray:
    """The rows of a row-sharded global array that live on this host, in global order."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    blocks, seen = [], set()
    for shard in shards:  # replicas along other mesh axes hold the same rows once
        start = shard.index[0].start or 0
        if start not in seen:
            seen.add(start)
            blocks.append(np.asarray(shard.data))
    return np.concatenate(blocks)
