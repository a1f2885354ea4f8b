"""SIGTERM / SIGINT during training: a flag read between steps, so the loop saves a
checkpoint and returns; a second SIGINT interrupts at once. Every host stops at the same step."""

import dataclasses
import signal
import threading

import jax
import numpy as np
from absl import logging


@dataclasses.dataclass
class Preemption:
    """SIGTERM/SIGINT → `requested` (read between steps); a second SIGINT interrupts."""

    requested: int = 0

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning("signal %d: saving a checkpoint after this step, then exiting", signum)
        self.requested = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def stop_requested(preemption: Preemption) -> bool:
    """Every host stops at the same step when any host was signalled."""
    stop = bool(preemption.requested)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        stop = bool(multihost_utils.process_allgather(np.asarray(stop)).any())
    return stop
