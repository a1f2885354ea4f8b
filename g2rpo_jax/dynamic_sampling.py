"""DAPO's dynamic sampling (`grpo.filter_zero_std_groups`): groups whose rewards all tie have
every advantage 0 and teach nothing, so they are dropped and the batch is refilled from the
next prompts of the data, up to `grpo.filter_max_extra_batches` extra sampler calls a step.

The data path reads: sample the step's batch → keep its untied groups → while short of B,
sample the next batch and keep its untied groups → fill what is still missing with tied
groups marked `is_filler` (in the batch for its static shape, out of the loss). The extra
batches come from the same iterator, so its checkpointed state covers them and a resumed run
draws exactly what the uninterrupted one did. Runs on the host, single-process.
"""

from collections.abc import Callable

import jax
import numpy as np

from g2rpo_jax import advantages, grpo

# Row fields padded on the left (prompts are left-padded) when draws differ in width.
_LEFT_PADDED = ("prompt_ids", "prompt_mask")
_PAD_WITH_ID = ("prompt_ids", "completion_ids")
# Host numbers that are means over a draw's rows or groups (the rest add up over draws).
_MEANS = ("reward/", "guidance/groups_guided")


def sample_filtered(
    rollout: Callable,
    params,
    batch: dict,
    ell: int,
    k: int,
    next_batch: Callable,
    config: grpo.GRPOConfig,
    pad_id: int,
) -> tuple[dict, dict, list]:
    """`rollout(params, batch, ell, k, draw)` → (rows, host, samples) as the trainer's;
    `next_batch()` the data's next batch or None when it ran out. Returns the step's rows
    (numpy, [B·G, ...]), host numbers with `filter/*` counts, and the first draw's samples.
    """
    num_groups, group_size = len(batch["index"]), config.group_size
    draws, hosts, samples = [], [], None
    for draw in range(config.filter_max_extra_batches + 1):
        if draw:
            batch = next_batch()
            if batch is None:  # the data ran out: train on what there is
                break
        rows, host, drawn_samples = rollout(params, batch, ell, k, draw)
        draws.append({name: np.asarray(jax.device_get(x)) for name, x in rows.items()})
        hosts.append(host)
        samples = drawn_samples if samples is None else samples
        untied = sum(int((~_tied(d, group_size)).sum()) for d in draws)
        if untied >= num_groups:
            break
    rows, counts = take_groups(draws, num_groups, group_size, pad_id)
    return rows, merge_host(hosts) | counts, samples


def _tied(rows: dict, group_size: int) -> np.ndarray:
    """bool[B]: the groups of `rows` whose rewards all tie."""
    return np.asarray(advantages.zero_std_groups(rows["rewards"], group_size))


def take_groups(
    draws: list[dict], num_groups: int, group_size: int, pad_id: int
) -> tuple[dict, dict]:
    """The step's `num_groups` groups from the draws, in draw order: every untied group
    first, then tied ones as filler (`is_filler` set) while groups are missing.

    draws: per sampler call, the row fields [B_d·G, ...] as numpy. Returns (rows, counts).
    """
    widths = {
        name: max(d[name].shape[1] for d in draws) for name in draws[0] if draws[0][name].ndim == 2
    }
    padded = [
        {name: _pad(name, x, widths.get(name), pad_id) for name, x in d.items()} for d in draws
    ]
    groups = [(d, g, bool(tied)) for d in padded for g, tied in enumerate(_tied(d, group_size))]
    untied = [(d, g) for d, g, tied in groups if not tied]
    tied = [(d, g) for d, g, tied in groups if tied]
    chosen = untied[:num_groups]
    filler = tied[: num_groups - len(chosen)]
    parts = [_group(d, g, group_size, False) for d, g in chosen]
    parts += [_group(d, g, group_size, True) for d, g in filler]
    rows = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    counts = {
        "filter/extra_sampler_calls": float(len(draws) - 1),
        "filter/sampled_zero_std": len(tied) / len(groups),
        "filter/dropped_groups": float(len(tied) - len(filler)),
        "filter/unused_groups": float(len(untied) - len(chosen)),
        "filter/filler_groups": float(len(filler)),
    }
    return rows, counts


def _group(rows: dict, g: int, group_size: int, is_filler: bool) -> dict:
    part = {name: x[g * group_size : (g + 1) * group_size] for name, x in rows.items()}
    part["is_filler"] = np.full_like(part["is_filler"], is_filler)
    return part


def _pad(name: str, x: np.ndarray, width: int | None, pad_id: int) -> np.ndarray:
    if width is None or x.shape[1] == width:
        return x
    missing = (width - x.shape[1], 0) if name in _LEFT_PADDED else (0, width - x.shape[1])
    value = pad_id if name in _PAD_WITH_ID else 0
    return np.pad(x, ((0, 0), missing), constant_values=value)


def merge_host(hosts: list[dict]) -> dict:
    """One step's host numbers over its draws: times, token counts and rows add up, reward
    means and the fraction of groups guided average (every draw has B groups)."""
    out = dict(hosts[0])
    for host in hosts[1:]:
        for name, value in host.items():
            out[name] = out[name] + value
    for name in out:
        if name.startswith(_MEANS):
            out[name] /= len(hosts)
    return out
