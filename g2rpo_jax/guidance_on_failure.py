"""`guidance.when = unguided_failed` (issue 32): a group's guided candidates receive trace
tokens only when its unguided candidates all failed (accuracy 0) in this step.

Shapes: B prompts, G candidates per group, n = ceil(α·G) guided slots (the first n of each
group), R = B·G rows, group-major (candidate j of prompt i is row i·G + j).

A step samples in two calls of the step's sampler (batch_rollout.BatchRollout), each over
the whole batch at the shapes the sampler already buckets, so no step compiles a program of
its own: per-row budgets of 0 leave out the rows a call does not keep, and a per-group trace
length of 0 leaves a group unguided.
  1. Every group's prompt alone (trace lengths 0): the unguided slots j ≥ n generate, the
     guided ones have budget 0. Their accuracy rewards decide the plan (`plan_trace_lengths`).
  2. The trace lengths of the groups with a correct unguided candidate set to 0: the
     guided slots generate, with min(ℓ, trace length) trace tokens where the group failed
     and unguided where it did not; the unguided slots have budget 0.
The rows are then put back in group order (`merge_rows`). Each row keys on i·G + j in the
call that generates it: no sampling stream is used twice, and each row samples with the
stream `always` gives it.

Cost against `always` (one call): the same R rows are generated, but in two decode loops
one after the other, so the wall time adds the two calls' longest rows instead of taking
the longest of all; each group's prompt is prefilled twice; the prompt-only program (no
trace bucket) compiles once per prompt bucket beside the guided ones. Under
`sampling.compact` the rows a call leaves out are finished from its first step and cost
only as fillers of a compacted width; without it they sit in the decode batch, up to twice
the decode work. The row-wise sampler has no per-row budgets, so experiment.build refuses
the option there; several processes would size their second calls' trace buckets apart, so
the trainer refuses it in multi-process runs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from g2rpo_jax.sampling import SampleOutput

# Completion fields, right-padded when the two calls' widths differ (guidance outside the
# budget widens the guided call's by its trace bucket), and the value that pads each.
_COMPLETION_PAD = {"completion_mask": False, "is_guidance": False, "log_probs": 0.0}


def guided_slots(num_groups: int, group_size: int, num_guided: int) -> np.ndarray:
    """bool[B·G]: the first n = ceil(α·G) candidates of each group."""
    return np.tile(np.arange(group_size) < num_guided, num_groups)


def plan_trace_lengths(
    trace_lengths: np.ndarray, accuracy: np.ndarray, group_size: int, num_guided: int
) -> np.ndarray:
    """The second call's trace lengths: a group keeps its own when every unguided candidate
    failed (accuracy 0; none to read counts as failed), else 0, so that its guided slots
    sample unguided.

    trace_lengths: int[B]; accuracy: float[B·G], group-major (the guided slots' entries are
    not read). Returns int32[B].
    """
    unguided_BU = np.asarray(accuracy, np.float32).reshape(-1, group_size)[:, num_guided:]
    failed_B = np.all(unguided_BU <= 0, axis=1)
    return np.where(failed_B, np.asarray(trace_lengths), 0).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("group_size", "num_guided", "pad_id"))
def merge_rows(
    guided: SampleOutput, unguided: SampleOutput, group_size: int, num_guided: int, pad_id: int
) -> SampleOutput:
    """The step's R rows: each group's first n from `guided` (call 2), the others from
    `unguided` (call 1), both [R, ...] on the same rows of the mesh. The narrower of the two
    completion widths is right-padded (pad id, masks off, log-prob 0)."""
    fields = {}
    for field in dataclasses.fields(guided):
        a, b = getattr(guided, field.name), getattr(unguided, field.name)
        if a.ndim == 2 and a.shape[1] != b.shape[1]:
            pad = pad_id if field.name == "completion_ids" else _COMPLETION_PAD[field.name]
            width = max(a.shape[1], b.shape[1])
            a, b = (
                jnp.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pad) for x in (a, b)
            )
        slot = jnp.arange(a.shape[0]) % group_size < num_guided
        fields[field.name] = jnp.where(slot.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    return type(guided)(**fields)
